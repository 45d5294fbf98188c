"""``diffdrr-ros replay``: a recorded case through the registration node, scored; and two runs compared.

One command for what would take three shells: start the node (its own process, its own ROS
domain, DDS on loopback), record what it publishes (``/tf``, ``~/ct_pose``, ``/diagnostics``,
and the image topic as replayed, for the latency) into ``OUT/outputs``, play the case's input
topics (images, joints, camera info), stop everything, and report per frame what came of it:

* ``on_tf`` (published: a known pose), ``held_back`` (registered, on ``~/ct_pose`` only: its
  depth is not resolved), ``rejected`` (the node's reason), or ``not_processed`` (replaced in
  the latest-wins slot by a newer frame while the node was busy: real-time mode only);
* with ground truth in the bag: mTRE, and the error in camera axes (in plane and along the
  beam, the camera from the bag's joint states), latency (image to TF).

Real time (the default) is what a C-arm does to the node; ``every_frame`` plays each image
only when the node has finished the one before (it waits for the node's diagnostics to report
the frame's stamp), so that two runs on any machine register the same frames in the same order.

Writes ``replay.json`` (summary, per-frame rows, run settings), ``frames.csv``, ``replay.png``
(error and latency over the case's time) and ``node.log`` under ``OUT``. :func:`compare` sets two
such runs side by side with an exit code for CI.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.metrics.summary import percentile
from .common import BagError, normalize_topic
from .scoring import DEFAULT_GROUND_TRUTH_TOPIC, header_stamp_ns, read_records, score_records

NODE_NAME = "diffdrr_registration"
#: The node's input topics (its parameters, with their defaults): what a replay plays from the case.
INPUT_TOPICS = {"topics.image": "fluoro/image", "topics.joint_states": "carm/joint_states",
                "topics.camera_info": "fluoro/camera_info", "topics.image_b": "fluoro_b/image"}
CATEGORIES = ("on_tf", "held_back", "rejected", "not_processed")


def _node_param(name: str, params: Mapping[str, Any], params_file: Path | None, default: Any) -> Any:
    """A node parameter as the node will see it: ``-p`` overrides, then the parameter file, then the default."""
    if name in params:
        return params[name]
    if params_file is not None and Path(params_file).exists():
        import yaml

        data = yaml.safe_load(Path(params_file).read_text()) or {}
        for section in data.values():
            values = (section or {}).get("ros__parameters", {})
            if name in values:
                return values[name]
    return default


class _Listener:
    """The replay's own rclpy context: the node's diagnostics (frame done, verdicts), spun in a thread."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        self.ctx = rclpy.Context()
        rclpy.init(args=[], context=self.ctx)  # not sys.argv: a CLI "-p name:=value" is no ROS remap
        self.node = rclpy.create_node(f"diffdrr_replay_{os.getpid()}", context=self.ctx)
        self.done: dict[float, dict[str, Any]] = {}  # frame stamp (s) -> its first "done" status
        self.heard = threading.Event()
        self._cond = threading.Condition()
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 100)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_diag(self, msg: Any) -> None:
        self.heard.set()
        for st in msg.status:
            values = {kv.key: kv.value for kv in st.values}
            stamp = values.get("last_frame_stamp", "")
            if not stamp:
                continue
            key = round(float(stamp), 6)
            with self._cond:
                if key not in self.done:
                    self.done[key] = {"level": int.from_bytes(st.level, "little") if isinstance(st.level, bytes)
                                      else int(st.level), "message": st.message, "values": values}
                    self._cond.notify_all()

    def wait_done(self, stamp_s: float, timeout: float, alive) -> bool:
        key = round(stamp_s, 6)
        end = time.monotonic() + timeout
        with self._cond:
            while key not in self.done:
                left = end - time.monotonic()
                if left <= 0 or not alive():
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def subscribers(self, topic: str) -> int:
        return self.node.count_subscribers(topic)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)


def replay(
    bag: str | Path,
    out_dir: str | Path,
    *,
    params: Mapping[str, Any] | None = None,
    params_file: Path | None = None,
    every_frame: bool = False,
    rate: float = 1.0,
    ground_truth_topic: str = DEFAULT_GROUND_TRUTH_TOPIC,
    frame_timeout_s: float = 120.0,
    startup_timeout_s: float = 90.0,
    domain_id: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Replay ``bag`` through a fresh registration node and score the run (see the module docstring).

    ``params`` (``-p name:=value``) and ``params_file`` (default ``config/registration.yaml``)
    configure the node. Returns the report also written to ``OUT/replay.json``; its
    ``"node"`` entry says whether the node started (``started``, ``exit_code``, ``reason``).
    """
    from ..ros.harness import REPO, NodeProcess
    from .player import Pacer, open_reader, play

    params = dict(params or {})
    params_file = REPO / "config" / "registration.yaml" if params_file is None else Path(params_file)
    bag = Path(bag).resolve()  # the node and the recorder run from the repository, not from here
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    outputs = out / "outputs"
    if outputs.exists():
        raise BagError(f"{outputs} exists: give a new --out directory")
    reader = open_reader(bag)
    try:
        in_bag = {c.topic: c.msgtype for c in reader.connections}
        image_topic = normalize_topic(str(_node_param("topics.image", params, params_file, "fluoro/image")))
        images = [header_stamp_ns(bytes(d)) / 1e9 for c, _, d in reader.messages(
            connections=[c for c in reader.connections if c.topic == image_topic])]
    finally:
        reader.close()
    inputs = [normalize_topic(str(_node_param(name, params, params_file, default)))
              for name, default in INPUT_TOPICS.items()]
    inputs = [t for t in inputs if t in in_bag]
    if image_topic not in in_bag:
        raise BagError(f"no images on {image_topic} in {bag}; it has {sorted(in_bag)}")

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # before any rclpy context of this process
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    os.environ["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else 101 + os.getpid() % 100)
    run = {"bag": str(bag), "every_frame": every_frame, "rate": rate, "params": params, "params_file": str(params_file),
           "domain_id": int(os.environ["ROS_DOMAIN_ID"]), "images": len(images)}
    node = NodeProcess(params, out / "node.log", params_file=params_file)
    listener = _Listener()
    recorder = None
    try:
        up = _wait(lambda: listener.heard.is_set() or not node.alive(), startup_timeout_s) and node.alive()
        if not up:
            rc = node.stop()
            reason = next((ln for ln in node.log(tail=100_000).splitlines() if "[FATAL]" in ln),
                          "no diagnostics from the node within the start-up timeout")
            report = {"run": run, "node": {"started": False, "exit_code": rc, "reason": reason.strip()}}
            (out / "replay.json").write_text(json.dumps(report, indent=2))
            return report
        recorder = subprocess.Popen(
            [sys.executable, "-m", "diffdrr_ros.app.cli", "bag", "record", str(outputs), "--topics", "/tf",
             f"/{NODE_NAME}/ct_pose", "/diagnostics", image_topic, "--no-progress", "--discovery-timeout", "30"],
            env=dict(os.environ), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # The recorder is ready when it subscribes to what the node publishes (the listener is one of two).
        _wait(lambda: listener.subscribers("/diagnostics") >= 2 and listener.subscribers("/tf") >= 1, 30.0)
        late: list[float] = []

        def wait_for_node(topic: str, data: bytes) -> None:
            stamp = header_stamp_ns(data) / 1e9
            if not listener.wait_done(stamp, frame_timeout_s, node.alive):
                late.append(stamp)

        pacer = Pacer(frozenset({image_topic}), wait_for_node) if every_frame else None
        played = play(bag, rate=rate, topics=inputs, wait_for_subscribers=30.0, progress=progress, pacer=pacer)
        if images:  # real time: the last frame is the one the node works on last
            listener.wait_done(images[-1], frame_timeout_s, node.alive)
        time.sleep(1.0)  # the outputs of the last frame reach the recorder
    finally:
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            rec_log = recorder.communicate(timeout=30)[0]
        rc = node.stop()
        listener.close()
    if recorder is not None and recorder.returncode != 0:
        raise BagError(f"recording the node's outputs failed: {rec_log[-2000:]}")
    report = {"run": run, "node": {"started": True, "exit_code": rc, "played": played["published"],
                                   "frames_not_finished_in_time": late}}
    report.update(_score(bag, outputs, images, listener.done, params, params_file, ground_truth_topic, image_topic))
    report["files"] = _write(report, out)
    (out / "replay.json").write_text(json.dumps(report, indent=2))
    return report


def _wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def _score(bag, outputs: Path, images: list[float], done: Mapping[float, dict], params, params_file,
           ground_truth_topic: str, image_topic: str) -> dict[str, Any]:
    """Per-frame verdicts (the diagnostics), latency (the outputs) and, with ground truth, the errors."""
    from ..core.volume import open_ct

    tf_log, pose_stamps, image_log = _outputs(outputs, image_topic)
    frames: list[dict[str, Any]] = []
    for i, stamp in enumerate(images):
        key = round(stamp, 6)
        d = done.get(key)
        if key in tf_log:
            category = "on_tf"
        elif key in pose_stamps:
            category = "held_back"
        elif d is not None:
            category = "rejected"
        else:
            category = "not_processed"
        latency = (tf_log[key] - image_log[key]) / 1e6 if key in tf_log and key in image_log else None
        frames.append({"index": i, "stamp_s": stamp, "category": category,
                       "verdict": "replaced by a newer frame while the node was busy" if d is None else d["message"],
                       "similarity": None if d is None else d["values"].get("similarity"),
                       "sigma_depth_mm": None if d is None else d["values"].get("sigma_depth_mm"),
                       "latency_ms": latency,
                       # the node's own clock: arrival to TF or to the decision, and its two big parts
                       **{k: None if d is None else _float(d["values"].get(v))
                          for k, v in (("node_latency_ms", "latency_ms"), ("register_ms", "register_ms"),
                                       ("covariance_ms", "covariance_ms"))}})
    summary: dict[str, Any] = {"frames": len(frames)}
    summary.update({c: sum(f["category"] == c for f in frames) for c in CATEGORIES})
    lat = [f["latency_ms"] for f in frames if f["latency_ms"] is not None]
    summary["latency_p50_ms"], summary["latency_p95_ms"] = percentile(lat, 50), percentile(lat, 95)
    for key in ("node_latency_ms", "register_ms", "covariance_ms"):
        summary[f"{key.removesuffix('_ms')}_p50_ms"] = percentile([f[key] for f in frames if f[key] is not None], 50)
    # Every registered pose is on ~/ct_pose (the held-back ones too): its error against the case's truth.
    records = list(read_records([bag], [ground_truth_topic]))
    records += list(read_records([outputs], [f"/{NODE_NAME}/ct_pose"]))
    try:
        volume = open_ct(str(_node_param("ct_path", params, params_file, "phantom:head")))
        poses = score_records(records, volume, ground_truth_topic=ground_truth_topic, tf_topic=f"/{NODE_NAME}/ct_pose",
                              image_topic=None, cameras=_cameras(bag, params, params_file))
    except BagError as exc:  # a bag from the OR: verdicts, similarity, covariance and latency, but no errors
        summary["ground_truth"] = f"none: {exc}"
        return {"summary": summary, "frames": frames}
    errors = {round(r["stamp_s"], 6): r for r in poses["frames"]}
    for f in frames:
        r = errors.get(round(f["stamp_s"], 6), {})
        f.update({k: r.get(k) for k in ("mtre_mm", "inplane_mm", "depth_mm")})
        f["success"] = f["category"] == "on_tf" and f["mtre_mm"] is not None and f["mtre_mm"] < 2.0
    summary["ground_truth"] = ground_truth_topic
    for cat in ("on_tf", "held_back"):
        rows = [f for f in frames if f["category"] == cat and f["mtre_mm"] is not None]
        for key in ("mtre_mm", "inplane_mm", "depth_mm"):
            summary[f"{cat}_{key.removesuffix('_mm')}_median_mm"] = percentile(
                [f[key] for f in rows if f[key] is not None], 50)
        summary[f"{cat}_mtre_max_mm"] = max((f["mtre_mm"] for f in rows), default=None)
    summary["on_tf_at_or_above_2mm"] = sum(f["category"] == "on_tf" and (f["mtre_mm"] or 0.0) >= 2.0 for f in frames)
    summary["registered_mtre_median_mm"] = percentile([f["mtre_mm"] for f in frames if f["mtre_mm"] is not None], 50)
    return {"summary": summary, "frames": frames}


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _outputs(outputs: Path, image_topic: str) -> tuple[dict[float, int], set[float], dict[float, int]]:
    """From the recorded outputs, by frame stamp (s): the /tf receive time (ns) of the CT pose, the
    stamps on ~/ct_pose, and the receive time of the replayed image."""
    from rclpy.serialization import deserialize_message

    from .common import message_class

    tf: dict[float, int] = {}
    poses: set[float] = set()
    images: dict[float, int] = {}
    for topic, msgtype, log_ns, data in read_records([outputs], ["/tf", f"/{NODE_NAME}/ct_pose", image_topic]):
        if topic == normalize_topic(image_topic):
            images.setdefault(round(header_stamp_ns(bytes(data)) / 1e9, 6), int(log_ns))
            continue
        msg = deserialize_message(bytes(data), message_class(msgtype))
        if topic == "/tf":
            for t in msg.transforms:
                if t.child_frame_id.lstrip("/") == "ct":
                    tf.setdefault(round(t.header.stamp.sec + 1e-9 * t.header.stamp.nanosec, 6), int(log_ns))
        else:
            poses.add(round(msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec, 6))
    return tf, poses, images


def _cameras(bag, params, params_file) -> dict[int, Any]:
    """``T_cam_iso`` per joint-state stamp (ns) of the bag, for the error in camera axes."""
    from rclpy.serialization import deserialize_message

    from ..core.geometry.kinematics import cam_from_iso
    from ..ros.conversions import JointNames, JointStateError, joints_from_message
    from .common import message_class

    kw = {k: _node_param(f"joints.{k}", params, params_file, getattr(JointNames(), k))
          for k in ("lao", "cranial", "detector_rotation", "sdd", "table")}
    names = JointNames(**{**kw, "table": tuple(kw["table"])})  # as the node reads them
    topic = normalize_topic(str(_node_param("topics.joint_states", params, params_file, "carm/joint_states")))
    out = {}
    for _, msgtype, _, data in read_records([bag], [topic]):
        msg = deserialize_message(bytes(data), message_class(msgtype))
        try:
            out[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = cam_from_iso(
                joints_from_message(msg, names))
        except JointStateError:
            continue
    return out


def _write(report: dict[str, Any], out: Path) -> dict[str, str]:
    """frames.csv (every frame: category, verdict, errors, latency) and replay.png (both over time)."""
    path = out / "frames.csv"
    fields = ["index", "stamp_s", "category", "verdict", "similarity", "sigma_depth_mm", "mtre_mm", "inplane_mm",
              "depth_mm", "latency_ms", "node_latency_ms", "register_ms", "covariance_ms"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in report["frames"]:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
    return {"frames_csv": str(path), "plot": str(_plot(report, out / "replay.png"))}


_COLOURS = {"on_tf": "tab:green", "held_back": "tab:orange", "rejected": "tab:red", "not_processed": "0.6"}


def _plot(report: dict[str, Any], path: Path) -> Path:
    """Error (mTRE, in plane, along the beam) and latency per frame over the case's time, by category."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = report["frames"]
    t0 = frames[0]["stamp_s"] if frames else 0.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for key, marker in (("mtre_mm", "o"), ("inplane_mm", "^"), ("depth_mm", "v")):
        pts = [(f["stamp_s"] - t0, f[key], f["category"]) for f in frames if f.get(key) is not None]
        if pts:
            ax1.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], c=[_COLOURS[c] for _, _, c in pts],
                        marker=marker, s=18, label=key.removesuffix("_mm").replace("depth", "along the beam"))
    ax1.axhline(2.0, color="black", ls="--", lw=0.8)
    ax1.set_ylabel("error (mm)")
    ax1.set_title("error per frame (green on TF, orange held back, red rejected, grey not processed)")
    if any(f.get("mtre_mm") is not None for f in frames):
        ax1.legend(fontsize=8)
    else:
        ax1.text(0.5, 0.5, "no ground truth in the case", transform=ax1.transAxes, ha="center")
    lat = [(f["stamp_s"] - t0, f["latency_ms"]) for f in frames if f.get("latency_ms") is not None]
    ax2.plot([x for x, _ in lat], [y for _, y in lat], "o-", color="tab:blue", ms=4)
    for f in frames:
        ax2.axvline(f["stamp_s"] - t0, color=_COLOURS[f["category"]], lw=0.5, alpha=0.5)
    ax2.set_xlabel("case time (s)")
    ax2.set_ylabel("image -> TF (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_report(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    if not report["node"]["started"]:
        return f"the node did not start (exit code {report['node']['exit_code']}): {report['node']['reason']}"
    s = report["summary"]
    lines = [f"frames {s['frames']}: on TF {s['on_tf']}, held back {s['held_back']}, rejected {s['rejected']}, "
             f"not processed {s['not_processed']}"
             + (" (every frame)" if report["run"]["every_frame"] else " (real time)")]
    if "on_tf_mtre_median_mm" in s:
        def mm(v):
            return "n/a" if v is None else f"{v:.2f} mm"

        for cat, label in (("on_tf", "on TF"), ("held_back", "held back")):
            lines.append(f"{label}: mTRE median {mm(s[f'{cat}_mtre_median_mm'])}, max {mm(s[f'{cat}_mtre_max_mm'])}; "
                         f"in plane {mm(s[f'{cat}_inplane_median_mm'])}, along the beam "
                         f"{mm(s[f'{cat}_depth_median_mm'])} (medians)")
        lines.append(f"poses on TF at >= 2 mm: {s['on_tf_at_or_above_2mm']}")
        if s.get("latency_p50_ms") is not None:
            lines.append(f"latency image -> TF: p50 {s['latency_p50_ms']:.0f} ms, p95 {s['latency_p95_ms']:.0f} ms")
    if s.get("node_latency_p50_ms") is not None:
        lines.append(f"the node's clock, p50: arrival to TF or decision {s['node_latency_p50_ms']:.0f} ms (register "
                     f"{s['register_p50_ms']:.0f}, covariance {s['covariance_p50_ms'] or 0:.0f} ms)")
    else:
        lines.append(f"ground truth: {s['ground_truth']}")
    return "\n".join(lines)


def compare(run_a: str | Path, run_b: str | Path, *, max_regression: float = 0.0,
            max_mtre_increase_mm: float = 0.5) -> tuple[int, str]:
    """Two replays side by side: ``(exit code, report)``; 1 when B regressed against A, 2 when a node did not start.

    B regresses when fewer of its frames are on TF by more than ``max_regression`` (a fraction of
    the frames), when it puts more poses at >= 2 mm on TF, or when its median mTRE (on TF, or of
    every registered pose, held-back ones included) is more than ``max_mtre_increase_mm`` above A's.
    """
    a, b = (json.loads((Path(r) / "replay.json").read_text()) for r in (run_a, run_b))
    for name, r in (("A", a), ("B", b)):
        if not r["node"]["started"]:
            return 2, f"run {name}: the node did not start: {r['node']['reason']}"
    sa, sb = a["summary"], b["summary"]
    rows = ["| | A | B |", "|---|---|---|"]
    for key in ("frames", *CATEGORIES, "on_tf_at_or_above_2mm", "on_tf_mtre_median_mm", "on_tf_mtre_max_mm",
                "on_tf_inplane_median_mm", "on_tf_depth_median_mm", "held_back_mtre_median_mm",
                "registered_mtre_median_mm", "latency_p50_ms",
                "latency_p95_ms"):
        if key in sa or key in sb:
            rows.append(f"| {key} | {_cell(sa.get(key))} | {_cell(sb.get(key))} |")
    fa = {round(f["stamp_s"], 6): f for f in a["frames"]}
    changed = [(s, fa[s]["category"], f["category"], f["verdict"]) for f in b["frames"]
               if (s := round(f["stamp_s"], 6)) in fa and fa[s]["category"] != f["category"]]
    rows.append(f"\n{len(changed)} frame(s) changed category" + (":" if changed else ""))
    rows += [f"  {s:.3f} s: {ca} -> {cb} ({v})" for s, ca, cb, v in changed[:20]]
    why = []
    n = max(sa["frames"], 1)
    if (sa["on_tf"] - sb["on_tf"]) / n > max_regression:
        why.append(f"on TF {sa['on_tf']} -> {sb['on_tf']} of {n} frames (allowed drop {max_regression:.0%})")
    if sb.get("on_tf_at_or_above_2mm", 0) > sa.get("on_tf_at_or_above_2mm", 0):
        why.append(f"poses >= 2 mm on TF: {sa.get('on_tf_at_or_above_2mm', 0)} -> {sb['on_tf_at_or_above_2mm']}")
    for key, label in (("on_tf_mtre_median_mm", "on TF"), ("registered_mtre_median_mm", "of all registered poses")):
        ma, mb = sa.get(key), sb.get(key)
        if ma is not None and mb is not None and mb - ma > max_mtre_increase_mm:
            why.append(f"median mTRE {label} {ma:.2f} -> {mb:.2f} mm (allowed +{max_mtre_increase_mm:g} mm)")
    rows.append("REGRESSION: " + "; ".join(why) if why else "no regression")
    return (1 if why else 0), "\n".join(rows)


def _cell(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.2f}"
    return str(v)


__all__ = ["compare", "format_report", "replay"]
