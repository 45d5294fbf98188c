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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..drr import render
from ..drr.jacobian import render_with_pose_jacobian, step_pose
from ..geometry.detector import Detector
from ..geometry.rotations import skew
from .fixed_image import prepare_fixed
from .registrar import Registrar
from .views import View

#: First finite-difference steps: translation (mm) and rotation (rad). The second pass uses
#: the first pass's sigmas (clamped to MIN_STEPS..MAX_STEPS): the Siddon DRR is piecewise
#: smooth, and at coarse pixels its slope over a voxel differs from its slope over the
#: scale the noise actually moves the pose (measured: up to 2x in the predicted sigma).
STEP_MM = 0.5
STEP_RAD = 1e-3
MIN_STEPS = torch.tensor([0.05] * 3 + [5e-5] * 3, dtype=torch.float64)
MAX_STEPS = torch.tensor([5.0] * 3 + [1e-2] * 3, dtype=torch.float64)
#: Largest residual autocorrelation lag (pixels) counted by :func:`residual_correlation`.
MAX_LAG_PX = 12


@dataclass
class PoseCovariance:
    """Covariance of a registered pose ``T_cam_ct`` (see the module docstring).

    Attributes:
        cov: ``6 x 6``, order ``(tx, ty, tz, rx, ry, rz)``, mm and rad, camera axes,
            translation of the CT centre and rotation about it.
        pose: the pose it belongs to, ``T_cam_ct``.
        center_ct: the CT centre (CT frame, mm) the parameters refer to.
        residual_std: ``s``, the rms of ``f - d`` in units of the image's standard deviation
            (reference view).
        pixels: pixels used, all views.
        views: how many views it combines.
        statistical: ``cov`` from noise and residuals only (without the systematic magnification
            term and the patient's motion between views).
    """

    cov: Float[Tensor, "6 6"]
    pose: Float[Tensor, "4 4"]
    center_ct: Float[Tensor, " 3"]
    residual_std: float
    pixels: int
    views: int = 1
    statistical: Float[Tensor, "6 6"] | None = None  # noise and residuals only (None: same as cov)

    def target_sigma_mm(self, points_ct: Float[Tensor, "P 3"]) -> Float[Tensor, " 3"]:
        """Predicted 1-sigma error of the targets along camera x, y (in plane) and z (the beam), mm (rms over targets).

        A target at ``x`` (camera frame) moves by ``dt + dw x (x - c)`` for a pose change
        ``(dt, dw)`` about the CT centre ``c``: rotations count at the targets' lever arms.
        """
        pts = points_ct.to(torch.float64)
        r, t = self.pose[:3, :3], self.pose[:3, 3]
        x_cam = pts @ r.T + t
        c_cam = r @ self.center_ct + t
        jac = torch.zeros(pts.shape[0], 3, 6, dtype=torch.float64)
        jac[:, :, :3] = torch.eye(3, dtype=torch.float64)
        jac[:, :, 3:] = -skew(x_cam - c_cam)
        var = torch.einsum("pij,jk,pik->pi", jac, self.cov, jac)  # P 3: per-target variance per axis
        return var.mean(0).clamp_min(0).sqrt()

    @property
    def sigma_mm(self) -> Float[Tensor, " 3"]:
        """1-sigma translation of the CT centre along camera x, y (in plane) and z (depth), mm."""
        return self.cov.diagonal()[:3].sqrt()

    @property
    def steps(self) -> Float[Tensor, " 6"]:
        """Finite-difference steps at the scale of the statistical sigmas (for the next frame's estimate)."""
        cov = self.cov if self.statistical is None else self.statistical
        return cov.diagonal().sqrt().clamp(MIN_STEPS, MAX_STEPS)

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
    return step_pose(pose, center_cam, delta)


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
    views: Sequence[View] = (),
    correlated: bool = True,
    scale_uncertainty: float = 0.0,
    jacobian: str = "fd",
    view_motion_mm: Sequence[float] = (),
) -> PoseCovariance:
    """Covariance of the registered ``pose`` (``T_cam_ct``) given the ``fixed`` frame (and more ``views``).

    ``fixed``, ``mask`` and ``views`` as for :meth:`.Registrar.register` (line integrals; ``mask``
    marks the pixels that carry signal). Each view adds its information ``a_k^2 / s_k^2 J_k^T J_k``
    (its own ZNCC ``a_k`` and residual ``s_k``; ``J_k`` from the same perturbations of the
    reference pose seen through the view's camera), so the depth variance of one view shrinks
    as views from other angles are added, and a view from the same angle adds no new direction.
    Costs 2 x 13 x K DRRs at full resolution, in two batches; or one batch when ``steps`` (mm,
    rad) are given, e.g. :attr:`PoseCovariance.steps` of the previous frame of a tracking
    sequence. ``compare="intensity"`` models the transmitted intensities ``exp(-L)`` instead of
    the line integrals (as ``RegistrationConfig.compare``). ``correlated``: count the residual's
    spatial correlation (:func:`residual_correlation`) instead of treating every pixel as independent.
    ``scale_uncertainty``: a relative magnification error the DRR's physics may leave (e.g.
    0.003: a 0.3 % size error, 2.3 mm of depth at SID 750 mm), which one view cannot tell
    from depth; views from other angles resolve it. ``jacobian``: ``"fd"`` (central differences,
    the calibrated default) or ``"analytic"`` (the kernels' pose Jacobian: one pass a view instead
    of 13 DRRs, no second pass; the numba or numba-cuda kernels; ``"auto"``: analytic on the CPU, else fd).
    ``view_motion_mm``: per view of ``views`` (in order; missing ones 0), how far (1 sigma, mm,
    isotropic) the patient may have moved between that view and ``fixed``: the view then
    constrains the pose only to within that (views taken apart in time, e.g. the node's angle
    history; a biplane partner taken at once has 0).
    """
    if jacobian == "auto":
        jacobian = "analytic" if registrar.device.type == "cpu" else "fd"
    if jacobian not in ("fd", "analytic"):
        raise ValueError(f"jacobian must be fd, analytic or auto, got {jacobian!r}")
    if compare not in ("line_integral", "intensity"):
        raise ValueError(f"compare must be line_integral or intensity, got {compare!r}")
    frames = [(fixed, mask, None)] + [(v.fixed, v.mask, v.cam_from_ref) for v in views]
    detectors = [None] + [v.detector for v in views]
    normalised, masks, rel = [], [], []
    for f_raw, m_raw, t in frames:
        f = prepare_fixed(f_raw).to(registrar.device, torch.float64)
        m = torch.ones_like(f, dtype=torch.bool) if m_raw is None else torch.as_tensor(np.asarray(m_raw)).to(f.device)
        m = m.to(torch.bool)
        if int(m.sum()) <= 6:
            raise ValueError(f"{int(m.sum())} pixels cannot determine 6 pose parameters")
        normalised.append(_normalise(torch.exp(-f) if compare == "intensity" else f, m))
        masks.append(m)
        rel.append(None if t is None else torch.as_tensor(t, dtype=torch.float64))
    pose = pose.to(torch.float64).cpu()
    center = registrar.center.to(torch.float64).cpu()
    center_cam = pose[:3, :3] @ center + pose[:3, 3]
    passes = 2 if steps is None and jacobian == "fd" else 1  # the analytic slope needs no step
    if steps is None:
        steps = torch.tensor([STEP_MM] * 3 + [STEP_RAD] * 3, dtype=torch.float64)
    steps = steps.to(torch.float64).cpu().clamp(MIN_STEPS, MAX_STEPS)
    for _ in range(passes):  # the second pass with steps at the scale of the first answer's sigmas
        cov, stat, s2 = _gauss_newton(registrar, pose, center_cam, normalised, masks, rel, steps, compare, correlated,
                                      scale_uncertainty, detectors, jacobian, [0.0, *view_motion_mm])
        steps = stat.diagonal().sqrt().clamp(MIN_STEPS, MAX_STEPS)
    return PoseCovariance(cov.cpu(), pose, center, residual_std=s2**0.5, pixels=int(sum(int(m.sum()) for m in masks)),
                          views=len(frames), statistical=stat.cpu())


def _embed(values: Float[Tensor, "... n"], mask: Float[Tensor, "H W"]) -> Float[Tensor, "... H W"]:
    out = torch.zeros(*values.shape[:-1], *mask.shape, dtype=torch.float64, device=values.device)
    out[..., mask] = values
    return out


def residual_correlation(
    residual: Float[Tensor, " n"], mask: Float[Tensor, "H W"], max_lag: int = MAX_LAG_PX
) -> Float[Tensor, "2L+1 2L+1"]:
    """The residual's normalised autocorrelation ``rho(dy, dx)`` for lags up to ``max_lag`` px (lag 0 at the centre).

    Over the masked pixels (FFT, corrected for the overlap of the mask with its shift); lags
    where ``rho`` does not exceed ``3 / sqrt(n)`` (what white noise reaches by chance) are set
    to 0. White noise gives ``rho = 1`` at lag 0 only; the smooth residual of unmodelled physics
    (scatter, beam hardening, a wrong blur) stays correlated over many pixels.
    """
    h, w = mask.shape
    size = (2 * h, 2 * w)
    img = _embed(residual - residual.mean(), mask)
    spec = torch.fft.rfft2(img, s=size)
    acf = torch.fft.irfft2(spec * spec.conj(), s=size)
    mspec = torch.fft.rfft2(mask.to(torch.float64), s=size)
    overlap = torch.fft.irfft2(mspec * mspec.conj(), s=size).round().clamp_min(1.0)
    rho = (acf / overlap) / (acf[0, 0] / overlap[0, 0]).clamp_min(1e-30)
    lags = torch.arange(-max_lag, max_lag + 1, device=residual.device)
    window = rho[lags[:, None] % size[0], lags[None, :] % size[1]]
    window = torch.where(window > 3.0 / int(mask.sum()) ** 0.5, window, torch.zeros_like(window))
    window[max_lag, max_lag] = 1.0
    return window


def correlated_gram(jac: Float[Tensor, "n 6"], mask: Float[Tensor, "H W"], rho: Float[Tensor, "2L+1 2L+1"]) -> Tensor:
    """``J^T R J`` for residuals with the correlation ``rho``: ``sum_lag rho(lag) sum_p J(p) J(p + lag)^T``.

    Computed as ``sum_p J(p) (rho * J)(p)^T``: each Jacobian channel correlated with ``rho`` once
    (six FFT products on the zero-padded grid, no wrap-around for lags below the image size),
    instead of the 36 channel cross-correlations of the definition (:func:`correlated_gram_reference`,
    the same sum in that order; equal to rounding). With white noise (``rho`` = 1 at lag 0 only)
    this is ``J^T J``.
    """
    h, w = mask.shape
    size = (2 * h, 2 * w)
    lag = rho.shape[0] // 2
    kernel = torch.zeros(size, dtype=torch.float64, device=jac.device)  # rho at its lags, wrapped round the origin
    lags = torch.arange(-lag, lag + 1, device=jac.device)
    kernel[lags[:, None] % size[0], lags[None, :] % size[1]] = rho.to(torch.float64)
    spec = torch.fft.rfft2(_embed(jac.T, mask), s=size)  # 6 x spectrum
    # (rho correlated with J)(p) = sum_lag rho(lag) J(p + lag): the product with the kernel's conjugate spectrum.
    filtered = torch.fft.irfft2(spec * torch.fft.rfft2(kernel).conj(), s=size)[:, :h, :w]  # 6 H W
    gram = jac.T @ filtered[:, mask].T
    return 0.5 * (gram + gram.T)


def correlated_gram_reference(jac: Float[Tensor, "n 6"], mask: Float[Tensor, "H W"],
                              rho: Float[Tensor, "2L+1 2L+1"]) -> Tensor:
    """:func:`correlated_gram` by its definition: the 36 channel cross-correlations, weighted by ``rho``."""
    h, w = mask.shape
    size = (2 * h, 2 * w)
    spec = torch.fft.rfft2(_embed(jac.T, mask), s=size)  # 6 x spectrum
    cross = torch.fft.irfft2(spec[:, None].conj() * spec[None, :], s=size)  # 6 6 2H 2W: sum_p J_i(p) J_j(p+lag)
    lag = rho.shape[0] // 2
    lags = torch.arange(-lag, lag + 1, device=jac.device)
    window = cross[..., lags[:, None] % size[0], lags[None, :] % size[1]]  # 6 6 2L+1 2L+1
    gram = (window * rho).sum((-1, -2))
    return 0.5 * (gram + gram.T)


def _view_jacobians(
    registrar: Registrar, pose: Tensor, center_cam: Tensor, rel: list[Tensor | None], steps: Tensor, compare: str,
    masks: list[Tensor], detectors: list[Detector | None], jacobian: str,
) -> list[tuple[Tensor, Tensor]]:
    """Per view: the normalised DRR at ``pose`` (``n``) and its Jacobian (``n x 6``) w.r.t. the reference view's step.

    ``jacobian="fd"``: central differences at ``steps`` (13 DRRs a view, in one batch per panel);
    ``"analytic"``: the kernels' own pose Jacobian (:func:`..drr.jacobian.render_with_pose_jacobian`,
    one pass a view), chained through the normalisation
    ``d v_n = (dv - mean(dv) - v_n sum(v_n dv) / (n - 1)) / std(v)``.
    """
    last = registrar.levels[-1]
    settings = registrar.settings(last.factor)
    eye = torch.eye(4, dtype=torch.float64)
    out: list[tuple[Tensor, Tensor]] = []
    if jacobian == "analytic":
        for k, m in enumerate(masks):
            rel_k = eye if rel[k] is None else rel[k].cpu()
            det = last.detector if detectors[k] is None or detectors[k] == registrar.detector else detectors[k]
            pivot = rel_k[:3, :3] @ center_cam + rel_k[:3, 3]
            drr, jac = render_with_pose_jacobian(last.volume, (rel_k @ pose)[None], det, pivot[None], settings)
            rot = rel_k[:3, :3]
            jac = torch.cat([jac[0, ..., :3] @ rot, jac[0, ..., 3:] @ rot], -1)  # d/dxi_ref = d/dxi_k blockdiag(R, R)
            drr = drr[0].to(m.device)
            jac = jac.to(m.device)
            if compare == "intensity":
                drr, jac = torch.exp(-drr), -torch.exp(-drr)[..., None] * jac
            v, dv = drr[m], jac[m]
            n = v.numel()
            sd = v.std().clamp_min(1e-12)
            vn = (v - v.mean()) / sd
            out.append((vn, (dv - dv.mean(0) - vn[:, None] * (vn[:, None] * dv).sum(0) / (n - 1)) / sd))
        return out
    delta = torch.zeros(13, 6, dtype=torch.float64)
    for i in range(6):
        delta[1 + 2 * i, i] = steps[i]
        delta[2 + 2 * i, i] = -steps[i]
    perturbed = _perturbed(pose, center_cam, delta)  # 13 poses of the reference view
    same = [k for k, d in enumerate(detectors) if d is None or d == registrar.detector]
    drrs: dict[int, Tensor] = {}
    poses = torch.cat([perturbed if rel[k] is None else rel[k] @ perturbed for k in same])  # one batch per panel
    for k, d in zip(same, registrar.render(poses).to(torch.float64).split(13), strict=True):
        drrs[k] = d
    for k in (k for k in range(len(rel)) if k not in same):  # a biplane's other panel, its own intrinsics
        with torch.no_grad():
            drrs[k] = render(last.volume, (rel[k] @ perturbed).to(registrar.device), detectors[k],
                             settings).to(torch.float64)
    for k, m in enumerate(masks):
        d = _normalise(torch.exp(-drrs[k]) if compare == "intensity" else drrs[k], m)  # 13 n
        out.append((d[0], torch.stack([(d[1 + 2 * i] - d[2 + 2 * i]) / (2 * steps[i]) for i in range(6)], -1)))
    return out


def _gauss_newton(
    registrar: Registrar, pose: Tensor, center_cam: Tensor, f_n: list[Tensor], masks: list[Tensor],
    rel: list[Tensor | None], steps: Tensor, compare: str, correlated: bool = True, scale_uncertainty: float = 0.0,
    detectors: list[Detector | None] | None = None, jacobian: str = "fd", motion_mm: Sequence[float] = (),
) -> tuple[Tensor, Tensor, float]:
    """The views' covariance with and without the systematic terms (scale, motion); the reference view's ``s^2``.

    Statistical part: ``(sum_k C_k^-1)^-1`` with, per view, ``C_k = A_k^-1 B_k A_k^-1``,
    ``A_k = w_k J_k^T J_k``, ``B_k = w_k J_k^T R_k J_k``, ``w_k = a_k^2 / s_k^2``: ``J_k`` from
    :func:`_view_jacobians`, ``R_k`` the residual correlation (:func:`residual_correlation`; the
    identity when not ``correlated``: the sandwich form of a least-squares fit with correlated
    residuals); a view the patient may have moved since by ``motion_mm[k]`` (1 sigma, isotropic
    translation ``M_k``) adds ``(sum I)^-1 (sum_k I_k M_k I_k) (sum I)^-1``. Systematic part: a
    relative magnification error ``scale_uncertainty`` common to all views (the same physics)
    would move view ``k``'s own estimate along its beam ``u_k`` by ``eps D_k``; the joint
    estimate moves by ``delta = (sum I_k)^-1 sum I_k D_k u_k`` times eps (``I_k = C_k^-1``),
    added as ``eps^2 delta delta^T``. For one view ``delta = D u`` (all of it along the beam);
    for one view with white residuals and no scale term this is
    ``s^2 / a^2 (J^T J)^-1`` (the module docstring).
    """
    views = _view_jacobians(registrar, pose, center_cam, rel, steps, compare, masks, detectors or [None] * len(rel),
                            jacobian)
    sid = float(registrar.detector.sid)
    stat_info = torch.zeros(6, 6, dtype=torch.float64)  # noise and residuals: how the views are weighed
    motion_meat = torch.zeros(6, 6, dtype=torch.float64)  # sum_k I_k M_k I_k: the patient's motion since view k
    pull = torch.zeros(6, dtype=torch.float64)  # sum_k I_k (D_k u_k): where a common scale error pulls the views
    s2_ref = 0.0
    for k, (f, m, (d0, jac)) in enumerate(zip(f_n, masks, views, strict=True)):
        n = f.shape[-1]
        a = float((f * d0).sum()) / (n - 1)  # ZNCC: the normalised frame is a * DRR + noise
        residual = f - a * d0
        s2 = float((residual**2).sum()) / (n - 6)
        gram = (a * a / s2) * (jac.T @ jac)
        bread = torch.linalg.pinv(gram, hermitian=True)
        if correlated:
            meat = (a * a / s2) * correlated_gram(jac, m, residual_correlation(residual, m))
            cov_k = bread @ meat @ bread
        else:
            cov_k = bread
        cov_k = cov_k.cpu()
        info_k = torch.linalg.pinv(0.5 * (cov_k + cov_k.T), hermitian=True)
        stat_info = stat_info + info_k
        motion = float(motion_mm[k]) if k < len(motion_mm) else 0.0
        if motion > 0:  # the patient may have moved since this view: its estimate is off by that, isotropically
            m_k = motion**2 * torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
            motion_meat = motion_meat + info_k @ m_k @ info_k
        # A magnification error eps makes view k alone see the pose moved by eps * D_k along its beam u_k
        # (D_k: source to CT centre), in the reference camera's axes.
        k_from_ref = torch.eye(4, dtype=torch.float64) if rel[k] is None else rel[k].cpu()
        depth = float(k_from_ref[2, :3] @ center_cam + k_from_ref[2, 3])  # CT centre, this view's z
        u = torch.zeros(6, dtype=torch.float64)
        u[:3] = k_from_ref[2, :3]  # this view's beam in the reference camera's axes
        sid_k = sid if detectors[k] is None else float(detectors[k].sid)
        pull = pull + info_k @ (u * (sid_k + depth))
        s2_ref = s2 if k == 0 else s2_ref
    stat = torch.linalg.pinv(stat_info, hermitian=True)
    # The joint fit weighs the views by their noise information I_k (it does not know of the motion):
    # a motion error m_k of view k reaches the joint pose as (sum I)^-1 I_k m_k (a sandwich).
    joint = stat + stat @ motion_meat @ stat
    # The same physics in every view: one common eps, so the views' pulls add up before the joint fit
    # weighs them (bias propagation): delta = (sum I_k)^-1 sum I_k D_k u_k. Views along one beam keep
    # the whole bias; views from other angles see each other's depth in plane and cancel it.
    delta = stat @ pull
    cov = joint + scale_uncertainty**2 * torch.outer(delta, delta)
    return 0.5 * (cov + cov.T), 0.5 * (stat + stat.T), s2_ref
