"""Tracking frames in the core, per device and detector size: the node's tracking registration and covariance.

Issue 12's GPU targets are "tracking p50 <= 30 ms at 128 px and <= 100 ms at 512 px". The node cannot run on
the lent GPU machine (no ROS 2 there, nothing to install from), so this measures the same calls the node makes
for a tracking frame, without DDS: :meth:`Registrar.register` with the node's tracking settings (GNCC on
intensities, Levenberg-Marquardt at full resolution, detector blur) from the previous frame's pose, then
:func:`pose_covariance` (central differences, the node's default, and the analytic Jacobian). Frames: the
head phantom (or ``--ct``) moving 0.5 mm and 0.3 deg per frame, simulated with physics the DRR leaves out
(``XRayStyle.mismatched``); the first frame starts 1 mm / 0.5 deg off. A benchmark, not a test: CPU and CUDA
side by side in one run (same frames), p50 / p95 of the wall time (CUDA synchronised), LM steps, mTRE, in
plane and along the beam separately.

    .venv/bin/python bench/bench_gpu_tracking.py --devices cpu --sizes 128 --frames 8          # here
    python3 bench/bench_gpu_tracking.py --devices cpu cuda --sizes 128 512 --out $OUT/tracking  # on a GPU
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffdrr_ros.core.drr import render  # noqa: E402
from diffdrr_ros.core.geometry import Detector  # noqa: E402
from diffdrr_ros.core.metrics import inplane_depth_error  # noqa: E402
from diffdrr_ros.core.registration import Registrar, RegistrationConfig, pose_covariance, prepare_fixed  # noqa: E402
from diffdrr_ros.core.sim import XRayStyle  # noqa: E402
from diffdrr_ros.core.sim.xray import collimator_mask, simulate_xray  # noqa: E402
from diffdrr_ros.core.volume.phantoms import make_phantom  # noqa: E402

PANEL_MM = 400.0  # the detector's side; the pitch follows the size


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _volume(ct: str | None):
    if ct is None:
        return make_phantom("head")
    from diffdrr_ros.core.volume import load_volume

    return load_volume(ct)


def run(device: str, size: int, frames: int, ct: str | None) -> list[dict]:
    """One device and size: ``frames`` tracking frames; a row per frame."""
    # The same physical blur at every size (the mismatched style's sigma is in 128 px pixels).
    style = XRayStyle.mismatched(blur_sigma_px=XRayStyle.mismatched().blur_sigma_px * size / 128)
    det = Detector(size, size, spacing_mm=(PANEL_MM / size,) * 2, sdd_mm=1020.0, sid_mm=750.0)
    cfg = RegistrationConfig(similarity="gncc", compare="intensity", optimizer="lm", pyramid=(1,),
                             init_search=False, drr_blur_sigma_px=style.blur_sigma_px)
    reg = Registrar(_volume(ct), det, cfg, device=device)
    mask = collimator_mask(size, size, style.collimator_radius)
    truth = [reg.pose_from_carm([0.1, 0.3 + 0.005 * k, 0.0], [0.5 * k, -0.3 * k, 0.2 * k]) for k in range(frames + 1)]
    volume = reg.levels[-1].volume  # the frames: line integrals without the DRR's blur; simulate_xray blurs once
    fixed = [prepare_fixed(simulate_xray(render(volume, p.to(reg.device), det).cpu(), style,
                                         torch.Generator().manual_seed(k)), log_transform=True, i0=style.i0)
             for k, p in enumerate(truth)]
    start = reg.pose_from_carm([0.1 + 0.009, 0.3 - 0.009, 0.005], [1.0, -0.6, 0.4])
    reg.register(fixed[0], start, mask=mask)  # warm-up (kernels compiled, pyramids built); not counted
    rows, steps = [], None
    prev = reg.register(fixed[0], start, mask=mask).pose
    for k in tqdm(range(1, frames + 1), desc=f"{device} {size} px", unit="frame"):
        _sync(device)
        t0 = time.perf_counter()
        res = reg.register(fixed[k], prev, mask=mask)
        _sync(device)
        t1 = time.perf_counter()
        cov = pose_covariance(reg, fixed[k], res.pose, mask, steps=steps, compare=cfg.compare,
                              scale_uncertainty=0.003)
        _sync(device)
        t2 = time.perf_counter()
        pose_covariance(reg, fixed[k], res.pose, mask, compare=cfg.compare, scale_uncertainty=0.003,
                        jacobian="analytic")
        _sync(device)
        t3 = time.perf_counter()
        steps = cov.steps  # the node reuses the last frame's steps: one batch of 13 DRRs
        e = inplane_depth_error(res.pose, truth[k], reg.targets)
        rows.append({"device": device, "size": size, "frame": k, "register_ms": 1000 * (t1 - t0),
                     "covariance_fd_ms": 1000 * (t2 - t1), "covariance_analytic_ms": 1000 * (t3 - t2),
                     "iterations": res.iterations, "reason": res.stop_reason, "mtre_mm": float(reg.mtre(res.pose,
                     truth[k])), "inplane_mm": float(e.inplane_mm), "depth_mm": float(e.depth_mm)})
        prev = res.pose
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 512])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--ct", default=None, help="CT file instead of the head phantom")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu_tracking")
    args = ap.parse_args(argv)
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    missing = [d for d in args.devices if d.startswith("cuda") and not torch.cuda.is_available()]
    if missing:
        print(f"no CUDA device here: {', '.join(missing)} left out")
    args.devices = [d for d in args.devices if d not in missing]
    rows = []
    for size in args.sizes:
        for device in args.devices:
            rows += run(device, size, args.frames, args.ct)
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(f"{env}")
    print("| device | size | register p50 / p95 | covariance fd p50 | analytic p50 | LM steps p50 | mTRE median "
          "| in plane / along the beam median |")
    print("|---|---|---|---|---|---|---|---|")
    summary = []
    for size in args.sizes:
        for device in args.devices:
            r = [x for x in rows if x["device"] == device and x["size"] == size]
            reg_ms = [x["register_ms"] for x in r]
            s = {"device": device, "size": size, "register_p50_ms": statistics.median(reg_ms),
                 "register_p95_ms": float(np.percentile(reg_ms, 95)),
                 "covariance_fd_p50_ms": statistics.median(x["covariance_fd_ms"] for x in r),
                 "covariance_analytic_p50_ms": statistics.median(x["covariance_analytic_ms"] for x in r),
                 "iterations_p50": statistics.median(x["iterations"] for x in r),
                 "mtre_median_mm": statistics.median(x["mtre_mm"] for x in r),
                 "inplane_median_mm": statistics.median(x["inplane_mm"] for x in r),
                 "depth_median_mm": statistics.median(x["depth_mm"] for x in r)}
            summary.append(s)
            print(f"| {device} | {size} | {s['register_p50_ms']:.1f} / {s['register_p95_ms']:.1f} ms | "
                  f"{s['covariance_fd_p50_ms']:.1f} ms | {s['covariance_analytic_p50_ms']:.1f} ms | "
                  f"{s['iterations_p50']:g} | {s['mtre_median_mm']:.2f} mm | {s['inplane_median_mm']:.2f} / "
                  f"{s['depth_median_mm']:.2f} mm |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"environment": env, "args": {k: str(v) for k, v in
                                                       vars(args).items()}, "summary": summary}, indent=1))
    with (args.out / "frames.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out / 'summary.json'}, frames.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
