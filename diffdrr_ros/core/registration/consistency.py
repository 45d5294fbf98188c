"""Does a new frame agree with the views it was registered with? (the patient moved between them). Pure, no ROS.

A joint registration of a new frame with older views from other angles finds one pose for all
of them. When the patient moved in between (a cough, a jump of a few mm), no pose fits all, and
the joint pose is a compromise that the older views pull into the depth of the new one:
measured on the head phantom (128 px, 2 older views at 0 and 20 deg, new frame at 40 deg), a
3 mm / 1.5 deg jump left the joint pose 2.6 mm off (2.4 mm along the new beam) while each older
view's own in-plane disagreement stayed near the 1.5 mm limit of
:func:`.tracking.disagreeing_views`. The new frame alone sees the jump best: from the joint
pose, a few Levenberg-Marquardt steps on its own view(s) move the CT's targets 1.0 mm in its
image plane (0.02 mm without the jump), the directions a single view knows well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..metrics.pose_error import inplane_depth_error
from .gauss_newton import lm_refine
from .registrar import Registrar
from .views import View


def own_view_shift_mm(
    registrar: Registrar,
    fixed: np.ndarray | Tensor,
    pose: Float[Tensor, "4 4"],
    mask: np.ndarray | Tensor | None = None,
    views: Sequence[View] = (),
    max_iterations: int = 3,
) -> tuple[float, Float[Tensor, "4 4"]]:
    """How far the frame alone would move the CT's targets in its image plane from ``pose`` (mm), and where to.

    ``pose``: ``T_cam_ct`` of the frame (e.g. a joint registration's result); ``fixed``/``mask``:
    the frame as :meth:`.Registrar.register` takes it; ``views``: views that belong to the frame
    itself (a biplane partner), not the older ones under test. Up to ``max_iterations``
    Levenberg-Marquardt steps at full resolution with the registrar's similarity (no fall-back,
    no search): the shift is the mean in-plane (camera x, y) displacement of the registrar's
    targets between ``pose`` and the refined pose (a single view knows it well; the depth it
    does not know is left out).
    """
    cfg = registrar.config
    level = registrar.levels[-1]
    frames = registrar.view_stacks(fixed, mask, views)
    start = pose.to(torch.float64).cpu()
    refined, _, _, _ = lm_refine(level.volume, frames, level.detector, start, registrar.center,
                                 registrar.settings(level.factor), cfg.similarity, cfg.compare,
                                 max_iterations=max_iterations)
    shift = float(inplane_depth_error(refined, start, registrar.targets.to(torch.float64).cpu()).inplane_mm)
    return shift, refined


__all__ = ["own_view_shift_mm"]
