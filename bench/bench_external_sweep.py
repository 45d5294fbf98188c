"""A C-arm sweep rendered by another project's physics, replayed through the node over DDS (issue #11).

Issue #11's acceptance target: *on frames with physics the DRR leaves out, 0 poses >= 2 mm on
TF over a whole sweep in the node test over DDS; single-view frames never on TF unless the
parameter allows it*. This measures it on frames of ``bench/external_projector.py`` (SpekPy
spectrum and heel effect, xraydb attenuation of four ICRP tissues, DiffDRR's Siddon line
integrals, a scatter kernel, compound Poisson noise, blur, 12 bits; see its docstring), not
on the package's own simulator:

1. **Sweep.** The simulated C-arm of ``diffdrr_ros/ros/carm_simulator.py``
   (:class:`Simulator`: the :class:`Trajectory` joint model, patient set-up error, drift and
   jumps, noisy delayed joint states) with the demo's motion (``diffdrr_ros/app/demo.py``:
   LAO +-40 deg, cranial +-10 deg, 16 s period), the head phantom (or ``--ct``), 128 x 128 px
   of 3.125 mm, SDD 1020, SID 750. ``Simulator.truth(t)`` gives ``(T_iso_ct, T_cam_ct)`` per
   frame; ``--planes 2`` adds plane B 90 deg away (``Simulator.plane_b`` with the node's
   default ``biplane.cam_b_from_cam_a``, as the demo), same stamp, its own noise.
2. **Frames.** Each ``T_cam_ct`` is rendered by :class:`external_projector.ExternalProjector`
   (it needs SpekPy / xraydb / DiffDRR: the benchmark venv; this script calls
   ``.venv-bench/bin/python bench/bench_external_sweep.py render`` when the running interpreter
   lacks them). The projector's ``i0`` (mean open-field counts in the collimator) is what the
   node is told (``image.i0``).
3. **Bag.** The message stream of :func:`simulate_messages` (``diffdrr-ros sim --bag``): joint
   states at ``--joint-rate`` (20 Hz) on ``/carm/joint_states``, per frame the ground truth on
   ``/carm_sim/ground_truth`` (PoseStamped, ``carm_isocenter``), ``/tf`` ``ct_ground_truth``
   and the frame on ``/fluoro/image`` (mono16), plane B's on ``/fluoro_b/image`` (logged
   0.1 ms before A's), written with rosbags (``diffdrr_ros.bag.record_messages``).
4. **Replay.** ``diffdrr-ros replay BAG --out DIR --every-frame -p image.i0:=I0
   -p image.detector_blur_px:=0.7 [...]`` (a fresh node, its own ROS domain, DDS on loopback;
   ``bag/replay.py``): per frame on_tf / held_back / rejected and mTRE, in plane, along the beam.
5. **Report.** From ``DIR/replay.json`` and the node's recorded outputs (``DIR/outputs``:
   ``/diagnostics`` per frame: views, biplane pair, predicted 1-sigma target errors;
   ``~/ct_pose`` covariance): counts, TF and held-back errors, count >= 2 mm on TF, single-view
   frames on TF, and for every TF pose >= 2 mm its stamp, views, sigmas and the node log lines
   around it. Writes ``docs/data/external_sweep/<name>.json``, ``.csv``, ``.png`` and
   ``<name>_node.log``; the bag and the run directory stay under ``bench/out/external_sweep``.

Runs (from the runtime venv; ROS on loopback, domain 81-89)::

    .venv/bin/python bench/bench_external_sweep.py --frames 24 --planes 1 --name single_mono --domain-id 83
    .venv/bin/python bench/bench_external_sweep.py --frames 16 --planes 2 --name biplane_mono --domain-id 84
    .venv/bin/python bench/bench_external_sweep.py --frames 24 --planes 1 --name single_poly --domain-id 85 \\
        -p registration.drr_model:=poly
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

WORK = ROOT / "bench" / "out" / "external_sweep"
DATA = ROOT / "docs" / "data" / "external_sweep"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
T0 = 1000.0  # clock time of the sweep's start (s), as simulate_messages
#: plane B's camera from plane A's (x y z m, roll pitch yaw rad): the node's default, set explicitly (demo.py)
CAM_B_FROM_A = [0.0, 0.0, 0.0, 0.0, 1.5707963267948966, 0.0]
NODE = "diffdrr_registration"


def detector():
    from diffdrr_ros.core.geometry import Detector

    return Detector(128, 128, spacing_mm=(3.125, 3.125), sdd_mm=1020.0, sid_mm=750.0)


def load_volume(ct: str | None):
    from diffdrr_ros.core.volume import ct_source, open_ct

    return open_ct(ct_source(ct, "head"))


# --------------------------------------------------------------------------- frames (benchmark venv)


def cmd_render(args: argparse.Namespace) -> int:
    """Render the poses of ``--poses`` (npz: ``cam_ct`` (P, N, 4, 4) mm) with the external projector."""
    from external_projector import ExternalProjector, geometry_check

    data = np.load(args.poses)
    cam_ct = torch.from_numpy(data["cam_ct"]).to(torch.float64)  # (planes, frames, 4, 4)
    vol = load_volume(args.ct)
    det = detector()
    t = time.perf_counter()
    proj = ExternalProjector(vol, det)
    print(f"external projector ready in {time.perf_counter() - t:.1f} s (mean energy "
          f"{proj.mean_energy_kev():.1f} keV)", flush=True)
    check = geometry_check(vol, det, cam_ct[0, 0], proj.rays)
    frames = np.zeros((*cam_ct.shape[:2], det.height, det.width), dtype=np.uint16)
    spr, i0 = [], None
    t = time.perf_counter()
    for p in range(cam_ct.shape[0]):
        for k in range(cam_ct.shape[1]):
            fr = proj.frame(cam_ct[p, k], rng=np.random.default_rng([args.seed, p, k]))
            frames[p, k] = fr.frame.astype(np.uint16)
            m = proj.shadow(fr.primary, fr.open_field)
            spr.append(float(fr.scatter[m].mean() / fr.primary[m].mean()))
            i0 = fr.i0  # the same for every frame (a property of the tube and detector)
    print(f"rendered {frames.shape[0] * frames.shape[1]} frames in {time.perf_counter() - t:.1f} s; I0 {i0:.1f}; "
          f"geometry check rel. RMS {check['rel_rms']:.2e}", flush=True)
    meta = {"i0": i0, "i0_center": proj.style.i0_counts, "mean_energy_kev": proj.mean_energy_kev(),
            "scatter_to_primary_measured": {"median": statistics.median(spr), "min": min(spr), "max": max(spr)},
            "geometry_check": check, "style": {k: (list(v) if isinstance(v, tuple) else v)
                                               for k, v in vars(proj.style).items()}}
    np.savez_compressed(args.out, frames=frames, meta=json.dumps(meta))
    return 0


def render_frames(poses: Path, out: Path, ct: str | None, seed: int) -> None:
    cmd = [__file__, "render", "--poses", str(poses), "--out", str(out), "--seed", str(seed)]
    cmd += ["--ct", ct] if ct else []
    try:
        import diffdrr  # noqa: F401
        import spekpy  # noqa: F401
        import xraydb  # noqa: F401

        python = sys.executable
    except ImportError:  # the runtime venv: the projector's packages live in the benchmark venv
        python = str(BENCH_PYTHON)
    print("+", python, " ".join(cmd), flush=True)
    subprocess.run([python, *cmd], check=True, cwd=ROOT)


# --------------------------------------------------------------------------- the sweep and its bag (runtime venv)


def make_simulators(args: argparse.Namespace):
    from diffdrr_ros.core.sim import Trajectory
    from diffdrr_ros.ros.carm_simulator import Simulator
    from diffdrr_ros.ros.conversions import xyz_rpy_to_matrix

    traj = Trajectory(lao_amplitude_deg=args.lao_amplitude, cranial_amplitude_deg=args.cranial_amplitude,
                      period_s=args.period, seed=args.seed)
    sim = Simulator(load_volume(args.ct), detector(), trajectory=traj, seed=args.seed, t_start=T0)
    sims = [sim]
    if args.planes == 2:
        sims.append(sim.plane_b(xyz_rpy_to_matrix(CAM_B_FROM_A[:3], CAM_B_FROM_A[3:])))
    return sims


def frame_times(n: int, rate: float) -> list[float]:
    return [T0 + (k + 0.5) / rate for k in range(n)]  # as simulate_messages


def write_bag(bag: Path, sims: list, frames: np.ndarray, args: argparse.Namespace) -> dict[str, int]:
    """:func:`simulate_messages`'s stream with the external frames (``frames[plane, k]``) as the simulators' pixels."""
    from dataclasses import replace

    from diffdrr_ros.bag import record_messages
    from diffdrr_ros.ros.carm_simulator import simulate_messages

    index = {round(t, 6): k for k, t in enumerate(frame_times(args.frames, args.rate))}
    planes = [replace(s, pixels=lambda t, p=p: frames[p, index[round(t, 6)]]) for p, s in enumerate(sims)]
    stream = simulate_messages(planes[0], args.frames, frame_rate_hz=args.rate, joint_rate_hz=args.joint_rate,
                               t0=T0, plane_b=planes[1] if len(planes) == 2 else None)
    return record_messages(bag, stream)


# --------------------------------------------------------------------------- what the node said


def node_outputs(run_dir: Path) -> tuple[dict[float, dict[str, str]], dict[float, dict[str, Any]], dict[float, float]]:
    """From ``run_dir/outputs``: per frame stamp the node's diagnostics values (when it finished it),
    the ``~/ct_pose`` covariance's sigmas, and the node-clock time (s) it finished the frame."""
    from rclpy.serialization import deserialize_message

    from diffdrr_ros.bag.common import message_class
    from diffdrr_ros.bag.scoring import read_records

    diags: dict[float, dict[str, str]] = {}
    done_at: dict[float, float] = {}
    cov: dict[float, dict[str, Any]] = {}
    for topic, msgtype, _, data in read_records([run_dir / "outputs"], ["/diagnostics", f"/{NODE}/ct_pose"]):
        msg = deserialize_message(bytes(data), message_class(msgtype))
        if topic == "/diagnostics":
            for st in msg.status:
                if st.name != "diffdrr_ros: registration":
                    continue
                v = {kv.key: kv.value for kv in st.values}
                last = v.get("last_frame_stamp", "")
                if not last:
                    continue
                key = round(float(last), 6)
                if key not in diags:
                    v["_message"] = st.message
                    diags[key] = v
                    done_at[key] = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        else:
            c = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
            key = round(msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec, 6)
            d = np.sqrt(np.clip(np.diag(c), 0.0, None))
            cov[key] = {"cov_sigma_xyz_iso_mm": [float(x) * 1e3 for x in d[:3]],
                        "cov_sigma_rot_deg": [math.degrees(float(x)) for x in d[3:]],
                        "covariance_zero": bool(not c.any())}
    return diags, cov, done_at


def log_lines_between(log: Path, start: float, end: float) -> list[str]:
    """Node log lines stamped (node wall clock) in ``[start, end]``."""
    out = []
    pat = re.compile(r"^\[\w+\] \[(\d+\.\d+)\]")
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        m = pat.match(line)
        if m and start <= float(m.group(1)) <= end:
            out.append(line)
    return out


def _num(v: str | None) -> float | None:
    try:
        return None if v in (None, "", "none") else float(v)
    except ValueError:
        return None


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _ratios(rows: list[dict[str, Any]], err: str, sigma: str) -> dict[str, float | None]:
    xs = [r[err] / r[sigma] for r in rows if r[err] is not None and r[sigma]]
    return {"median": _median(xs), "max": max(xs, default=None), "n": len(xs)}


def analyse(run_dir: Path, sims: list, args: argparse.Namespace, meta: dict[str, Any], commands: list[str],
            wall: dict[str, float]) -> dict[str, Any]:
    report = json.loads((run_dir / "replay.json").read_text())
    diags, cov, done_at = node_outputs(run_dir)
    traj = sims[0].trajectory
    rows = []
    for f in report.get("frames", []):
        key = round(f["stamp_s"], 6)
        d = diags.get(key, {})
        same = d.get("stamp") is not None and round(float(d["stamp"]), 6) == key  # the values are this frame's
        j = traj.joints(f["stamp_s"] - T0)
        row = {
            "index": f["index"], "stamp_s": round(f["stamp_s"], 6), "category": f["category"],
            "lao_deg": round(math.degrees(j.lao_rad), 2), "cranial_deg": round(math.degrees(j.cranial_rad), 2),
            "views": int(d["views"]) if same and "views" in d else None,
            "biplane_pair": (d.get("biplane_pair") == "True") if same else None,
            "mode": d.get("mode") if same else None,
            "view_spread_deg": _num(d.get("view_spread_deg")) if same else None,
            "mtre_mm": f.get("mtre_mm"), "inplane_mm": f.get("inplane_mm"), "depth_mm": f.get("depth_mm"),
            "sigma_inplane_mm": _num(d.get("sigma_inplane_mm")) if same else None,
            "sigma_depth_mm": _num(d.get("sigma_depth_mm")) if same else None,
            "sigma_rotation_deg": _num(d.get("sigma_rotation_deg")) if same else None,
            "similarity": _num(d.get("similarity")) if same else None,
            "view_zncc": d.get("view_zncc") if same else None,
            "runner_up_mm": _num(d.get("runner_up_mm")) if same else None,
            "patient_drift_mm_per_s": d.get("patient_drift_mm_per_s") if same else None,
            "window_views": int(d["window_views"]) if "window_views" in d else None,
            "window_resets": int(d["window_resets"]) if "window_resets" in d else None,
            "register_ms": f.get("register_ms"), "node_latency_ms": f.get("node_latency_ms"),
            "verdict": f.get("verdict"),
            **cov.get(key, {}),
        }
        rows.append(row)

    def stats(cat: str) -> dict[str, Any]:
        sel = [r for r in rows if r["category"] == cat and r["mtre_mm"] is not None]
        out: dict[str, Any] = {"n": sum(r["category"] == cat for r in rows), "n_scored": len(sel)}
        for k in ("mtre_mm", "inplane_mm", "depth_mm"):
            xs = [r[k] for r in sel if r[k] is not None]
            out[f"{k.removesuffix('_mm')}_median_mm"] = _median(xs)
            out[f"{k.removesuffix('_mm')}_max_mm"] = max(xs, default=None)
        out["at_or_above_2mm"] = sum(r["mtre_mm"] >= 2.0 for r in sel)
        return out

    tf_rows = [r for r in rows if r["category"] == "on_tf"]
    single = [r for r in rows if r["views"] == 1 and not r["biplane_pair"]]
    bad = [r for r in tf_rows if r["mtre_mm"] is not None and r["mtre_mm"] >= 2.0]
    done_sorted = sorted(done_at.items(), key=lambda kv: kv[1])
    findings = []
    for r in bad:  # the key finding: everything the node said about a >= 2 mm pose it put on TF
        key = r["stamp_s"]
        end = done_at.get(key)
        prev = max((t for s, t in done_sorted if end is not None and t < end), default=None)
        # the node logs a frame's verdict before its diagnostics say it is done: after the previous frame's "done"
        lines = log_lines_between(run_dir / "node.log", (prev if prev is not None else (end or 0) - 10) + 1e-6,
                                  (end or 0) + 0.05) if end is not None else []
        findings.append({**r, "node_log": lines})
    summary = {
        "frames": len(rows), **{c: sum(r["category"] == c for r in rows)
                                for c in ("on_tf", "held_back", "rejected", "not_processed")},
        "on_tf_stats": stats("on_tf"), "held_back_stats": stats("held_back"),
        "on_tf_at_or_above_2mm": len(bad),
        "single_view_frames": len(single),
        "single_view_frames_on_tf": sum(r["category"] == "on_tf" for r in single),
        "views_per_frame": [r["views"] for r in rows],
        "biplane_pairs": sum(bool(r["biplane_pair"]) for r in rows),
        "registered_mtre_median_mm": _median([r["mtre_mm"] for r in rows if r["mtre_mm"] is not None]),
        # the errors against the node's own prediction (scored error / predicted 1-sigma, every registered pose)
        "depth_error_over_sigma": _ratios(rows, "depth_mm", "sigma_depth_mm"),
        "inplane_error_over_sigma": _ratios(rows, "inplane_mm", "sigma_inplane_mm"),
        "node_register_p50_ms": report.get("summary", {}).get("register_p50_ms"),
        "node_exit_code": report.get("node", {}).get("exit_code"),
    }
    return {
        "what": "external-physics C-arm sweep (bench/external_projector.py frames) replayed through the node "
                "(diffdrr-ros replay --every-frame, DDS on loopback); issue #11's acceptance target",
        "name": args.name, "planes": args.planes, "frames_requested": args.frames, "rate_hz": args.rate,
        "joint_rate_hz": args.joint_rate, "ct": args.ct or "phantom:head",
        "detector": {"size": [128, 128], "pitch_mm": [3.125, 3.125], "sdd_mm": 1020.0, "sid_mm": 750.0},
        "trajectory": {k: getattr(sims[0].trajectory, k) for k in vars(sims[0].trajectory)},
        "cam_b_from_cam_a": CAM_B_FROM_A if args.planes == 2 else None,
        "node_params": report.get("run", {}).get("params"), "projector": meta,
        "commands": commands, "wall_s": wall, "summary": summary,
        "tf_poses_at_or_above_2mm": findings, "replay_summary": report.get("summary"), "frames": rows,
    }


def write_outputs(result: dict[str, Any], run_dir: Path) -> list[Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    name = result["name"]
    paths = [DATA / f"{name}.json", DATA / f"{name}.csv", DATA / f"{name}.png", DATA / f"{name}_node.log"]
    paths[0].write_text(json.dumps(result, indent=2))
    fields = ["index", "stamp_s", "category", "lao_deg", "cranial_deg", "views", "biplane_pair", "mode",
              "view_spread_deg", "mtre_mm", "inplane_mm", "depth_mm", "sigma_inplane_mm", "sigma_depth_mm",
              "sigma_rotation_deg", "similarity", "runner_up_mm", "patient_drift_mm_per_s", "window_views",
              "window_resets", "register_ms", "verdict"]
    with paths[1].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in result["frames"]:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in fields})
    plot(result, paths[2])
    if (run_dir / "node.log").exists():
        shutil.copyfile(run_dir / "node.log", paths[3])
    return paths


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"on_tf": "tab:green", "held_back": "tab:orange", "rejected": "tab:red", "not_processed": "0.6"}
    rows = result["frames"]
    t = [r["stamp_s"] - T0 for r in rows]
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for key, marker, label in (("mtre_mm", "o", "mTRE"), ("inplane_mm", "^", "in plane"),
                               ("depth_mm", "v", "along the beam")):
        pts = [(x, r[key], colours[r["category"]]) for x, r in zip(t, rows, strict=True) if r[key] is not None]
        a1.scatter([p[0] for p in pts], [p[1] for p in pts], c=[p[2] for p in pts], marker=marker, s=22, label=label)
    a1.axhline(2.0, color="k", ls="--", lw=0.8)
    a1.set_ylabel("error (mm)")
    a1.legend(fontsize=8)
    s = result["summary"]
    a1.set_title(f"{result['name']}: {s['on_tf']} on TF (green), {s['held_back']} held back (orange), "
                 f"{s['rejected']} rejected (red); {s['on_tf_at_or_above_2mm']} on TF >= 2 mm", fontsize=9)
    for key, marker in (("sigma_inplane_mm", "^"), ("sigma_depth_mm", "v")):
        pts = [(x, r[key], colours[r["category"]]) for x, r in zip(t, rows, strict=True) if r[key] is not None]
        a2.scatter([p[0] for p in pts], [p[1] for p in pts], c=[p[2] for p in pts], marker=marker, s=22,
                   label=key.replace("_mm", "").replace("_", " "))
    a2.axhline(1.0, color="k", ls="--", lw=0.8)
    a2.set_yscale("log")
    a2.set_ylabel("predicted 1-sigma (mm)")
    a2.legend(fontsize=8)
    a3.plot(t, [r["lao_deg"] for r in rows], "-", color="tab:blue", label="LAO (deg)")
    a3.plot(t, [r["cranial_deg"] for r in rows], "-", color="tab:purple", label="cranial (deg)")
    a3b = a3.twinx()
    a3b.step(t, [r["views"] or 0 for r in rows], where="mid", color="k", label="views")
    a3b.set_ylabel("views")
    a3.set_xlabel("sweep time (s)")
    a3.set_ylabel("deg")
    a3.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def print_tables(result: dict[str, Any]) -> None:
    s = result["summary"]
    print(f"== {result['name']}: {s['frames']} frames, {result['planes']} plane(s)")
    print(f"on TF {s['on_tf']}, held back {s['held_back']}, rejected {s['rejected']}, not processed "
          f"{s['not_processed']}; on TF >= 2 mm: {s['on_tf_at_or_above_2mm']}; single-view frames "
          f"{s['single_view_frames']}, of them on TF {s['single_view_frames_on_tf']}")
    print("| | n | mTRE median | mTRE max | in plane median | in plane max | depth median | depth max | >= 2 mm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cat in ("on_tf", "held_back"):
        x = s[f"{cat}_stats"]
        print(f"| {cat} | {x['n']} | {_fmt(x['mtre_median_mm'])} | {_fmt(x['mtre_max_mm'])} | "
              f"{_fmt(x['inplane_median_mm'])} | {_fmt(x['inplane_max_mm'])} | {_fmt(x['depth_median_mm'])} | "
              f"{_fmt(x['depth_max_mm'])} | {x['at_or_above_2mm']} |")
    print("views per frame:", s["views_per_frame"])
    for r in result["frames"]:
        print(f"  {r['index']:2d} t={r['stamp_s'] - T0:5.1f} LAO {r['lao_deg']:6.1f} {r['category']:9s} "
              f"views {r['views']} mTRE {_fmt(r['mtre_mm'])} inpl {_fmt(r['inplane_mm'])} depth {_fmt(r['depth_mm'])}"
              f" sig_in {_fmt(r['sigma_inplane_mm'])} sig_d {_fmt(r['sigma_depth_mm'])}")
    for f in result["tf_poses_at_or_above_2mm"]:
        print(f"!! on TF at {f['mtre_mm']:.2f} mm: stamp {f['stamp_s']}, views {f['views']}, sigma in plane "
              f"{f['sigma_inplane_mm']}, depth {f['sigma_depth_mm']}")
        for line in f["node_log"]:
            print("   ", line)


def cmd_run(args: argparse.Namespace) -> int:
    name = args.name or f"{'biplane' if args.planes == 2 else 'single'}_{args.frames}"
    args.name = name
    work = WORK / name
    if args.analyse_only:  # the report again from a finished run (its bag, frames and replay directory)
        old = json.loads((DATA / f"{name}.json").read_text())
        data = np.load(work / "frames.npz")
        result = analyse(work / "replay", make_simulators(args), args, json.loads(str(data["meta"])),
                         old["commands"], old["wall_s"])
        result["bag_counts"], result["replay_exit_code"] = old.get("bag_counts"), old.get("replay_exit_code")
        paths = write_outputs(result, work / "replay")
        print_tables(result)
        print("wrote", ", ".join(str(p.relative_to(ROOT)) for p in paths))
        return 0
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    wall: dict[str, float] = {}
    commands = [" ".join([Path(sys.executable).relative_to(ROOT).as_posix() if sys.executable.startswith(str(ROOT))
                          else sys.executable, "bench/bench_external_sweep.py", *sys.argv[1:]])]
    sims = make_simulators(args)
    times = frame_times(args.frames, args.rate)
    cam_ct = np.stack([np.stack([s.truth(t)[1].numpy() for t in times]) for s in sims])
    np.savez(work / "poses.npz", cam_ct=cam_ct, stamps=np.asarray(times))
    t = time.perf_counter()
    render_frames(work / "poses.npz", work / "frames.npz", args.ct, args.seed)
    wall["render_s"] = time.perf_counter() - t
    data = np.load(work / "frames.npz")
    frames, meta = data["frames"], json.loads(str(data["meta"]))
    bag = work / "bag"
    counts = write_bag(bag, sims, frames, args)
    print(f"wrote {bag}: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())), flush=True)

    params = {"image.i0": round(meta["i0"], 3), "image.detector_blur_px": 0.7}
    if args.ct:
        params["ct_path"] = args.ct
    if args.planes == 2:
        params["biplane.enabled"] = "true"
        params["biplane.cam_b_from_cam_a"] = "[" + ", ".join(repr(v) for v in CAM_B_FROM_A) + "]"
    cli = [str(Path(sys.executable).parent / "diffdrr-ros"), "replay", str(bag), "--out", str(work / "replay"),
           "--every-frame", "--domain-id", str(args.domain_id), "--no-progress"]
    for k, v in params.items():
        cli += ["-p", f"{k}:={v}"]
    for item in args.param or []:
        cli += ["-p", item]
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(args.domain_id))
    env.pop("ROS_LOCALHOST_ONLY", None)
    shown = shlex.join(c if not c.startswith(str(ROOT)) else os.path.relpath(c, ROOT) for c in cli)
    commands.append(f"ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID={args.domain_id} {shown}")
    print("+", commands[-1], flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cli, cwd=ROOT, env=env, text=True, capture_output=True)
    wall["replay_s"] = time.perf_counter() - t
    print(proc.stdout[-4000:], proc.stderr[-4000:], flush=True)
    if not (work / "replay" / "replay.json").exists():
        print(f"replay failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    result = analyse(work / "replay", sims, args, meta, commands, wall)
    result["bag_counts"] = counts
    result["replay_exit_code"] = proc.returncode
    paths = write_outputs(result, work / "replay")
    print_tables(result)
    print("wrote", ", ".join(str(p.relative_to(ROOT)) for p in paths))
    return 0 if proc.returncode == 0 else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render"]:
        p = argparse.ArgumentParser(prog="bench_external_sweep.py render")
        p.add_argument("--poses", type=Path, required=True)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--ct", default=None)
        p.add_argument("--seed", type=int, default=0)
        return cmd_render(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--rate", type=float, default=1.0, help="frames per second (default 1, as the demo)")
    p.add_argument("--joint-rate", type=float, default=20.0)
    p.add_argument("--planes", type=int, choices=(1, 2), default=1)
    p.add_argument("--ct", default=None, help="CT file / DICOM directory in HU instead of the head phantom")
    p.add_argument("--lao-amplitude", type=float, default=40.0, help="deg (demo.py's sweep)")
    p.add_argument("--cranial-amplitude", type=float, default=10.0, help="deg")
    p.add_argument("--period", type=float, default=16.0, help="s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain-id", type=int, default=83, help="ROS domain of the replay (81-89 on this machine)")
    p.add_argument("--name", default=None, help="output name under docs/data/external_sweep/")
    p.add_argument("-p", dest="param", action="append", metavar="NAME:=VALUE", help="extra node parameter")
    p.add_argument("--analyse-only", action="store_true",
                   help="rewrite the report of a finished run --name (same sweep options) without running it again")
    return cmd_run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
