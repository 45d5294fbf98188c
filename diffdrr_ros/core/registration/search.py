"""The initial search that widens the capture range: many candidate poses, scored in one batch.

``init_candidates`` rotations around the start (a scrambled Sobol set in the
``+-init_range_deg`` box of the C-arm angles; the start itself is candidate 0), each with its
in-plane translation centred on the fixed image's intensity centroid
(:func:`center_translations`), are scored in one batched render on a ~16 px image; the
:class:`~.registrar.Registrar` then descends the best together and keeps the best few.
Measured: from ~45-85 % (the seed's protocol) to ~98-100 % capture at +-45 deg / +-60 mm.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..geometry.carm import carm_to_matrix, matrix_to_carm
from ..geometry.detector import Detector
from .config import RegistrationConfig
from .fixed_image import centroid_mm

#: ``render(poses (B, 4, 4)) -> (B, H, W)`` DRRs at the search level, no gradient needed.
RenderFn = Callable[[Tensor], Tensor]


def sobol_candidates(
    pose: Float[Tensor, "4 4"], center: Float[Tensor, " 3"], cfg: RegistrationConfig
) -> Float[Tensor, "N 4 4"]:
    """``cfg.init_candidates`` poses around ``pose`` (candidate 0 is ``pose`` itself), on the CPU."""
    n = cfg.init_candidates
    angles, trans = matrix_to_carm(pose.cpu()[None], center)
    dims = 3 if cfg.init_center else 6
    sobol = torch.quasirandom.SobolEngine(dims, scramble=True, seed=cfg.init_seed)
    u = sobol.draw(max(n - 1, 1), dtype=torch.float64)[: n - 1] * 2 - 1
    da = u[:, :3] * math.radians(cfg.init_range_deg)
    a = torch.cat([angles, angles + da], 0)
    t = trans.expand(n, 3).clone()
    if dims == 6:
        t[1:] += u[:, 3:] * cfg.init_range_mm
    return carm_to_matrix(a, t, center)


def center_translations(
    render_fn: RenderFn,
    det: Detector,
    fixed: Float[Tensor, "H W"],
    mask: Bool[Tensor, "H W"] | None,
    cand: Float[Tensor, "N 4 4"],
    center: Float[Tensor, " 3"],
    rounds: int = 2,
) -> Float[Tensor, "N 4 4"]:
    """Shift each candidate in the camera x/y plane so its DRR's centroid meets the fixed one.

    The detector shift is divided by the magnification at the CT centre's depth.
    """
    target = centroid_mm(fixed[None], det, mask)[0]
    sdd, sid = float(det.sdd_mm), float(det.sid)
    center = center.to(cand)
    for _ in range(rounds):
        with torch.no_grad():
            drr = render_fn(cand)
        shift_det = target - centroid_mm(drr, det, mask)
        depth = (cand[:, :3, :3] @ center[:, None])[:, 2, 0] + cand[:, 2, 3]  # CT centre z_cam
        mag = sdd / (sid + depth).clamp_min(0.1 * sid)
        cand = cand.clone()
        cand[:, :2, 3] += shift_det / mag[:, None]
    return cand


__all__ = ["center_translations", "sobol_candidates"]
