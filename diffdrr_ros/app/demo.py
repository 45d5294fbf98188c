"""The README's main job: the whole loop on the built-in phantom, no data to download.

1. prints the environment (ROS distro, rmw, torch device);
2. renders a DRR of the built-in head phantom (``drr.png``);
3. starts the registration node in its own process (real DDS, loopback only);
4. plays a simulated C-arm in real time: X-ray-like 12-bit frames with noise, blur, a
   collimator, scatter, beam hardening and a heel effect (physics the DRR does not model),
   noisy joint states with latency, patient drift and jumps, plus two bad frames (NaN,
   unsupported encoding) on plane A that must be rejected. By default a biplane C-arm (as in
   neuro suites): each plane-A frame has a plane-B frame of the same stamp, 90 deg away, so
   every pair's depth is known; ``planes=1``: one plane, whose early frames' depth is not;
5. scores every transform the node publishes on /tf against the ground truth (mTRE over
   27 targets) and measures frame-to-TF latency;
6. prints a summary and writes overlay PNGs, an animated GIF (a biplane: plane A | plane B) and
   ``summary.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..core.geometry import Detector
from ..core.overlay import save_png, side_by_side
from ..core.sim import Trajectory, XRayStyle
from ..core.volume.phantoms import make_phantom


def _write_gif(path: Path, frames: list[np.ndarray], fps: float = 2.0) -> None:
    from PIL import Image as PILImage

    imgs = [PILImage.fromarray(f) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)


def _with_plane_b(overlay_a, overlays_b: list, to_pixels) -> np.ndarray:
    """Plane A's overlay, with plane B's of the same instant (|stamp difference| < 50 ms) beside it if any."""
    from ..ros.conversions import stamp_to_seconds

    def stamp(m) -> float:
        return stamp_to_seconds(m.header.stamp)

    a = to_pixels(overlay_a)
    near = min(overlays_b, key=lambda b: abs(stamp(b) - stamp(overlay_a)), default=None)
    if near is None or abs(stamp(near) - stamp(overlay_a)) > 0.05:
        return a
    b = to_pixels(near)
    return side_by_side(a, b) if b.shape[0] == a.shape[0] else a


# Plane B's camera seen from plane A's (x y z m, roll pitch yaw rad): a lateral plane 90 deg from a frontal one,
# the node's default biplane.cam_b_from_cam_a, set explicitly so that the simulator and the node agree.
CAM_B_FROM_A = [0.0, 0.0, 0.0, 0.0, 1.5707963267948966, 0.0]


def run_demo(out_dir: Path, n_frames: int = 16, period_s: float = 1.0, phantom: str = "head",
             device: str = "auto", planes: int = 2) -> int:
    """``planes=2``: a biplane C-arm (neuro suites), each frame paired with plane B's (same stamp); 1: one plane."""
    if planes not in (1, 2):
        raise ValueError(f"planes must be 1 or 2, got {planes}")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # before any ROS context starts
    os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 101))
    from ..core.drr import render
    from ..core.geometry.kinematics import cam_from_iso, default_prior, initial_pose, iso_from_ct
    from ..core.metrics import inplane_depth_error, mean_target_registration_error, percentile, target_points
    from ..ros.carm_simulator import Simulator
    from ..ros.conversions import (
        JointNames,
        array_to_image,
        image_to_array,
        image_to_pixels,
        joints_from_message,
        pose_to_matrix,
        transform_to_matrix,
        xyz_rpy_to_matrix,
    )
    from ..ros.harness import GraphClient, NodeProcess
    from .environment import environment_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    print("== environment")
    env = environment_report()
    for k, v in env.items():
        print(f"{k:>16}: {v}")

    det = Detector(128, 128, spacing_mm=(3.125, 3.125), sdd_mm=1020.0, sid_mm=750.0)
    volume = make_phantom(phantom)
    # Frames with the physics a DRR leaves out (scatter, beam hardening, heel effect), not
    # the renderer's own images: see docs/results.md, "Beyond the inverse crime".
    # The C-arm swings +-40 deg LAO (16 s period). One plane: from the second or third frame on, the
    # node registers each frame jointly with recent ones from other angles (depth from several views);
    # a frame without such views (the first; near the turning points; after a jump) has an unresolved
    # depth and goes to ~/ct_pose only, not to /tf. Biplane: plane B turns with plane A.
    sim = Simulator(volume, det, trajectory=Trajectory(lao_amplitude_deg=40.0, cranial_amplitude_deg=10.0,
                                                       period_s=16.0), style=XRayStyle.mismatched(), t_start=1000.0)
    _, cam_ct = sim.truth(1000.0)
    with torch.no_grad():
        drr = render(sim.mu, cam_ct, det)
    save_png(out_dir / "drr.png", side_by_side(drr.numpy()))
    print(f"== DRR of the built-in phantom '{phantom}' {volume.shape} -> {out_dir / 'drr.png'}")

    mode = "biplane" if planes == 2 else "single-plane"
    params = {"ct_path": f"phantom:{phantom}", "device": device, "image.i0": sim.style.i0,
              "image.detector_blur_px": sim.style.blur_sigma_px}
    sim_b = None
    if planes == 2:  # plane B: the same patient and physics, 90 deg from plane A, its own noise
        sim_b = sim.plane_b(xyz_rpy_to_matrix(CAM_B_FROM_A[:3], CAM_B_FROM_A[3:]))
        params.update({"biplane.enabled": True, "biplane.cam_b_from_cam_a": CAM_B_FROM_A})
    print(f"== registration node (separate process), simulated {mode} C-arm: {n_frames} frames at "
          f"{1 / period_s:g} Hz" + (" per plane, plane B 90 deg from plane A" if sim_b else ""))
    node = NodeProcess(params, out_dir / "node.log")
    client = GraphClient()
    pub_b = None
    if sim_b is not None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        pub_b = client.node.create_publisher(Image, "fluoro_b/image",
                                             QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    overlays_b: list = []  # plane B's ~/overlay_b, shown beside plane A's
    if sim_b is not None:
        client.node.create_subscription(Image, f"{client.node_name}/overlay_b", overlays_b.append, 5)
    targets = target_points(volume.center, volume.extent_mm)
    prior = default_prior(volume.center)  # the node's default prior (CT centre on the isocentre)
    sent: list[dict] = []
    try:
        if not client.wait_for_node(node) or (pub_b is not None and not client.spin_until(
                lambda: pub_b.get_subscription_count() > 0 or not node.alive(), 30.0)):
            print(node.log())
            print("the registration node did not start; see", out_dir / "node.log")
            return 1
        bad_at = {n_frames // 3: "nan", 2 * n_frames // 3: "encoding"}
        for k in range(n_frames):
            t = 1000.0 + k * period_s
            for j in range(5):  # the C-arm controller publishes faster than the frame rate
                joint_msg = sim.joints(t - (4 - j) * 0.05)
                client.joint_pub.publish(joint_msg)
            # What the joints alone would say (CT assumed where the prior puts it): the baseline.
            kin = iso_from_ct(initial_pose(joints_from_message(joint_msg, JointNames()), prior),
                              joints_from_message(joint_msg, JointNames()))
            if pub_b is not None:  # plane B's frame of the same instant, first: the node pairs when A arrives
                pub_b.publish(sim_b.frame(t)[0])
            image, _, _ = sim.frame(t)
            kind = bad_at.get(k, "good")
            if kind == "nan":
                raw = image_to_array(image).astype(np.float32)
                raw[40:60, 40:60] = np.nan
                image = array_to_image(raw, "32FC1", image.header.stamp, image.header.frame_id)
            elif kind == "encoding":
                image.encoding = "yuv422"
            client.image_pub.publish(image)
            truth, truth_cam = sim.truth(t)
            sent.append({"frame": k, "stamp": t, "kind": kind, "published_at": time.monotonic(), "truth": truth,
                         "truth_cam": truth_cam, "cam_from_iso": cam_from_iso(sim.trajectory.joints(t - 1000.0)),
                         "joints_only_mtre_mm": float(mean_target_registration_error(kin, truth, targets))})
            client.spin_for(period_s)
        # Let the node finish what it is working on.
        last_good = max(s["stamp"] for s in sent if s["kind"] == "good")
        # (on /tf when its pose is known, else on ~/ct_pose only: held back)
        client.spin_until(lambda: client.tf_received(last_good) is not None or client.pose_for(last_good) is not None,
                          60.0)
        client.spin_for(1.0)
    finally:
        rc = node.stop()
        client.close()

    per_frame = {}  # the node's per-frame diagnostics by stamp: views registered jointly, biplane pair or not
    for d in client.diags:
        for st in d.status:
            kv = {v.key: v.value for v in st.values}
            if "stamp" in kv:
                per_frame[round(float(kv["stamp"]), 3)] = kv
    rows = []
    for s in sent:
        hit = client.tf_received(s["stamp"])
        row = {"frame": s["frame"], "kind": s["kind"], "tf": hit is not None,
               "held_back": hit is None and client.pose_for(s["stamp"]) is not None,
               "joints_only_mtre_mm": s["joints_only_mtre_mm"]}
        info = per_frame.get(round(s["stamp"], 3))
        if info is not None:
            row["views"], row["biplane_pair"] = int(info["views"]), info["biplane_pair"] == "True"
        held = client.pose_for(s["stamp"]) if hit is None else None
        if held is not None:  # held back: how far off the pose whose depth the node did not trust was
            est = pose_to_matrix(held.pose.pose)
            row["held_back_mtre_mm"] = float(mean_target_registration_error(est, s["truth"], targets))
            row["held_back_depth_mm"] = float(inplane_depth_error(s["cam_from_iso"] @ est, s["truth_cam"],
                                                                  targets).depth_mm)
        if hit is not None:
            t_rx, tr = hit
            est = transform_to_matrix(tr.transform)
            row["latency_s"] = t_rx - s["published_at"]
            row["mtre_mm"] = float(mean_target_registration_error(est, s["truth"], targets))
            err = inplane_depth_error(s["cam_from_iso"] @ est, s["truth_cam"], targets)
            row["inplane_mm"], row["depth_mm"] = float(err.inplane_mm), float(err.depth_mm)
        rows.append(row)
    good = [r for r in rows if r["kind"] == "good"]
    bad = [r for r in rows if r["kind"] != "good"]
    registered = [r for r in good if r["tf"]]
    held_back = [r for r in good if r["held_back"]]
    mtre = [r["mtre_mm"] for r in registered]
    lat = [r["latency_s"] for r in registered]
    diag = {kv.key: kv.value for d in client.diags for s in d.status for kv in s.values}
    summary = {
        "environment": env, "mode": mode, "planes": planes,
        "frames_sent": len(rows), "good_frames": len(good), "bad_frames": len(bad),
        "bad_frames_with_tf": sum(r["tf"] for r in bad),
        "frames_registered": len(registered),
        "frames_held_back_depth_unresolved": len(held_back),
        "held_back_mtre_median_mm": percentile([r["held_back_mtre_mm"] for r in held_back], 50),
        "held_back_mtre_max_mm": max((r["held_back_mtre_mm"] for r in held_back), default=None),
        "inplane_median_mm": percentile([r["inplane_mm"] for r in registered], 50),
        "depth_median_mm": percentile([r["depth_mm"] for r in registered], 50),
        "frames_replaced_while_busy": int(diag.get("frames_replaced_while_busy", 0)),
        "frames_registered_as_biplane_pair": sum(bool(r.get("biplane_pair")) for r in good),
        "biplane_unpaired": int(diag.get("biplane_unpaired", 0)),
        "success_rate_of_registered": sum(m < 2.0 for m in mtre) / max(len(mtre), 1),
        "mtre_median_mm": statistics.median(mtre) if mtre else None,
        "mtre_max_mm": max(mtre) if mtre else None,
        "joints_only_mtre_median_mm": statistics.median(r["joints_only_mtre_mm"] for r in good),
        "latency_p50_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
        "device": diag.get("device", "?"), "node_exit_code": rc, "rows": rows,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    overlays = [_with_plane_b(o, overlays_b, image_to_pixels) for o in client.overlays]
    if overlays:
        picks = sorted({0, len(overlays) // 2, len(overlays) - 1})
        for i in picks:
            save_png(out_dir / f"overlay_{i:02d}.png", overlays[i])
        _write_gif(out_dir / "overlays.gif", overlays)

    print(f"== summary ({mode}" + (", each plane A frame paired with plane B's by stamp)" if sim_b else ")"))
    print(f"frames sent {len(rows)} ({len(good)} good, {len(bad)} bad); good frames published on /tf: "
          f"{len(registered)}; held back from /tf (depth not resolved: one angle, or views too old for the "
          f"patient's drift; on ~/ct_pose with their covariance): {len(held_back)}; the other "
          f"{len(good) - len(registered) - len(held_back)} replaced by newer frames while the node was busy")
    if sim_b is not None:
        print(f"good frames registered as a biplane pair: {summary['frames_registered_as_biplane_pair']}; "
              f"unpaired (plane A alone): {summary['biplane_unpaired']}")
    if held_back:
        print(f"held-back poses (on ~/ct_pose only): mTRE median {summary['held_back_mtre_median_mm']:.2f} mm, "
              f"max {summary['held_back_mtre_max_mm']:.2f} mm")
    print(f"bad frames rejected without a TF: {len(bad) - summary['bad_frames_with_tf']}/{len(bad)}")
    if mtre:
        print(f"mTRE median {summary['mtre_median_mm']:.2f} mm, max {summary['mtre_max_mm']:.2f} mm; "
              f"success (< 2 mm) {100 * summary['success_rate_of_registered']:.0f} % of registered frames; "
              f"the joints alone: median {summary['joints_only_mtre_median_mm']:.2f} mm")
        print(f"error in camera axes, median: in plane {summary['inplane_median_mm']:.2f} mm, along the beam "
              f"{summary['depth_median_mm']:.2f} mm")
    if summary["latency_p50_s"] is not None:
        print(f"frame-to-TF latency p50 {summary['latency_p50_s'] * 1000:.0f} ms, "
              f"p95 {summary['latency_p95_s'] * 1000:.0f} ms on {summary['device']}")
    print(f"wrote {out_dir}/summary.json, drr.png, overlay_*.png, overlays.gif, node.log")
    # The node ran: it registered frames (on /tf, or held back while the depth was unresolved), bad ones got no TF.
    ok = bool(registered or held_back) and summary["bad_frames_with_tf"] == 0 and rc == 0
    return 0 if ok else 3
