"""Depth from one view vs several, on frames whose physics the DRR does not share.

Frames come from the polychromatic two-material projector (``core/sim/polychromatic.py``:
80 kVp spectrum in 6 bins, soft tissue and cortical bone decomposed from HU with NIST mass
attenuation, scatter-to-primary 0.25, heel effect, detector blur 0.7 px, Poisson noise,
12 bits, circular collimator), not from the renderer. The C-arm stands at LAO 0 deg (the
reference frame) and at each ``--separations`` angle; the patient lies 5 / 4 / 6 mm and a few
degrees away from the prior. For K = 1 .. len(separations) + 1 views the script registers
one pose jointly (``Registrar.register(views=...)``, the node's core API, GNCC on
intensities, the node's blur) and reports the error of the 27 targets in the reference
camera's axes, in plane and along the beam separately, with the covariance's predicted
1-sigma target error (correlated residuals, 0.3 % magnification uncertainty) that the
node's known-pose gate uses::

    .venv/bin/python bench/bench_depth.py --phantom head --size 128 --separations 30 60 --out bench/out/depth.json

``--drr-model poly`` registers with the polychromatic DRR instead (``--drr-scatter 0.25
--drr-heel 0.15``: with the frames' scatter and heel modelled too). It shares the simulator's
tables and decomposition, so on these frames its result is an upper bound.

``--frames external`` takes the frames from ``bench/external_projector.py`` instead: SpekPy
spectrum and heel effect, xraydb attenuation of four ICRP tissues from a Schneider-style HU
decomposition, DiffDRR's Siddon for the line integrals, its own scatter, noise and read-out
(physics this package did not write; run it from the benchmark venv). The JSON then also
holds the geometry check (DiffDRR's mono line integral against ours at the reference pose)::

    .venv-bench/bin/python bench/bench_depth.py --frames external --phantom head --size 128 --separations 30 60

``--setups N`` repeats the study for N patient set-ups (the first is the one above, the others
drawn at random: up to 3 deg and 8 mm per axis away from the prior; frame noise seeded per
set-up) and adds the per-K medians over set-ups (``summary`` in the JSON).

Writes JSON, CSV and a PNG (error and predicted sigma against the number of views).
``--sweep``: two views instead, the reference and one at each ``--separations`` angle in
turn (error and predicted sigma against the separation angle)::

    .venv/bin/python bench/bench_depth.py --phantom head --size 128 --sweep --separations 5 10 20 30 45 60 90
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench"):  # this package; bench/external_projector.py (--frames external)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from diffdrr_ros.core.geometry import CArmJoints, Detector, default_prior, initial_pose  # noqa: E402
from diffdrr_ros.core.geometry.rotations import axis_angle_to_matrix, make_transform  # noqa: E402
from diffdrr_ros.core.metrics import inplane_depth_error  # noqa: E402
from diffdrr_ros.core.registration import (  # noqa: E402
    Registrar,
    RegistrationConfig,
    pose_covariance,
    prepare_fixed,
    view_from_joints,
)
from diffdrr_ros.core.sim import MaterialCT, Spectrum, XRayStyle, collimator_mask, simulate_polychromatic_xray  # noqa: E402
from diffdrr_ros.core.volume import ct_source, open_ct  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phantom", default="head")
    ap.add_argument("--ct", default=None, help="a CT file or DICOM directory instead of the phantom")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--separations", type=float, nargs="+", default=[30.0, 60.0], help="LAO of the other views, deg")
    ap.add_argument("--cranial", type=float, default=5.0)
    ap.add_argument("--scale-uncertainty", type=float, default=0.003)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="2 views: the reference and each separation in turn")
    ap.add_argument("--drr-model", choices=["mono", "poly"], default="mono",
                    help="the registration's DRR: mono (default) or the polychromatic two-material DRR at the "
                         "frames' 80 kVp (it shares the simulator's tables: an upper bound)")
    ap.add_argument("--drr-scatter", type=float, default=0.0,
                    help="poly: the DRR's scatter-to-primary estimate (the frames have 0.25)")
    ap.add_argument("--drr-heel", type=float, default=0.0, help="poly: the DRR's heel gain (the frames have 0.15)")
    ap.add_argument("--frames", choices=["sim", "external"], default="sim",
                    help="sim (default): this package's polychromatic simulator; external: bench/external_projector.py "
                         "(SpekPy, xraydb, DiffDRR; the benchmark venv)")
    ap.add_argument("--setups", type=int, default=1,
                    help="patient set-ups (the first: the fixed one; the others random); medians over set-ups")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "depth.json")
    args = ap.parse_args()
    if args.setups < 1:
        ap.error("--setups must be >= 1")
    torch.set_num_threads(args.threads)
    import numba

    numba.set_num_threads(args.threads)
    vol = open_ct(ct_source(args.ct, args.phantom))
    det = Detector(args.size, args.size, spacing_mm=(400 / args.size,) * 2, sdd_mm=1020.0, sid_mm=750.0)
    physics = {} if args.drr_model == "mono" else {"kvp": Spectrum().kvp, "scatter_to_primary": args.drr_scatter,
                                                    "heel_gain": args.drr_heel}
    reg = Registrar(vol, det, RegistrationConfig(similarity="gncc", compare="intensity", init_search=False,
                                                 drr_blur_sigma_px=0.7, drr_model=args.drr_model, **physics),
                    device="cpu")
    style = XRayStyle(scatter_to_primary=0.25, heel_gain=0.15, blur_sigma_px=0.7, collimator_radius=0.47)
    mask = collimator_mask(args.size, args.size, style.collimator_radius)
    joints = [CArmJoints(math.radians(a), math.radians(args.cranial)) for a in [0.0, *args.separations]]
    extra: dict = {"frames": args.frames}
    if args.frames == "external":
        from external_projector import ExternalProjector, ExternalStyle, geometry_check

        projector = ExternalProjector(vol, det, ExternalStyle(collimator_radius=style.collimator_radius),
                                      patch_size=64 if max(vol.shape) > 256 else None)
        extra["external_style"] = {k: str(v) for k, v in vars(projector.style).items()}
        extra["external_mean_energy_kev"] = projector.mean_energy_kev()
        open_field = projector.open_field()[projector.mask]
        extra["external_open_field_min_over_max"] = float(open_field.min() / open_field.max())
        extra["external_frames"] = []
    else:
        mct = MaterialCT.from_hu(vol)

    def make_frames(table_ct: torch.Tensor, seed: int) -> list[torch.Tensor]:
        if args.frames == "sim":
            return [prepare_fixed(simulate_polychromatic_xray(mct, initial_pose(j, table_ct), det, style, Spectrum(),
                                                              torch.Generator().manual_seed(seed + i)),
                                  log_transform=True, i0=style.i0) for i, j in enumerate(joints)]
        out = []
        for i, j in enumerate(joints):
            fr = projector.frame(initial_pose(j, table_ct), seed + i)
            m = projector.shadow(fr.primary, fr.open_field)  # where the scatter-to-primary ratio is defined
            extra["external_frames"].append({"seed": seed + i, "i0": fr.i0, "i0_center": fr.i0_center,
                                             "scatter_to_primary": float(fr.scatter[m].mean() / fr.primary[m].mean()),
                                             "counts_min": float(fr.frame[m].min()),
                                             "counts_max": float(fr.frame[m].max())})
            out.append(prepare_fixed(fr.frame, log_transform=True, i0=fr.i0))
        return out

    rows = []
    setup_gen = torch.Generator().manual_seed(args.seed + 12345)
    for setup in range(args.setups):
        if setup == 0:  # the fixed set-up of the single-set-up study
            rot, shift = [0.03, -0.02, 0.04], [5.0, -4.0, 6.0]
        else:  # up to 3 deg and 8 mm per axis away from the prior
            rot = ((torch.rand(3, generator=setup_gen, dtype=torch.float64) - 0.5) * 2 * math.radians(3.0)).tolist()
            shift = ((torch.rand(3, generator=setup_gen, dtype=torch.float64) - 0.5) * 16.0).tolist()
        table_ct = make_transform(axis_angle_to_matrix(torch.tensor(rot, dtype=torch.float64)),
                                  torch.tensor(shift, dtype=torch.float64)) @ default_prior(reg.center)
        frames = make_frames(table_ct, args.seed + 100 * setup)
        truth = initial_pose(joints[0], table_ct)
        if setup == 0 and args.frames == "external":
            extra["geometry_check"] = geometry_check(vol, det, truth, projector.rays)
            print(f"geometry check (DiffDRR vs ours, mono Siddon at the reference pose): "
                  f"rel. RMS {extra['geometry_check']['rel_rms']:.2e}, "
                  f"max |diff| / max {extra['geometry_check']['max_abs_over_max']:.2e}", flush=True)
        start = initial_pose(joints[0], default_prior(reg.center))
        sets = [[]] + [[i] for i in range(1, len(joints))] if args.sweep else [list(range(1, k)) for k in
                                                                              range(1, len(joints) + 1)]
        single = None
        for others in sets:
            k = len(others) + 1
            views = [view_from_joints(frames[i], joints[i], joints[0], mask) for i in others]
            t0 = time.perf_counter()
            res = reg.register(frames[0], start, truth=truth, mask=mask, views=views)
            seconds = time.perf_counter() - t0
            err = inplane_depth_error(res.pose, truth, reg.targets)
            cov = pose_covariance(reg, frames[0], res.pose, mask, compare="intensity", views=views,
                                  scale_uncertainty=args.scale_uncertainty)
            sig = cov.target_sigma_mm(reg.targets)
            angles = [0.0] + [([0.0, *args.separations])[i] for i in others]
            rows.append({"setup": setup, "views": k, "angles_deg": angles, "separation_deg": max(angles),
                         "mtre_mm": res.mtre_mm, "inplane_mm": float(err.inplane_mm), "depth_mm": float(err.depth_mm),
                         "depth_bias_mm": float(err.depth_bias_mm), "sigma_x_mm": float(sig[0]),
                         "sigma_y_mm": float(sig[1]), "sigma_depth_mm": float(sig[2]), "zncc": res.view_zncc,
                         "iterations": res.iterations, "seconds": round(seconds, 2)})
            r = rows[-1]
            print(f"{'set-up ' + str(setup) + ' ' if args.setups > 1 else ''}K={k} {r['angles_deg']}: mTRE "
                  f"{r['mtre_mm']:.2f} mm, in plane {r['inplane_mm']:.2f}, along the beam {r['depth_mm']:.2f} "
                  f"(bias {r['depth_bias_mm']:+.2f}); predicted 1-sigma x/y/z {r['sigma_x_mm']:.2f}/"
                  f"{r['sigma_y_mm']:.2f}/{r['sigma_depth_mm']:.2f} mm; {r['iterations']} it, {seconds:.1f} s",
                  flush=True)
            if args.sweep:  # every pair starts from the single-view result
                single = res.pose if single is None else single
                start = single
            else:
                start = res.pose  # the next K starts where this one ended (as the node's tracking frames do)
    keys = ("mtre_mm", "inplane_mm", "depth_mm", "depth_bias_mm", "sigma_x_mm", "sigma_y_mm", "sigma_depth_mm")
    summary = []
    for label in dict.fromkeys(r["separation_deg"] if args.sweep else r["views"] for r in rows):
        group = [r for r in rows if (r["separation_deg"] if args.sweep else r["views"]) == label]
        summary.append({"views": group[0]["views"], "separation_deg": group[0]["separation_deg"],
                        "setups": len(group), **{f"median_{k}": statistics.median(r[k] for r in group) for k in keys},
                        "max_depth_mm": max(r["depth_mm"] for r in group),
                        "max_inplane_mm": max(r["inplane_mm"] for r in group)})
    if args.setups > 1:
        for s_ in summary:
            print(f"median over {s_['setups']} set-ups, K={s_['views']} (max separation {s_['separation_deg']:g}): "
                  f"in plane {s_['median_inplane_mm']:.2f} mm, along the beam {s_['median_depth_mm']:.2f} mm "
                  f"(max {s_['max_depth_mm']:.2f}), predicted 1-sigma along the beam "
                  f"{s_['median_sigma_depth_mm']:.2f} mm", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                    "summary": summary, **extra}, indent=2))
    with args.out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k not in ("zncc", "angles_deg")], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["separation_deg"] if args.sweep else r["views"] for r in summary]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    med = "median " if args.setups > 1 else ""
    ax.plot(ks, [r["median_depth_mm"] for r in summary], "o-", label=f"{med}error along the beam")
    ax.plot(ks, [r["median_inplane_mm"] for r in summary], "s-", label=f"{med}error in plane")
    ax.plot(ks, [r["median_sigma_depth_mm"] for r in summary], "o--", label=f"{med}predicted 1-sigma along the beam")
    if args.setups > 1:
        ax.plot([r["separation_deg"] if args.sweep else r["views"] for r in rows], [r["depth_mm"] for r in rows], ".",
                color="C0", alpha=0.4, label=f"along the beam, each of {args.setups} set-ups")
        ax.set_title(f"{args.frames} frames, {args.drr_model} DRR", fontsize=9)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="known-pose gate (1 mm)")
    ax.set_xlabel("separation of the second view (deg; 0: one view)" if args.sweep else "views")
    ax.set_ylabel("mm (27 targets)")
    ax.set_xticks(ks)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    print(f"wrote {args.out} (.csv, .png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
