"""The node's frame-to-frame policy, without DDS: start pose and mode, lost-track gate, resets."""

import math

import pytest
import torch

from diffdrr_ros.core.geometry import CArmJoints, camera_motion, default_prior, initial_pose, propagate_pose
from diffdrr_ros.core.geometry.kinematics import cam_from_iso
from diffdrr_ros.core.metrics import target_points
from diffdrr_ros.core.registration import (
    AmbiguityGate,
    KnownPoseGate,
    LostTrackGate,
    PatientDrift,
    Tracker,
    ViewWindow,
    WindowView,
    disagreeing_views,
)

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


def test_view_window_counts_only_new_angles_and_forgets_old_ones():
    window = ViewWindow(max_views=3, min_separation_deg=15.0, max_age_s=10.0)
    img = torch.zeros(4, 4, dtype=torch.float64)

    def view(lao_deg, stamp, zncc=0.99):
        return WindowView(img, None, _joints(lao_deg), stamp, zncc)

    window.add(view(0.0, 1.0))
    window.add(view(5.0, 2.0))  # within 15 deg: the view kept there stays
    assert [v.stamp for v in window.views] == [1.0]
    assert window.others(_joints(8.0), 3.0) == []  # the same angle adds no depth
    assert [v.stamp for v in window.others(_joints(30.0), 3.0)] == [1.0]
    window.add(view(30.0, 3.0))
    window.add(view(60.0, 4.0))
    window.add(view(-40.0, 5.0))  # full: the oldest goes
    assert [v.stamp for v in window.views] == [3.0, 4.0, 5.0]
    assert len(window.others(_joints(100.0), 6.0)) == 2  # max_views - 1 besides the new frame
    assert [v.stamp for v in window.others(_joints(100.0), 14.5)] == [5.0]  # older than 10 s: dropped
    views = window.as_views(window.views, _joints(100.0))
    torch.testing.assert_close(views[0].cam_from_ref, camera_motion(_joints(100.0), _joints(-40.0)))
    ap = ViewWindow(views=[WindowView(img, None, CArmJoints(0.0, 0.0), 0.0, 1.0)])
    assert ap.spread_deg(CArmJoints(math.radians(40), 0.0)) == pytest.approx(40.0, abs=1e-9)
    assert ap.spread_deg(CArmJoints(0.0, 0.0, detector_rotation_rad=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_a_slow_sweep_spans_an_angle():
    """Frames 1 deg apart: the window keeps the first until one is 15 deg away, then has two views.

    (At cranial 0.1 rad, 15 deg of LAO is a beam separation just below 15 deg: 16 is the first.)"""
    window = ViewWindow(max_views=3, min_separation_deg=15.0, max_age_s=60.0)
    img = torch.zeros(4, 4, dtype=torch.float64)
    for k in range(20):
        window.add(WindowView(img, None, _joints(float(k)), float(k), 0.99))
    assert [v.stamp for v in window.views] == [0.0, 16.0]
    assert [v.stamp for v in window.others(_joints(19.0), 19.5)] == [0.0]
    assert [v.stamp for v in window.others(_joints(19.0), 61.0)] == []  # the first view expired
    window.add(WindowView(img, None, _joints(0.0), 61.0, 0.99))  # its angle is free again
    assert [v.stamp for v in window.views] == [16.0, 61.0]


def test_patient_drift_from_the_frames_in_plane_positions():
    """A patient drifting 0.2 mm/s across the beam: measured from frames at one angle (x sqrt(3/2) for
    3-D); motion along the beam is not seen by one angle; too short a span or other angles give None."""
    def pose_at(t, joints, velocity):
        table_ct = default_prior(CENTER)
        table_ct[:3, 3] += torch.tensor(velocity, dtype=torch.float64) * t
        return initial_pose(joints, table_ct)

    ap = CArmJoints(0.0, 0.0, table_mm=(0.0, 5.0, 0.0))
    beam = torch.linalg.inv(cam_from_iso(ap))[:3, 2]  # the beam in the table frame
    across = torch.linalg.cross(beam, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    across = across / across.norm() * 0.2
    drift = PatientDrift()
    for t in range(0, 11, 2):
        drift.add(float(t), pose_at(t, ap, across.tolist()), ap, CENTER)
    assert drift.rate_mm_per_s(10.0) == pytest.approx(0.2 * math.sqrt(1.5), rel=1e-6)
    along = PatientDrift()
    for t in range(0, 11, 2):
        along.add(float(t), pose_at(t, ap, (0.2 * beam).tolist()), ap, CENTER)
    assert along.rate_mm_per_s(10.0) == pytest.approx(0.0, abs=1e-9)
    short = PatientDrift()
    short.add(0.0, pose_at(0, ap, across.tolist()), ap, CENTER)
    short.add(2.0, pose_at(2, ap, across.tolist()), ap, CENTER)
    assert short.rate_mm_per_s(2.0) is None
    turned = PatientDrift()
    lao40 = CArmJoints(math.radians(40), 0.0)
    turned.add(0.0, pose_at(0, ap, across.tolist()), ap, CENTER)
    turned.add(6.0, pose_at(6, lao40, across.tolist()), lao40, CENTER)
    assert turned.rate_mm_per_s(6.0) is None  # no two frames from one angle
    window = ViewWindow(drift=drift)
    kept = [WindowView(torch.zeros(4, 4, dtype=torch.float64), None, ap, 4.0, 0.99)]
    assert window.motion_mm(kept, 10.0, 0.1, 0.02) == [pytest.approx(0.1 + 0.2 * math.sqrt(1.5) * 6.0)]
    assert window.motion_mm(kept, 10.0, 0.1, 1.0) == [pytest.approx(0.1 + 6.0)]  # the floor rate
    window.clear()
    assert drift.rate_mm_per_s(10.0) is None


def test_views_that_disagree_with_the_new_frame():
    img = torch.zeros(4, 4, dtype=torch.float64)
    targets = target_points(CENTER, torch.full((3,), 150.0, dtype=torch.float64))
    a, b = _joints(30.0), _joints(60.0, table_z=20.0)
    pose_a = initial_pose(a, PRIOR)
    kept = [WindowView(img, None, a, 1.0, 0.99, pose_a), WindowView(img, None, b, 2.0, 0.99, None)]
    still = initial_pose(_joints(0.0), PRIOR)  # the same patient, seen at 0 deg
    assert disagreeing_views(kept, still, _joints(0.0), targets, 1.0) == []
    deeper = still.clone()
    deeper[2, 3] += 5.0  # along the new beam: 30 deg off the old view's beam, 2.5 mm in its plane
    moved = disagreeing_views(kept, deeper, _joints(0.0), targets, 1.0)
    assert [i for i, _ in moved] == [0] and 2.0 < moved[0][1] < 3.0
    assert disagreeing_views(kept, deeper, _joints(0.0), targets, 3.0) == []


def test_known_pose_gate_per_axis():
    gate = KnownPoseGate(max_target_sigma_mm=1.0, min_separation_deg=20.0)
    assert gate.check(torch.tensor([0.2, 0.3, 0.8]), 2) == (True, "")
    ok, why = gate.check(torch.tensor([0.2, 0.3, 2.3]), 1)
    assert not ok and why.startswith("depth unresolved") and "2.30 mm" in why and "20 deg" in why
    ok, why = gate.check(torch.tensor([1.4, 0.3, 0.5]), 3)
    assert not ok and "x 1.40" in why
    # A biplane pair whose sigmas are alike (depth of one plane is the other's in-plane): not "add a view".
    ok, why = gate.check(torch.tensor([1.1, 0.4, 1.19]), 2)
    assert not ok and why.startswith("pose not known well enough") and "z 1.19" in why
    assert gate.check(None, 2)[0] and not gate.check(None, 1)[0]


def test_a_near_equal_minimum_far_away_is_ambiguous():
    gate = AmbiguityGate(min_distance_mm=2.0, max_gap=0.001)
    assert gate.check(None, None) is None  # one candidate at the finest level: nothing to compare
    assert gate.check(0.2, 0.0) is None  # the same minimum
    assert gate.check(7.6, 0.025) is None  # a far one, but clearly worse
    why = gate.check(3.8, 0.0004)
    assert why is not None and "3.8 mm" in why and "ambiguous" in why
