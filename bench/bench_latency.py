"""Frame-in to TF-out latency of the registration node (a benchmark, not a test).

Starts the node in its own process (default config: built-in head phantom, 128x128
detector), feeds it frames of the simulated C-arm one at a time over DDS (loopback), and
measures, for each frame, the time from publishing the image to receiving its transform on
/tf. The first frame is a full registration from the joint-state pose; the rest track.

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=77 \
        .venv/bin/python bench/bench_latency.py --frames 20 --out bench/results/latency_cpu.json

Prints p50/p95 for the first frame and for tracking, success (mTRE < 2 mm) and the device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # before rclpy starts a context
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 101))

from tqdm import tqdm

from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.metrics import mean_target_registration_error, percentile, target_points
from diffdrr_ros.core.sim import XRayStyle
from diffdrr_ros.core.volume.phantoms import make_phantom
from diffdrr_ros.ros.carm_simulator import Simulator
from diffdrr_ros.ros.conversions import pose_to_matrix, transform_to_matrix
from diffdrr_ros.ros.harness import GraphClient, NodeProcess

#: The node's frame-to-TF breakdown (diagnostics values, ms) collected per frame.
BREAKDOWN = ("wait_ms", "decode_ms", "register_ms", "covariance_ms", "latency_ms", "iterations")


def _frame_diag(arrays, stamp: float) -> dict[str, str] | None:
    """The registration's values of the frame stamped ``stamp`` (s) from the diagnostics, or None."""
    for d in arrays:
        for st in d.status:
            values = {kv.key: kv.value for kv in st.values}
            if "register_ms" in values and abs(float(values.get("stamp", "nan")) - stamp) < 1e-5:
                return {k: values[k] for k in BREAKDOWN if k in values} | {"verdict": st.message}
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--period", type=float, default=0.5, help="simulated time between frames, s")
    ap.add_argument("--phantom", default="head")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--timeout", type=float, default=60.0, help="per frame, s")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="PARAM=VALUE",
                    help="extra node parameter, e.g. registration.similarity=zncc (repeatable)")
    ap.add_argument("--physics", choices=("xray", "mismatched"), default="xray",
                    help="simulated frames: noise/blur/collimator, or also scatter, beam hardening, heel effect")
    args = ap.parse_args()

    det = Detector(128, 128, spacing_mm=(3.125, 3.125), sdd_mm=1020.0, sid_mm=750.0)
    volume = make_phantom(args.phantom)
    style = XRayStyle() if args.physics == "xray" else XRayStyle.mismatched()
    sim = Simulator(volume, det, style=style, t_start=1000.0)
    targets = target_points(volume.center, volume.extent_mm)
    log = Path(tempfile.mkdtemp()) / "node.log"
    params = {"ct_path": f"phantom:{args.phantom}", "device": args.device, "image.i0": sim.style.i0,
              "image.detector_blur_px": sim.style.blur_sigma_px}
    params.update(kv.split("=", 1) for kv in args.overrides)
    node = NodeProcess(params, log)
    client = GraphClient()
    rows = []
    try:
        if not client.wait_for_node(node):
            print(node.log(), file=sys.stderr)
            return 1
        for k in tqdm(range(args.frames), desc="frames", unit="frame"):
            t = 1000.0 + k * args.period
            image, _truth, _ = sim.frame(t)
            client.joint_pub.publish(sim.joints(t))
            client.spin_for(0.05)
            t_pub = time.monotonic()
            client.image_pub.publish(image)
            n_diag = len(client.diags)
            done = client.spin_until(lambda t=t: client.tf_received(t) is not None or client.pose_for(t) is not None,
                                     args.timeout)
            t_decided = time.monotonic()
            client.spin_until(lambda n=n_diag, t=t: _frame_diag(client.diags[n:], t) is not None, 2.0)
            hit = client.tf_received(t)
            ok = hit is not None
            row = {"frame": k, "mode": "full" if k == 0 else "tracking", "published": ok, "decided": done}
            row.update(_frame_diag(client.diags[n_diag:], t) or {})
            if done:  # frame to TF, or to the decision (~/ct_pose) when the gate held it back
                row["latency_s"] = (hit[0] if ok else t_decided) - t_pub
            held = None if ok else client.pose_for(t)  # a pose the gate kept off TF, on ~/ct_pose
            if ok or held is not None:
                iso_ct, _ = sim.truth(t)
                est = transform_to_matrix(hit[1].transform) if ok else pose_to_matrix(held.pose.pose)
                row["mtre_mm"] = float(mean_target_registration_error(est, iso_ct, targets))
            rows.append(row)
    finally:
        node.stop()
        client.close()
    device = next((kv.value for d in client.diags for s in d.status for kv in s.values if kv.key == "device"), "?")
    summary = {"device": device, "frames": args.frames, "physics": args.physics, "overrides": args.overrides,
               "load_average": os.getloadavg(), "rows": rows}
    for mode in ("full", "tracking"):
        lat = [r["latency_s"] for r in rows if r["mode"] == mode and r["decided"]]
        mtre = [r["mtre_mm"] for r in rows if r["mode"] == mode and "mtre_mm" in r]  # on TF or held back
        n = sum(r["mode"] == mode for r in rows)
        summary[mode] = {
            "frames": n, "decided": len(lat), "published": sum(r["published"] for r in rows if r["mode"] == mode),
            "latency_p50_s": percentile(lat, 50) if lat else math.nan,
            "latency_p95_s": percentile(lat, 95) if lat else math.nan,
            "mtre_median_mm": statistics.median(mtre) if mtre else float("nan"),
            "success_rate": sum(m < 2.0 for m in mtre) / max(n, 1),
        }
        for key in BREAKDOWN:
            vals = [float(r[key]) for r in rows if r["mode"] == mode and key in r]
            summary[mode][f"{key}_p50"] = percentile(vals, 50) if vals else math.nan
        s = summary[mode]
        parts = ", ".join(f"{k.removesuffix('_ms')} {s[k + '_p50']:.0f}" for k in BREAKDOWN)
        print(f"{mode:>8}: {s['published']}/{s['frames']} on TF ({s['decided']} decided), "
              f"latency p50 {s['latency_p50_s'] * 1000:.0f} ms p95 {s['latency_p95_s'] * 1000:.0f} ms, "
              f"median mTRE {s['mtre_median_mm']:.2f} mm, success {100 * s['success_rate']:.0f} % "
              f"(device {device}); node p50: {parts}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
