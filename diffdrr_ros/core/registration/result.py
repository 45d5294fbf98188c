"""What a registration returns: :class:`RegistrationResult` (pose, similarity, verdict, stages)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from jaxtyping import Float
from torch import Tensor


@dataclass
class RegistrationResult:
    """Outcome of one registration. Poses are ``T_cam_ct`` (CT/LPS mm -> camera frame)."""

    pose: Float[Tensor, "4 4"]
    angles_rad: Float[Tensor, " 3"]
    translation_mm: Float[Tensor, " 3"]
    similarity: float  # configured similarity, full resolution (mean over the views)
    zncc: float  # full-resolution ZNCC (the seed's metric; the lowest over the views)
    iterations: int
    wall_time_s: float
    converged: bool  # the last level stopped on the convergence criterion, not on max_iterations
    stop_reason: str
    accepted: bool  # passed the quality gate
    verdict: str  # why it was (not) accepted
    history: list[float] = field(default_factory=list)  # loss per iteration, all levels
    mtre_mm: float | None = None  # when a ground truth was given
    success: bool | None = None  # mTRE below the success threshold (when a truth was given)
    stages: list[dict] = field(default_factory=list)  # per stage (search, levels): size, iterations, time
    view_zncc: list[float] = field(default_factory=list)  # full-resolution ZNCC per view, the reference first
    # The best other candidate of the finest level (when it had several): its distance from the result (mTRE
    # between the two poses, mm) and how much lower its similarity is (finest level's loss difference, >= 0).
    runner_up_mm: float | None = None
    runner_up_gap: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("pose", "angles_rad", "translation_mm"):
            d[key] = getattr(self, key).tolist()
        return d
