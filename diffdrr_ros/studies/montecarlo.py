"""Monte Carlo robustness study (the seed's Fig. 8 and its 82.7 % with Adam).

``N`` starts perturbed uniformly by up to +-45 deg per C-arm angle and +-60 mm per
translation (``--max-deg`` / ``--max-mm``) from the true pose; each is registered to the
DRR at the truth. Success: mTRE < 2 mm over the 27 fixed targets; the seed's own
criterion (final ZNCC > 0.999) is reported beside it. Writes ``runs.csv`` (one row per
start), ``summary.json``, ``curves.json`` (loss per iteration of every run) and
``montecarlo.png`` (convergence curves coloured by outcome, mTRE and time histograms).

``--fixed`` chooses the fixed image: ``drr`` (the DRR at the truth, as in the seed), ``xray``
(a simulated fluoroscopy frame of it: Beer-Lambert, quantum and electronic noise, detector
blur, collimator; registered after ``-log(I / I0)`` with the collimator masked, as the node
does) or ``mismatched`` (``xray`` plus the physics a DRR leaves out: beam hardening, scatter,
heel effect; :meth:`.XRayStyle.mismatched`) or ``poly`` (a frame of the polychromatic simulator,
:mod:`diffdrr_ros.core.sim.polychromatic`: soft tissue and bone through the tube spectrum, with the
scatter and heel gain of the config's physics fields and the ``xray`` kind's noise, blur and
collimator; needs a CT in HU).

``--drr-model poly`` (with ``--kvp``, ``--filtration-mm-al``, ``--energy-bins``,
``--scatter-to-primary``, ``--scatter-sigma-fraction``, ``--heel-gain``) registers with the
polychromatic DRR; the ``poly`` frames take the same physics, so ``--fixed poly`` against
``--fixed poly --drr-model poly`` is the mono DRR's bias against the matched model (with the mono
DRR the frames have the config's default physics, 80 kVp and 2.5 mm Al, or what ``--set kvp=...``
says). The ``xray`` / ``mismatched`` frames of a poly registration start from its own DRR.

``--views K --separation DEG``: each start registers one pose to K frames, the truth's view
and K - 1 more with the C-arm turned DEG, 2 DEG ... further LAO about the isocentre (the
patient still); errors are reported in plane and along the beam of the first view.

``--preset seed`` runs the seed's own protocol (one level, its C-arm parameters, no
search); ``--set key=value`` changes any :class:`RegistrationConfig` field, which is how
the ablations in ``docs/results.md`` were run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np
import torch

from ..core.drr import RenderSettings, render
from ..core.geometry import CArmJoints, camera_motion, matrix_to_carm
from ..core.registration import Registrar, View, prepare_fixed
from ..core.sim import MaterialCT, Spectrum, XRayStyle, collimator_mask, simulate_polychromatic_xray, simulate_xray
from ..core.volume import Volume
from . import common


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_problem_arguments(p)
    common.add_config_arguments(p)
    p.add_argument("--n", type=int, default=1000, help="number of random starts (the seed: 1000)")
    p.add_argument("--no-warmup", action="store_true", help="do not run one untimed registration first (JIT)")
    p.add_argument("--fixed", default="drr", choices=FIXED_KINDS,
                   help="fixed image: the DRR at the truth, a simulated X-ray frame, one with unmodelled physics, or a "
                        "frame of the polychromatic simulator (two materials, the tube spectrum of --kvp ...)")
    p.add_argument("--views", type=int, default=1, help="frames per registration (depth from several views)")
    p.add_argument("--separation", type=float, default=30.0, help="LAO step between the views, degrees")


FIXED_KINDS = ("drr", "xray", "mismatched", "poly")


def fixed_image(reg: Registrar, truth, kind: str, seed: int = 0, ct: Volume | None = None
                ) -> tuple[object, np.ndarray | None]:
    """The fixed image of kind ``kind`` at ``truth`` and its mask of exposed pixels (or None).

    ``drr``: the registrar's own DRR (the seed's protocol). The X-ray kinds start from the full
    CT (not the registrar's CT averaged to the pixel footprint) without the registrar's PSF
    model: the simulator adds its own blur. ``xray`` / ``mismatched`` take the registrar's DRR
    physics (mono, or its poly model); ``poly`` is the polychromatic simulator's frame of ``ct``
    (in HU) with the physics of ``reg.config`` (module docstring).
    """
    if kind == "drr":
        return reg.render(truth[None])[0], None
    gen = torch.Generator().manual_seed(seed)
    if kind == "poly":
        if ct is None or ct.kind != "hu":
            raise ValueError("--fixed poly needs the CT in HU (the simulator decomposes it into soft tissue and bone)")
        cfg = reg.config
        style = XRayStyle(scatter_to_primary=cfg.scatter_to_primary, scatter_sigma_fraction=cfg.scatter_sigma_fraction,
                          heel_gain=cfg.heel_gain)
        spectrum = Spectrum(kvp=cfg.kvp, filtration_mm_al=cfg.filtration_mm_al, bins=cfg.energy_bins)
        frame = simulate_polychromatic_xray(MaterialCT.from_hu(ct), truth.cpu(), reg.detector, style, spectrum, gen,
                                            RenderSettings(method=cfg.method))
    else:
        with torch.no_grad():
            line = render(reg.volume, truth.to(reg.device), reg.detector,
                          RenderSettings(method=reg.config.method, poly=reg.poly_model()))
        style = XRayStyle() if kind == "xray" else XRayStyle.mismatched()
        frame = simulate_xray(line, style, gen)
    mask = (frame > 0.02 * style.i0) & collimator_mask(*frame.shape, style.collimator_radius)
    return prepare_fixed(frame, log_transform=True, i0=style.i0), mask


def extra_views(reg: Registrar, truth, k: int, separation_deg: float, kind: str, seed: int,
                ct: Volume | None = None) -> list[View]:
    """``k - 1`` more frames of the truth with the C-arm turned ``separation_deg``, twice that ... further LAO."""
    angles, _ = matrix_to_carm(truth.cpu(), reg.center)
    ref = CArmJoints(lao_rad=float(angles[1]), cranial_rad=float(angles[0]), detector_rotation_rad=float(angles[2]))
    views = []
    for i in range(1, k):
        other = dataclasses.replace(ref, lao_rad=ref.lao_rad + math.radians(i * separation_deg))
        cam_from_ref = camera_motion(ref, other)
        image, mask = fixed_image(reg, cam_from_ref @ truth.cpu(), kind, seed=seed + i, ct=ct)
        views.append(View(image, cam_from_ref, mask))
    return views


def run(args: argparse.Namespace) -> int:
    problem = common.problem_from_args(args)
    cfg = common.make_config(args.preset, common.config_overrides(args))
    out = common.out_dir(args, "montecarlo")
    reg = Registrar(problem.volume, problem.detector, cfg, device=args.device)
    truth = common.truth_pose(reg, problem)
    fixed, mask = fixed_image(reg, truth, args.fixed, seed=args.seed, ct=problem.volume)
    views = extra_views(reg, truth, args.views, args.separation, args.fixed, args.seed, ct=problem.volume)
    starts = common.random_starts(reg, truth, args.n, max_deg=args.max_deg, max_mm=args.max_mm, seed=args.seed)
    if not args.no_warmup:  # compile the kernels outside the timed runs
        reg.register(fixed, starts[0], truth=truth, mask=mask, views=views)
    info = common.machine_info()
    curves: list[list[float]] = []
    rows = common.run_registrations(reg, fixed, starts, truth, progress=not args.no_progress,
                                    desc="montecarlo", curves=curves, mask=mask, views=views)
    summary = common.summarize(rows)
    payload = {
        "study": "montecarlo",
        "problem": {"ct": problem.name, "detector": list(problem.detector.shape),
                    "pixel_mm": float(problem.detector.spacing_mm[0]), "sdd_mm": float(problem.detector.sdd_mm),
                    "sid_mm": float(problem.detector.sid), "truth_carm_deg_mm": list(problem.truth_carm)},
        "starts": {"n": args.n, "max_deg": args.max_deg, "max_mm": args.max_mm, "seed": args.seed},
        "fixed": args.fixed,
        "views": {"k": args.views, "separation_deg": args.separation},
        "preset": args.preset,
        "config": common.config_dict(cfg),
        "criterion": {"success": f"mTRE < {reg.success_mtre_mm} mm over 27 targets",
                      "seed_success": f"final ZNCC > {common.SEED_ZNCC}"},
        "machine": info,
        "loadavg_1m_at_end": _load(),
        "summary": summary,
        "seed_reference": {"success_rate": 0.827, "n": 1000, "optimizer": "adam"},
    }
    common.write_json(out / "summary.json", payload)
    common.write_rows(out / "runs.csv", rows)
    common.write_json(out / "curves.json", {"loss_per_iteration": curves,
                                            "success": [r["success"] for r in rows]})
    plot(rows, curves, out / "montecarlo.png",
         title=f"{problem.name}, {args.n} starts, preset {args.preset}, fixed {args.fixed}, DRR {cfg.drr_model}")
    s = summary
    print(f"montecarlo on {problem.name}: {s['n']} starts, success (mTRE<2mm) {s['success_rate']:.1%}, "
          f"seed criterion (ZNCC>0.999) {s['seed_success_rate']:.1%}, median time {s['time_median_s']:.3f}s, "
          f"median mTRE {s['mtre_median_mm']:.3f} mm (in plane {s['inplane_median_mm']:.3f}, along the beam "
          f"{s['depth_median_mm']:.3f}), {args.views} view(s), fixed {args.fixed}, DRR {cfg.drr_model} -> {out}")
    return 0


def _load() -> float | None:
    import os

    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def plot(rows: list[dict], curves: list[list[float]], path, title: str = "") -> None:
    """Convergence curves (blue success, red failure; the seed's Fig. 8), mTRE and time histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for r, c in zip(rows, curves, strict=True):
        if c:
            y = np.clip(1.0 + np.asarray(c), 1e-7, None)  # 1 - similarity of the best candidate
            ax[0].plot(np.arange(len(y)), y, color="tab:blue" if r["success"] else "tab:red",
                       alpha=0.25 if r["success"] else 0.6, lw=0.7)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("iteration (search descent + pyramid levels)")
    ax[0].set_ylabel("loss: 1 - similarity (best candidate)")
    ax[0].set_title("convergence (blue: mTRE < 2 mm, red: failure)")
    m = np.array([r["mtre_mm"] for r in rows], dtype=float)
    bins = np.logspace(math.log10(max(1e-3, m.min() * 0.9)), math.log10(max(m.max() * 1.1, 3.0)), 40)
    ax[1].hist(m, bins=bins, color="tab:gray")
    ax[1].axvline(2.0, color="k", ls="--", label="2 mm")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("final mTRE (mm)")
    ax[1].set_ylabel("starts")
    ax[1].legend()
    ok = np.mean([r["success"] for r in rows])
    ax[1].set_title(f"success {ok:.1%} of {len(rows)}")
    t = np.array([r["time_s"] for r in rows])
    ax[2].hist(t, bins=40, color="tab:green")
    ax[2].axvline(np.median(t), color="k", ls="--", label=f"median {np.median(t):.2f} s")
    ax[2].set_xlabel("wall time per registration (s)")
    ax[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
