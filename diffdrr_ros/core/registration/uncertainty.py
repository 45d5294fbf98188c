"""How well one X-ray determines the registered pose: a covariance from the loss curvature.

At the registered pose the fixed image ``f`` and the DRR ``d(p)``, both normalised to zero
mean and unit variance over the (masked) pixels, are modelled as ``f = d(p) + e`` with
``e`` white, of variance ``s^2``. Then (Gauss-Newton / Laplace approximation)

    Cov(p) = s^2 / a^2 (J^T J)^-1,    J = d d / d p  (pixels x 6),    s^2 = |f - a d|^2 / (n - 6),

where ``a`` = ZNCC (normalising a noisy frame shrinks its signal by that factor) and
``|f - a d|^2 = n (1 - ZNCC^2)``: the quantities ZNCC registration optimises, so this is the
curvature of the -ZNCC loss turned into a covariance. ``J`` comes from central
differences of the DRR (12 renders in one batch at full resolution: exact for the
piecewise-smooth Siddon image at these steps, and independent of the backend).

What it captures: the geometry of a single view (the depth along the beam is far less
certain than the in-plane position, and rotations about in-plane axes trade against
translations), the image noise, and the image content (a featureless image gives a large
covariance). What it does not: residuals that are not white (model mismatch, scatter,
pixel correlations) make it optimistic, and it says nothing about a wrong local minimum
(the quality gate's job). Treat it as a lower bound and a shape; the Monte Carlo check in
``docs/results.md`` compares it with the scatter of registrations under noise.

Parameters (``p``), in the camera frame of the pose (x right, y down, z along the beam):
translation of the CT centre in mm, and rotation in radians about the CT centre, axes of
the camera frame. :meth:`PoseCovariance.about_origin` re-expresses it in the ROS
``PoseWithCovariance`` convention: translation of the pose's origin (the CT frame origin),
rotation about the parent frame's fixed axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry.rotations import axis_angle_to_matrix, make_transform, skew
from .fixed_image import prepare_fixed
from .registrar import Registrar

#: First finite-difference steps: translation (mm) and rotation (rad). The second pass uses
#: the first pass's sigmas (clamped to MIN_STEPS..MAX_STEPS): the Siddon DRR is piecewise
#: smooth, and at coarse pixels its slope over a voxel differs from its slope over the
#: scale the noise actually moves the pose (measured: up to 2x in the predicted sigma).
STEP_MM = 0.5
STEP_RAD = 1e-3
MIN_STEPS = torch.tensor([0.05] * 3 + [5e-5] * 3, dtype=torch.float64)
MAX_STEPS = torch.tensor([5.0] * 3 + [1e-2] * 3, dtype=torch.float64)


@dataclass
class PoseCovariance:
    """Covariance of a registered pose ``T_cam_ct`` (see the module docstring).

    Attributes:
        cov: ``6 x 6``, order ``(tx, ty, tz, rx, ry, rz)``, mm and rad, camera axes,
            translation of the CT centre and rotation about it.
        pose: the pose it belongs to, ``T_cam_ct``.
        center_ct: the CT centre (CT frame, mm) the parameters refer to.
        residual_std: ``s``, the rms of ``f - d`` in units of the image's standard deviation.
        pixels: pixels used.
    """

    cov: Float[Tensor, "6 6"]
    pose: Float[Tensor, "4 4"]
    center_ct: Float[Tensor, " 3"]
    residual_std: float
    pixels: int

    @property
    def sigma_mm(self) -> Float[Tensor, " 3"]:
        """1-sigma translation of the CT centre along camera x, y (in plane) and z (depth), mm."""
        return self.cov.diagonal()[:3].sqrt()

    @property
    def steps(self) -> Float[Tensor, " 6"]:
        """Finite-difference steps at the scale of these sigmas (for the next frame's estimate)."""
        return self.cov.diagonal().sqrt().clamp(MIN_STEPS, MAX_STEPS)

    @property
    def sigma_deg(self) -> Float[Tensor, " 3"]:
        """1-sigma rotation about the camera x, y, z axes through the CT centre, degrees."""
        return torch.rad2deg(self.cov.diagonal()[3:].sqrt())

    def about_origin(self, rotation: Float[Tensor, "3 3"] | None = None) -> Float[Tensor, "6 6"]:
        """The ROS convention: translation of the CT frame's origin, rotation about fixed axes.

        ``rotation`` (``R_parent_cam``) re-expresses both in a parent frame's axes (e.g. the
        C-arm isocentre frame the node publishes in); default: camera axes. Units stay mm, rad.
        """
        t = self.pose[:3, 3]
        p_c = self.pose[:3, :3] @ self.center_ct + t  # the CT centre in the camera frame
        # Rotating by w about p_c moves the origin t by w x (t - p_c) = -skew(t - p_c) w.
        a = torch.eye(6, dtype=self.cov.dtype)
        a[:3, 3:] = -skew(t - p_c)
        cov = a @ self.cov @ a.T
        if rotation is not None:
            r = torch.zeros(6, 6, dtype=cov.dtype)
            r[:3, :3] = rotation.to(cov.dtype)
            r[3:, 3:] = rotation.to(cov.dtype)
            cov = r @ cov @ r.T
        return 0.5 * (cov + cov.T)


def _perturbed(pose: Float[Tensor, "4 4"], center_cam: Float[Tensor, " 3"], delta: Float[Tensor, "K 6"]) -> Tensor:
    """``K`` poses: translate by ``delta[:, :3]`` (mm, camera axes), rotate by ``delta[:, 3:]`` about the centre."""
    rot = axis_angle_to_matrix(delta[:, 3:])  # K 3 3
    r = rot @ pose[:3, :3]
    t = (rot @ (pose[:3, 3] - center_cam)[:, None])[..., 0] + center_cam + delta[:, :3]
    return make_transform(r, t)


def _normalise(img: Tensor, mask: Tensor) -> Tensor:
    v = img[..., mask]
    return (v - v.mean(-1, keepdim=True)) / v.std(-1, keepdim=True).clamp_min(1e-12)


def pose_covariance(
    registrar: Registrar,
    fixed: np.ndarray | Tensor,
    pose: Float[Tensor, "4 4"],
    mask: np.ndarray | Tensor | None = None,
    steps: Float[Tensor, " 6"] | None = None,
    compare: str = "line_integral",
) -> PoseCovariance:
    """Covariance of the registered ``pose`` (``T_cam_ct``) given the ``fixed`` frame.

    ``fixed`` and ``mask`` as for :meth:`.Registrar.register` (line integrals; ``mask`` marks
    the pixels that carry signal). Costs 2 x 13 DRRs at full resolution, in two batches; or
    one batch when ``steps`` (mm, rad) are given, e.g. :attr:`PoseCovariance.steps` of the
    previous frame of a tracking sequence. ``compare="intensity"`` models the transmitted
    intensities ``exp(-L)`` instead of the line integrals (as ``RegistrationConfig.compare``).
    """
    if compare not in ("line_integral", "intensity"):
        raise ValueError(f"compare must be line_integral or intensity, got {compare!r}")
    f = prepare_fixed(fixed).to(registrar.device, torch.float64)
    m = torch.ones_like(f, dtype=torch.bool) if mask is None else torch.as_tensor(np.asarray(mask)).to(f.device)
    m = m.to(torch.bool)
    n = int(m.sum())
    if n <= 6:
        raise ValueError(f"{n} pixels cannot determine 6 pose parameters")
    pose = pose.to(torch.float64).cpu()
    center = registrar.center.to(torch.float64).cpu()
    center_cam = pose[:3, :3] @ center + pose[:3, 3]
    f_n = _normalise(torch.exp(-f) if compare == "intensity" else f, m)
    passes = 2 if steps is None else 1
    if steps is None:
        steps = torch.tensor([STEP_MM] * 3 + [STEP_RAD] * 3, dtype=torch.float64)
    steps = steps.to(torch.float64).cpu().clamp(MIN_STEPS, MAX_STEPS)
    for _ in range(passes):  # the second pass with steps at the scale of the first answer's sigmas
        cov, s2 = _gauss_newton(registrar, pose, center_cam, f_n, m, steps, compare)
        steps = cov.diagonal().sqrt().clamp(MIN_STEPS, MAX_STEPS)
    return PoseCovariance(cov.cpu(), pose, center, residual_std=s2**0.5, pixels=n)


def _gauss_newton(
    registrar: Registrar, pose: Tensor, center_cam: Tensor, f_n: Tensor, mask: Tensor, steps: Tensor, compare: str
) -> tuple[Tensor, float]:
    """``s^2 / a^2 (J^T J)^-1`` with ``J`` from central differences of the given steps; and ``s^2``."""
    delta = torch.zeros(13, 6, dtype=torch.float64)
    for i in range(6):
        delta[1 + 2 * i, i] = steps[i]
        delta[2 + 2 * i, i] = -steps[i]
    drrs = registrar.render(_perturbed(pose, center_cam, delta))  # 13 H W, full resolution
    drrs = drrs.to(torch.float64)
    d = _normalise(torch.exp(-drrs) if compare == "intensity" else drrs, mask)  # 13 n
    jac = torch.stack([(d[1 + 2 * i] - d[2 + 2 * i]) / (2 * steps[i]) for i in range(6)], -1)  # n 6
    n = f_n.shape[-1]
    a = float((f_n * d[0]).sum()) / (n - 1)  # ZNCC: the normalised frame is a * DRR + noise
    s2 = float(((f_n - a * d[0]) ** 2).sum()) / (n - 6)
    cov = s2 * torch.linalg.pinv(a * a * (jac.T @ jac), hermitian=True)
    return 0.5 * (cov + cov.T), s2
