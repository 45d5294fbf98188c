"""A simulated C-arm: fluoroscopy frames and joint states of a CT along a trajectory.

Publishes (system-default QoS, as a sensor driver does):

* ``fluoro/image`` (sensor_msgs/Image, mono16, 12- or 16-bit X-ray-like frames),
* ``carm/joint_states`` (sensor_msgs/JointState, rad and m, noisy, with a latency),
* ``carm_sim/ground_truth`` (geometry_msgs/PoseStamped: the true pose of the CT frame in
  ``carm_isocenter``, metres) and the same on ``/tf`` as ``carm_isocenter -> ct_ground_truth``.

Frames are stamped with ``carm_detector_optical``; the simulator does not put that frame on
``/tf``: the registration node does (``frames.detector``, from the joints and its detector
parameters, for every frame it pairs with joints), as it must with a real C-arm driver, and a
frame has one publisher. Run without the registration node, publish it with a static or URDF
publisher of your own (docs/image-streams.md).

The frames are rendered by the same core the registration uses. The same generator writes
bags offline (:func:`simulate_messages`), so tests and the demo can replay identical data.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from tf2_msgs.msg import TFMessage

from ..core.drr import render
from ..core.geometry import Detector
from ..core.geometry.kinematics import initial_pose
from ..core.sim import JointSensor, Trajectory, XRayStyle, simulate_xray
from ..core.volume import Volume
from .conversions import (
    JointNames,
    array_to_image,
    joints_to_message,
    matrix_to_pose,
    seconds_to_stamp,
    stamped_transform,
)
from .runtime import StartupError, load_ct, run_node

IMAGE_TOPIC = "fluoro/image"
IMAGE_B_TOPIC = "fluoro_b/image"  # a biplane's plane B (the node's topics.image_b)
JOINT_TOPIC = "carm/joint_states"
TRUTH_TOPIC = "carm_sim/ground_truth"


@dataclass
class Simulator:
    """Everything the simulated C-arm needs; ``frame(t)`` and ``joints(t)`` give messages."""

    volume: Volume
    detector: Detector
    trajectory: Trajectory = field(default_factory=Trajectory)
    style: XRayStyle = field(default_factory=XRayStyle)
    sensor: JointSensor = field(default_factory=JointSensor)
    carm_frame: str = "carm_isocenter"
    image_frame: str = "carm_detector_optical"
    names: JointNames = field(default_factory=JointNames)
    seed: int = 0
    t_start: float = 0.0  # clock time (s) at which the trajectory starts
    # Plane B of a biplane C-arm: ``T_camB_camA`` (4x4, mm), this camera seen from plane A's, which the
    # trajectory's joints move (the node's ``biplane.cam_b_from_cam_a``); None: plane A itself.
    cam_from_cam_a: torch.Tensor | None = None
    # The frame's pixels at clock time t (s) from elsewhere (another projector, e.g. bench/external_projector.py);
    # None: this package's DRR through simulate_xray(style).
    pixels: Callable[[float], np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.mu = self.volume.to_attenuation() if self.volume.kind == "hu" else self.volume
        self._noise = torch.Generator().manual_seed(self.seed)
        self._rng = np.random.default_rng(self.seed)

    def truth(self, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T_iso_ct, T_cam_ct)`` at clock time ``t`` (s; mm)."""
        joints = self.trajectory.joints(t - self.t_start)
        table_from_ct = self.trajectory.table_from_ct(t - self.t_start, self.volume.center)
        t_cam_ct = initial_pose(joints, table_from_ct)
        if self.cam_from_cam_a is not None:
            t_cam_ct = self.cam_from_cam_a.to(torch.float64) @ t_cam_ct
        iso_table = torch.eye(4, dtype=torch.float64)
        iso_table[:3, 3] = torch.tensor(joints.table_mm, dtype=torch.float64)
        return iso_table @ table_from_ct, t_cam_ct

    def plane_b(self, cam_b_from_cam_a: torch.Tensor, seed: int | None = None,
                image_frame: str = "carm_detector_b_optical") -> Simulator:
        """The second plane of a biplane: the same patient, trajectory and physics, its own camera and noise."""
        return replace(self, cam_from_cam_a=cam_b_from_cam_a, seed=self.seed + 1 if seed is None else seed,
                       image_frame=image_frame)

    def frame(self, t: float) -> tuple[Image, PoseStamped, TFMessage]:
        iso_ct, cam_ct = self.truth(t)
        if self.pixels is not None:
            img = self.pixels(t)
        else:
            with torch.no_grad():
                line = render(self.mu, cam_ct, self.detector)
            img = simulate_xray(line, self.style, self._noise)
        stamp = seconds_to_stamp(t)
        image = array_to_image(img, "mono16", stamp, self.image_frame)
        truth = PoseStamped()
        truth.header.stamp = stamp
        truth.header.frame_id = self.carm_frame
        truth.pose = matrix_to_pose(iso_ct)
        tf = TFMessage(transforms=[stamped_transform(iso_ct, self.carm_frame, "ct_ground_truth", stamp)])
        return image, truth, tf

    def joints(self, t: float) -> JointState:
        reading = self.sensor.read(self.trajectory, t - self.t_start, self._rng)
        return joints_to_message(reading, self.names, seconds_to_stamp(t))


def simulate_messages(
    sim: Simulator, n_frames: int, frame_rate_hz: float = 2.0, joint_rate_hz: float = 20.0, t0: float = 1000.0,
    plane_b: Simulator | None = None, image_b_topic: str = IMAGE_B_TOPIC,
) -> Iterator[tuple[str, str, int, object]]:
    """Offline stream ``(topic, msgtype, log_time_ns, message)`` in time order, for bags.

    Clock times start at ``t0`` (s); the trajectory starts there too. Frames at ``t0 + (k + 0.5) /
    frame_rate_hz``. ``plane_b`` (e.g. :meth:`Simulator.plane_b`): its frame of the same stamp on
    ``image_b_topic``, logged 0.1 ms before plane A's (the node pairs when A arrives).
    """
    sim.t_start = t0
    if plane_b is not None:
        plane_b.t_start = t0
    duration = n_frames / frame_rate_hz
    frames = [t0 + (k + 0.5) / frame_rate_hz for k in range(n_frames)]
    events: list[tuple[float, int, str, float]] = []  # (log time, order, kind, clock time)
    events += [(t, 0, "joints", t) for t in (t0 + k / joint_rate_hz for k in range(int(duration * joint_rate_hz) + 1))]
    events += [(t, 1, "frame", t) for t in frames]
    if plane_b is not None:
        events += [(t - 1e-4, 1, "frame_b", t) for t in frames]
    for log_t, _, kind, t in sorted(events):
        ns = round(log_t * 1e9)
        if kind == "joints":
            yield JOINT_TOPIC, "sensor_msgs/msg/JointState", ns, sim.joints(t)
        elif kind == "frame_b":
            yield image_b_topic, "sensor_msgs/msg/Image", ns, plane_b.frame(t)[0]
        else:
            image, truth, tf = sim.frame(t)
            yield TRUTH_TOPIC, "geometry_msgs/msg/PoseStamped", ns, truth
            yield "/tf", "tf2_msgs/msg/TFMessage", ns, tf
            yield IMAGE_TOPIC, "sensor_msgs/msg/Image", ns, image


class CArmSimulatorNode(Node):
    """Publishes the simulator's messages live at the configured rates."""

    def __init__(self, **kwargs) -> None:
        super().__init__("carm_simulator", **kwargs)
        p = {
            "ct_path": "phantom:head", "detector.height": 128, "detector.width": 128,
            "detector.pixel_spacing_mm": [3.125, 3.125], "detector.sdd_mm": 1020.0, "detector.sid_mm": 750.0,
            "frame_rate_hz": 2.0, "joint_rate_hz": 20.0, "trajectory": "sweep", "seed": 0,
            "xray.i0": 3000.0, "xray.bits": 12, "xray.invert": False, "xray.collimator_radius": 0.47,
            "joints.latency_s": 0.03, "joints.angle_noise_deg": 0.2,
        }
        for name, default in p.items():
            self.declare_parameter(name, default)
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        volume = load_ct(g("ct_path"), [1.0, 1.0, 1.0])
        det = Detector(g("detector.height"), g("detector.width"), spacing_mm=tuple(g("detector.pixel_spacing_mm")),
                       sdd_mm=g("detector.sdd_mm"), sid_mm=g("detector.sid_mm") or None)
        self.sim = Simulator(
            volume, det, Trajectory(kind=g("trajectory"), seed=g("seed")),
            XRayStyle(i0=g("xray.i0"), bits=g("xray.bits"), invert=g("xray.invert"),
                      collimator_radius=g("xray.collimator_radius")),
            JointSensor(angle_noise_deg=g("joints.angle_noise_deg"), latency_s=g("joints.latency_s")),
            seed=g("seed"), t_start=self.get_clock().now().nanoseconds * 1e-9,
        )
        self.image_pub = self.create_publisher(Image, IMAGE_TOPIC, 10)
        self.joint_pub = self.create_publisher(JointState, JOINT_TOPIC, 50)
        self.truth_pub = self.create_publisher(PoseStamped, TRUTH_TOPIC, 10)
        self.tf_pub = self.create_publisher(TFMessage, "/tf", 100)
        self.create_timer(1.0 / g("frame_rate_hz"), self._on_frame)
        self.create_timer(1.0 / g("joint_rate_hz"), self._on_joints)
        self.get_logger().info(f"simulating {g('ct_path')} at {g('frame_rate_hz')} Hz, {det.height}x{det.width}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_joints(self) -> None:
        self.joint_pub.publish(self.sim.joints(self._now()))

    def _on_frame(self) -> None:
        image, truth, tf = self.sim.frame(self._now())
        self.truth_pub.publish(truth)
        self.tf_pub.publish(tf)
        self.image_pub.publish(image)


def main(args: list[str] | None = None) -> int:
    """``ros2 run diffdrr_ros carm_simulator`` (parameters: see :class:`CArmSimulatorNode`)."""
    return run_node(CArmSimulatorNode, "carm_simulator", (StartupError, ValueError, OSError), args)

if __name__ == "__main__":
    sys.exit(main())
