"""OpenIGTLink bridge to 3D Slicer: the registered CT pose and the overlay out, a placement prior in.

A node of its own (``ros2 run diffdrr_ros igtl_bridge``), thin glue over ``pyigtl``:

* subscribes ``/tf`` (TFMessage, tf2's QoS) and keeps ``frames.carm -> frames.ct``: the
  registration node puts a pose there only when it passed its gate (``~/ct_pose`` also
  carries held-back poses, so it is not used); each fresh one goes out as a TRANSFORM
  (``transform_device``, RAS mm, :mod:`diffdrr_ros.core.geometry.slicer`) stamped with
  the pose's stamp;
* subscribes ``image_topic`` (Image; the registration node's ``~/overlay``) while a client
  is connected (the registration node renders the overlay only for subscribers) and sends
  each frame as an IMAGE (``image_device``) stamped with the image's stamp;
* sends a STRING (``status_device``): ``tracking``, or ``no pose: <reason>`` (no transform on
  /tf yet, or the last one older than ``max_pose_age_s``: then no TRANSFORM goes out);
* with ``prior_device`` set, a TRANSFORM of that name from a client (RAS mm) is published
  on ``prior_topic`` as a PoseStamped of the CT frame in ``frames.carm`` (LPS, m);
* publishes its own status on ``/diagnostics``.

The server is ``pyigtl.OpenIGTLinkServer`` with the connection handling replaced
(:class:`IgtlServer`): pyigtl 0.3.4's handler serves one client at a time, notices a client
that left only when a send to it fails (an idle server never serves the next client), and
spins forever on a header cut short by the client closing (any later client waits for
ever). Here every client has its own thread and its own pending messages (the newest per
device: a slow client gets the latest pose and image, not a backlog), reads are buffered and
checked (header fields, size, CRC), and a client that sends garbage is disconnected, logged
once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import select
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyigtl
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from pyigtl.comm import OpenIGTLinkBase
from pyigtl.messages import CRC64
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from ..core.geometry.rotations import make_transform, matrix_to_quaternion, quaternion_to_matrix
from ..core.geometry.slicer import lps_m_to_ras_mm, ras_mm_to_lps_m
from .conversions import ImageConversionError, image_to_pixels, seconds_to_stamp, stamp_to_seconds
from .params import Param
from .qos import TF_QOS
from .runtime import StartupError, run_node

NODE_NAME = "igtl_bridge"

BRIDGE_PARAMS: list[Param] = [
    Param("port", 18944, "TCP port of the OpenIGTLink server (18944: the OpenIGTLink default)", True, (1, 65535)),
    Param("listen_address", "127.0.0.1", "address the server listens on: 127.0.0.1 = this machine only; any other "
          "(e.g. 0.0.0.0, every interface) lets other machines read the pose and send a prior, and is logged with a "
          "warning", True),
    Param("frames.carm", "carm_isocenter", "parent frame of the pose taken from /tf (the registration node's "
          "frames.carm)", True),
    Param("frames.ct", "ct", "child frame of the pose taken from /tf (the registration node's frames.ct)", True),
    Param("transform_device", "CTToCArm", "OpenIGTLink device name of the TRANSFORM (CT RAS mm -> C-arm RAS mm)",
          True),
    Param("image_device", "CTOverlay", "OpenIGTLink device name of the IMAGE (the overlay)", True),
    Param("status_device", "CTToCArmStatus", "OpenIGTLink device name of the STRING status: 'tracking' or "
          "'no pose: <reason>'", True),
    Param("image_topic", "diffdrr_registration/overlay", "images sent as IMAGE (sensor_msgs/Image; the "
          "registration node's ~/overlay), subscribed only while a client is connected", True),
    Param("max_pose_age_s", 5.0, "a pose older than this (clock now - its stamp, s) is not sent; the status says "
          "'no pose' (0: no age limit)", False, (0.0, 86400.0)),
    Param("status_period_s", 1.0, "the status STRING is sent at least this often, s", True, (0.05, 60.0)),
    Param("prior_device", "", "device name of a TRANSFORM received from a client (CT RAS mm -> C-arm RAS mm) that "
          "is published on prior_topic ('': none)", True),
    Param("prior_topic", "diffdrr_registration/prior_pose", "where a received prior goes (geometry_msgs/"
          "PoseStamped: the CT frame in frames.carm, metres; latched)", True),
    Param("diagnostics_period_s", 1.0, "diagnostics publishing period, s", True, (0.05, 60.0)),
]

#: Clients served at the same time; more connections are closed at once (logged).
MAX_CLIENTS = 8
#: Bodies larger than this are skipped unread (the bridge only reads TRANSFORMs).
MAX_BODY_BYTES = 16 * 1024 * 1024
#: A message cut short for this long (no bytes coming) ends the connection, s.
RECEIVE_TIMEOUT_S = 5.0
#: A message that takes longer than this to send (the client does not read) ends the connection, s.
SEND_TIMEOUT_S = 5.0
_POLL_S = 0.02
_HEADER = struct.Struct("> H 12s 20s I I Q Q")  # version, type, device, seconds, fraction, body size, CRC


class ProtocolError(RuntimeError):
    """The byte stream from a client is not OpenIGTLink (the connection cannot be resynchronised)."""


@dataclass
class ServerCounters:
    """What the server did (read under :attr:`IgtlServer.lock`)."""

    connections: int = 0
    refused: int = 0  # connections closed because MAX_CLIENTS were connected
    protocol_errors: int = 0  # connections closed for bytes that are not OpenIGTLink
    bad_messages: int = 0  # well-framed messages dropped (CRC, content that does not unpack)
    skipped_large: int = 0
    received: int = 0
    sent: int = 0
    send_errors: int = 0
    replaced: int = 0  # messages not sent because a newer one of the same device came first
    sent_by_type: dict[str, int] = field(default_factory=dict)

    def count_sent(self, kind: str) -> None:
        self.sent_by_type[kind] = self.sent_by_type.get(kind, 0) + 1
        self.sent += 1


class IgtlServer(socketserver.ThreadingMixIn, pyigtl.OpenIGTLinkServer):
    """``pyigtl.OpenIGTLinkServer`` bound to any address, one thread per client.

    pyigtl's public API stays: ``send_message(msg)`` (for every connected client; it never
    waits, ``wait`` is ignored; a message not yet sent is replaced by a newer one of the same
    type and device), ``is_connected()``, ``stop()``. Received messages go to
    ``on_message(msg)`` (called on the client's thread); ``on_connect()`` returns the messages
    a new client gets first (the current pose and status). ``log(key, text)`` reports a
    problem (the caller prints it once per key), ``info(text)`` a client coming or going.

    ``OpenIGTLinkServer.__init__`` is not called: on Linux it binds a network interface's
    address (never the one asked for) and installs SIGINT/SIGTERM handlers that would run
    before ROS's.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, host: str, port: int, on_message: Callable[[pyigtl.MessageBase], None] | None = None,
                 on_connect: Callable[[], list[pyigtl.MessageBase]] | None = None,
                 log: Callable[[str, str], None] | None = None, info: Callable[[str], None] | None = None,
                 receive_timeout_s: float = RECEIVE_TIMEOUT_S, max_clients: int = MAX_CLIENTS) -> None:
        OpenIGTLinkBase.__init__(self, body_receive_timeout_sec=receive_timeout_s)
        self.max_clients = max_clients
        self.host, self.port = host, port
        self.on_message = on_message or (lambda msg: None)
        self.on_connect = on_connect or list
        self.log = log or (lambda key, text: None)
        self.info = info or (lambda text: None)
        self.lock = threading.Lock()
        self.counters = ServerCounters()
        self._clients: dict[int, _Client] = {}
        self._next_client = 0
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socketserver.TCPServer.__init__(self, (host, port), _Handler)
        self.port = self.server_address[1]  # the port bound (port 0: one the system chose)
        self._thread: threading.Thread | None = None
        self._started = False

    # -- pyigtl API ------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.communication_thread_stop_requested = False
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"igtl-server:{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, end every client's connection (within ~SEND_TIMEOUT_S), free the port."""
        self.communication_thread_stop_requested = True
        if self._started and self._thread is not None and self._thread.is_alive():
            self.shutdown()
        self.server_close()
        with self.lock:
            clients = list(self._clients.values())
        deadline = time.monotonic() + SEND_TIMEOUT_S + 1.0  # a client thread ends within a send
        for c in clients:
            c.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._started = False

    def is_connected(self) -> bool:
        with self.lock:
            return bool(self._clients)

    def serving(self) -> bool:
        """The accepting thread runs (False once it has ended, for whatever reason)."""
        return self._thread is not None and self._thread.is_alive()

    def client_addresses(self) -> list[str]:
        with self.lock:
            return [c.address for c in self._clients.values()]

    def _add_message_to_send_queue(self, message, wait=False) -> bool:
        """Pack once (on the caller's thread: errors raise there) and hand to every client."""
        if not isinstance(message, pyigtl.MessageBase) or not message.is_valid:
            return False
        if not self.is_connected():
            return True
        packed = message.pack()
        with self.lock:
            for c in self._clients.values():
                self.counters.replaced += c.put(message, packed)
        return True

    def handle_error(self, request, client_address) -> None:  # socketserver's hook: no traceback on stderr
        exc = sys.exc_info()[1]
        self.log("handler", f"OpenIGTLink connection from {client_address}: {type(exc).__name__}: {exc}")

    # -- clients ---------------------------------------------------------------------

    def _register(self, address: str) -> _Client | None:
        with self.lock:
            self.counters.connections += 1
            full = len(self._clients) >= self.max_clients
            if full:
                self.counters.refused += 1
            else:
                self._next_client += 1
                client = _Client(self._next_client, address, threading.current_thread())
                self._clients[client.id] = client
                self._connected = True
        if full:
            self.log("refused", f"OpenIGTLink client {address} refused: {self.max_clients} clients connected")
            return None
        self.info(f"OpenIGTLink client {address} connected")
        try:  # the current state; a message sent since registering is newer and stays
            first = [(m, m.pack()) for m in self.on_connect()]
        except Exception as exc:  # never a reason to refuse the client
            self.log("on_connect", f"OpenIGTLink: cannot build the messages for a new client: {exc}")
            first = []
        with self.lock:
            for m, packed in first:
                client.put(m, packed, replace=False)
        return client

    def _unregister(self, client: _Client) -> None:
        with self.lock:
            self._clients.pop(client.id, None)
            self._connected = bool(self._clients)
        self.info(f"OpenIGTLink client {client.address} disconnected")


@dataclass
class _Client:
    id: int
    address: str
    thread: threading.Thread
    #: (type, device) -> the packed message, oldest first
    pending: OrderedDict[tuple[str, str], bytes] = field(default_factory=OrderedDict)

    def put(self, message: pyigtl.MessageBase, packed: bytes, replace: bool = True) -> int:
        """Hold ``packed`` for sending (under the server's lock); 1 if it replaced an unsent one.

        ``replace=False``: keep a pending message of the same type and device instead.
        """
        key = (message.message_type, message.device_name)
        if not replace and key in self.pending:
            return 0
        replaced = self.pending.pop(key, None) is not None
        self.pending[key] = packed
        return int(replaced)

    def take(self) -> tuple[str, bytes] | None:
        """The oldest pending message (under the server's lock)."""
        if not self.pending:
            return None
        (kind, _), packed = self.pending.popitem(last=False)
        return kind, packed


class _Handler(socketserver.BaseRequestHandler):
    """One client: buffered, checked reads; queued sends; ends on EOF, garbage or a dead peer."""

    server: IgtlServer

    def handle(self) -> None:
        srv = self.server
        address = f"{self.client_address[0]}:{self.client_address[1]}"
        client = srv._register(address)
        if client is None:
            return
        sock = self.request
        sock.settimeout(SEND_TIMEOUT_S)
        reader = _Reader(srv)
        try:
            while not srv.communication_thread_stop_requested:
                readable, _, _ = select.select([sock], [], [], _POLL_S)
                if readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        break  # the client closed the connection
                    for msg in reader.feed(data):
                        self._deliver(msg)
                reader.check_stalled()
                while True:
                    with srv.lock:
                        item = client.take()
                    if item is None:
                        break
                    kind, packed = item
                    sock.sendall(packed)
                    with srv.lock:
                        srv.counters.count_sent(kind)
        except ProtocolError as exc:
            with srv.lock:
                srv.counters.protocol_errors += 1
            srv.log("protocol", f"OpenIGTLink client {address} disconnected: not OpenIGTLink ({exc})")
        except OSError as exc:  # reset, broken pipe, send timeout: the client is gone
            with srv.lock:
                srv.counters.send_errors += 1
            srv.log("socket", f"OpenIGTLink client {address} lost: {type(exc).__name__}: {exc}")
        finally:
            srv._unregister(client)
            # TCPServer.shutdown_request closes the socket after handle() returns

    def _deliver(self, msg: pyigtl.MessageBase) -> None:
        srv = self.server
        with srv.lock:
            srv.counters.received += 1
        try:
            srv.on_message(msg)
        except Exception as exc:  # the node's handler: log, never end the connection for it
            srv.log("on_message", f"OpenIGTLink: handling a {msg.message_type} failed: {exc}")


class _Reader:
    """Turns a client's byte stream into pyigtl messages; raises :class:`ProtocolError` on garbage."""

    def __init__(self, srv: IgtlServer) -> None:
        self.srv = srv
        self.buffer = bytearray()
        self.header: dict | None = None
        self.skip = 0  # bytes of an oversized body still to discard
        self.last_progress = time.monotonic()

    def feed(self, data: bytes) -> list[pyigtl.MessageBase]:
        self.last_progress = time.monotonic()
        self.buffer += data
        out = []
        while True:
            if self.skip:
                n = min(self.skip, len(self.buffer))
                self.skip -= n
                del self.buffer[:n]
                if self.skip:
                    return out
            if self.header is None:
                if len(self.buffer) < pyigtl.MessageBase.IGTL_HEADER_SIZE:
                    return out
                self.header = self._parse_header(bytes(self.buffer[:pyigtl.MessageBase.IGTL_HEADER_SIZE]))
                del self.buffer[:pyigtl.MessageBase.IGTL_HEADER_SIZE]
                if self.header["body_size"] > MAX_BODY_BYTES:
                    self.skip = self.header["body_size"]
                    self.header = None
                    with self.srv.lock:
                        self.srv.counters.skipped_large += 1
                    continue
            size = self.header["body_size"]
            if len(self.buffer) < size:
                return out
            body = bytes(self.buffer[:size])
            del self.buffer[:size]
            header, self.header = self.header, None
            msg = self._unpack(header, body)
            if msg is not None:
                out.append(msg)

    def check_stalled(self) -> None:
        partial = self.buffer or self.header is not None or self.skip
        limit = self.srv.body_receive_timeout_sec
        if partial and time.monotonic() - self.last_progress > limit:
            raise ProtocolError(f"a message cut short: nothing more for {limit:g} s")

    @staticmethod
    def _parse_header(raw: bytes) -> dict:
        version, kind, _device, _, _, _, crc = _HEADER.unpack(raw)
        if version not in (1, 2):
            raise ProtocolError(f"header version {version} (1 or 2 expected)")
        kind_text = kind.rstrip(b"\0 ")
        if not kind_text or not all(0x21 <= c < 0x7F for c in kind_text):
            raise ProtocolError(f"message type {kind!r} is not an OpenIGTLink type name")
        try:
            fields = pyigtl.MessageBase.parse_header(raw)
        except (UnicodeDecodeError, struct.error) as exc:
            raise ProtocolError(f"unreadable header: {exc}") from exc
        fields["crc"] = crc
        return fields

    def _unpack(self, header: dict, body: bytes) -> pyigtl.MessageBase | None:
        srv = self.srv
        if CRC64(body) != header["crc"]:
            with srv.lock:
                srv.counters.bad_messages += 1
            srv.log("crc", f"OpenIGTLink: {header['message_type']} {header['device_name']!r} dropped: CRC mismatch")
            return None
        msg = pyigtl.MessageBase.create_message(header["message_type"])
        if msg is None:
            return None  # a type pyigtl does not know (GET_*, STT_*, ...): ignored
        try:
            msg.unpack(header, body)
        except Exception as exc:  # struct.error, ValueError, NotImplementedError (sub-volumes), ...
            with srv.lock:
                srv.counters.bad_messages += 1
            srv.log("unpack", f"OpenIGTLink: {header['message_type']} {header['device_name']!r} dropped: {exc}")
            return None
        return msg


# ---------------------------------------------------------------------------------- the node


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def transform_msg_to_lps_m(tr) -> torch.Tensor:
    """geometry_msgs/Transform (m, quaternion) -> 4x4 float64 in metres (LPS axes, as on /tf)."""
    q = torch.tensor([tr.rotation.w, tr.rotation.x, tr.rotation.y, tr.rotation.z], dtype=torch.float64)
    t = torch.tensor([tr.translation.x, tr.translation.y, tr.translation.z], dtype=torch.float64)
    if not (bool(torch.isfinite(q).all()) and bool(torch.isfinite(t).all())) or float(q.norm()) < 1e-6:
        raise ValueError("non-finite values or a zero quaternion")
    return make_transform(quaternion_to_matrix(q), t)


def image_pixels_for_slicer(msg: Image) -> np.ndarray:
    """An Image as pyigtl's ``(k=1, rows, columns[, components])`` array; colour as RGB (alpha dropped)."""
    px = image_to_pixels(msg)  # (H, W, C)
    if msg.encoding.startswith("bgr"):
        px = px[..., [2, 1, 0]]
    elif px.shape[2] == 4:
        px = px[..., :3]
    return np.ascontiguousarray(px[None, ..., 0] if px.shape[2] == 1 else px[None])


def image_ijk_to_ras(height: int, width: int) -> np.ndarray:
    """Where the IMAGE sits in Slicer: 1 mm pixels, columns to -R, rows to -A, centred at the RAS origin.

    In Slicer's axial view (patient right on the screen's left) the picture is upright and
    not mirrored, as on the C-arm's monitor.
    """
    m = np.diag([-1.0, -1.0, 1.0, 1.0])
    m[:3, 3] = [(width - 1) / 2.0, (height - 1) / 2.0, 0.0]
    return m


class IgtlBridgeNode(Node):
    """The bridge: /tf and the overlay -> OpenIGTLink clients; a client's prior -> ROS."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for p in BRIDGE_PARAMS:
            self.declare_parameter(p.name, p.default, p.descriptor())
        self.parent, self.child = (self._p("frames.carm").lstrip("/"), self._p("frames.ct").lstrip("/"))
        if not self.parent or not self.child:
            raise StartupError("frames.carm and frames.ct must not be empty")
        self.devices = {k: self._p(f"{k}_device") for k in ("transform", "image", "status")}
        for k, v in self.devices.items():
            if not v or len(v.encode()) > 20:
                raise StartupError(f"{k}_device must be 1 to 20 bytes (an OpenIGTLink device name), got {v!r}")
        self.prior_device = self._p("prior_device")
        if len(self.prior_device.encode()) > 20:
            raise StartupError(f"prior_device must be at most 20 bytes, got {self.prior_device!r}")
        self.host, self.port = self._p("listen_address"), int(self._p("port"))

        self._lock = threading.Lock()  # the state below, shared with the server's client threads
        self._pose: tuple[float, np.ndarray] | None = None  # (stamp s, T_ras_mm 4x4) of the newest pose
        self._image: Image | None = None
        self._stats = {"poses_received": 0, "poses_sent": 0, "poses_stale": 0, "poses_invalid": 0,
                       "poses_out_of_order": 0, "images_received": 0, "images_sent": 0, "images_invalid": 0,
                       "priors_received": 0, "priors_published": 0, "priors_rejected": 0, "server_restarts": 0}
        self._logged: set[str] = set()
        self._priors: deque[tuple[float, np.ndarray]] = deque(maxlen=10)
        self._server_error = ""
        self._last_restart = -math.inf

        self.server = self._start_server()

        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.prior_pub = self.create_publisher(PoseStamped, self._p("prior_topic"), latched) \
            if self.prior_device else None
        self.create_subscription(TFMessage, "/tf", self._on_tf, TF_QOS)
        self._image_sub = None  # only while a client is connected (see _tick)
        self.create_timer(self._p("status_period_s"), self._send_status)
        self.create_timer(self._p("diagnostics_period_s"), self._publish_diagnostics)
        self.create_timer(0.05, self._tick)
        self.get_logger().info(
            f"sending {self.parent} -> {self.child} from /tf as TRANSFORM {self.devices['transform']!r}, "
            f"{self._p('image_topic')} as IMAGE {self.devices['image']!r}, status STRING "
            f"{self.devices['status']!r}" + (f"; TRANSFORM {self.prior_device!r} from a client -> "
                                              f"{self._p('prior_topic')}" if self.prior_device else ""))

    # ---------------------------------------------------------------- helpers

    def _p(self, name: str):
        return self.get_parameter(name).value

    def _log_once(self, key: str, text: str) -> None:
        """Warn the first time ``key`` happens; later ones only count (diagnostics)."""
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        self.get_logger().warning(text + " (logged once)")

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _start_server(self, counters: ServerCounters | None = None) -> IgtlServer:
        try:
            server = IgtlServer(self.host, self.port, on_message=self._on_igtl_message,
                                on_connect=self._messages_for_new_client, log=self._log_once,
                                info=self.get_logger().info)
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        if counters is not None:
            server.counters = counters  # the diagnostics count on across a restart
        where = f"{self.host}:{server.port}"
        if _is_loopback(self.host):
            self.get_logger().info(f"OpenIGTLink server on {where} (this machine only)")
        else:
            self.get_logger().warning(
                f"OpenIGTLink server on {where}: listen_address {self.host!r} is not loopback, other machines can "
                f"connect, read the CT pose and images and send a prior (no authentication in OpenIGTLink)")
        server.start()
        return server

    def _pose_state(self, now: float) -> tuple[str, float | None]:
        """``("tracking" | "no pose: ...", age s)`` of the newest pose (under ``self._lock``)."""
        if self._pose is None:
            return f"no pose: no transform {self.parent} -> {self.child} received on /tf yet", None
        age = now - self._pose[0]
        limit = float(self._p("max_pose_age_s"))
        if limit > 0 and age > limit:
            return f"no pose: the last pose is {age:.1f} s old (max_pose_age_s {limit:g})", age
        return "tracking", age

    def _status_message(self, text: str, now: float) -> pyigtl.StringMessage:
        stamp = self._pose[0] if text == "tracking" and self._pose is not None else now
        return pyigtl.StringMessage(text, timestamp=stamp, device_name=self.devices["status"])

    def _transform_message(self, stamp: float, ras_mm: np.ndarray) -> pyigtl.TransformMessage:
        return pyigtl.TransformMessage(ras_mm, timestamp=stamp, device_name=self.devices["transform"])

    def _image_message(self, msg: Image) -> pyigtl.ImageMessage:
        px = image_pixels_for_slicer(msg)
        return pyigtl.ImageMessage(px, ijk_to_world_matrix=image_ijk_to_ras(px.shape[1], px.shape[2]),
                                   world_coordinate_system="ras", timestamp=stamp_to_seconds(msg.header.stamp),
                                   device_name=self.devices["image"])

    def _send(self, message: pyigtl.MessageBase) -> bool:
        try:
            return self.server.send_message(message, wait=False)
        except Exception as exc:  # packing (pyigtl) errors: log, go on
            self._log_once(f"send:{message.message_type}", f"cannot send {message.message_type}: {exc}")
            return False

    # ---------------------------------------------------------------- ROS side

    def _on_tf(self, msg: TFMessage) -> None:
        for tr in msg.transforms:
            if tr.header.frame_id.lstrip("/") == self.parent and tr.child_frame_id.lstrip("/") == self.child:
                self._on_pose(tr)

    def _on_pose(self, tr) -> None:
        stamp = stamp_to_seconds(tr.header.stamp)
        try:
            ras_mm = lps_m_to_ras_mm(transform_msg_to_lps_m(tr.transform)).numpy()
        except ValueError as exc:
            self._count("poses_invalid")
            self._log_once("pose_invalid", f"ignored a {self.parent} -> {self.child} transform: {exc}")
            return
        now = self._now()
        with self._lock:
            self._stats["poses_received"] += 1
            if self._pose is not None and stamp < self._pose[0]:  # a replay started again, the clock went back:
                self._stats["poses_out_of_order"] += 1  # the pose on /tf now is still the newest one received
            self._pose = (stamp, ras_mm)
            text, _ = self._pose_state(now)
            if text != "tracking":
                self._stats["poses_stale"] += 1
            status = self._status_message(text, now)
        if text == "tracking" and self._send(self._transform_message(stamp, ras_mm)):
            self._count("poses_sent")
        self._send(status)

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            self._stats["images_received"] += 1
            self._image = msg
        if not self.server.is_connected():
            return
        try:
            message = self._image_message(msg)
        except (ImageConversionError, ValueError) as exc:
            self._count("images_invalid")
            self._log_once("image_invalid", f"cannot send an image from {self._p('image_topic')}: {exc}")
            return
        if self._send(message):
            self._count("images_sent")

    def _send_status(self) -> None:
        now = self._now()
        with self._lock:
            text, _ = self._pose_state(now)
            status = self._status_message(text, now)
        self._send(status)

    def _tick(self) -> None:
        """Publish priors from clients; follow the overlay while a client is connected; restart a dead server.

        The registration node renders its overlay only while someone subscribes (a DRR per
        frame): the bridge subscribes only while it has a client to send it to.
        """
        connected = self.server.is_connected()
        if connected and self._image_sub is None:
            self._image_sub = self.create_subscription(Image, self._p("image_topic"), self._on_image, 2)
        elif not connected and self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None
        while True:
            try:
                _stamp, ras_mm = self._priors.popleft()
            except IndexError:
                break
            self._publish_prior(ras_mm)
        if not self.server.serving() and time.monotonic() - self._last_restart > 1.0:
            self._last_restart = time.monotonic()
            self._restart_server()

    def _restart_server(self) -> None:
        old = self.server
        try:
            old.stop()
        except Exception as exc:
            self._log_once("stop", f"stopping the OpenIGTLink server: {exc}")
        try:
            self.server = self._start_server(old.counters)
        except StartupError as exc:
            self._server_error = str(exc)
            self._log_once("restart_failed", f"OpenIGTLink server stopped and cannot restart: {exc}")
            return
        self._server_error = ""
        self._count("server_restarts")
        self.get_logger().warning("the OpenIGTLink server's thread had ended: restarted")

    def _publish_prior(self, ras_mm: np.ndarray) -> None:
        t = ras_mm_to_lps_m(torch.as_tensor(ras_mm, dtype=torch.float64))
        rot = t[:3, :3]
        ortho = float((rot @ rot.T - torch.eye(3, dtype=torch.float64)).abs().max())
        if not bool(torch.isfinite(t).all()) or ortho > 1e-3 or float(torch.linalg.det(rot)) <= 0:
            self._count("priors_rejected")
            self._log_once("prior_rigid", f"prior {self.prior_device!r} ignored: not a rigid transform "
                                          "(scaled, sheared or mirrored)")
            return
        q = matrix_to_quaternion(rot).tolist()  # w, x, y, z
        msg = PoseStamped()
        msg.header.stamp = seconds_to_stamp(self._now())
        msg.header.frame_id = self.parent
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in t[:3, 3])
        msg.pose.orientation.w, msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z = q
        self.prior_pub.publish(msg)
        first = self._stats["priors_published"] == 0
        self._count("priors_published")
        if first:
            self.get_logger().info(f"prior {self.prior_device!r} from a client published on {self._p('prior_topic')}")

    def _publish_diagnostics(self) -> None:
        now = self._now()
        srv = self.server
        with self._lock:
            text, age = self._pose_state(now)
            values = dict(self._stats)
            pose_stamp = self._pose[0] if self._pose is not None else None
        with srv.lock:
            c = srv.counters
            values.update(connections_total=c.connections, connections_refused=c.refused,
                          protocol_errors=c.protocol_errors, messages_dropped=c.bad_messages,
                          messages_skipped_too_large=c.skipped_large, messages_received=c.received,
                          messages_sent=c.sent, connection_errors=c.send_errors, messages_replaced_unsent=c.replaced,
                          **{f"sent_{k.lower()}": v for k, v in c.sent_by_type.items()})
        clients = srv.client_addresses()
        values.update(client_connected=bool(clients), clients=len(clients), client_addresses=" ".join(clients),
                      listen=f"{self.host}:{srv.port}", status=text,
                      last_pose_age_s="" if age is None else f"{age:.3f}",
                      last_pose_stamp="" if pose_stamp is None else f"{pose_stamp:.9f}")
        if self._server_error:
            level, message = DiagnosticStatus.ERROR, f"server down: {self._server_error}"
        elif text == "tracking" or pose_stamp is None:
            level = DiagnosticStatus.OK
            message = f"{text}; {len(clients)} client(s) connected"
        else:
            level, message = DiagnosticStatus.WARN, f"{text}; {len(clients)} client(s) connected"
        status = DiagnosticStatus(level=level, name=f"diffdrr_ros: {NODE_NAME}", message=message,
                                  hardware_id=f"igtl://{self.host}:{srv.port}",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    # ---------------------------------------------------------------- OpenIGTLink side (client threads)

    def _messages_for_new_client(self) -> list[pyigtl.MessageBase]:
        """What a client gets on connecting: the status, the pose if fresh, the newest image if fresh."""
        now = self._now()
        with self._lock:
            text, _ = self._pose_state(now)
            out: list[pyigtl.MessageBase] = [self._status_message(text, now)]
            if text == "tracking":
                out.append(self._transform_message(*self._pose))
            image = self._image
        limit = float(self._p("max_pose_age_s"))
        if image is not None and (limit <= 0 or now - stamp_to_seconds(image.header.stamp) <= limit):
            with contextlib.suppress(ImageConversionError, ValueError):  # counted when it arrived
                out.append(self._image_message(image))
        return out

    def _on_igtl_message(self, msg: pyigtl.MessageBase) -> None:
        if not self.prior_device or msg.device_name != self.prior_device:
            return
        if msg.message_type != "TRANSFORM":
            self._log_once("prior_type", f"{msg.message_type} named {self.prior_device!r} ignored (a TRANSFORM "
                                         "is expected)")
            return
        self._count("priors_received")
        self._priors.append((float(msg.timestamp), np.asarray(msg.matrix, dtype=np.float64)))

    def shutdown(self) -> None:
        """Stop the server (called by :func:`.runtime.run_node` before the node is destroyed).

        Quietly: ROS's context may already be shut down, so the client threads no longer log.
        """
        self.server.info = lambda text: None
        self.server.log = lambda key, text: None
        self.server.stop()


def main(args: list[str] | None = None) -> int:
    """``ros2 run diffdrr_ros igtl_bridge --ros-args -p port:=18944 -p prior_device:=CTPrior``."""
    return run_node(IgtlBridgeNode, NODE_NAME, (StartupError,), args)


if __name__ == "__main__":
    sys.exit(main())
