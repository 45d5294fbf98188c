"""More than one view of the same CT: what a view is, and how its camera relates to the reference view.

From one view the pose along the beam is seen only through magnification (a 150 mm skull at
SID 750 mm changes its image size by 0.2 mm per mm of depth); a second view at an angle
``a`` turns depth into in-plane position, ``sigma_depth ~ sigma_in_plane / sin(a)``. The
:class:`~.registrar.Registrar` registers one CT pose (``T_cam_ct`` of the reference view) to
all views jointly: view ``k`` sees ``T_camk_ct = cam_from_ref_k @ T_cam_ct``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..geometry.detector import Detector
from ..geometry.kinematics import CArmJoints, camera_motion


@dataclass(frozen=True)
class View:
    """One more frame for a joint registration.

    Attributes:
        fixed: ``(H, W)`` in DRR-like units (see :func:`.fixed_image.prepare_fixed`).
        cam_from_ref: ``T_camk_cam_ref`` (mm): this view's camera seen from the reference
            view's camera, e.g. :func:`view_from_joints`. The patient is assumed still.
        mask: ``(H, W)`` bool, True where the frame carries signal; None: all pixels.
        detector: this view's intrinsics (a biplane's second panel); None: the registrar's.
    """

    fixed: np.ndarray | Tensor
    cam_from_ref: Float[Tensor, "4 4"]
    mask: Bool[Tensor, "H W"] | np.ndarray | None = None
    detector: Detector | None = None


@dataclass
class ViewStack:
    """The fixed images of all views at one pyramid level, as the optimiser sees them.

    ``fixed (K, h, w)``, ``mask (K, h, w)`` or None, and ``cam_from_ref (K, 4, 4)`` (None for a
    single view: exactly the single-view path, no extra products). Differentiable in the pose.
    """

    fixed: Tensor
    mask: Tensor | None
    cam_from_ref: Tensor | None
    detector: Detector | None = None  # these views' intrinsics at this level; None: the level's reference detector
    indices: tuple[int, ...] = (0,)  # where these views stand in the registration's view order

    @property
    def count(self) -> int:
        return int(self.fixed.shape[0])

    def poses(self, pose: Float[Tensor, "B 4 4"]) -> Float[Tensor, "BK 4 4"]:
        """Each candidate's pose in every view's camera, candidate-major (``b * K + k``)."""
        if self.cam_from_ref is None:
            return pose
        return (self.cam_from_ref[None] @ pose[:, None]).reshape(-1, 4, 4)

    def similarity(self, sim: Callable, drr: Float[Tensor, "BK h w"], batch: int) -> Float[Tensor, " B"]:
        """Mean over the views of the per-view similarity (one value per candidate)."""
        if self.count == 1:
            return sim(drr, self.fixed[0], None if self.mask is None else self.mask[0])
        k, h, w = self.fixed.shape
        f = self.fixed.expand(batch, k, h, w).reshape(-1, h, w)
        m = None if self.mask is None else self.mask.expand(batch, k, h, w).reshape(-1, h, w)
        return sim(drr, f, m).reshape(batch, k).mean(-1)


def view_from_joints(
    fixed: np.ndarray | Tensor,
    joints: CArmJoints,
    joints_ref: CArmJoints,
    mask: Bool[Tensor, "H W"] | np.ndarray | None = None,
    detector: Detector | None = None,
) -> View:
    """A view taken at ``joints`` for a registration whose reference frame was taken at ``joints_ref``."""
    return View(fixed, camera_motion(joints_ref, joints).to(torch.float64), mask, detector)


def mean_similarity(
    groups: list[ViewStack], sim: Callable, render_group: Callable[[ViewStack, Tensor], Tensor], pose: Tensor
) -> Float[Tensor, " B"]:
    """The mean over all views of the per-view similarity, one batched render per detector geometry.

    ``render_group(group, poses (B * K_g, 4, 4)) -> (B * K_g, h, w)`` renders a group's views.
    A single group (one C-arm) is one render and exactly its :meth:`ViewStack.similarity`.
    """
    if len(groups) == 1:
        g = groups[0]
        return g.similarity(sim, render_group(g, g.poses(pose)), pose.shape[0])
    total = sum(g.similarity(sim, render_group(g, g.poses(pose)), pose.shape[0]) * g.count for g in groups)
    return total / sum(g.count for g in groups)


__all__ = ["View", "ViewStack", "mean_similarity", "view_from_joints"]
