"""Score a registration run from bags: the CT pose on /tf against the ground truth, frame by frame.

* Estimate: the ``carm_isocenter -> ct`` transform the registration node publishes on /tf
  (metres, REP-103), stamped with the image header.
* Truth: ``geometry_msgs/PoseStamped`` (also accepted: PoseWithCovarianceStamped,
  TransformStamped) on the ground-truth topic, the true pose of the CT frame in
  ``carm_isocenter``, stamped like the image it belongs to.
* Matching is by header stamp. Each ground-truth stamp is one frame; a frame with no TF is a
  failure. mTRE is the mean distance over the CT's 27 target points
  (:func:`diffdrr_ros.core.metrics.target_points`), in mm.
* Latency: bag log time of the TF message minus bag log time of the image message with the
  same header stamp (both are receive times on the recording machine).

Several bags can be scored together (e.g. the simulator's bag and a bag of the node's output).
"""

from __future__ import annotations

import csv
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.metrics.summary import percentile
from .common import TF, BagError, normalize_topic

DEFAULT_GROUND_TRUTH_TOPIC = "/carm_sim/ground_truth"
DEFAULT_IMAGE_TOPIC = "fluoro/image"
DEFAULT_TF_PARENT = "carm_isocenter"
DEFAULT_TF_CHILD = "ct"
DEFAULT_SUCCESS_MM = 2.0

_TF_TYPES = {"tf2_msgs/msg/TFMessage"}
_TRUTH_TYPES = {
    "geometry_msgs/msg/PoseStamped",
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "geometry_msgs/msg/TransformStamped",
}


def header_stamp_ns(data: bytes) -> int:
    """Header stamp (ns) of a CDR message whose first field is std_msgs/Header, read in place.

    Avoids deserializing whole images: the CDR payload starts with a 4-byte encapsulation
    header (byte 1: 0 big endian, 1 little endian), then ``int32 sec, uint32 nanosec``.
    """
    if len(data) < 12:
        raise BagError("message too short to hold a header")
    fmt = "<iI" if data[1] & 1 else ">iI"
    sec, nanosec = struct.unpack_from(fmt, data, 4)
    return sec * 1_000_000_000 + nanosec


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _strip(frame: str) -> str:
    return frame.lstrip("/")


def _truth_matrix(msgtype: str, msg: Any) -> tuple[int, str, Any]:
    from ..ros.conversions import pose_to_matrix, transform_to_matrix

    if msgtype.endswith("PoseWithCovarianceStamped"):
        return _stamp_ns(msg.header.stamp), msg.header.frame_id, pose_to_matrix(msg.pose.pose)
    if msgtype.endswith("PoseStamped"):
        return _stamp_ns(msg.header.stamp), msg.header.frame_id, pose_to_matrix(msg.pose)

    return _stamp_ns(msg.header.stamp), msg.header.frame_id, transform_to_matrix(msg.transform)


def _rotation_deg(a: Any, b: Any) -> float:
    r = (a[:3, :3].T @ b[:3, :3]).numpy()
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(r)) - 1.0) / 2.0))))


def score_records(
    records: Iterable[tuple[str, str, int, bytes]],
    volume: Any = None,
    *,
    points_ct: Any = None,
    ground_truth_topic: str = DEFAULT_GROUND_TRUTH_TOPIC,
    tf_topic: str = TF,
    tf_parent: str = DEFAULT_TF_PARENT,
    tf_child: str = DEFAULT_TF_CHILD,
    image_topic: str | None = DEFAULT_IMAGE_TOPIC,
    success_mm: float = DEFAULT_SUCCESS_MM,
    cameras: Mapping[int, Any] | None = None,
) -> dict[str, Any]:
    """Score ``(topic, msgtype, log_time_ns, cdr_bytes)`` records (from bags, or collected live).

    ``tf_topic`` may also carry the estimate as a pose (PoseStamped, PoseWithCovarianceStamped:
    e.g. the node's ``~/ct_pose``, which also holds the poses the gate kept off /tf).
    ``cameras``: ``T_cam_parent`` (4 x 4, mm) by stamp (ns), e.g. from the joint states; each
    frame then also gets its error in camera axes (``inplane_mm``, ``depth_mm``: along the
    beam), with the camera of the nearest stamp.

    Args:
        volume: the CT (:class:`~diffdrr_ros.core.volume.Volume`); its centre and extent give
            the 27 mTRE targets. Or pass ``points_ct`` (``(P, 3)`` mm, CT frame) instead.
        success_mm: a frame succeeds when its mTRE is below this.

    Returns:
        ``{"summary": {...}, "frames": [...]}``; see :func:`score_bag`.
    """
    import torch
    from rclpy.serialization import deserialize_message

    from ..core.metrics import inplane_depth_error, mean_target_registration_error, target_points
    from .common import message_class

    if points_ct is None:
        if volume is None:
            raise BagError("give the CT volume (or the target points) to compute the mTRE")
        points_ct = target_points(volume.center, volume.extent_mm)
    points_ct = torch.as_tensor(points_ct, dtype=torch.float64)
    gt_topic, tf_topic = normalize_topic(ground_truth_topic), normalize_topic(tf_topic)
    img_topic = normalize_topic(image_topic) if image_topic else None
    parent, child = _strip(tf_parent), _strip(tf_child)

    truth: dict[int, dict[str, Any]] = {}
    estimates: dict[int, tuple[int, Any]] = {}  # stamp -> (log time, matrix) of the first TF
    images: dict[int, int] = {}  # stamp -> log time of the first image
    seen_topics: dict[str, str] = {}
    duplicate_tf = 0
    truth_frames: set[str] = set()
    for topic, msgtype, log_ns, data in records:
        topic = normalize_topic(topic)
        seen_topics.setdefault(topic, msgtype)
        if topic == gt_topic:
            if msgtype not in _TRUTH_TYPES:
                raise BagError(f"ground truth {topic} is {msgtype}; expected one of {sorted(_TRUTH_TYPES)}")
            stamp, frame_id, m = _truth_matrix(msgtype, deserialize_message(bytes(data), message_class(msgtype)))
            truth_frames.add(_strip(frame_id))
            truth.setdefault(stamp, {"log_ns": int(log_ns), "pose": m})
        elif topic == tf_topic and msgtype in _TRUTH_TYPES:  # the estimate as a pose (e.g. the node's ~/ct_pose)
            stamp, frame_id, m = _truth_matrix(msgtype, deserialize_message(bytes(data), message_class(msgtype)))
            if _strip(frame_id) == parent and stamp not in estimates:
                estimates[stamp] = (int(log_ns), m)
        elif topic == tf_topic and msgtype in _TF_TYPES:
            msg = deserialize_message(bytes(data), message_class(msgtype))
            for t in msg.transforms:
                if _strip(t.header.frame_id) == parent and _strip(t.child_frame_id) == child:
                    stamp = _stamp_ns(t.header.stamp)
                    if stamp in estimates:
                        duplicate_tf += 1
                        continue
                    from ..ros.conversions import transform_to_matrix

                    estimates[stamp] = (int(log_ns), transform_to_matrix(t.transform))
        elif img_topic is not None and topic == img_topic:
            try:
                images.setdefault(header_stamp_ns(bytes(data)), int(log_ns))
            except BagError:
                continue
    if not truth:
        raise BagError(f"no ground truth on {gt_topic}; topics seen: {sorted(seen_topics)}")
    if truth_frames - {parent, ""}:
        raise BagError(f"ground truth is in frame(s) {sorted(truth_frames)}, not {parent!r}; "
                       f"pass the matching TF parent")

    frames: list[dict[str, Any]] = []
    stamps = sorted(truth)
    matched = [s for s in stamps if s in estimates]
    mtre: dict[int, float] = {}
    if matched:
        est = torch.stack([estimates[s][1] for s in matched])
        gt = torch.stack([truth[s]["pose"] for s in matched])
        mtre = dict(zip(matched, mean_target_registration_error(est, gt, points_ct).tolist(), strict=True))
    cam_stamps = sorted(cameras) if cameras else []
    for i, s in enumerate(stamps):
        row: dict[str, Any] = {"index": i, "stamp_ns": s, "stamp_s": s / 1e9, "has_tf": s in estimates,
                               "mtre_mm": None, "translation_error_mm": None, "rotation_error_deg": None,
                               "inplane_mm": None, "depth_mm": None, "success": False, "latency_ms": None}
        if s in estimates:
            log_tf, m = estimates[s]
            g = truth[s]["pose"]
            row["mtre_mm"] = float(mtre[s])
            row["translation_error_mm"] = float((m[:3, 3] - g[:3, 3]).norm())
            row["rotation_error_deg"] = _rotation_deg(m, g)
            row["success"] = bool(mtre[s] < success_mm)
            if cam_stamps:
                near = cam_stamps[min(range(len(cam_stamps)), key=lambda j: abs(cam_stamps[j] - s))]
                cam = torch.as_tensor(cameras[near], dtype=torch.float64)
                e = inplane_depth_error(cam @ m, cam @ g, points_ct)
                row["inplane_mm"], row["depth_mm"] = float(e.inplane_mm), float(e.depth_mm)
            if s in images:
                row["latency_ms"] = (log_tf - images[s]) / 1e6
        frames.append(row)

    errors = [f["mtre_mm"] for f in frames if f["mtre_mm"] is not None]
    latencies = [f["latency_ms"] for f in frames if f["latency_ms"] is not None]
    successes = sum(f["success"] for f in frames)
    summary = {
        "frames": len(frames),
        "frames_with_tf": len(matched),
        "frames_without_tf": len(frames) - len(matched),
        "frames_without_tf_stamps_ns": [f["stamp_ns"] for f in frames if not f["has_tf"]],
        "successes": int(successes),
        "success_rate": successes / len(frames),
        "success_threshold_mm": success_mm,
        "mtre_mean_mm": float(np.mean(errors)) if errors else None,
        "mtre_median_mm": percentile(errors, 50),
        "mtre_p95_mm": percentile(errors, 95),
        "mtre_max_mm": max(errors) if errors else None,
        "inplane_median_mm": percentile([f["inplane_mm"] for f in frames if f["inplane_mm"] is not None], 50),
        "depth_median_mm": percentile([f["depth_mm"] for f in frames if f["depth_mm"] is not None], 50),
        "latency_frames": len(latencies),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "latency_mean_ms": float(np.mean(latencies)) if latencies else None,
        "latency_max_ms": max(latencies) if latencies else None,
        "tf_without_ground_truth": len(set(estimates) - set(truth)),
        "duplicate_tf": duplicate_tf,
        "image_topic_present": img_topic in seen_topics if img_topic else False,
        "topics": {"ground_truth": gt_topic, "tf": tf_topic, "image": img_topic,
                   "tf_parent": parent, "tf_child": child},
        "target_points": len(points_ct),
    }
    return {"summary": summary, "frames": frames}


def read_records(paths: Iterable[str | Path], topics: Iterable[str] | None = None):
    """``(topic, msgtype, log_time_ns, bytes)`` from one or more bags (each in log-time order)."""
    from .player import open_reader

    wanted = None if topics is None else {normalize_topic(t) for t in topics}
    for path in paths:
        reader = open_reader(path)
        try:
            conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
            if not conns:
                continue
            for conn, stamp, data in reader.messages(connections=conns):
                yield conn.topic, conn.msgtype, stamp, data
        finally:
            reader.close()


def score_bag(
    path: str | Path | Sequence[str | Path],
    volume: Any = None,
    *,
    points_ct: Any = None,
    ground_truth_topic: str = DEFAULT_GROUND_TRUTH_TOPIC,
    tf_parent: str = DEFAULT_TF_PARENT,
    tf_child: str = DEFAULT_TF_CHILD,
    image_topic: str | None = DEFAULT_IMAGE_TOPIC,
    success_mm: float = DEFAULT_SUCCESS_MM,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score the registration recorded in one bag or several (see the module docstring).

    Returns ``{"summary": ..., "frames": [...], "files": {...}}``. ``summary`` has frames,
    frames_with_tf, frames_without_tf (+ their stamps), successes, success_rate, mTRE mean /
    median / p95 / max (mm, frames with a TF), latency p50 / p95 / mean / max (ms, frames whose
    image is in the bags). Each frame: stamp, has_tf, mtre_mm, translation_error_mm,
    rotation_error_deg, success, latency_ms. With ``out_dir``, score.json, frames.csv and
    score.png are written there and listed in ``files``.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths:
        raise BagError("no bag to score")
    topics = [ground_truth_topic, TF] + ([image_topic] if image_topic else [])
    result = score_records(read_records(paths, topics), volume, points_ct=points_ct,
                           ground_truth_topic=ground_truth_topic, tf_parent=tf_parent, tf_child=tf_child,
                           image_topic=image_topic, success_mm=success_mm)
    result["summary"]["bags"] = [str(p) for p in paths]
    result["files"] = write_report(result, out_dir) if out_dir is not None else {}
    return result


def write_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """score.json, frames.csv and score.png (mTRE per frame, latency histogram) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "score.json", "csv": out / "frames.csv", "plot": out / "score.png"}
    files["json"].write_text(json.dumps({"summary": result["summary"], "frames": result["frames"]}, indent=2))
    with files["csv"].open("w", newline="") as fh:
        fields = ["index", "stamp_ns", "stamp_s", "has_tf", "mtre_mm", "translation_error_mm",
                  "rotation_error_deg", "success", "latency_ms"]
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in result["frames"]:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
    _plot(result, files["plot"])
    return {k: str(v) for k, v in files.items()}


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, frames = result["summary"], result["frames"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    idx = [f["index"] for f in frames if f["mtre_mm"] is not None]
    err = [f["mtre_mm"] for f in frames if f["mtre_mm"] is not None]
    ok = [f["success"] for f in frames if f["mtre_mm"] is not None]
    ax1.plot(idx, err, color="0.6", lw=0.8, zorder=1)
    ax1.scatter(idx, err, c=["tab:green" if o else "tab:red" for o in ok], s=14, zorder=2)
    ax1.axhline(s["success_threshold_mm"], color="tab:orange", ls="--", lw=1,
                label=f"success < {s['success_threshold_mm']:g} mm")
    missing = [f["index"] for f in frames if not f["has_tf"]]
    if missing:
        top = max(err) if err else s["success_threshold_mm"] * 2
        ax1.scatter(missing, [top] * len(missing), marker="x", color="black", s=20, label="no TF (failure)")
    if err and max(err) / max(min(err), 1e-3) > 100:
        ax1.set_yscale("log")
    ax1.set_xlabel("frame")
    ax1.set_ylabel("mTRE (mm)")
    ax1.set_title(f"mTRE per frame: success {s['successes']}/{s['frames']} ({100 * s['success_rate']:.0f} %)")
    ax1.legend(loc="upper right", fontsize=8)
    lat = [f["latency_ms"] for f in frames if f["latency_ms"] is not None]
    if lat:
        ax2.hist(lat, bins=min(30, max(5, len(lat) // 2)), color="tab:blue")
        for q, ls in ((s["latency_p50_ms"], "-"), (s["latency_p95_ms"], "--")):
            ax2.axvline(q, color="black", ls=ls, lw=1)
        ax2.set_title(f"image -> TF latency: p50 {s['latency_p50_ms']:.0f} ms, p95 {s['latency_p95_ms']:.0f} ms")
        ax2.set_xlabel("latency (ms)")
        ax2.set_ylabel("frames")
    else:
        ax2.text(0.5, 0.5, "no latency: image topic not in the bag", ha="center", va="center")
        ax2.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_summary(result: dict[str, Any]) -> str:
    """A few human-readable lines."""
    s = result["summary"]

    def f(v: float | None, unit: str, nd: int = 2) -> str:
        return "n/a" if v is None else f"{v:.{nd}f} {unit}"

    lines = [
        f"frames: {s['frames']}  with TF: {s['frames_with_tf']}  without TF: {s['frames_without_tf']}",
        f"success (mTRE < {s['success_threshold_mm']:g} mm): {s['successes']}/{s['frames']} "
        f"= {100 * s['success_rate']:.1f} %",
        f"mTRE: mean {f(s['mtre_mean_mm'], 'mm')}  median {f(s['mtre_median_mm'], 'mm')}  "
        f"p95 {f(s['mtre_p95_mm'], 'mm')}  max {f(s['mtre_max_mm'], 'mm')}",
        f"latency ({s['latency_frames']} frames): p50 {f(s['latency_p50_ms'], 'ms', 1)}  "
        f"p95 {f(s['latency_p95_ms'], 'ms', 1)}  max {f(s['latency_max_ms'], 'ms', 1)}",
    ]
    if s["frames_without_tf"]:
        shown = ", ".join(f"{t / 1e9:.3f}" for t in s["frames_without_tf_stamps_ns"][:10])
        more = " ..." if s["frames_without_tf"] > 10 else ""
        lines.append(f"frames without TF (stamp, s): {shown}{more}")
    if s["tf_without_ground_truth"]:
        lines.append(f"TF stamps with no ground truth: {s['tf_without_ground_truth']}")
    for k, v in result.get("files", {}).items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)
