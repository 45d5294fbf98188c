"""The first frame (wide search, then the pyramid): Adam throughout, an LM polish of the finest level, more candidates.

Side by side on the same frames (a benchmark, not a test; the variants interleaved frame by frame, so that
a changing load hits them alike; ``cpu_s``, the process's CPU time, is the less load-dependent cost): ``--n``
set-ups of the head phantom
(rotation +-0.1 rad about each C-arm angle, translation +-15 mm, from the start the joints
give), each simulated with physics the DRR leaves out (scatter, beam hardening, heel effect,
blur, noise; ``XRayStyle.mismatched``), registered with the node's first-frame settings
(GNCC on intensities, pyramid (2, 1), the 24 px search) by each variant. Prints and writes
time, mTRE, in-plane and along-beam error per run (single view: the depth is the uncertain part).

    .venv/bin/python bench/bench_first_frame.py --n 6 --out bench/out/first_frame.json
    .venv/bin/python bench/bench_first_frame.py --n 24 --variants "adam + lm polish, 4 candidates" \
        "smoothed lm polish, 4 candidates"   # issue 12: before / after
    .venv/bin/python bench/bench_first_frame.py --planes 2 --n 24 --variants "pair, 4 candidates" \
        "pair, init_keep_joint 2" "pair, init_keep_joint 2, coarse on plane A"   # a biplane pair
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffdrr_ros.core.drr import render  # noqa: E402
from diffdrr_ros.core.geometry import Detector  # noqa: E402
from diffdrr_ros.core.geometry.rotations import make_transform, rpy_to_matrix  # noqa: E402
from diffdrr_ros.core.metrics import inplane_depth_error  # noqa: E402
from diffdrr_ros.core.registration import Registrar, RegistrationConfig, View, prepare_fixed  # noqa: E402
from diffdrr_ros.core.sim import XRayStyle  # noqa: E402
from diffdrr_ros.core.sim.xray import collimator_mask, simulate_xray  # noqa: E402
from diffdrr_ros.core.volume.phantoms import make_phantom  # noqa: E402

#: The pipeline before issue 12's first-frame work: all coarse iterations, the LM polish unsmoothed.
BEFORE = {"polish_smoothing_px": (), "polish_coarse_iterations": None}
#: name -> RegistrationConfig fields (beside the node's first-frame settings)
VARIANTS = {
    "adam": {"polish_optimizer": None, "init_keep": 2},
    "adam + lm polish": {"polish_optimizer": "lm", "init_keep": 2, **BEFORE},
    "adam + lm polish, 4 candidates": {"polish_optimizer": "lm", "init_keep": 4, **BEFORE},
    # today's defaults: x2 capped at polish_coarse_iterations (30), the polish first on images smoothed by 2 px
    "smoothed lm polish, 4 candidates": {"polish_optimizer": "lm", "init_keep": 4},
    "smoothed lm polish, 4 candidates, 50 coarse": {"polish_optimizer": "lm", "init_keep": 4,
                                                    "polish_coarse_iterations": 50},
    "smoothed lm polish, 2 candidates": {"polish_optimizer": "lm", "init_keep": 2},
    # --planes 2 (a biplane pair): the node's default carries init_keep_joint = 2 when more than one view
    "pair, 4 candidates": {"polish_optimizer": "lm", "init_keep": 4},
    "pair, init_keep_joint 2": {"polish_optimizer": "lm", "init_keep": 4, "init_keep_joint": 2},
    "pair, init_keep_joint 2, coarse on plane A": {"polish_optimizer": "lm", "init_keep": 4, "init_keep_joint": 2,
                                                   "coarse_views": "reference"},
}
#: A biplane's plane B (``--planes 2``): 90 deg about the camera's y axis from plane A, same panel (the demo's).
CAM_B_FROM_A = make_transform(rpy_to_matrix(0.0, math.pi / 2, 0.0), torch.zeros(3, dtype=torch.float64))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spread", type=float, default=1.0, help="set-ups within spread x (+-0.1 rad, +-15 mm)")
    ap.add_argument("--planes", type=int, choices=(1, 2), default=1, help="2: a biplane pair (plane B 90 deg)")
    ap.add_argument("--double-blur", action="store_true",
                    help="the frames as before session 7: the DRR's blur and the detector's (0.85 px vs 0.6 modelled)")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None, help="default: all")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "first_frame.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    det = Detector(128, 128, spacing_mm=(3.125, 3.125), sdd_mm=1020.0, sid_mm=750.0)
    style = XRayStyle.mismatched()
    vol = make_phantom("head")
    mask = collimator_mask(128, 128, style.collimator_radius)
    rng = np.random.default_rng(1)
    a, t = 0.1 * args.spread, 15.0 * args.spread
    cases = [([0.1 + rng.uniform(-a, a), 0.3 + rng.uniform(-a, a), rng.uniform(-a, a)],
              [rng.uniform(-t, t), rng.uniform(-t, t), rng.uniform(-t, t)]) for _ in range(args.n)]
    rows = []
    names = [n for n in VARIANTS if not args.variants or n in args.variants]
    regs = {}
    for name in names:
        cfg = RegistrationConfig(similarity="gncc", compare="intensity", pyramid=(2, 1), lr_rotation=0.02,
                                 lr_translation=2.0, drr_blur_sigma_px=style.blur_sigma_px, **VARIANTS[name])
        regs[name] = Registrar(vol, det, cfg, device="cpu")
    ref = regs[names[0]]
    init = ref.pose_from_carm([0.1, 0.3, 0.0], [0.0, 0.0, 0.0])
    loads = []

    def line_integrals(pose):  # the frames' DRR: no blur of its own (simulate_xray blurs once, as the detector)
        if args.double_blur:  # before session 7: the registrar's blurred DRR, blurred again by simulate_xray
            return ref.render(pose[None])[0]
        return render(ref.levels[-1].volume, pose, det)

    for k, (angles, trans) in enumerate(tqdm(cases, unit="frame")):
        truth = ref.pose_from_carm(angles, trans)
        fixed = prepare_fixed(simulate_xray(line_integrals(truth), style, torch.Generator().manual_seed(k)),
                              log_transform=True, i0=style.i0)
        views = []
        if args.planes == 2:  # plane B's frame of the same instant, its own noise
            frame_b = simulate_xray(line_integrals(CAM_B_FROM_A @ truth), style,
                                    torch.Generator().manual_seed(1000 + k))
            views = [View(prepare_fixed(frame_b, log_transform=True, i0=style.i0), CAM_B_FROM_A, mask)]
        for name in names:  # interleaved: the same load for every variant
            reg = regs[name]
            c0 = time.process_time()
            r = reg.register(fixed, init, mask=mask, truth=truth, views=views)
            cpu = time.process_time() - c0
            e = inplane_depth_error(r.pose, truth, reg.targets)
            rows.append({"variant": name, "case": k, "time_s": r.wall_time_s, "cpu_s": cpu, "mtre_mm": r.mtre_mm,
                         "inplane_mm": float(e.inplane_mm), "depth_mm": float(e.depth_mm), "zncc": r.zncc,
                         "verdict": r.verdict, "stages": r.stages, "runner_up_mm": r.runner_up_mm,
                         "runner_up_gap": r.runner_up_gap})
        loads.append(os.getloadavg()[0])
    print(f"head phantom, 128 px, {args.planes} plane(s), {args.n} set-ups (spread {args.spread:g}), "
          f"{args.threads} threads, "
          f"load {min(loads):.2f}-{max(loads):.2f}")
    print("| variant | time p50 / p95 (range) | CPU time p50 / p95 | mTRE median (max) | < 2 mm | in plane median "
          "| along the beam median |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = [x for x in rows if x["variant"] == name]
        t = [x["time_s"] for x in r]

        def med(key, r=r):
            return statistics.median(x[key] for x in r)

        def p95(key, r=r):
            return float(np.percentile([x[key] for x in r], 95))

        ok = sum(x["mtre_mm"] < 2 for x in r)
        worst = max(x["mtre_mm"] for x in r)
        print(f"| {name} | {med('time_s'):.2f} / {p95('time_s'):.2f} s ({min(t):.2f}-{max(t):.2f}) | "
              f"{med('cpu_s'):.2f} / {p95('cpu_s'):.2f} s | {med('mtre_mm'):.2f} mm ({worst:.2f}) "
              f"| {ok}/{len(r)} | {med('inplane_mm'):.2f} mm | {med('depth_mm'):.2f} mm |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
