"""The registration node's frames in: subscriptions, their QoS and accounting, and each frame's decoding.

:class:`ImageInput`, composed by :class:`.registration_node.RegistrationGlue`, owns

* the image subscriptions: ``Image`` on a topic, or ``CompressedImage`` on ``<topic>/compressed``
  (image_transport's name) with ``image.transport: compressed``; their QoS from
  :func:`.qos.image_qos` for the publishers there are, re-chosen when they change with
  ``qos.image_reliability: auto`` (:meth:`ImageInput.follow_publishers`, every diagnostics period);
* the accounting on the topics' :class:`.topic_status.TopicStatus`: DDS message-lost events and
  stamp gaps (frames missing), each a counter and a throttled warning;
* a frame's pixels: decoded (:func:`.conversions.image_to_array`, cv_bridge or the built-in
  decoder; :func:`.conversions.compressed_to_array`), binned by ``image.binning`` on arrival
  (:func:`.conversions.bin_frame`) and made the registration's fixed image and exposed-pixel mask
  (``image.*``, :meth:`ImageInput.prepare`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from ..core.geometry import Detector
from ..core.registration import FixedImageError, prepare_fixed
from .conversions import ImageConversionError, bin_frame, compressed_to_array, image_to_array
from .qos import image_qos
from .runtime import StartupError
from .topic_status import TopicStatus


class ImageInput:
    """The frames' subscriptions, QoS, lost-frame accounting and decoding for ``node`` (see the module docstring).

    ``lock`` is the node's state lock (the topic statuses and counters are read under it by the
    diagnostics); ``count(counter, n)`` adds ``n`` to one of the node's diagnostics counters.
    """

    def __init__(self, node: Node, lock: threading.Lock, count: Callable[[str, int], None]) -> None:
        self.node = node
        self._lock = lock
        self._count = count
        self.binning = 1  # image.binning, read by configure()
        self.statuses: dict[str, TopicStatus] = {}  # the node's input topic statuses, by key
        self._subs: dict[str, tuple[object, str, object]] = {}  # key -> (subscription, topic, callback)

    def _p(self, name: str):
        return self.node.get_parameter(name).value

    def configure(self) -> None:
        """Read ``image.binning`` (at the node's configure; :attr:`statuses` is set by the node)."""
        self.binning = int(self._p("image.binning"))

    def working_detector(self, det: Detector) -> Detector:
        """The detector the registration works on: ``det`` (frames as delivered) binned by ``image.binning``."""
        b = self.binning
        if det.height % b or det.width % b:
            raise StartupError(f"image.binning {b} must divide the detector size {det.height}x{det.width}")
        work = det.scaled(b) if b > 1 else det
        if max(work.shape) > 256:
            self.node.get_logger().warning(
                f"frames of {det.height}x{det.width} px are registered at {work.height}x{work.width}: slow; set "
                f"image.binning (e.g. {max(2, max(det.shape) // 128)}) to register at ~128 px "
                "(docs/image-streams.md)")
        return work

    # ------------------------------------------------------------------ subscriptions

    def topic(self, topic: str) -> str:
        """The topic frames come on: ``topic``, or ``topic/compressed`` (image_transport's name) when compressed."""
        return f"{topic}/compressed" if self._p("image.transport") == "compressed" else topic

    def subscribe(self, key: str, topic: str, callback) -> None:
        """(Re)subscribe ``key``'s frames on ``topic`` with :func:`.qos.image_qos` for its current publishers."""
        node = self.node
        old = self._subs.pop(key, None)
        if old is not None:
            node.destroy_subscription(old[0])
        offered = [info.qos_profile for info in node.get_publishers_info_by_topic(topic)]
        qos = image_qos(self._p("qos.image_reliability"), self._p("qos.image_depth"), offered)
        msg_type = CompressedImage if self._p("image.transport") == "compressed" else Image
        events = SubscriptionEventCallbacks(
            message_lost=lambda info, k=key: self._on_message_lost(k, info),
            incompatible_qos=lambda info, t=topic: node.get_logger().warning(
                f"a publisher of {t} offers a QoS this subscription cannot match ({info.last_policy_kind}); "
                "with qos.image_reliability auto the node re-subscribes within a diagnostics period",
                throttle_duration_sec=10.0))
        try:
            sub = node.create_subscription(msg_type, topic, callback, qos, event_callbacks=events)
        except Exception as exc:  # an rmw without the message-lost event: subscribe without the events
            node.get_logger().info(f"{topic}: no DDS message-lost events ({exc})")
            sub = node.create_subscription(msg_type, topic, callback, qos)
        self._subs[key] = (sub, topic, callback)
        node.get_logger().info(f"frames from {node.resolve_topic_name(topic)} ({msg_type.__name__}, "
                               f"{qos.reliability.name.lower()}, keep last {qos.depth})")

    def unsubscribe(self) -> None:
        """Destroy every image subscription."""
        for sub, _, _ in self._subs.values():
            self.node.destroy_subscription(sub)
        self._subs = {}

    def follow_publishers(self) -> None:
        """``qos.image_reliability: auto``: follow the publishers (a best-effort one appeared, or went)."""
        if self._p("qos.image_reliability") != "auto":
            return
        for key, (sub, topic, callback) in list(self._subs.items()):
            offered = [info.qos_profile for info in self.node.get_publishers_info_by_topic(topic)]
            if not offered:
                continue  # nothing to match yet (or any more): keep what there is
            want = image_qos("auto", self._p("qos.image_depth"), offered).reliability
            if want != sub.qos_profile.reliability:
                if want == ReliabilityPolicy.BEST_EFFORT:
                    self.node.get_logger().warning(
                        f"a publisher of {topic} offers best effort only: subscribing best effort (frames above "
                        "~256 px a side may be lost on the way; both processes with config/fastdds_large_frames.xml "
                        "or a reliable publisher keep them; docs/image-streams.md)")
                self.subscribe(key, topic, callback)

    # ------------------------------------------------------------------ accounting

    def _on_message_lost(self, key: str, info) -> None:
        status = self.statuses.get(key)
        if status is not None:
            with self._lock:
                status.extra["Messages lost (DDS)"] = int(info.total_count)
        self.node.get_logger().warning(f"{info.total_count_change} message(s) lost on the way to "
                                       f"{status.topic if status else key} ({info.total_count} in all)",
                                       throttle_duration_sec=5.0)

    def tick(self, key: str, stamp: float) -> None:
        """An input message stamped ``stamp`` (s) arrived on ``key`` (any input with a status: the joint
        states' too); stamp gaps (frames missing) are logged, throttled."""
        status = self.statuses.get(key)
        if status is None:
            return
        missing = status.tick(stamp)
        if missing:
            self._count("frames_missing_stamp_gaps", missing)
            median = status.gaps.median_interval() or 0.0
            self.node.get_logger().warning(
                f"{missing} frame(s) missing on {status.topic} before stamp {stamp:.3f} s "
                f"(stamps usually {median:.3f} s apart; {status.gaps.missing} missing in all)",
                throttle_duration_sec=5.0)

    # ------------------------------------------------------------------ frames

    def prepare(self, msg: Image | CompressedImage, det: Detector
                ) -> tuple[np.ndarray, torch.Tensor, np.ndarray | None]:
        """Pixels, fixed image (DRR-like units) and exposed-pixel mask of a frame for ``det`` (``image.*``).

        ``det`` is the working detector: the frame must have ``image.binning`` times its size and is
        binned first (before the log transform and everything else). Raises ``ValueError``
        (conversion, size, pixel values) with the reason as the node reports it.
        """
        if isinstance(msg, CompressedImage):
            try:
                pixels = compressed_to_array(msg)
            except ImageConversionError as exc:
                self._count("compressed_decode_errors", 1)
                raise ValueError(f"bad compressed image: {exc}") from exc
        else:
            try:
                pixels = image_to_array(msg)
            except ImageConversionError as exc:
                raise ValueError(f"bad image: {exc}") from exc
        b = self.binning
        if pixels.shape != (det.height * b, det.width * b):
            binned = f" (binned by {b} to {det.height}x{det.width})" if b > 1 else ""
            raise ValueError(f"wrong image size {pixels.shape[0]}x{pixels.shape[1]}, expected "
                             f"{det.height * b}x{det.width * b}{binned}")
        pixels = bin_frame(pixels, b)
        i0, log = self._p("image.i0"), self._p("image.log_transform")
        try:
            fixed = prepare_fixed(pixels, log_transform=log, i0=i0 if i0 > 0 else None, invert=self._p("image.invert"))
        except FixedImageError as exc:
            raise ValueError(f"bad image: {exc}") from exc
        dark = self._p("image.mask_dark_fraction")
        # Unexposed pixels (collimator) carry no line integral.
        mask = pixels > dark * (i0 if i0 > 0 else float(pixels.max())) if log and dark > 0 else None
        return pixels, fixed, mask
