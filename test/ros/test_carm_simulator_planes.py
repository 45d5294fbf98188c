"""A biplane's second plane in the simulator: plane A's camera composed with the static plane-B transform."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from diffdrr_ros.core.drr import render
from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.sim import Trajectory, XRayStyle, simulate_xray
from diffdrr_ros.core.volume.phantoms import make_phantom
from diffdrr_ros.ros.carm_simulator import IMAGE_B_TOPIC, IMAGE_TOPIC, Simulator, simulate_messages
from diffdrr_ros.ros.conversions import image_to_array, xyz_rpy_to_matrix

DET = Detector(24, 24, spacing_mm=(16.0, 16.0), sdd_mm=1020.0, sid_mm=750.0)
CAM_B_FROM_A = xyz_rpy_to_matrix([0.0, 0.0, 0.0], [0.0, math.pi / 2, 0.0])  # the node's default


def _sim() -> Simulator:
    return Simulator(make_phantom("head_tiny"), DET, Trajectory(lao_amplitude_deg=40.0, period_s=16.0),
                     XRayStyle.mismatched(), t_start=1000.0)


def test_plane_b_sees_the_same_patient_through_the_static_transform():
    a = _sim()
    b = a.plane_b(CAM_B_FROM_A)
    for t in (1000.0, 1003.0, 1016.5):  # across a patient jump (every 15 s)
        iso_a, cam_a = a.truth(t)
        iso_b, cam_b = b.truth(t)
        assert torch.allclose(iso_a, iso_b)  # one patient: the same pose on the isocentre
        assert torch.allclose(cam_b, CAM_B_FROM_A @ cam_a)
        assert abs(float(cam_a[2, :3] @ cam_b[2, :3])) < 1e-9  # the beams cross at 90 deg
    assert b.seed != a.seed and b.image_frame != a.image_frame and a.cam_from_cam_a is None


def test_plane_b_frames_are_rendered_from_its_camera_with_its_own_noise():
    a = _sim()
    b = a.plane_b(CAM_B_FROM_A)
    t = 1002.0
    frame_a, frame_b = a.frame(t)[0], b.frame(t)[0]
    assert frame_a.header.stamp == frame_b.header.stamp and frame_b.header.frame_id == "carm_detector_b_optical"
    with torch.no_grad():
        line_b = render(b.mu, CAM_B_FROM_A @ a.truth(t)[1], DET)
    expected = simulate_xray(line_b, b.style, torch.Generator().manual_seed(b.seed))  # b's first frame
    np.testing.assert_array_equal(image_to_array(frame_b), expected.astype(np.uint16))
    assert not np.array_equal(image_to_array(frame_a), image_to_array(frame_b))


def test_a_biplane_stream_with_pixels_from_elsewhere():
    """simulate_messages(plane_b=...): plane B's frame of each stamp just before plane A's; ``pixels`` replaces
    the simulator's own frames (another projector's), with the simulator's stamps and truth."""
    sim = _sim()
    ones = lambda t: np.full(DET.shape, 7, dtype=np.uint16)  # noqa: E731
    a = replace(sim, pixels=ones)
    b = replace(sim.plane_b(CAM_B_FROM_A), pixels=lambda t: np.full(DET.shape, 9, dtype=np.uint16))
    msgs = list(simulate_messages(a, 2, frame_rate_hz=1.0, joint_rate_hz=2.0, plane_b=b))
    images = [(topic, ns, m) for topic, _, ns, m in msgs if topic in (IMAGE_TOPIC, IMAGE_B_TOPIC)]
    assert [topic for topic, _, _ in images] == [IMAGE_B_TOPIC, IMAGE_TOPIC] * 2
    stamps = [ns for _, _, ns, _ in msgs]
    assert stamps == sorted(stamps)  # in time order
    for (_, nsb, mb), (_, nsa, ma) in zip(images[::2], images[1::2], strict=True):
        assert mb.header.stamp == ma.header.stamp and 0 < nsa - nsb <= 1_000_000
        assert (image_to_array(ma) == 7).all() and (image_to_array(mb) == 9).all()
        assert mb.header.frame_id == "carm_detector_b_optical"
