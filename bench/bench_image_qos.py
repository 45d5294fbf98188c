"""Large camera frames between two processes: how many arrive, per image QoS (a benchmark, not a test).

A publisher process sends ``--frames`` mono16 ``sensor_msgs/Image`` frames of each ``--sizes``
(square, px) at ``--rate`` Hz over DDS on loopback; a subscriber process counts the frames it
receives. Every combination of a publisher QoS and a subscription QoS runs in turn, each with a
fresh pair of processes, so the rows compare side by side in one run.

Publishers (``--pubs``):

* ``player``: as ``diffdrr-ros bag play`` publishes (``diffdrr_ros.bag.player.playback_qos``:
  reliable, keep last ``--player-depth`` = 100, volatile);
* ``sensor``: a sensor-data driver (``rclpy.qos.qos_profile_sensor_data``, ``rclcpp::SensorDataQoS``:
  best effort, keep last 5).

Subscriptions (``--subs``), the registration node's choices (``diffdrr_ros.ros.qos.image_qos``
with ``qos.image_depth`` = ``--depth``, default 2):

* ``best_effort``: ``qos.image_reliability: best_effort`` (the former default);
* ``auto``: the default, resolved as the node does from the publisher's offered QoS
  (``get_publishers_info_by_topic``; the subscriber waits for the publisher to appear first):
  reliable, keep last 2 with a ``player`` publisher, best effort with a ``sensor`` one;
* ``reliable``: ``qos.image_reliability: reliable`` (does not match a best-effort publisher: "no match");
* a ``+xml`` suffix (e.g. ``best_effort+xml``): ``config/fastdds_large_frames.xml`` loaded in both
  processes (``FASTRTPS_DEFAULT_PROFILES_FILE``); ``+xml-sub``: in the subscriber only.

The children run with ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and ``ROS_DOMAIN_ID=--domain-id``
(default 68), set here, on a topic named after this process's id (no cross-talk with other runs
on the domain). The publisher starts only once both ends report the match; every step times out
cleanly and the children are killed on exit (they also quit when this process goes away).

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST .venv/bin/python bench/bench_image_qos.py

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST .venv/bin/python bench/bench_image_qos.py \\
        --sizes 256 1024 3000 --frames 20 --rate 10 --subs best_effort auto reliable best_effort+xml-sub

Prints a table of frames received / published per size, one row per publisher and subscription,
and the median publish-to-receive latency; writes ``results.json`` and ``results.csv`` under
``--out`` (default ``out/bench_image_qos/``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_SIZES = (256, 512, 1024, 1536, 2048)
PUBS = ("player", "sensor")
SUB_BASES = ("best_effort", "auto", "reliable")
XML_SIDES = {"xml": "both", "xml-sub": "sub"}
PROFILE = ROOT / "config" / "fastdds_large_frames.xml"


# --------------------------------------------------------------------------- QoS (the project's)


def publisher_qos(kind: str, topic: str, player_depth: int):
    """The publisher's QoS: ``diffdrr-ros bag play``'s, or a sensor-data driver's."""
    from rclpy.qos import qos_profile_sensor_data

    from diffdrr_ros.bag.player import playback_qos

    if kind == "player":
        return playback_qos(topic, [], player_depth)
    if kind == "sensor":
        return qos_profile_sensor_data
    raise ValueError(f"publisher kind must be one of {', '.join(PUBS)}, got {kind!r}")


def parse_sub(spec: str) -> tuple[str, str | None]:
    """``best_effort+xml`` -> (``best_effort``, ``both``); ``auto`` -> (``auto``, None)."""
    base, _, suffix = spec.partition("+")
    if base not in SUB_BASES or (suffix and suffix not in XML_SIDES):
        raise argparse.ArgumentTypeError(
            f"subscription must be one of {', '.join(SUB_BASES)}, optionally +xml or +xml-sub; got {spec!r}")
    return base, XML_SIDES.get(suffix) if suffix else None


def _qos_text(q) -> str:
    return f"{q.reliability.name.lower()}, keep last {q.depth}"


# --------------------------------------------------------------------------- child processes


def _emit(**event) -> None:
    print(json.dumps(event), flush=True)


def _watch_stdin(on_line, on_eof) -> None:
    """A daemon thread: ``on_line(line)`` for each line from the parent, ``on_eof()`` when it goes away."""

    def run() -> None:
        for line in sys.stdin:
            on_line(line.strip())
        on_eof()

    threading.Thread(target=run, daemon=True).start()


def run_subscriber(cfg: dict) -> int:
    """Subscribe with the node's image QoS, report the match, count frames until told to stop."""
    import rclpy
    from rclpy.event_handler import SubscriptionEventCallbacks
    from sensor_msgs.msg import Image

    from diffdrr_ros.ros.qos import image_qos

    stop = threading.Event()
    _watch_stdin(lambda line: stop.set() if line == "stop" else None, stop.set)
    rclpy.init(args=[])
    node = rclpy.create_node(f"bench_image_qos_sub_{os.getpid()}")
    topic = cfg["topic"]
    offered = []
    deadline = time.monotonic() + cfg["match_timeout"]
    if cfg["reliability"] == "auto":  # as the node: look at the publishers' offered QoS first
        while not stop.is_set() and time.monotonic() < deadline:
            offered = [i.qos_profile for i in node.get_publishers_info_by_topic(topic)]
            if offered:
                break
            rclpy.spin_once(node, timeout_sec=0.05)
    qos = image_qos(cfg["reliability"], cfg["depth"], offered)
    got: dict[int, list[float]] = {}  # width -> latencies, s
    ids: set[str] = set()
    lost = [0]

    def on_image(msg: Image) -> None:
        now = time.time()
        got.setdefault(msg.width, []).append(now - (msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec))
        ids.add(msg.header.frame_id)

    def on_lost(info) -> None:
        lost[0] = info.total_count

    def on_incompatible(info) -> None:  # e.g. a reliable subscription and a best-effort publisher
        _emit(event="incompatible", policy=str(info.last_policy_kind))

    try:
        callbacks = SubscriptionEventCallbacks(message_lost=on_lost, incompatible_qos=on_incompatible)
        sub = node.create_subscription(Image, topic, on_image, qos, event_callbacks=callbacks)
        events = True
    except Exception:  # an rmw without the message-lost event
        sub = node.create_subscription(Image, topic, on_image, qos)
        events = False
    _emit(event="subscribed", qos=_qos_text(qos), reliability=qos.reliability.name.lower(), depth=qos.depth,
          offered=[_qos_text(q) for q in offered])
    matched = False
    while not stop.is_set():
        if not matched and sub.get_publisher_count() > 0:
            matched = True
            _emit(event="matched")
        rclpy.spin_once(node, timeout_sec=0.02)
    _emit(event="result", received={str(w): len(v) for w, v in sorted(got.items())},
          latency_p50_ms={str(w): round(1000 * statistics.median(v), 2) for w, v in sorted(got.items())},
          unique=len(ids), ids=sorted(ids), lost_events=lost[0] if events else None)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def run_publisher(cfg: dict) -> int:
    """Wait for a matched subscription and the parent's go, then publish the frames on a fixed schedule."""
    import numpy as np
    import rclpy
    from rclpy.duration import Duration
    from sensor_msgs.msg import Image

    go = threading.Event()
    _watch_stdin(lambda line: go.set() if line == "go" else None, lambda: os._exit(3))  # parent gone: quit
    rclpy.init(args=[])
    node = rclpy.create_node(f"bench_image_qos_pub_{os.getpid()}")
    qos = publisher_qos(cfg["kind"], cfg["topic"], cfg["player_depth"])
    pub = node.create_publisher(Image, cfg["topic"], qos)
    rng = np.random.default_rng(0)
    msgs = {}
    for s in cfg["sizes"]:  # built before the clock starts (a 2048 px frame is 8 MB)
        m = Image(height=s, width=s, encoding="mono16", is_bigendian=0, step=2 * s)
        m.data = rng.integers(0, 4000, (s, s), dtype=np.uint16).tobytes()
        msgs[s] = m
    _emit(event="ready", qos=_qos_text(qos))
    deadline = time.monotonic() + cfg["match_timeout"]
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    if pub.get_subscription_count() == 0:
        _emit(event="result", matched=False)
        return 2
    _emit(event="matched")
    while not go.wait(0.05):
        rclpy.spin_once(node, timeout_sec=0.0)
    time.sleep(cfg["settle"])
    period = 1.0 / cfg["rate"]
    sent: dict[str, int] = {}
    pub_ms: dict[str, list[float]] = {}
    t0 = time.monotonic()
    i = 0
    for s in cfg["sizes"]:
        m = msgs[s]
        for k in range(cfg["frames"]):
            delay = t0 + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            m.header.stamp.sec, m.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
            m.header.frame_id = f"{s}/{k}"
            t = time.perf_counter()
            pub.publish(m)
            pub_ms.setdefault(str(s), []).append(1000 * (time.perf_counter() - t))
            sent[str(s)] = sent.get(str(s), 0) + 1
            i += 1
    publish_s = time.monotonic() - t0
    acked = None
    with contextlib.suppress(Exception):  # reliable delivery of the tail, as bag play does
        acked = bool(pub.wait_for_all_acked(Duration(seconds=cfg["ack_timeout"])))
    time.sleep(cfg["linger"])
    _emit(event="result", matched=True, published=sent, publish_s=round(publish_s, 3), acked=acked,
          publish_ms_p50={k: round(statistics.median(v), 2) for k, v in pub_ms.items()})
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


class Child:
    """A child process of this script (``_sub``/``_pub``): JSON events on stdout, commands on stdin."""

    def __init__(self, role: str, cfg: dict, env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 (closed in kill())
        self.proc = subprocess.Popen([sys.executable, __file__, role, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, cwd=cwd,
                                     start_new_session=True)  # Ctrl-C reaches us, and we stop them
        self.events: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                self.events.put(json.loads(line))
        self.events.put({"event": "exit"})

    def wait_event(self, name: str | tuple[str, ...], timeout: float) -> dict | None:
        """The next event called ``name`` (or one of them) within ``timeout`` s (others are skipped), or None."""
        names = (name,) if isinstance(name, str) else name
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if ev["event"] in names:
                return ev
            if ev["event"] == "exit":
                return None
        return None

    def send(self, line: str) -> None:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def log_tail(self, n: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()[-n:]
        return ""

    def kill(self, timeout: float = 3.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self._log.close()


# --------------------------------------------------------------------------- one combination


def child_env(domain_id: int, profile: Path | None) -> dict[str, str]:
    """This process's environment for a child: loopback discovery, the bench's domain, the profile or none."""
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain_id),
               PYTHONUNBUFFERED="1")
    for k in ("ROS_LOCALHOST_ONLY", "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        env.pop(k, None)
    if profile is not None:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


def run_pair(pub_kind: str, sub_spec: str, args: argparse.Namespace, work: Path, children: list[Child]) -> dict:
    """One publisher process and one subscriber process; the row of the table."""
    base, xml_side = parse_sub(sub_spec)
    topic = f"/bench_image_qos_{os.getpid()}/image"
    row = {"publisher": pub_kind, "subscription": sub_spec, "reliability_setting": base,
           "profile": {"both": "both processes", "sub": "subscriber only"}.get(xml_side, "none"),
           "sizes": list(args.sizes), "frames": args.frames, "rate_hz": args.rate}
    tag = f"{pub_kind}-{sub_spec}".replace("+", "_")
    profile = args.profile if xml_side else None
    sub = Child("_sub", {"topic": topic, "reliability": base, "depth": args.depth,
                         "match_timeout": args.match_timeout},
                child_env(args.domain_id, profile), work / f"{tag}.sub.log", work)
    children.append(sub)
    pub = Child("_pub", {"topic": topic, "kind": pub_kind, "player_depth": args.player_depth, "sizes": args.sizes,
                         "frames": args.frames, "rate": args.rate, "match_timeout": args.match_timeout,
                         "settle": args.settle, "ack_timeout": args.ack_timeout, "linger": args.linger},
                child_env(args.domain_id, profile if xml_side == "both" else None), work / f"{tag}.pub.log", work)
    children.append(pub)
    try:
        startup = args.match_timeout + 30.0  # imports and node creation on a loaded machine, then the match
        ev = pub.wait_event("ready", startup)
        row["publisher_qos"] = ev["qos"] if ev else None
        ev = sub.wait_event("subscribed", startup)
        if ev is None:
            row.update(status="subscriber failed", log=sub.log_tail())
            return row
        row["subscription_qos"], row["offered"] = ev["qos"], ev["offered"]
        t0 = time.monotonic()
        ev = sub.wait_event(("matched", "incompatible"), args.match_timeout)
        if ev is not None and ev["event"] == "incompatible":
            row.update(status="no match", match_s=round(time.monotonic() - t0, 2),
                       reason=f"incompatible QoS ({ev['policy']})")
            return row
        sub_ok = ev is not None
        pub_ok = pub.wait_event("matched", max(1.0, args.match_timeout - (time.monotonic() - t0))) is not None
        row["match_s"] = round(time.monotonic() - t0, 2)
        if not (sub_ok and pub_ok):
            row.update(status="no match", log=(pub.log_tail() + sub.log_tail())[-1500:])
            return row
        pub.send("go")
        run_s = args.settle + len(args.sizes) * args.frames / args.rate + args.ack_timeout + args.linger + 30.0
        res = pub.wait_event("result", run_s)
        if res is None:
            row.update(status="publisher timed out", log=pub.log_tail())
            return row
        row.update(published=res["published"], publish_s=res["publish_s"], acked=res["acked"],
                   publish_ms_p50=res["publish_ms_p50"])
        time.sleep(args.grace)  # frames still on the way
        sub.send("stop")
        res = sub.wait_event("result", 15.0)
        if res is None:
            row.update(status="subscriber timed out", log=sub.log_tail())
            return row
        got = set(res["ids"])
        row.update(status="ok", received={str(s): res["received"].get(str(s), 0) for s in args.sizes},
                   missing={str(s): [k for k in range(args.frames) if f"{s}/{k}" not in got] for s in args.sizes},
                   latency_p50_ms=res["latency_p50_ms"], unique=res["unique"], lost_events=res["lost_events"])
        return row
    finally:
        pub.kill()
        sub.kill()


# --------------------------------------------------------------------------- report


def print_table(rows: list[dict], sizes: list[int]) -> str:
    head = ["publisher", "subscription", "QoS (resolved)"] + [f"{s} px" for s in sizes]
    lines = []
    for r in rows:
        cells = [f"{r['publisher']} ({r.get('publisher_qos') or '?'})", r["subscription"],
                 r.get("subscription_qos") or "?"]
        if r.get("status") == "ok":
            cells += [f"{r['received'][str(s)]}/{r['published'].get(str(s), 0)}" for s in sizes]
        else:
            cells += [r.get("status", "?") + (" (incompatible QoS)" if "reason" in r else "")] + [""] * (len(sizes) - 1)
        lines.append(cells)
    lat = []
    for r in rows:
        if r.get("status") == "ok":
            lat.append([r["publisher"], r["subscription"], r["subscription_qos"]]
                       + [f"{r['latency_p50_ms'][str(s)]:.1f}" if str(s) in r["latency_p50_ms"] else "-"
                          for s in sizes])

    def fmt(title: str, table: list[list[str]]) -> str:
        widths = [max(len(x) for x in col) for col in zip(head, *table, strict=True)]
        out = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
               "  ".join("-" * w for w in widths)]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
        return "\n".join(out)

    text = fmt("frames received / published", lines)
    if lat:
        text += "\n\n" + fmt("median publish-to-receive latency, ms (received frames)", lat)
    print(text)
    return text


def write_csv(path: Path, rows: list[dict], sizes: list[int]) -> None:
    fields = ["publisher", "subscription", "publisher_qos", "subscription_qos", "profile", "status", "size_px",
              "bytes", "published", "received", "latency_p50_ms", "publish_ms_p50"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            for s in sizes:
                ok = r.get("status") == "ok"
                w.writerow({"publisher": r["publisher"], "subscription": r["subscription"],
                            "publisher_qos": r.get("publisher_qos"), "subscription_qos": r.get("subscription_qos"),
                            "profile": r["profile"], "status": r.get("status"), "size_px": s, "bytes": 2 * s * s,
                            "published": r["published"].get(str(s), 0) if ok else 0,
                            "received": r["received"][str(s)] if ok else 0,
                            "latency_p50_ms": r["latency_p50_ms"].get(str(s), "") if ok else "",
                            "publish_ms_p50": r["publish_ms_p50"].get(str(s), "") if ok else ""})


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="square mono16 frames, px")
    ap.add_argument("--frames", type=int, default=10, help="frames of each size")
    ap.add_argument("--rate", type=float, default=5.0, help="publish rate, Hz")
    ap.add_argument("--pubs", nargs="+", choices=PUBS, default=list(PUBS), help="publisher QoS")
    ap.add_argument("--subs", nargs="+", type=str, default=["best_effort", "auto", "best_effort+xml"],
                    help="subscription QoS: best_effort, auto, reliable, each optionally +xml (the Fast DDS "
                         "profile in both processes) or +xml-sub (in the subscriber only)")
    ap.add_argument("--depth", type=int, default=2, help="subscription keep-last depth (qos.image_depth)")
    ap.add_argument("--player-depth", type=int, default=100, help="bag play's publisher depth (--qos-depth)")
    ap.add_argument("--profile", type=Path, default=PROFILE, help="Fast DDS profile for the +xml subscriptions")
    ap.add_argument("--domain-id", type=int, default=68, help="ROS_DOMAIN_ID of the child processes")
    ap.add_argument("--match-timeout", type=float, default=20.0, help="s, for both ends to match")
    ap.add_argument("--settle", type=float, default=0.5, help="s between the match and the first frame")
    ap.add_argument("--ack-timeout", type=float, default=5.0, help="s the publisher waits for acks at the end")
    ap.add_argument("--linger", type=float, default=0.5, help="s the publisher stays up after the acks")
    ap.add_argument("--grace", type=float, default=1.0, help="s the subscriber counts after the publisher is done")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_image_qos", help="output directory")
    args = ap.parse_args()
    try:
        for s in args.subs:
            parse_sub(s)
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    if any("+xml" in s for s in args.subs) and not args.profile.is_file():
        ap.error(f"no Fast DDS profile at {args.profile}")
    if not 0 <= args.domain_id <= 232:
        ap.error("--domain-id must be 0..232")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # this process, too (it starts no ROS context)
    os.environ["ROS_DOMAIN_ID"] = str(args.domain_id)
    args.profile = args.profile.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    combos = [(p, s) for p in args.pubs for s in args.subs]
    children: list[Child] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM: through the finally below
    rows: list[dict] = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_image_qos_") as tmp:
        try:
            bar = tqdm(combos, desc="publisher x subscription", unit="pair", dynamic_ncols=True)
            for pub_kind, sub_spec in bar:
                bar.set_postfix_str(f"{pub_kind} -> {sub_spec}")
                row = run_pair(pub_kind, sub_spec, args, Path(tmp), children)
                rows.append(row)
                counts = (" ".join(f"{row['received'][str(s)]}/{row['published'].get(str(s), 0)}" for s in args.sizes)
                          if row.get("status") == "ok" else row.get("status"))
                tqdm.write(f"{pub_kind} ({row.get('publisher_qos')}) -> {sub_spec} ({row.get('subscription_qos')}): "
                           f"{counts}")
        finally:
            for c in children:
                c.kill()
    print()
    table = print_table(rows, args.sizes)
    summary = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rmw": os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp (default)"),
        "env": {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(args.domain_id),
                "FASTRTPS_DEFAULT_PROFILES_FILE (+xml rows only)": str(args.profile)},
        "host": platform.node(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "duration_s": round(time.monotonic() - t_start, 1),
        "frame_bytes": {str(s): 2 * s * s for s in args.sizes},
        "rows": rows, "table": table,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    write_csv(args.out / "results.csv", rows, args.sizes)
    print(f"\nwrote {args.out / 'results.json'} (.csv)")
    # a reliable subscription never matches a best-effort (sensor) publisher: that "no match" is the expected row
    expected = [r.get("status") == "ok" or (r.get("status") == "no match" and r["reliability_setting"] == "reliable"
                                           and r["publisher"] == "sensor") for r in rows]
    return 0 if all(expected) else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_sub", "_pub"):  # a child of this script
        role, cfg = sys.argv[1], json.loads(sys.argv[2])
        sys.exit(run_subscriber(cfg) if role == "_sub" else run_publisher(cfg))
    sys.exit(main())
