"""Frame after frame: the start pose and mode, the lost-track gate, the window of views. Pure, no ROS.

The node keeps one :class:`Tracker`. A frame starts from the joints and the CT's placement
prior (``"full"``: the wide search) when there is no good pose to carry, else from the last
good pose carried through the C-arm and table motion since (``"tracking"``). A tracking
result whose ZNCC falls well below the recent accepted ones has lost track, even when it
passed the registration's own gate: the next frame then starts from the joints again.

:class:`ViewWindow` keeps the recent registered frames from *other* C-arm angles, so that each
new frame is registered jointly with them (depth from several views; see :mod:`.views`).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry.kinematics import (
    CArmJoints,
    beam_separation_rad,
    cam_from_iso,
    camera_motion,
    initial_pose,
    propagate_pose,
    table_transform,
)
from ..geometry.rotations import invert_transform
from ..metrics.pose_error import inplane_depth_error
from .views import View, view_from_joints

#: Accepted frames whose ZNCC the lost-track gate compares with.
HISTORY = 7
#: Accepted frames needed before the lost-track gate applies.
MIN_HISTORY = 3
#: A pose's depth is "unresolved" (add a view) when its sigma along the beam is this many times the in-plane ones.
DEPTH_DOMINATES = 1.5


@dataclass(frozen=True)
class FrameStart:
    """Where a frame's registration starts: ``mode`` is ``"full"`` or ``"tracking"``."""

    mode: str
    init_pose: Float[Tensor, "4 4"]  # T_cam_ct at the frame's joints


@dataclass(frozen=True)
class LostTrackGate:
    """Tracking frames must keep ZNCC within ``max(drop, drop_relative * (1 - median))`` of the recent median.

    The relative term follows the frames' own mismatch: real frames (scatter, beam
    hardening) sit well below ZNCC 1 and vary more from view to view than DRR-like ones.
    """

    max_drop: float = 0.02
    max_drop_relative: float = 0.0

    def check(self, zncc: float, recent: list[float]) -> tuple[bool, str]:
        """``(ok, why)`` for a tracking result with ``zncc`` after the accepted ``recent`` ones."""
        if len(recent) < MIN_HISTORY:
            return True, ""
        reference = float(statistics.median(recent))
        drop = max(self.max_drop, self.max_drop_relative * (1.0 - reference))
        if zncc < reference - drop:
            return False, (f"ZNCC {zncc:.4f} dropped more than {drop:.4f} below the recent median "
                           f"{reference:.4f} (lost track)")
        return True, ""


class Tracker:
    """The state between frames: the last good pose and its joints, recent ZNCCs, the next mode."""

    def __init__(self) -> None:
        self.last_good: tuple[Tensor, CArmJoints] | None = None
        self.recent_zncc: deque[float] = deque(maxlen=HISTORY)
        self.wide_next = True

    def start(self, joints: CArmJoints, table_from_ct: Float[Tensor, "4 4"]) -> FrameStart:
        """The start of a frame taken at ``joints``; ``table_from_ct`` is the CT's placement prior."""
        if self.last_good is not None and not self.wide_next:
            return FrameStart("tracking", propagate_pose(self.last_good[0], self.last_good[1], joints))
        return FrameStart("full", initial_pose(joints, table_from_ct))

    def gate(self, start: FrameStart, zncc: float, gate: LostTrackGate) -> tuple[bool, str]:
        """The lost-track gate (tracking frames only): ``(ok, why)``."""
        if start.mode != "tracking":
            return True, ""
        return gate.check(zncc, list(self.recent_zncc))

    def below_last(self, zncc: float, gate: LostTrackGate) -> bool:
        """A result clearly worse than the last accepted frame's (the lost-track tolerance, one frame of history).

        The node then registers the frame again with the wide search before any gate: from a
        start outside the tracking optimiser's basin (frames skipped, fast motion) Adam and
        Levenberg-Marquardt alike can end in a wrong minimum (measured: two starts 0.18 mm
        apart ended at 0.9998 and at 0.9961, 3 mm off).
        """
        if not self.recent_zncc:
            return False
        last = self.recent_zncc[-1]
        return zncc < last - max(gate.max_drop, gate.max_drop_relative * (1.0 - last))

    def accept(self, pose: Float[Tensor, "4 4"], joints: CArmJoints, zncc: float) -> None:
        """A published pose: later frames track from it."""
        self.last_good = (pose, joints)
        self.recent_zncc.append(zncc)
        self.wide_next = False

    def lose(self) -> None:
        """A rejected frame: the next one starts from the joints (keeps the search setting)."""
        self.last_good = None

    def reregister(self) -> None:
        """The next frame: a full registration with the wide search."""
        self.wide_next = True
        self.last_good = None


@dataclass
class WindowView:
    """A registered frame kept for later joint registrations (patient assumed still on the table)."""

    fixed: Tensor  # (H, W) DRR-like units
    mask: Tensor | None  # (H, W) bool
    joints: CArmJoints
    stamp: float  # s
    zncc: float  # its ZNCC when it was registered
    pose: Tensor | None = None  # T_cam_ct registered at its joints (its in-plane part is what it knows well)


@dataclass
class PatientDrift:
    """How fast the patient moves on the table, measured from the registered frames themselves.

    The angle history assumes a still patient; a view ``age`` seconds old is trusted to
    ``motion_mm + rate * age`` (1 sigma, see :func:`.uncertainty.pose_covariance`). A slow
    drift is invisible to the views' agreement test: two views 25 deg apart turn a 1 mm drift
    into ~2.4 mm of depth while each view's own image plane moves by much less. It is visible
    in the frames' own in-plane positions: each registered frame gives the CT centre in the
    table frame, exact in its image plane; two frames at least ``min_span_s`` apart from
    nearly one angle (``max_angle_deg``; their depth errors then do not enter) give the
    in-plane displacement per second, scaled by ``sqrt(3/2)`` to a 3-D speed (isotropic).
    """

    min_span_s: float = 4.0
    max_age_s: float = 30.0
    max_angle_deg: float = 10.0
    records: deque = field(default_factory=lambda: deque(maxlen=64))  # (stamp s, centre mm, beam), table frame

    def add(self, stamp: float, pose: Float[Tensor, "4 4"], joints: CArmJoints, center_ct: Float[Tensor, " 3"]) -> None:
        """A registered frame: ``pose`` is its ``T_cam_ct`` at ``joints``; ``center_ct`` the CT centre (mm)."""
        table_cam = invert_transform(cam_from_iso(joints) @ table_transform(joints))
        table_ct = table_cam @ pose.to(torch.float64)
        centre = table_ct[:3, :3] @ center_ct.to(torch.float64) + table_ct[:3, 3]
        self.records.append((float(stamp), centre, table_cam[:3, 2].clone()))

    def rate_mm_per_s(self, now: float) -> float | None:
        """The drift speed (mm/s) from the newest frame and the oldest same-angle one, or None (too few)."""
        recent = [r for r in self.records if now - r[0] <= self.max_age_s]
        if len(recent) < 2:
            return None
        t_new, c_new, u_new = recent[-1]
        for t_old, c_old, u_old in recent[:-1]:  # oldest first: the longest span, the least noise per second
            if t_new - t_old < self.min_span_s:
                return None
            if float(u_new @ u_old) < math.cos(math.radians(self.max_angle_deg)):
                continue
            beam = (u_new + u_old) / float((u_new + u_old).norm())
            d = c_new - c_old
            d = d - (d @ beam) * beam  # in plane only: the depth of either frame is the uncertain part
            return float(d.norm()) * math.sqrt(1.5) / (t_new - t_old)
        return None

    def clear(self) -> None:
        self.records.clear()


@dataclass
class ViewWindow:
    """Recent registered frames from different C-arm angles (the node's angle history).

    A frame counts as a new view only when its beam is at least ``min_separation_deg`` from
    every view kept (identical angles add no depth information); otherwise the view kept there
    stays (were the newer frame to win, a slow sweep would replace its one view frame by frame
    and never span an angle). At most ``max_views`` are kept, none older than ``max_age_s``
    (then the next frame from that angle takes its place); when full, the oldest goes.
    """

    max_views: int = 3
    min_separation_deg: float = 15.0
    max_age_s: float = 60.0
    views: list[WindowView] = field(default_factory=list)
    drift: PatientDrift = field(default_factory=PatientDrift)  # every registered frame, kept as a view or not

    def _prune(self, stamp: float) -> None:
        self.views = [v for v in self.views if stamp - v.stamp <= self.max_age_s and v.stamp <= stamp]

    def others(self, joints: CArmJoints, stamp: float) -> list[WindowView]:
        """The kept views that add an angle to a frame at ``joints`` (``max_views - 1`` at most, newest first)."""
        self._prune(stamp)
        sep = math.radians(self.min_separation_deg)
        far = [v for v in self.views if beam_separation_rad(v.joints, joints) >= sep]
        return sorted(far, key=lambda v: -v.stamp)[: max(0, self.max_views - 1)]

    def as_views(self, kept: list[WindowView], joints_ref: CArmJoints) -> list[View]:
        """``kept`` as :class:`.View` s of a registration whose reference frame is at ``joints_ref``."""
        return [view_from_joints(v.fixed, v.joints, joints_ref, v.mask) for v in kept]

    def add(self, view: WindowView) -> None:
        """Keep ``view`` if it adds an angle (see the class); when full, the oldest goes."""
        if self.max_views <= 1:
            self.views = []
            return
        self._prune(view.stamp)
        sep = math.radians(self.min_separation_deg)
        if any(beam_separation_rad(v.joints, view.joints) < sep for v in self.views):
            return
        self.views.append(view)
        self.views = sorted(self.views, key=lambda v: v.stamp)[-self.max_views:]

    def spread_deg(self, joints: CArmJoints) -> float:
        """The largest beam separation (deg) between ``joints`` and a kept view (0 when none)."""
        return max((math.degrees(beam_separation_rad(v.joints, joints)) for v in self.views), default=0.0)

    def motion_mm(self, kept: list[WindowView], stamp: float, motion_mm: float,
                  min_rate_mm_per_s: float) -> list[float]:
        """How far (1 sigma, mm) the patient may have moved since each of ``kept``, for a frame at ``stamp`` (s):
        ``motion_mm`` plus the drift rate (measured, at least ``min_rate_mm_per_s``) times the view's age."""
        rate = max(min_rate_mm_per_s, self.drift.rate_mm_per_s(stamp) or 0.0)
        return [motion_mm + rate * max(0.0, stamp - v.stamp) for v in kept]

    def clear(self) -> None:
        """Forget the views and the drift (the patient moved, or the geometry changed)."""
        self.views = []
        self.drift.clear()


@dataclass(frozen=True)
class KnownPoseGate:
    """A pose goes on TF because it is known: the predicted 1-sigma target error below ``max_target_sigma_mm``
    along every camera axis (:meth:`.PoseCovariance.target_sigma_mm`, in plane and along the beam).

    Without a covariance, the depth counts as resolved only with at least two views.
    """

    max_target_sigma_mm: float = 1.0
    min_separation_deg: float = 15.0

    def check(self, target_sigma_mm: Tensor | None, views: int) -> tuple[bool, str]:
        """``(known, why not)`` for a pose with predicted target sigmas ``(x, y, z)`` (mm) from ``views`` views."""
        hint = f"add a view at least {self.min_separation_deg:.0f} deg away"
        if target_sigma_mm is None:
            if views >= 2:
                return True, ""
            return False, f"depth unresolved: a single view (no covariance to tell); {hint}"
        sx, sy, sz = (float(v) for v in target_sigma_mm)
        limit = self.max_target_sigma_mm
        if max(sx, sy, sz) <= limit:
            return True, ""
        if sz > limit and sz >= DEPTH_DOMINATES * max(sx, sy):  # (a biplane pair's sigmas are alike: not depth)
            return False, (f"depth unresolved: predicted {sz:.2f} mm (1 sigma) along the beam from {views} view(s), "
                           f"limit {limit:.2f} mm; {hint}")
        return False, (f"pose not known well enough: predicted 1-sigma target error x {sx:.2f}, y {sy:.2f}, "
                       f"z {sz:.2f} mm, limit {limit:.2f} mm")


@dataclass(frozen=True)
class AmbiguityGate:
    """A wrong minimum the similarity cannot tell from the right one: the finest level ended in another
    minimum at least ``min_distance_mm`` away (mTRE between the two poses) whose similarity is within
    ``max_gap`` of the best one's. Then the frame does not decide between them, and the pose is not known.

    Measured (``bench/bench_first_frame.py``, 24 first frames, 4 candidates): the runner-up was within
    0.2 mm of the result in 21, 0.43 mm in one, and 3.8 mm at a gap of 0.0004 in the one whose result was
    1.9 mm off; a wrong basin 7.6 mm away lost by 0.025.
    """

    min_distance_mm: float = 2.0
    max_gap: float = 0.001

    def check(self, runner_up_mm: float | None, runner_up_gap: float | None) -> str | None:
        """The reason the result is ambiguous, or None."""
        if runner_up_mm is None or runner_up_gap is None:
            return None
        if runner_up_mm >= self.min_distance_mm and runner_up_gap <= self.max_gap:
            return (f"ambiguous: another minimum {runner_up_mm:.1f} mm away scores within {runner_up_gap:.4f} "
                    f"of this one (limit {self.max_gap:g})")
        return None


def disagreeing_views(
    kept: list[WindowView], pose: Float[Tensor, "4 4"], joints: CArmJoints, targets_ct: Float[Tensor, "P 3"],
    max_shift_mm: float,
) -> list[tuple[int, float]]:
    """Old views that the joint pose contradicts: ``(index into kept, shift in mm)``; the patient moved?

    Each kept view knows its pose well in its own image plane (depth less so). The joint pose
    ``pose`` (``T_cam_ct`` at ``joints``), carried to an old view's C-arm and table
    (:func:`.camera_motion`), should put the CT's targets where that view saw them; a mean
    in-plane shift (in that view's camera) above ``max_shift_mm`` says they do not fit one
    still patient. Views without a pose are not checked.
    """
    out = []
    for i, v in enumerate(kept):
        if v.pose is None:
            continue
        seen = camera_motion(joints, v.joints) @ pose.to(torch.float64)
        shift = float(inplane_depth_error(seen, v.pose.to(torch.float64), targets_ct).inplane_mm)
        if shift > max_shift_mm:
            out.append((i, shift))
    return out


__all__ = [
    "HISTORY",
    "MIN_HISTORY",
    "AmbiguityGate",
    "FrameStart",
    "KnownPoseGate",
    "LostTrackGate",
    "PatientDrift",
    "Tracker",
    "ViewWindow",
    "WindowView",
    "disagreeing_views",
]
