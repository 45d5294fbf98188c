"""Frame after frame: which start pose and mode a frame gets, and the lost-track gate. Pure, no ROS.

The node keeps one :class:`Tracker`. A frame starts from the joints and the CT's placement
prior (``"full"``: the wide search) when there is no good pose to carry, else from the last
good pose carried through the C-arm and table motion since (``"tracking"``). A tracking
result whose ZNCC falls well below the recent accepted ones has lost track, even when it
passed the registration's own gate: the next frame then starts from the joints again.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from ..geometry.kinematics import CArmJoints, initial_pose, propagate_pose

#: Accepted frames whose ZNCC the lost-track gate compares with.
HISTORY = 7
#: Accepted frames needed before the lost-track gate applies.
MIN_HISTORY = 3


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


__all__ = ["HISTORY", "MIN_HISTORY", "FrameStart", "LostTrackGate", "Tracker"]
