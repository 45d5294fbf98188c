"""``diffdrr-ros bag record|play|score|from-frames`` (also ``python -m diffdrr_ros.bag ...``).

Building the parser imports nothing heavy; rclpy, rosbags and torch load when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import BAG_VERSION, DEFAULT_STORAGE, STORAGES, BagError, parse_remaps


def cmd_record(args: argparse.Namespace) -> int:
    from .recorder import record

    if not args.all and not args.topics:
        raise BagError("give --topics T1 T2 ... or --all")
    result = record(args.out, None if args.all else args.topics, args.storage, duration=args.duration,
                    max_messages=args.max_messages, discovery_timeout=args.discovery_timeout,
                    progress=not args.no_progress, version=args.bag_version)
    counts = ", ".join(f"{t}: {n}" for t, n in result["counts"].items()) or "nothing"
    print(f"wrote {result['path']} ({result['storage']}, {result['messages']} messages in "
          f"{result['duration_s']:.1f} s; {counts})")
    for topic in result["missing"]:
        print(f"  never seen: {topic}", file=sys.stderr)
    for topic, why in result["skipped"].items():
        print(f"  skipped {topic}: {why}", file=sys.stderr)
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    from .player import play

    loop: bool | int = True if args.loop else (args.loop_count or False)
    result = play(args.bag, rate=args.rate, as_fast_as_possible=args.as_fast_as_possible,
                  remap=parse_remaps(args.remap or []), loop=loop, start_offset=args.start_offset,
                  topics=args.topics, clock=args.clock, wait_for_subscribers=args.wait_for_subscribers,
                  qos_depth=args.qos_depth, duration=args.duration, progress=not args.no_progress)
    counts = ", ".join(f"{t}: {n}" for t, n in result["published"].items())
    print(f"published {result['messages']} messages in {result['duration_s']:.1f} s ({counts})")
    if result["unmatched"]:
        print(f"  no subscriber after {result['waited_s']:.1f} s: {', '.join(result['unmatched'])}", file=sys.stderr)
    for topic, why in result["skipped"].items():
        print(f"  skipped {topic}: {why}", file=sys.stderr)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from ..app.args import volume_from_args
    from .scoring import format_summary, score_bag

    volume = volume_from_args(args)
    result = score_bag(args.bags, volume, ground_truth_topic=args.ground_truth_topic, tf_parent=args.tf_parent,
                       tf_child=args.tf_child, image_topic=args.image_topic or None, success_mm=args.success_mm,
                       out_dir=args.out)
    print(format_summary(result))
    if args.json:
        print(json.dumps(result["summary"]))
    if result["summary"]["success_rate"] < args.min_success_rate:
        print(f"success rate {result['summary']['success_rate']:.3f} < --min-success-rate {args.min_success_rate}",
              file=sys.stderr)
        return 3
    return 0


def cmd_from_frames(args: argparse.Namespace) -> int:
    from ..ros.conversions import JointNames
    from .from_frames import format_summary, frames_to_bag

    names = JointNames() if args.joint_names is None else JointNames(*args.joint_names)
    result = frames_to_bag(
        args.files, args.bag, storage=args.storage, encoding=args.encoding, i0=args.i0, timing=args.timing,
        rate_hz=args.rate, start_s=args.start_time, frame_domain=args.frame_domain, frame_i0=args.frame_i0,
        spacing_mm=tuple(args.spacing) if args.spacing else None, sdd_mm=args.sdd, sid_mm=args.sid,
        topics={"image": args.image_topic, "joints": args.joint_states_topic, "camera_info": args.camera_info_topic},
        frame_id=args.frame_id, joint_names=names)
    print(format_summary(result))
    return 0


def _run(func):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except BagError as exc:
            print(f"diffdrr-ros bag {args.bag_command}: error: {exc}", file=sys.stderr)
            return 1

    return wrapped


def add_bag_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bag`` with ``record``, ``play`` and ``score`` to a sub-parser set (``diffdrr-ros``'s)."""
    bag = sub.add_parser("bag", help="record, play and score rosbag2 bags (mcap/sqlite3) through rclpy; "
                                            "write one from X-ray frame files",
                         description="rosbag2 bags without rosbag2: rclpy moves the bytes, rosbags reads and "
                                     "writes the files (ros2 bag play/record compatible).")
    bsub = bag.add_subparsers(dest="bag_command", required=True)

    p = bsub.add_parser("record", help="record live topics into a new bag")
    p.add_argument("out", type=Path, help="bag directory to create (must not exist)")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="topics to record")
    p.add_argument("-a", "--all", action="store_true", help="record every topic that has a publisher")
    p.add_argument("--storage", choices=STORAGES, default=DEFAULT_STORAGE, help="default: mcap (as rosbag2)")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--max-messages", type=int, default=None, help="stop after N messages in all")
    p.add_argument("--discovery-timeout", type=float, default=5.0,
                   help="seconds to wait for the topics before reporting the missing ones (still looked for)")
    p.add_argument("--bag-version", type=int, choices=(8, 9), default=BAG_VERSION,
                   help="rosbag2 metadata version (9: Jazzy and later; 8: Iron)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run(cmd_record))

    p = bsub.add_parser("play", help="replay a bag into the ROS graph")
    p.add_argument("bag", type=Path, help="bag directory, or one .mcap/.db3 file")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--rate", type=float, default=1.0, help="speed factor (default 1: as recorded)")
    speed.add_argument("--as-fast-as-possible", action="store_true", help="ignore the recorded timing")
    p.add_argument("--remap", nargs="+", metavar="OLD:=NEW", help="publish a recorded topic under another name")
    loop = p.add_mutually_exclusive_group()
    loop.add_argument("--loop", action="store_true", help="repeat until stopped (Ctrl-C or --duration)")
    loop.add_argument("--loop-count", type=int, default=None, metavar="N", help="play the bag N times")
    p.add_argument("--start-offset", type=float, default=0.0, metavar="S", help="start S seconds into the bag")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="play only these recorded topics")
    p.add_argument("--clock", type=float, nargs="?", const=40.0, default=None, metavar="HZ",
                   help="publish rosgraph_msgs/Clock on /clock with the bag's time (default 40 Hz)")
    p.add_argument("--wait-for-subscribers", type=float, default=2.0, metavar="S",
                   help="wait up to S seconds for a subscriber on every topic before starting (0: don't)")
    p.add_argument("--qos-depth", type=int, default=100, help="publisher history depth (reliable)")
    p.add_argument("--duration", type=float, default=None, help="stop after S wall-clock seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run(cmd_play))

    p = bsub.add_parser("score", help="mTRE, success rate and latency of the published CT pose against ground truth")
    p.add_argument("bags", type=Path, nargs="+", metavar="BAG",
                   help="bag(s) holding /tf, the ground truth and (for latency) the images")
    p.add_argument("--ground-truth-topic", default="/carm_sim/ground_truth",
                   help="PoseStamped: true pose of the CT frame in the TF parent frame, metres")
    p.add_argument("--tf-parent", default="carm_isocenter", help="parent frame of the CT transform on /tf")
    p.add_argument("--tf-child", default="ct", help="CT frame on /tf")
    p.add_argument("--image-topic", default="fluoro/image", help="image topic for latency ('' for none)")
    p.add_argument("--success-mm", type=float, default=2.0, help="a frame succeeds when mTRE < this (mm)")
    p.add_argument("--min-success-rate", type=float, default=0.0,
                   help="exit with status 3 when the success rate is below this (0..1)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ct", type=Path, help="CT: DICOM directory, .nii/.nii.gz, or .npy (with --ct-spacing)")
    src.add_argument("--phantom", default=None, help="built-in phantom (default: head)")
    p.add_argument("--ct-spacing", type=float, nargs=3, metavar=("SI", "SJ", "SK"), help="voxel size (mm) for .npy")
    p.add_argument("--ct-downsample", type=int, default=1, help="integer CT downsampling factor")
    p.add_argument("--out", type=Path, default=Path("out/bag_score"), help="where score.json/frames.csv/score.png go")
    p.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    p.set_defaults(func=_run(cmd_score))

    _add_from_frames_parser(bsub)
    return bag


def _add_from_frames_parser(bsub: argparse._SubParsersAction) -> None:
    from ..core.xray_files.frame_sidecar import FRAME_DOMAINS
    from .from_frames import DEFAULT_FRAME_ID, DEFAULT_I0, DEFAULT_TOPICS, ENCODINGS, TIMINGS

    p = bsub.add_parser(
        "from-frames", help="stored X-ray frames (XA/RF/DX DICOM, cine, frames with sidecars) -> a bag for the node",
        description="Each frame becomes an Image (mono16 intensities I0 exp(-L)), a JointState (the header's "
                    "angles, rad; SDD, m) and a CameraInfo (K from SDD and pixel pitch), stamped with the frame "
                    "time. Replay it with use_camera_info: true (the summary prints the parameters).")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE",
                   help="frame files: DICOM (single- or multi-frame: each frame one message), or .npy/.png/.tif "
                        "with the <file>.json sidecar 'diffdrr-ros render' writes")
    p.add_argument("--bag", type=Path, required=True, help="bag directory to create (must not exist)")
    p.add_argument("--storage", choices=STORAGES, default=DEFAULT_STORAGE, help="default: mcap (as rosbag2)")
    p.add_argument("--encoding", choices=ENCODINGS, default="mono16",
                   help="mono16: detector intensities round(I0 exp(-L)) for the node's image.log_transform: true "
                        "(default); 32FC1: the line integrals L, for image.log_transform: false")
    p.add_argument("--i0", type=float, default=DEFAULT_I0,
                   help=f"intensity of an unattenuated ray in the mono16 frames (default {DEFAULT_I0:g}; run the node "
                        "with image.i0 equal to it to recover L exactly, or 0: the frame maximum)")
    p.add_argument("--timing", choices=TIMINGS, default="auto",
                   help="frame stamps: dicom (AcquisitionDateTime / ContentTime, + FrameTimeVector / FrameTime for "
                        "cine), rate (--rate in the order given), auto (dicom when every frame has a distinct "
                        "time, else rate)")
    p.add_argument("--rate", type=float, default=1.0, metavar="HZ", help="frames per second without DICOM times")
    p.add_argument("--start-time", type=float, default=1000.0, metavar="S",
                   help="stamp (s) of the first frame without DICOM times")
    p.add_argument("--frame-domain", choices=FRAME_DOMAINS, default=None,
                   help="what the files hold (default: what their header / sidecar says; must agree with it)")
    p.add_argument("--frame-i0", type=float, default=None,
                   help="unattenuated intensity of intensity files (default: the sidecar's, else each frame's "
                        "maximum), as register's --i0")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("DY", "DX"), default=None,
                   help="pixel pitch (mm) for every file, overriding or supplying ImagerPixelSpacing")
    p.add_argument("--sdd", type=float, default=None,
                   help="source-to-detector distance (mm) for every file (DistanceSourceToDetector)")
    p.add_argument("--sid", type=float, default=None,
                   help="source-to-isocentre distance (mm) for every file (DistanceSourceToPatient)")
    p.add_argument("--image-topic", default=DEFAULT_TOPICS["image"])
    p.add_argument("--joint-states-topic", default=DEFAULT_TOPICS["joints"])
    p.add_argument("--camera-info-topic", default=DEFAULT_TOPICS["camera_info"])
    p.add_argument("--frame-id", default=DEFAULT_FRAME_ID, help="header frame_id (the node's frames.detector)")
    p.add_argument("--joint-names", nargs=4, default=None, metavar=("LAO", "CRANIAL", "ROTATION", "SDD"),
                   help="JointState names (default: the node's joints.lao, joints.cranial, "
                        "joints.detector_rotation, joints.sdd)")
    p.set_defaults(func=_run(cmd_from_frames))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffdrr_ros.bag")
    add_bag_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
