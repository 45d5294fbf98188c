"""Is the pose covariance calibrated? Predicted sigmas against the scatter of registrations.

A DRR of the phantom at a known pose plus white Gaussian noise (``--noise`` x the image's
standard deviation) is registered ``--frames`` times (one noise draw each) from the true
pose; the rms error of the results per parameter (camera axes: CT-centre translation in
mm, rotation about the CT centre in degrees) is compared with the sigma that
:func:`diffdrr_ros.core.registration.uncertainty.pose_covariance` predicts from one frame (mean over 3
draws). Ratio rms / predicted near 1: calibrated; above 1: the prediction is optimistic.

    .venv/bin/python bench/bench_covariance.py --size 48 --pitch 8 --noise 0.5 --frames 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffdrr_ros.core.geometry import Detector  # noqa: E402
from diffdrr_ros.core.geometry.rotations import matrix_to_axis_angle  # noqa: E402
from diffdrr_ros.core.registration import Registrar, RegistrationConfig  # noqa: E402
from diffdrr_ros.core.registration.uncertainty import pose_covariance  # noqa: E402
from diffdrr_ros.core.volume.phantoms import PHANTOMS, make_phantom  # noqa: E402

NAMES = ("x mm", "y mm", "z (depth) mm", "rx deg", "ry deg", "rz deg")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phantom", default="head_small", choices=sorted(PHANTOMS))
    p.add_argument("--size", type=int, default=48, help="detector pixels per side")
    p.add_argument("--pitch", type=float, default=8.0, help="pixel pitch, mm")
    p.add_argument("--noise", type=float, default=0.5, help="noise std / image std")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compare", default="line_integral", choices=("line_integral", "intensity"),
                   help="registration and covariance on line integrals (ZNCC) or on intensities")
    p.add_argument("--similarity", default="zncc")
    p.add_argument("--jacobian", default="both", choices=("fd", "analytic", "both"),
                   help="the covariance's Jacobian: central differences, the kernels' analytic one, or both")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "bench_covariance.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import numba

    numba.set_num_threads(args.threads)
    det = Detector(args.size, args.size, spacing_mm=(args.pitch, args.pitch), sdd_mm=1020.0, sid_mm=750.0)
    cfg = RegistrationConfig(pyramid=(1,), init_search=False, max_iterations=300, patience=40, tolerance=1e-9,
                             similarity=args.similarity, compare=args.compare)
    reg = Registrar(make_phantom(args.phantom), det, cfg, device="cpu")
    truth = reg.pose_from_carm([math.radians(5), math.radians(10), 0.0], [3.0, -2.0, 4.0])
    clean = reg.render(truth)

    def noisy(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return clean + args.noise * clean.std() * torch.randn(clean.shape, generator=g, dtype=clean.dtype)

    methods = ("fd", "analytic") if args.jacobian == "both" else (args.jacobian,)
    pred, cov_s = {}, {}
    for method in methods:
        t0 = time.perf_counter()
        pred[method] = torch.stack([pose_covariance(reg, noisy(100 + i), truth, compare=args.compare,
                                                    jacobian=method).cov.diagonal().sqrt() for i in range(3)]).mean(0)
        cov_s[method] = (time.perf_counter() - t0) / 3
    c = reg.center
    pc0 = truth[:3, :3] @ c + truth[:3, 3]
    errors = []
    for k in range(args.frames):
        pose = reg.register(noisy(200 + k).numpy(), truth).pose
        errors.append(torch.cat([pose[:3, :3] @ c + pose[:3, 3] - pc0,
                                 matrix_to_axis_angle(pose[:3, :3] @ truth[:3, :3].T)]))
    err = torch.stack(errors)
    rms = err.pow(2).mean(0).sqrt()
    to_display = torch.tensor([1.0] * 3 + [180 / math.pi] * 3, dtype=torch.float64)
    rows = []
    times = ", ".join(f"{m} {t * 1000:.0f} ms" for m, t in cov_s.items())
    print(f"{args.phantom}, {args.size} px at {args.pitch} mm, noise {args.noise} x image std, {args.frames} frames; "
          f"covariance ({times}); load {os.getloadavg()[0]:.2f}")
    head = " | ".join(f"predicted ({m}) | ratio ({m})" for m in methods)
    print(f"| parameter | rms of registrations | {head} |\n|---|---|" + "---|---|" * len(methods))
    for i, name in enumerate(NAMES):
        row = {"parameter": name, "rms": float(rms[i] * to_display[i])}
        for m in methods:
            row[f"predicted_{m}"] = float(pred[m][i] * to_display[i])
            row[f"ratio_{m}"] = float(rms[i] / pred[m][i])
        rows.append(row)
        cells = " | ".join(f"{row[f'predicted_{m}']:.4f} | {row[f'ratio_{m}']:.2f}" for m in methods)
        print(f"| {name} | {row['rms']:.4f} | {cells} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                    "errors_camera_mm_rad": err.tolist(),
                                    "covariance_ms": {m: t * 1000 for m, t in cov_s.items()}}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
