"""The registration node: fluoroscopy + C-arm joints in, CT pose on TF + DRR overlay out.

Thin glue over :mod:`diffdrr_ros.core`: parameters in, messages converted, the core's
:class:`~diffdrr_ros.core.registration.Registrar` called on a worker thread, messages out.

Interfaces (names relative to the node's namespace; see README):

* subscribes ``fluoro/image`` (Image; or CompressedImage on ``fluoro/image/compressed`` with
  ``image.transport: compressed``; reliable unless the publishers are best effort,
  :func:`.qos.image_qos`; decoded and binned on arrival: :class:`.image_input.ImageInput`),
  ``carm/joint_states`` (JointState), optionally
  ``fluoro/camera_info`` (CameraInfo);
* publishes ``/tf`` (carm -> source and carm -> detector for every frame paired with joints,
  carm -> ct for known poses, stamped with the image time), ``/tf_static`` (world -> carm),
  ``~/ct_pose`` (PoseWithCovarianceStamped), ``~/overlay`` (Image rgb8) with
  ``~/overlay/camera_info`` (CameraInfo: the source as the pinhole; a biplane's plane B: ``~/overlay_b``,
  and its source and detector on ``/tf``), ``/diagnostics``
  (DiagnosticArray: the registration, and each input topic's frequency / stamp status as
  diagnostic_updater reports them, :mod:`.topic_status`);
* services ``~/reregister`` and ``~/reset`` (std_srvs/Trigger).

With ``calibration.enabled`` (poly DRR only) the physics (``registration.kvp`` ...) is fitted once
to the first ``calibration.frames`` poses that went on /tf (:class:`PhysicsCalibrationState`).

Frames arriving while a registration runs replace the waiting one (latest wins).
:class:`RegistrationNode` is active from construction; :class:`ManagedRegistrationNode` is the
same node as a lifecycle node (``managed_registration_node``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State as LifecycleState
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from ..core.geometry import CArmJoints, Detector, cam_from_iso, initial_pose, iso_from_ct, table_transform
from ..core.geometry.rotations import invert_transform, make_transform
from ..core.overlay import overlay
from ..core.registration import (
    PHYSICS_PARAMETERS,
    AmbiguityGate,
    FrameStart,
    KnownPoseGate,
    LostTrackGate,
    PhysicsCalibration,
    PoseCovariance,
    Registrar,
    RegistrationConfig,
    RegistrationResult,
    Tracker,
    View,
    ViewWindow,
    WindowView,
    calibrate_physics,
    disagreeing_views,
    own_view_shift_mm,
    pose_covariance,
)
from .conversions import (
    JointNames,
    JointStateError,
    array_to_image,
    covariance_to_ros,
    joints_from_message,
    matrix_to_pose,
    pose_to_matrix,
    prior_from_parameters,
    stamp_to_seconds,
    stamped_transform,
    xyz_rpy_to_matrix,
)
from .image_input import ImageInput
from .params import PARAMS, check_choices
from .qos import TF_QOS, TF_STATIC_QOS
from .runtime import StartupError, load_ct, run_node
from .topic_status import TopicStatus, TopicStatusParams

#: Overlay edge colours (rgb8): on /tf, registered but held back (depth unresolved), rejected by a gate.
PUBLISHED, HELD_BACK, REJECTED = (0, 255, 0), (255, 191, 0), (255, 0, 0)

#: A joint-state SDD closer than this to the detector's (mm) does not rebuild anything.
SDD_TOLERANCE_MM = 0.5


class LatestSlot:
    """A one-element mailbox for frames: the newest by stamp waits; ``take`` blocks until something does.

    A frame arriving while another waits replaces it (``replaced``), unless it is stamped
    earlier than the one waiting (a late message, seen under load: 1.5 s older): then the
    newer frame stays and the late one is dropped (``dropped_older``).
    """

    def __init__(self) -> None:
        self._item = None
        self._stamp = -math.inf
        self._cond = threading.Condition()
        self.replaced = 0
        self.dropped_older = 0

    def put(self, item, stamp: float = math.inf) -> None:
        with self._cond:
            if self._item is not None:
                if stamp < self._stamp:
                    self.dropped_older += 1
                    return
                self.replaced += 1
            self._item, self._stamp = item, stamp
            self._cond.notify()

    def take(self, timeout: float) -> object | None:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item


@dataclass
class NodeStats:
    frames_received: int = 0
    frames_registered: int = 0
    frames_published: int = 0
    frames_rejected: int = 0
    frames_held_back: int = 0  # registered, on ~/ct_pose, but not known well enough for /tf
    window_resets: int = 0  # the angle history disagreed with a new frame (patient motion)
    notes: dict[str, int] = field(default_factory=dict)  # e.g. biplane_unpaired, biplane_rejected
    frames_dropped: int = 0
    level: int = DiagnosticStatus.OK
    message: str = "waiting for frames"
    last_rejection: str = ""
    last: dict[str, str] = field(default_factory=dict)
    last_frame_stamp: str = ""  # header stamp (s) of the last frame the worker finished with, whatever came of it


@dataclass
class Frame:
    """A decoded frame ready to register: the raw pixels, the fixed image, its mask and joints."""

    msg: Image | CompressedImage
    stamp: float  # s
    pixels: np.ndarray  # (H, W) as received, binned to the working size (image.binning)
    fixed: torch.Tensor  # (H, W) DRR-like units (prepare_fixed)
    mask: np.ndarray | None  # (H, W) exposed pixels, or None
    joints: CArmJoints
    joint_age_s: float


@dataclass
class CalibrationFrame:
    """A frame whose pose went on /tf, as the node registered it: the calibration's input."""

    fixed: torch.Tensor
    mask: np.ndarray | None
    pose: torch.Tensor  # T_cam_ct (mm) of the registration
    views: list[View]  # its biplane partner and kept angle-history views, as registered with it


@dataclass
class PhysicsCalibrationState:
    """``calibration.*``: the frames collected so far, then the fit's outcome (once; reregister/reset keep it)."""

    frames: list[CalibrationFrame] = field(default_factory=list)
    needed: int = 3
    done: bool = False
    result: PhysicsCalibration | None = None
    error: str = ""

    def report(self) -> tuple[int, str]:
        """(diagnostic level, text) for ``physics_calibration``."""
        if not self.done:
            return DiagnosticStatus.OK, f"pending ({len(self.frames)} of {self.needed} poses)"
        if self.result is None:
            return DiagnosticStatus.WARN, f"failed: {self.error}; physics unchanged"
        r = self.result
        text = (" ".join(f"{k}={v:.4g}" for k, v in r.values.items())
                + f" (from {' '.join(f'{k}={v:.4g}' for k, v in r.start.items())}); similarity "
                f"{r.similarity_before:.5f} -> {r.similarity_after:.5f}")
        level = DiagnosticStatus.OK
        if r.at_bound:
            text += f"; at its bound: {', '.join(r.at_bound)}"
            level = DiagnosticStatus.WARN
        if not r.similarity_after > r.similarity_before:
            text += "; the fit did not improve the similarity"
            level = DiagnosticStatus.WARN
        return level, text


class RegistrationGlue:
    """Everything of the registration node except how it is brought up (see the module docstring).

    Mixed into a plain :class:`rclpy.node.Node` (:class:`RegistrationNode`: configured and
    active from construction) and into a managed :class:`rclpy.lifecycle.Node`
    (:class:`ManagedRegistrationNode`: the transitions call the same steps):

    * :meth:`_declare` - parameters and state (construction);
    * :meth:`_configure` - CT, registrar, publishers, services, parameter callbacks,
      diagnostics timer (``configure``);
    * :meth:`_activate` - static TF, subscriptions, worker thread (``activate``);
    * :meth:`_deactivate` / :meth:`_cleanup` - the reverse.
    """

    def _declare(self) -> None:
        for p in PARAMS:
            self.declare_parameter(p.name, p.default, p.descriptor())
        self.stats = NodeStats(message="inactive (not configured)")
        self._slot = LatestSlot()  # the frame waiting for the worker (latest wins)
        self._lock = threading.Lock()
        self._joint_buffer: deque[tuple[float, CArmJoints, CArmJoints | None]] = deque(maxlen=200)
        self.tracker = Tracker()  # start pose, mode and lost-track gate (core.registration.tracking)
        self.window = ViewWindow()  # recent registered frames from other angles (worker thread; reset under the lock)
        self._frames_b: deque[Image] = deque(maxlen=10)  # plane B frames waiting for their plane A partner
        self._last_stamp = -float("inf")
        self._camera_info: CameraInfo | None = None
        self._covariance_steps: torch.Tensor | None = None  # scale of the last covariance (see uncertainty)
        self._running = False
        self._worker: threading.Thread | None = None
        self._subscriptions_held: list = []
        self.images = ImageInput(self, self._lock, self._add_note)  # frames in: subscriptions, QoS, decoding
        self.topic_status: dict[str, TopicStatus] = {}  # input topic statuses on /diagnostics (see _configure)
        self._configured: list = []  # publishers, services, timers, callbacks made by _configure
        self.registrar: Registrar | None = None
        self.calibration: PhysicsCalibrationState | None = None  # calibration.enabled (see _configure)

    def _configure(self) -> None:
        """Load the CT and build everything but the inputs; raises :class:`StartupError`."""
        try:  # settings that would fail every frame fail the start instead
            check_choices({p.name: self._p(p.name) for p in PARAMS if p.choices})
            self._config(tracking=True)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        self.calibration = self._calibration_state()
        self.joint_names = JointNames(
            lao=self._p("joints.lao"), cranial=self._p("joints.cranial"),
            detector_rotation=self._p("joints.detector_rotation"), sdd=self._p("joints.sdd"),
            table=tuple(self._p("joints.table")),
        )
        self.frames = {k: self._p(f"frames.{k}") for k in ("carm", "ct", "source", "world")}
        for key in ("carm", "ct", "source"):
            if not self.frames[key]:
                raise StartupError(f"frames.{key} must not be empty (tf2 rejects empty frame ids)")
        self.frames["detector"] = self._p("frames.detector")
        self.frames["source_b"], self.frames["detector_b"] = self._p("frames.source_b"), self._p("frames.detector_b")
        if self._p("biplane.enabled") and not self.frames["source_b"]:
            raise StartupError("frames.source_b must not be empty with biplane.enabled (tf2 rejects empty frame ids)")
        self.images.configure()
        self.detector = self.images.working_detector(self._detector_from_params())  # the registration's size
        self.detector_b = None  # plane B's own intrinsics (None: plane A's)
        if self._p("biplane.enabled") and self._p("detector_b.height") > 0:
            self.detector_b = self.images.working_detector(self._detector_from_params("detector_b"))
        values = [float(v) for v in self._p("biplane.cam_b_from_cam_a")]
        if len(values) != 6:
            raise StartupError("biplane.cam_b_from_cam_a needs 6 values: x y z (m) roll pitch yaw (rad)")
        self.cam_b_from_cam_a = xyz_rpy_to_matrix(values[:3], values[3:])
        lao_b, cranial_b = self._p("biplane.joints.lao"), self._p("biplane.joints.cranial")
        if bool(lao_b) != bool(cranial_b):
            raise StartupError("biplane.joints.lao and biplane.joints.cranial go together (both, or neither)")
        self.joint_names_b = None  # plane B's camera from its own joints (None: the static transform)
        if lao_b:
            self.joint_names_b = JointNames(lao=lao_b, cranial=cranial_b,
                                            detector_rotation=self._p("biplane.joints.detector_rotation"),
                                            sdd="", table=self.joint_names.table)
        volume = load_ct(self._p("ct_path"), self._p("ct_spacing_mm"), self._p("ct_downsample"),
                         series_uid=self._p("ct_series_uid"), allow_gantry_tilt=self._p("ct_allow_gantry_tilt"))
        try:
            self.registrar = Registrar(volume, self.detector, self._config(), device=self._p("device"))
        except (RuntimeError, ValueError) as exc:
            raise StartupError(str(exc)) from exc
        self.prior = prior_from_parameters(self._p("prior.rotation_deg"), self._p("prior.translation_mm"),
                                           volume.center)
        self.get_logger().info(
            f"CT {self._p('ct_path')} {volume.shape} voxels, detector {self.detector.shape}, "
            f"device {self.registrar.device}, pyramid {self._p('registration.pyramid')}")

        self.tf_pub = self.create_publisher(TFMessage, "/tf", TF_QOS)
        self.tf_static_pub = self.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, "~/ct_pose", 10)
        self.overlay_pub = self.create_publisher(Image, "~/overlay", 2)
        self.overlay_info_pub = self.create_publisher(CameraInfo, "~/overlay/camera_info", 2)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.overlay_b_pub = self.overlay_b_info_pub = None  # plane B's overlay, with biplane.enabled
        self._plane_b_stamp = None  # the stamp of the plane B frame last paired
        if self._p("biplane.enabled"):
            self.overlay_b_pub = self.create_publisher(Image, "~/overlay_b", 2)
            self.overlay_b_info_pub = self.create_publisher(CameraInfo, "~/overlay_b/camera_info", 2)
        self.topic_status = self._topic_statuses()
        self.images.statuses = self.topic_status
        self._configured = [
            ("publisher", self.tf_pub), ("publisher", self.tf_static_pub), ("publisher", self.pose_pub),
            ("publisher", self.overlay_pub), ("publisher", self.overlay_info_pub), ("publisher", self.diag_pub),
            *(("publisher", p) for p in (self.overlay_b_pub, self.overlay_b_info_pub) if p is not None),
            ("service", self.create_service(Trigger, "~/reregister", self._on_reregister)),
            ("service", self.create_service(Trigger, "~/reset", self._on_reset)),
            ("timer", self.create_timer(self._p("diagnostics_period_s"), self._on_diagnostics_timer)),
        ]
        # rclpy keeps the callback objects: _cleanup removes exactly these.
        validate, apply = self._validate_parameters, self._apply_parameters
        self.add_on_set_parameters_callback(validate)
        self.add_post_set_parameters_callback(apply)
        self._configured += [("on_set", validate), ("post_set", apply)]
        with self._lock:
            self.stats.message = "inactive (configured)"

    def _activate(self) -> None:
        """Publish the static TF, subscribe to the inputs, start the worker."""
        self._publish_static()
        self._subscriptions_held = [
            self.create_subscription(JointState, self._p("topics.joint_states"), self._on_joints, 50),
        ]
        self.images.subscribe("image", self.images.topic(self._p("topics.image")), self._on_image)
        if self._p("biplane.enabled"):
            self.images.subscribe("image_b", self.images.topic(self._p("topics.image_b")), self._on_image_b)
        if self._p("use_camera_info"):
            self._subscriptions_held.append(
                self.create_subscription(CameraInfo, self._p("topics.camera_info"), self._on_camera_info, 5))
        if self._p("topics.prior"):  # latched by its publisher: a prior sent before we started still arrives
            self._subscriptions_held.append(
                self.create_subscription(PoseStamped, self._p("topics.prior"), self._on_prior, TF_STATIC_QOS))
        with self._lock:
            self.stats.level, self.stats.message = DiagnosticStatus.OK, "waiting for frames"
            self.tracker.reregister()  # (re)activation: the first frame gets the wide search again
        self._running = True
        self._worker = threading.Thread(target=self._work, name="registration", daemon=True)
        self._worker.start()

    def _deactivate(self) -> None:
        """Stop taking frames: unsubscribe, finish the frame in hand, stop the worker."""
        for sub in self._subscriptions_held:
            self.destroy_subscription(sub)
        self._subscriptions_held = []
        self.images.unsubscribe()
        self._running = False
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        with self._lock:
            self.stats.level, self.stats.message = DiagnosticStatus.OK, "inactive (deactivated)"

    def _cleanup(self) -> None:
        """Undo :meth:`_configure`: drop the CT and the registrar, the publishers and services."""
        for kind, handle in self._configured:
            if kind == "publisher":
                self.destroy_publisher(handle)
            elif kind == "service":
                self.destroy_service(handle)
            elif kind == "timer":
                self.destroy_timer(handle)
            elif kind == "on_set":
                self.remove_on_set_parameters_callback(handle)
            elif kind == "post_set":
                self.remove_post_set_parameters_callback(handle)
        self._configured = []
        self.registrar = None
        with self._lock:
            self._joint_buffer.clear()
            self.stats = NodeStats(message="inactive (not configured)")

    # ------------------------------------------------------------------ parameters

    def _p(self, name: str):
        return self.get_parameter(name).value

    def _calibration_fit(self) -> tuple[str, ...] | None:
        """``calibration.fit`` as names (None: the core's default_fit); raises ``StartupError`` for unknown ones."""
        names = tuple(n for n in self._p("calibration.fit").replace(",", " ").split() if n)
        unknown = [n for n in names if n not in PHYSICS_PARAMETERS]
        if unknown:
            raise StartupError(f"calibration.fit: cannot fit {', '.join(unknown)}; the physics parameters are "
                               f"{', '.join(PHYSICS_PARAMETERS)}")
        return names or None

    def _calibration_state(self) -> PhysicsCalibrationState | None:
        """``calibration.*`` checked at start: None when off; a FATAL for the mono DRR (it has no physics to fit)."""
        if not self._p("calibration.enabled"):
            return None
        if self._p("registration.drr_model") != "poly":
            raise StartupError("calibration.enabled needs registration.drr_model: poly (the mono DRR has no "
                               "physics to calibrate)")
        self._calibration_fit()
        return PhysicsCalibrationState(needed=int(self._p("calibration.frames")))

    def _detector_from_params(self, prefix: str = "detector") -> Detector:
        sid = self._p(f"{prefix}.sid_mm")
        try:
            return Detector(
                self._p(f"{prefix}.height"), self._p(f"{prefix}.width"),
                spacing_mm=tuple(self._p(f"{prefix}.pixel_spacing_mm")), sdd_mm=self._p(f"{prefix}.sdd_mm"),
                sid_mm=sid if sid > 0 else None, principal_point_mm=tuple(self._p(f"{prefix}.principal_point_mm")),
            )
        except ValueError as exc:
            raise StartupError(f"bad {prefix} parameters: {exc}") from exc

    def _topic_statuses(self) -> dict[str, TopicStatus]:
        """Frequency / stamp-delay / stamp-gap status of each input (``topic_status.*``)."""
        def params(kind: str) -> TopicStatusParams:
            lo, hi = self._p(f"topic_status.{kind}.min_hz"), self._p(f"topic_status.{kind}.max_hz")
            return TopicStatusParams(lo, hi, self._p("topic_status.tolerance"), self._p("topic_status.window"),
                                     self._p("topic_status.min_delay_s"), self._p("topic_status.max_delay_s"))

        def clock() -> float:
            return self.get_clock().now().nanoseconds * 1e-9

        topics = {"image": ("image", self.images.topic(self._p("topics.image"))),
                  "joint_states": ("joint_states", self._p("topics.joint_states"))}
        if self._p("biplane.enabled"):
            topics["image_b"] = ("image", self.images.topic(self._p("topics.image_b")))
        try:
            return {key: TopicStatus(self.resolve_topic_name(topic), params(kind), clock, gaps=kind == "image")
                    for key, (kind, topic) in topics.items()}
        except ValueError as exc:
            raise StartupError(f"bad topic_status parameters: {exc}") from exc

    def _add_note(self, counter: str, n: int = 1) -> None:
        """Add ``n`` to the diagnostics counter ``counter``."""
        with self._lock:
            self.stats.notes[counter] = self.stats.notes.get(counter, 0) + n

    def _config(self, overrides: dict | None = None, tracking: bool = False, wide: bool = False) -> RegistrationConfig:
        def get(n):
            return overrides[n] if overrides and n in overrides else self._p(n)

        pyramid = get("registration.tracking_pyramid") if tracking else get("registration.pyramid")
        scale = get("registration.tracking_step_scale") if tracking else 1.0
        return RegistrationConfig(
            optimizer=get("registration.tracking_optimizer") if tracking else get("registration.optimizer"),
            similarity=get("registration.similarity"),
            compare=get("registration.compare"),
            lr_rotation=get("registration.lr_rotation") * scale,
            lr_translation=get("registration.lr_translation") * scale,
            max_iterations=get("registration.max_iterations"), pyramid=tuple(int(f) for f in pyramid),
            min_similarity=get("registration.min_similarity"), drr_blur_sigma_px=get("image.detector_blur_px"),
            init_search=wide and bool(get("registration.init_search_first_frame")),
            polish_optimizer="lm" if not tracking and get("registration.first_frame_polish") == "lm" else None,
            init_keep=get("registration.init_keep"), init_keep_joint=get("registration.init_keep_joint"),
            coarse_views=get("registration.coarse_views"),
            drr_model=get("registration.drr_model"), kvp=get("registration.kvp"),
            filtration_mm_al=get("registration.filtration_mm_al"), energy_bins=get("registration.energy_bins"),
            scatter_to_primary=get("registration.scatter_to_primary"),
            scatter_sigma_fraction=get("registration.scatter_sigma_fraction"),
            heel_gain=get("registration.heel_gain"),
        )

    def _validate_parameters(self, params) -> SetParametersResult:
        """Validate only (no side effects): the registration settings must make a config."""
        overrides = {p.name: p.value for p in params}
        try:
            self._config(overrides)
            self._config(overrides, tracking=True)
            check_choices(overrides)
        except (ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        names = ", ".join(f"{p.name}={p.value}" for p in params)
        self.get_logger().info(f"parameters changed ({names}); effective from the next frame")

    # ------------------------------------------------------------------ callbacks (executor thread)

    def _on_joints(self, msg: JointState) -> None:
        self.images.tick("joint_states", stamp_to_seconds(msg.header.stamp))  # the same status accounting
        try:
            joints = joints_from_message(msg, self.joint_names)
        except JointStateError as exc:
            self._reject(f"bad joint state: {exc}", count=False)
            return
        joints_b = None
        if self.joint_names_b is not None and self._p("biplane.enabled"):
            # Plane A's joints count without them; a plane B frame then finds none and says so (per frame,
            # not per joint message: those come at 10-100 Hz).
            with contextlib.suppress(JointStateError):
                joints_b = joints_from_message(msg, self.joint_names_b)
        with self._lock:
            self._joint_buffer.append((stamp_to_seconds(msg.header.stamp), joints, joints_b))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._camera_info = msg

    def _on_image_b(self, msg: Image | CompressedImage) -> None:
        self.images.tick("image_b", stamp_to_seconds(msg.header.stamp))
        with self._lock:
            self._frames_b.append(msg)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.images.tick("image", stamp_to_seconds(msg.header.stamp))
        with self._lock:
            self.stats.frames_received += 1
        self._slot.put((msg, time.perf_counter()), stamp_to_seconds(msg.header.stamp))

    def _on_prior(self, msg: PoseStamped) -> None:
        """A CT placement prior, ``T_carm_ct`` now (m): kept as ``T_table_ct``; the next frame starts from it, wide."""
        topic = self.resolve_topic_name(self._p("topics.prior"))
        if msg.header.frame_id != self.frames["carm"]:
            self._note("priors_rejected", f"prior on {topic} in frame {msg.header.frame_id!r}, not "
                                          f"{self.frames['carm']!r}: ignored")
            return
        q = msg.pose.orientation
        p = msg.pose.position
        values = [q.x, q.y, q.z, q.w, p.x, p.y, p.z]
        if not all(math.isfinite(v) for v in values) or abs(math.sqrt(q.x**2 + q.y**2 + q.z**2 + q.w**2) - 1) > 1e-3:
            self._note("priors_rejected", f"prior on {topic} is not a rigid pose (non-finite values or a quaternion "
                                          "of norm != 1): ignored")
            return
        with self._lock:
            latest = max(self._joint_buffer, key=lambda sj: sj[0], default=None)
        # The prior is T_iso_ct with the table where it is now; the node keeps T_table_ct (table at zero).
        table = table_transform(latest[1]) if latest is not None else torch.eye(4, dtype=torch.float64)
        table_ct = invert_transform(table) @ pose_to_matrix(msg.pose)
        with self._lock:
            self.prior = table_ct
            self.tracker.reregister()
            self.window.clear()
            self.stats.notes["priors_received"] = self.stats.notes.get("priors_received", 0) + 1
        where = "" if latest is not None else " (no joint state yet: the table taken at zero)"
        self.get_logger().info(f"CT placement prior from {topic}{where}: the next frame registers from it "
                               "with the wide search")

    def _on_reregister(self, request, response):
        with self._lock:
            self.tracker.reregister()
            self.window.clear()
        response.success, response.message = True, "next frame: full registration with the wide capture range"
        return response

    def _on_reset(self, request, response):
        with self._lock:
            self.tracker.lose()
            self.window.clear()
        response.success, response.message = True, "tracking reset: next frame starts from the joint-state pose"
        return response

    # ------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        while self._running:
            item = self._slot.take(timeout=0.2)
            if item is None:
                continue
            msg, t_in = item
            try:
                self._process(msg, t_in)
            except Exception as exc:  # never let one frame kill the node
                self.get_logger().error(f"frame dropped: unexpected {type(exc).__name__}: {exc}")
                self._reject(f"internal error: {type(exc).__name__}: {exc}", level=DiagnosticStatus.ERROR)

    def _nearest_joints(self, t: float) -> tuple[CArmJoints, float] | None:
        with self._lock:
            if not self._joint_buffer:
                return None
            stamp, joints, _ = min(self._joint_buffer, key=lambda sj: abs(sj[0] - t))
        return joints, abs(stamp - t)

    def _nearest_joints_b(self, t: float) -> tuple[CArmJoints, float] | None:
        """Plane B's joints nearest to ``t`` (s) and their age, or None."""
        with self._lock:
            with_b = [(stamp, jb) for stamp, _, jb in self._joint_buffer if jb is not None]
        if not with_b:
            return None
        stamp, joints_b = min(with_b, key=lambda sj: abs(sj[0] - t))
        return joints_b, abs(stamp - t)

    def _detector_from_camera_info(self, info: CameraInfo) -> Detector:
        """Size, principal point and SDD from a calibrated CameraInfo (pixel pitch from parameters), as delivered."""
        sid = self._p("detector.sid_mm")
        return Detector.from_intrinsic_matrix(info.k, int(info.height), int(info.width),
                                              tuple(self._p("detector.pixel_spacing_mm")),
                                              sid_mm=sid if sid > 0 else None)

    def _update_intrinsics(self) -> None:
        """Follow the latest CameraInfo (when enabled); rebuild the CT pyramids on a change."""
        with self._lock:
            info = self._camera_info
        if info is None:
            return
        try:
            det = self._detector_from_camera_info(info)
            b = self.images.binning
            if det.height % b or det.width % b:
                raise ValueError(f"image.binning {b} does not divide its size {det.height}x{det.width}")
            det = det.scaled(b) if b > 1 else det  # the working detector
        except ValueError as exc:
            self._reject(f"camera info ignored: {exc}", count=False)
            with self._lock:
                self._camera_info = None
            return
        if det != self.detector:
            self.get_logger().info(f"detector from CameraInfo: {det}")
            self.detector = det
            self.registrar = self.registrar.rebuilt(detector=det)
            with self._lock:
                self.window.clear()  # its views were taken with the old intrinsics

    def _follow_sdd(self, joints: CArmJoints) -> str | None:
        """Move the detector to the SDD the C-arm reports (``joints.follow_sdd``); the SID stays.

        A change of more than :data:`SDD_TOLERANCE_MM` rebuilds the registrar's CT pyramids.
        Ignored with ``use_camera_info`` (the CameraInfo's K then gives the SDD). Returns why the
        reported SDD is unusable, or None.
        """
        if joints.sdd_mm is None or not self._p("joints.follow_sdd") or self._p("use_camera_info"):
            return None
        sdd = float(joints.sdd_mm)  # finite: joints_from_message refuses non-finite joints
        if abs(sdd - float(self.detector.sdd_mm)) <= SDD_TOLERANCE_MM:
            return None
        sid = float(self.detector.sid)
        if not sdd > sid:
            return f"SDD {sdd:.1f} mm from the joint state is not beyond the source-isocentre distance {sid:.1f} mm"
        det = dataclasses.replace(self.detector, sdd_mm=sdd, sid_mm=sid)
        self.get_logger().info(f"detector follows the joint-state SDD: {float(self.detector.sdd_mm):.1f} -> "
                               f"{sdd:.1f} mm (SID {sid:.1f} mm)")
        self.detector = det
        self.registrar = self.registrar.rebuilt(detector=det)
        with self._lock:
            self.window.clear()  # its views were taken at the old SDD
        return None

    def _process(self, msg: Image, t_in: float) -> None:
        """One frame (:meth:`_process_frame`); then the diagnostics say its stamp is done (a replay paces by it)."""
        try:
            self._process_frame(msg, t_in)
        finally:
            with self._lock:
                self.stats.last_frame_stamp = f"{stamp_to_seconds(msg.header.stamp):.6f}"
            self._publish_diagnostics()

    def _process_frame(self, msg: Image, t_in: float) -> None:
        """One frame: decode -> start pose -> register (with its partners) -> gates -> publish.

        The diagnostics break the frame-to-TF time down: ``wait_ms`` (in the slot), ``decode_ms``
        (conversion, checks, joints, plane B), ``register_ms``, ``covariance_ms``, and
        ``latency_ms`` (arrival to TF, or to the decision when nothing goes on TF).
        """
        t_start = time.perf_counter()
        frame = self._decode(msg)
        if frame is None:
            return
        with self._lock:
            start = self.tracker.start(frame.joints, self.prior)
            kept = self._window_views(frame)
        config = self._config(tracking=True) if start.mode == "tracking" else self._config(wide=True)
        self._last_stamp = frame.stamp
        planes = self._plane_b(frame)  # the biplane partner as a view, or nothing
        if planes and not self._p("biplane.with_history"):
            kept = []  # the pair alone: half the cost, fewer poses known well enough (biplane.with_history)
        t_reg = time.perf_counter()
        result, kept = self._register_jointly(frame, start, config, kept, planes)
        t_done = time.perf_counter()
        with self._lock:
            self.stats.frames_registered += 1
        info = self._frame_info(frame, start, result, kept, planes, t_done - t_in)
        info.update(wait_ms=f"{(t_start - t_in) * 1000:.1f}", decode_ms=f"{(t_reg - t_start) * 1000:.1f}",
                    register_ms=f"{(t_done - t_reg) * 1000:.1f}")
        accepted, verdict = self._gate(start, result)
        if not accepted:
            with self._lock:
                self.tracker.lose()  # the next frame starts again from the joints
            self._reject(f"registration rejected by the quality gate: {verdict}", info=info,
                         level=DiagnosticStatus.WARN)
            self._publish_overlay(frame, result, REJECTED, planes)
            return
        self._remember(frame, result)
        t_cov = time.perf_counter()
        cov = self._covariance(frame, result, kept, planes, info)
        info.update(covariance_ms=f"{(time.perf_counter() - t_cov) * 1000:.1f}")
        known, why = KnownPoseGate(self._p("gate.max_target_sigma_mm"), self._p("multiview.min_separation_deg")).check(
            None if cov is None else cov.target_sigma_mm(self.registrar.targets), len(result.view_zncc))
        ambiguous = AmbiguityGate(self._p("gate.ambiguity_mm"), self._p("gate.ambiguity_gap")).check(
            result.runner_up_mm, result.runner_up_gap)
        if ambiguous or (not known and not self._p("gate.allow_unresolved_depth")):
            info.update(latency_ms=f"{(time.perf_counter() - t_in) * 1000:.1f}")  # arrival to the decision
            self._hold_back(frame, result, cov, ambiguous or why, info)
            self._publish_overlay(frame, result, HELD_BACK, planes)
            return
        self._publish(frame, result, self._ros_covariance(cov, frame))
        latency = time.perf_counter() - t_in  # frame arrival to TF
        info.update(latency_ms=f"{latency * 1000:.1f}")
        self._published(start, result, info, "" if known else why, latency)
        self._publish_overlay(frame, result, PUBLISHED, planes)  # after the TF: a picture never delays a pose
        if known and self.calibration is not None and not self.calibration.done:
            # only known poses (not those published although unresolved): one view trades the kVp for depth
            self._calibrate_with(frame, result, planes + self.window.as_views(kept, frame.joints))

    def _calibrate_with(self, frame: Frame, result: RegistrationResult, views: list[View]) -> None:
        """A pose on /tf (known): collect it; at the ``calibration.frames``-th, fit the physics once (after its TF)."""
        cal = self.calibration
        if cal is None or cal.done:
            return
        with self._lock:  # (the diagnostics read the count)
            cal.frames.append(CalibrationFrame(frame.fixed, frame.mask, result.pose.detach().clone(), list(views)))
            if len(cal.frames) < cal.needed:
                return
        t0 = time.perf_counter()
        try:
            fit = calibrate_physics(self.registrar, [f.fixed for f in cal.frames],
                                    torch.stack([f.pose.to(torch.float64).cpu() for f in cal.frames]),
                                    fit=self._calibration_fit(), views=[f.views for f in cal.frames],
                                    masks=[f.mask for f in cal.frames])
            if fit.similarity_after > fit.similarity_before:  # else the start stays (the core returns it)
                # Visible to `ros2 param get`; validated as any change; in effect from the next frame.
                done = self.set_parameters_atomically([Parameter(f"registration.{k}", Parameter.Type.DOUBLE, float(v))
                                                       for k, v in fit.values.items()])
                if not done.successful:
                    raise ValueError(f"the fitted values were refused: {done.reason}")
        except Exception as exc:  # a failed fit leaves the physics as it was and the node running
            fit = None
            cal.error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"physics calibration failed ({cal.error}); the physics stays as configured")
        with self._lock:
            cal.result, cal.done = fit, True
            cal.frames = []  # the fit is done once: free the frames
            _, text = cal.report()
        if cal.result is not None:
            self.get_logger().info(f"physics calibration from {cal.needed} known pose(s) in "
                                   f"{time.perf_counter() - t0:.1f} s: {text}")
        self._publish_diagnostics()

    def _register_jointly(self, frame: Frame, start: FrameStart, config: RegistrationConfig, kept: list[WindowView],
                          planes: list[View]) -> tuple[RegistrationResult, list[WindowView]]:
        """Register with the kept views; when they no longer fit one still patient, reset the window and go alone."""
        result = self._register(frame, start.init_pose, config, kept, planes)
        if start.mode == "tracking":
            gate = self._lost_track_gate()
            with self._lock:
                worse = self.tracker.below_last(result.view_zncc[0], gate)
            if worse:  # the start was outside the tracking optimiser's basin (e.g. frames skipped): the wide search
                self._note("tracking_fallbacks", f"tracking ended at ZNCC {result.view_zncc[0]:.4f}, below the last "
                                                 "frame's: registering this frame again with the wide search")
                wide = self._register(frame, initial_pose(frame.joints, self.prior), self._config(wide=True), kept,
                                      planes)
                if wide.view_zncc[0] > result.view_zncc[0]:
                    result = wide
                with self._lock:
                    still = self.tracker.below_last(result.view_zncc[0], gate)
                if still:  # not a pose to publish: the next frame starts from the joints
                    result.accepted = False
                    result.verdict = (f"lost track: ZNCC {result.view_zncc[0]:.4f} stays below the last frame's after "
                                      "the wide search")
        moved = disagreeing_views(kept, result.pose, frame.joints, self.registrar.targets,
                                  self._p("multiview.max_view_shift_mm"))
        why = (f"{len(moved)} of {len(kept)} earlier view(s) disagree with this frame (the joint pose moves the "
               f"targets in their image planes by {', '.join(f'{shift:.1f} mm' for _, shift in moved)})")
        alone_start = start.init_pose
        limit = self._p("multiview.max_new_view_shift_mm")
        if kept and not moved and limit > 0:  # the other side: does this frame alone agree with the joint pose?
            # Beyond the motion the covariance already allows the earlier views (drift x age): that is a jump.
            limit += max(self._view_motion(frame, kept))
            shift, alone_start = own_view_shift_mm(self.registrar, frame.fixed, result.pose, frame.mask, planes,
                                                   max_iterations=2)
            if shift <= limit:
                return result, kept
            why = (f"this frame alone moves the targets {shift:.2f} mm in its image plane from the joint pose with "
                   f"{len(kept)} earlier view(s) (limit {limit:.2f} mm)")
        elif not moved:
            return result, kept
        self._warn(f"angle history reset: {why}; the patient moved? registering this frame alone")
        with self._lock:
            self.window.clear()
            self.stats.window_resets += 1
        return self._register(frame, alone_start, config, [], planes), []

    def _frame_info(self, frame: Frame, start: FrameStart, result: RegistrationResult, kept: list[WindowView],
                    planes: list[View], latency: float) -> dict[str, str]:
        """The diagnostics values of a registered frame."""
        return {
            "stamp": f"{frame.stamp:.6f}", "mode": start.mode, "similarity": f"{result.similarity:.5f}",
            "zncc": f"{result.zncc:.5f}",
            "views": str(len(result.view_zncc)), "view_spread_deg": f"{self._spread_deg(frame, kept):.1f}",
            "biplane_pair": str(bool(planes)), "view_zncc": " ".join(f"{z:.4f}" for z in result.view_zncc),
            "iterations": str(result.iterations), "latency_ms": f"{latency * 1000:.1f}",
            "registration_ms": f"{result.wall_time_s * 1000:.1f}", "stop_reason": result.stop_reason,
            "joint_age_ms": f"{frame.joint_age_s * 1000:.1f}", "device": str(self.registrar.device),
            "runner_up_mm": "none" if result.runner_up_mm is None else f"{result.runner_up_mm:.2f}",
            "runner_up_gap": "none" if result.runner_up_gap is None else f"{result.runner_up_gap:.5f}",
        }

    def _remember(self, frame: Frame, result: RegistrationResult) -> None:
        """A registered frame: later frames track from it and, from other angles, register jointly with it."""
        with self._lock:
            self.window.drift.add(frame.stamp, result.pose, frame.joints, self.registrar.center)
            self.window.add(WindowView(frame.fixed, None if frame.mask is None else torch.from_numpy(frame.mask),
                                       frame.joints, frame.stamp, result.view_zncc[0], result.pose))
            self.tracker.accept(result.pose, frame.joints, result.view_zncc[0])

    def _hold_back(self, frame: Frame, result: RegistrationResult, cov: PoseCovariance | None, why: str,
                   info: dict[str, str]) -> None:
        """A registered pose that is not known well enough: on ``~/ct_pose`` with its covariance, not on /tf."""
        self._publish_pose(iso_from_ct(result.pose, frame.joints), frame.msg.header.stamp,
                           self._ros_covariance(cov, frame))
        with self._lock:
            self.stats.frames_held_back += 1
        self._reject(f"not on /tf (on ~/ct_pose with its covariance): {why}", count=False, info=info,
                     level=DiagnosticStatus.WARN)

    def _published(self, start: FrameStart, result: RegistrationResult, info: dict[str, str], unknown: str,
                   latency: float) -> None:
        n = len(result.view_zncc)
        with self._lock:
            self.stats.frames_published += 1
            self.stats.level = DiagnosticStatus.OK
            self.stats.message = f"registered ({start.mode}, {n} view(s)): {result.verdict}"
            if unknown:
                self.stats.message += f" [published although {unknown}]"
            self.stats.last = info
        line = (f"{start.mode} registration ({n} view(s)): ZNCC {result.zncc:.4f}, {result.iterations} it, "
                f"{latency * 1000:.0f} ms frame-to-TF (waited {float(info.get('wait_ms', 0)):.0f}, registered "
                f"{float(info.get('register_ms', 0)):.0f}, covariance {float(info.get('covariance_ms', 0)):.0f})")
        if unknown:  # on TF by gate.allow_unresolved_depth: say so where people look
            self.get_logger().warning(f"{line}; on /tf although {unknown} (gate.allow_unresolved_depth)")
        else:
            self.get_logger().info(line)

    def _window_views(self, frame: Frame) -> list[WindowView]:
        """The angle history's views for ``frame`` (under the lock), after the parameters of the window."""
        w = self.window
        w.max_views = self._p("multiview.max_views")
        w.min_separation_deg = self._p("multiview.min_separation_deg")
        w.max_age_s = self._p("multiview.max_age_s")
        kept = w.others(frame.joints, frame.stamp)
        motion = w.motion_mm(kept, frame.stamp, self._p("multiview.patient_motion_mm"),
                             self._p("multiview.min_drift_mm_per_s"))
        # A view the patient may have moved away from by more than this adds more bias than information.
        return [v for v, m in zip(kept, motion, strict=True) if m <= self._p("multiview.max_view_motion_mm")]

    @staticmethod
    def _spread_deg(frame: Frame, kept: list[WindowView]) -> float:
        return ViewWindow(views=list(kept)).spread_deg(frame.joints)

    def _decode(self, msg: Image) -> Frame | None:
        """Check and convert a frame and pair it with its joints; None (after a rejection) if unusable."""
        self._update_intrinsics()
        stamp = stamp_to_seconds(msg.header.stamp)
        if stamp <= self._last_stamp:
            self._reject(f"out-of-order frame (stamp {stamp:.3f} s <= last {self._last_stamp:.3f} s)")
            return None
        try:
            pixels, fixed, mask = self.images.prepare(msg, self.detector)
        except ValueError as exc:
            self._reject(str(exc))
            return None
        if mask is not None and mask.mean() < 0.1:
            self._reject(f"bad image: only {100 * mask.mean():.1f} % of the frame is exposed")
            return None
        nearest = self._nearest_joints(stamp)
        if nearest is None:
            self._reject("no joint state received yet: cannot place the C-arm")
            return None
        joints, age = nearest
        max_age = self._p("joints.max_age_s")
        if age > max_age:
            self._reject(f"stale joint state: nearest is {age:.3f} s from the frame (max {max_age:.3f} s)")
            return None
        problem = self._follow_sdd(joints)
        if problem:
            self._reject(f"bad joint state: {problem}")
            return None
        self._publish_camera_frames(joints, msg.header.stamp)
        return Frame(msg, stamp, pixels, fixed, mask, joints, age)

    def _plane_b(self, frame: Frame) -> list[View]:
        """Plane B's frame within ``biplane.max_pair_dt_s`` of ``frame`` as a view ([] when none or unusable)."""
        if not self._p("biplane.enabled"):
            return []
        max_dt = self._p("biplane.max_pair_dt_s")
        deadline = time.monotonic() + self._p("biplane.wait_s")
        while True:  # plane B's frame may still be on its way (the two planes' drivers publish independently)
            with self._lock:
                waiting = list(self._frames_b)
            best = min(waiting, key=lambda m: abs(stamp_to_seconds(m.header.stamp) - frame.stamp), default=None)
            paired = best is not None and abs(stamp_to_seconds(best.header.stamp) - frame.stamp) <= max_dt
            if paired or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        if not paired:
            self._note("biplane_unpaired", f"no plane B frame within {max_dt:.3f} s of {frame.stamp:.3f} s: "
                                           "registering plane A alone")
            return []
        with self._lock:
            self._frames_b = deque((m for m in self._frames_b if m is not best), maxlen=self._frames_b.maxlen)
        try:
            _, fixed, mask = self.images.prepare(best, self.detector_b or self.detector)
        except ValueError as exc:
            self._note("biplane_rejected", f"plane B frame ignored: {exc}; registering plane A alone")
            return []
        cam_b_from_cam_a = self.cam_b_from_cam_a
        if self.joint_names_b is not None:  # both planes turn about one isocentre: B's camera from its own joints
            near = self._nearest_joints_b(stamp_to_seconds(best.header.stamp))
            if near is None or near[1] > self._p("joints.max_age_s"):
                self._note("biplane_unpaired", "no plane B joint state near its frame: registering plane A alone")
                return []
            cam_b_from_cam_a = cam_from_iso(near[0]) @ invert_transform(cam_from_iso(frame.joints))
        self._publish_camera_frames(frame.joints, best.header.stamp, cam_b_from_cam_a)
        self._plane_b_stamp = best.header.stamp  # for its overlay
        return [View(fixed, cam_b_from_cam_a, mask, self.detector_b)]

    def _lost_track_gate(self) -> LostTrackGate:
        return LostTrackGate(self._p("registration.max_similarity_drop"),
                             self._p("registration.max_similarity_drop_relative"))

    def _note(self, counter: str, why: str) -> None:
        """Something about an input that is not a rejection of the frame: a log line and a counter."""
        self.get_logger().warning(why)
        with self._lock:
            self.stats.notes[counter] = self.stats.notes.get(counter, 0) + 1
            self.stats.last_rejection = why

    def _gate(self, start: FrameStart, result: RegistrationResult) -> tuple[bool, str]:
        """The registration's own verdict, then (tracking frames) the lost-track gate."""
        if not result.accepted:
            return False, result.verdict
        with self._lock:
            ok, why = self.tracker.gate(start, result.view_zncc[0], self._lost_track_gate())
        return (True, result.verdict) if ok else (False, why)

    def _publish(self, frame: Frame, result: RegistrationResult, covariance: list[float]) -> None:
        """A known pose: TF, then ``~/ct_pose`` with its covariance."""
        iso_ct = iso_from_ct(result.pose, frame.joints)
        stamp = frame.msg.header.stamp
        self._publish_tf(iso_ct, frame.joints, stamp)
        self._publish_pose(iso_ct, stamp, covariance)

    def _register(self, frame: Frame, init, config: RegistrationConfig, kept: list[WindowView],
                  planes: list[View]) -> RegistrationResult:
        """One pose from this frame, its biplane partner and the kept views of the angle history (none: one view)."""
        views = planes + self.window.as_views(kept, frame.joints)
        self.registrar.config = config  # its CT pyramids are built once per pyramid and kept
        try:
            return self.registrar.register(frame.fixed, init, mask=frame.mask, views=views)
        except torch.OutOfMemoryError:
            self.get_logger().error("CUDA out of memory: falling back to the CPU for the rest of the run")
            torch.cuda.empty_cache()
            self.registrar = self.registrar.rebuilt(device="cpu")
            return self.registrar.register(frame.fixed, init, mask=frame.mask, views=views)

    # ------------------------------------------------------------------ outputs

    def _warn(self, why: str) -> None:
        self.get_logger().warning(why)
        with self._lock:
            self.stats.last_rejection = why

    def _reject(self, why: str, *, count: bool = True, info: dict | None = None,
                level: int = DiagnosticStatus.WARN) -> None:
        self.get_logger().warning(why)
        with self._lock:
            if count:
                self.stats.frames_rejected += 1
            self.stats.level, self.stats.message, self.stats.last_rejection = level, why, why
            if info:
                self.stats.last = info
        self._publish_diagnostics()

    def _publish_static(self) -> None:
        if not self.frames["world"]:
            return
        values = [float(v) for v in self._p("frames.world_to_carm")]
        tf = xyz_rpy_to_matrix(values[:3], values[3:])
        stamp = self.get_clock().now().to_msg()
        self.tf_static_pub.publish(TFMessage(transforms=[
            stamped_transform(tf, self.frames["world"], self.frames["carm"], stamp)]))

    def _covariance(self, frame: Frame, result: RegistrationResult, kept: list[WindowView], planes: list[View],
                    info: dict) -> PoseCovariance | None:
        """The pose covariance from every view of the registration (None when off or not computable)."""
        if not self._p("registration.covariance"):
            return None
        try:  # tracking frames reuse the last frame's scale: one batch of 13 DRRs per view instead of two
            cov = pose_covariance(self.registrar, frame.fixed, result.pose, frame.mask, steps=self._covariance_steps,
                                  compare=self.registrar.config.compare,
                                  views=planes + self.window.as_views(kept, frame.joints),
                                  scale_uncertainty=self._p("registration.scale_uncertainty"),
                                  jacobian=self._p("registration.covariance_jacobian"),
                                  view_motion_mm=[0.0] * len(planes) + self._view_motion(frame, kept))
        except (ValueError, RuntimeError) as exc:
            self.get_logger().warning(f"pose covariance not computed ({exc}); publishing zeros (unknown)")
            return None
        self._covariance_steps = cov.steps
        sig = cov.target_sigma_mm(self.registrar.targets)
        with self._lock:
            drift = self.window.drift.rate_mm_per_s(frame.stamp)
        info.update(sigma_inplane_mm=f"{float(sig[:2].max()):.3f}", sigma_depth_mm=f"{float(sig[2]):.3f}",
                    sigma_rotation_deg=f"{float(cov.sigma_deg.max()):.4f}",
                    patient_drift_mm_per_s="not measured yet" if drift is None else f"{drift:.3f}")
        return cov

    def _view_motion(self, frame: Frame, kept: list[WindowView]) -> list[float]:
        """1 sigma (mm) the patient may have moved since each kept view (a biplane partner: at once, 0)."""
        with self._lock:  # (the drift may have been updated since _window_views: the same rule, now)
            return self.window.motion_mm(kept, frame.stamp, self._p("multiview.patient_motion_mm"),
                                         self._p("multiview.min_drift_mm_per_s"))

    def _ros_covariance(self, cov: PoseCovariance | None, frame: Frame) -> list[float]:
        """Row-major 6 x 6 for ``~/ct_pose`` (REP-103 units, isocentre axes); zeros = unknown."""
        if cov is None:
            return [0.0] * 36
        r_iso_cam = invert_transform(cam_from_iso(frame.joints))[:3, :3]
        return covariance_to_ros(cov.about_origin(r_iso_cam))

    def _publish_tf(self, iso_ct: torch.Tensor, joints: CArmJoints, stamp) -> None:
        """The CT's pose (known poses only; the camera frames went out with the frame: _publish_camera_frames)."""
        self.tf_pub.publish(TFMessage(transforms=[
            stamped_transform(iso_ct, self.frames["carm"], self.frames["ct"], stamp)]))

    def _publish_camera_frames(self, joints: CArmJoints, stamp, cam_b_from_cam_a: torch.Tensor | None = None) -> None:
        """Where the C-arm's joints put the source and the detector at ``stamp`` (whatever the registration gives).

        ``frames.source``: the X-ray source, the pinhole of ``~/overlay/camera_info``; ``frames.detector``: the
        detector's centre (the images' frame), ``SDD - SID`` beyond the isocentre, offset by the principal point;
        both with the ``cam`` axes (x along columns, y along rows, z along the beam: an optical frame). With
        ``cam_b_from_cam_a`` (``T_camB_camA``, mm): plane B's, ``frames.source_b`` and ``frames.detector_b``,
        with its own intrinsics.
        """
        iso_cam = invert_transform(cam_from_iso(joints))
        det, names = self.detector, (self.frames["source"], self.frames["detector"])
        if cam_b_from_cam_a is not None:
            iso_cam = iso_cam @ invert_transform(cam_b_from_cam_a.to(torch.float64))
            det, names = self.detector_b or self.detector, (self.frames["source_b"], self.frames["detector_b"])
        sid, sdd = float(det.sid), float(det.sdd_mm)
        x0, y0 = (float(v) for v in det.principal_point_mm)
        eye = torch.eye(3, dtype=torch.float64)
        transforms = [stamped_transform(iso_cam @ make_transform(eye, torch.tensor([0.0, 0.0, -sid],
                                                                                    dtype=torch.float64)),
                                        self.frames["carm"], names[0], stamp)]
        if names[1]:
            transforms.append(stamped_transform(
                iso_cam @ make_transform(eye, torch.tensor([x0, y0, sdd - sid], dtype=torch.float64)),
                self.frames["carm"], names[1], stamp))
        self.tf_pub.publish(TFMessage(transforms=transforms))

    def _publish_pose(self, iso_ct: torch.Tensor, stamp, covariance: list[float]) -> None:
        pose = PoseWithCovarianceStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self.frames["carm"]
        pose.pose.pose = matrix_to_pose(iso_ct)
        pose.pose.covariance = covariance
        self.pose_pub.publish(pose)

    def _publish_overlay(self, frame: Frame, result: RegistrationResult, color: tuple[int, int, int],
                         planes: list[View] = ()) -> None:
        """The frame with the DRR's edges at the registered pose, and its CameraInfo, only while someone subscribes.

        Both in ``frames.source`` (the pinhole of the projection, on /tf at the frame's stamp), at the
        registration's working resolution: K = [SDD/dx 0 cx; 0 SDD/dy cy; 0 0 1] of the working detector.
        A biplane pair's plane B (``planes``): the same on ``~/overlay_b`` in ``frames.source_b``, at plane B's
        stamp (its TF went out with its frame) and with its own detector.
        """
        self._overlay_on(self.overlay_pub, self.overlay_info_pub, frame.msg.header.stamp, self.frames["source"],
                         frame.fixed, result.pose, None, color)
        if planes and self.overlay_b_pub is not None and self._plane_b_stamp is not None:
            b = planes[0]
            self._overlay_on(self.overlay_b_pub, self.overlay_b_info_pub, self._plane_b_stamp,
                             self.frames["source_b"], b.fixed, b.cam_from_ref.to(result.pose) @ result.pose,
                             b.detector or self.detector, color)

    def _overlay_on(self, pub, info_pub, stamp, frame_id: str, fixed, pose: torch.Tensor, det: Detector | None,
                    color: tuple[int, int, int]) -> None:
        """One plane's overlay: ``fixed`` (working size, DRR-like units) with the edges of the DRR at ``pose``
        (``T_cam_ct`` of that plane; ``det``: its detector, None: plane A's)."""
        if info_pub.get_subscription_count() > 0 or pub.get_subscription_count() > 0:
            info_pub.publish(self._overlay_camera_info(stamp, frame_id, det))
        if pub.get_subscription_count() == 0:
            return
        drr = self.registrar.render(pose[None], detector=det)[0].cpu().numpy()
        fixed = fixed.cpu().numpy() if isinstance(fixed, torch.Tensor) else np.asarray(fixed)
        rgb = overlay(fixed, drr, mode=self._p("overlay.mode"), color=color)
        pub.publish(array_to_image(rgb, "rgb8", stamp, frame_id))

    def _overlay_camera_info(self, stamp, frame_id: str, det: Detector | None = None) -> CameraInfo:
        """The working detector as a pinhole camera at the source (no distortion), for rviz and image_geometry."""
        det = self.detector if det is None else det
        k = [float(v) for v in det.intrinsic_matrix().reshape(-1).tolist()]
        info = CameraInfo(height=int(det.height), width=int(det.width), distortion_model="plumb_bob",
                          d=[0.0] * 5, k=k, r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                          p=[k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0])
        info.header.stamp, info.header.frame_id = stamp, frame_id
        return info

    def _on_diagnostics_timer(self) -> None:
        """Every ``diagnostics_period_s``: the image QoS follows its publishers, then all statuses go out."""
        try:
            self.images.follow_publishers()
        except Exception as exc:  # a graph query failing must not stop the diagnostics
            self.get_logger().warning(f"image QoS check failed: {type(exc).__name__}: {exc}",
                                      throttle_duration_sec=30.0)
        self._publish_diagnostics(topics=True)

    def _publish_diagnostics(self, topics: bool = False) -> None:
        """The registration's status; with ``topics`` (the timer: their windows are diagnostics periods) also
        each input topic's, named ``<node>: <topic> topic status`` as diagnostic_updater names them."""
        cfg = self.registrar.config
        with self._lock:
            s = self.stats
            values = {
                "frames_received": s.frames_received, "frames_registered": s.frames_registered,
                "frames_published": s.frames_published, "frames_rejected": s.frames_rejected,
                "frames_held_back": s.frames_held_back, "window_views": len(self.window.views),
                "window_resets": s.window_resets, **s.notes,
                "frames_replaced_while_busy": self._slot.replaced,
                "frames_dropped_older_than_waiting": self._slot.dropped_older,
                "last_rejection": s.last_rejection, "device": str(self.registrar.device), **s.last,
                "last_frame_stamp": s.last_frame_stamp,
                # the DRR the registration renders (the config of the last frame, or the start-up one)
                "drr_model": cfg.drr_model,
                "drr_physics": "none (monoenergetic)" if cfg.drr_model != "poly" else " ".join(
                    f"{k}={getattr(cfg, k)}" for k in ("kvp", "filtration_mm_al", "energy_bins", "scatter_to_primary",
                                                       "scatter_sigma_fraction", "heel_gain")),
            }
            cal_status = None
            if self.calibration is not None:
                cal_level, values["physics_calibration"] = self.calibration.report()
                cal_status = DiagnosticStatus(level=cal_level, name="diffdrr_ros: physics calibration",
                                              message=values["physics_calibration"],
                                              hardware_id=str(self.registrar.device))
            status = DiagnosticStatus(level=s.level, name="diffdrr_ros: registration", message=s.message,
                                      hardware_id=str(self.registrar.device),
                                      values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
            statuses = [status] if cal_status is None else [status, cal_status]
            for ts in self.topic_status.values() if topics else ():
                r = ts.report()
                statuses.append(DiagnosticStatus(level=bytes([r.level]), name=f"{self.get_name()}: {ts.name}",
                                                 message=r.message, hardware_id=str(self.registrar.device),
                                                 values=[KeyValue(key=k, value=v) for k, v in r.values]))
        arr = DiagnosticArray(status=statuses)
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def shutdown(self) -> None:
        """Stop the worker thread (called by :func:`.runtime.run_node` before the node is destroyed)."""
        self._running = False
        if self._worker is not None:
            self._worker.join(timeout=5.0)


class RegistrationNode(RegistrationGlue, Node):
    """The registration node, configured and active as soon as it is built. ``main()`` runs it."""

    def __init__(self, **kwargs) -> None:
        super().__init__("diffdrr_registration", **kwargs)
        self._declare()
        self._configure()
        self._activate()


class ManagedRegistrationNode(RegistrationGlue, LifecycleNode):
    """The registration node as a managed (lifecycle) node, for systems brought up in order.

    ``configure`` loads the CT and builds the registrar (an unreadable CT fails the
    transition with the reason in the log; the node stays unconfigured and can be configured
    again), ``activate`` subscribes and starts registering, ``deactivate`` stops taking
    frames (the pose stops updating; nothing is published as stale), ``cleanup`` frees the
    CT. Drive it with ``ros2 lifecycle set /diffdrr_registration configure`` etc., a
    lifecycle manager, or ``registration.launch.py managed:=true autostart:=true``.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("diffdrr_registration", **kwargs)
        self._declare()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            self._cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._running:
            self._deactivate()
        if self._configured:
            self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in lifecycle state {state.label}: stopping, back to unconfigured")
        self.on_shutdown(state)
        return TransitionCallbackReturn.SUCCESS


def main(args: list[str] | None = None) -> int:
    """``ros2 run diffdrr_ros registration_node --ros-args --params-file config/registration.yaml``."""
    return run_node(RegistrationNode, "diffdrr_registration", (StartupError,), args)


if __name__ == "__main__":
    sys.exit(main())
