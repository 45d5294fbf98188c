"""The node's frame-to-frame policy, without DDS: start pose and mode, lost-track gate, resets."""

import math

import torch

from diffdrr_ros.core.geometry import CArmJoints, default_prior, initial_pose, propagate_pose
from diffdrr_ros.core.registration import LostTrackGate, Tracker

CENTER = torch.tensor([10.0, -20.0, 30.0], dtype=torch.float64)
PRIOR = default_prior(CENTER)


def _joints(lao_deg: float, table_z: float = 0.0) -> CArmJoints:
    return CArmJoints(lao_rad=math.radians(lao_deg), cranial_rad=0.1, table_mm=(0.0, 0.0, table_z))


def test_first_frame_is_full_from_the_joints_then_tracking_from_the_last_good_pose():
    tracker = Tracker()
    j0, j1 = _joints(0.0), _joints(20.0, table_z=15.0)
    start = tracker.start(j0, PRIOR)
    assert start.mode == "full"
    torch.testing.assert_close(start.init_pose, initial_pose(j0, PRIOR))
    registered = start.init_pose.clone()
    registered[:3, 3] += torch.tensor([3.0, -2.0, 5.0], dtype=torch.float64)  # the registration moved it
    tracker.accept(registered, j0, 0.99)
    nxt = tracker.start(j1, PRIOR)
    assert nxt.mode == "tracking"
    torch.testing.assert_close(nxt.init_pose, propagate_pose(registered, j0, j1))
    assert not torch.allclose(nxt.init_pose, initial_pose(j1, PRIOR))


def test_a_rejection_or_reset_starts_from_the_joints_and_reregister_also_widens():
    tracker = Tracker()
    pose = initial_pose(_joints(0.0), PRIOR)
    tracker.accept(pose, _joints(0.0), 0.99)
    tracker.lose()
    assert tracker.start(_joints(5.0), PRIOR).mode == "full"
    assert not tracker.wide_next  # a lost track keeps the search setting of tracking frames
    tracker.accept(pose, _joints(0.0), 0.99)
    tracker.reregister()
    assert tracker.wide_next and tracker.start(_joints(5.0), PRIOR).mode == "full"


def test_lost_track_gate_needs_history_and_follows_the_frames_mismatch():
    tracker = Tracker()
    gate = LostTrackGate(max_drop=0.02, max_drop_relative=3.0)
    pose, j = initial_pose(_joints(0.0), PRIOR), _joints(0.0)
    full = tracker.start(j, PRIOR)
    assert tracker.gate(full, 0.1, gate) == (True, "")  # full registrations are not compared
    for z in (0.99, 0.99):
        tracker.accept(pose, j, z)
    tracking = tracker.start(j, PRIOR)
    assert tracker.gate(tracking, 0.5, gate)[0]  # fewer than 3 accepted frames: no reference yet
    tracker.accept(pose, j, 0.99)
    # median 0.99: the allowed drop is max(0.02, 3 * 0.01) = 0.03
    assert tracker.gate(tracking, 0.965, gate)[0]
    ok, why = tracker.gate(tracking, 0.955, gate)
    assert not ok and "lost track" in why and "0.9900" in why
    strict = LostTrackGate(max_drop=0.02, max_drop_relative=0.0)
    assert not tracker.gate(tracking, 0.965, strict)[0]
