"""Levenberg-Marquardt on the normalised residuals, with the DRR's analytic pose Jacobian.

For a ZNCC-type similarity the loss is a least-squares problem: with the fixed image's
features ``f`` and the DRR's ``v(xi)``, both normalised over the masked pixels to zero mean and
unit variance, ``|f_n - v_n|^2 = 2 n (1 - ZNCC)``. Features: the image itself (``zncc``, ``l2``)
or its two Sobel gradients (``gncc``), in the configured domain (line integrals, or the
transmitted intensity ``exp(-L)``). One CPU kernel pass gives ``v`` and ``dv/dxi``
(:func:`..drr.jacobian.render_with_pose_jacobian`); the normalisation's Jacobian is
``dv_n = (dv - mean(dv) - v_n mean(v_n dv)) / std(v)``. Each step solves
``(A^T A + lambda diag(A^T A)) delta = A^T r`` (``A = dv_n/dxi``, six unknowns: translation of
the CT centre in mm and rotation about it, camera axes), accepted when the loss falls
(``lambda`` / 10), else ``lambda`` x 10 (from at least 1e-6) until it is,
or gives up (``stalled``). Several views stack their residuals: view ``k`` sees the
step through its camera, ``xi_k = (R t, R w)`` with ``R`` its rotation from the reference camera.

Where Adam needs 100-200 steps of a first-order method, this needs a handful: each step sees
the curvature. Its basin is narrower (the linearisation): it is for tracking frames and the
final polish, not the wide search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..drr.jacobian import render_with_pose_jacobian, step_pose
from ..drr.render import RenderSettings, VolumeLike
from ..geometry.detector import Detector
from ..metrics.similarity import image_gradients
from .config import LM_SIMILARITIES
from .views import ViewStack


def _features(x: Tensor, similarity: str) -> list[Tensor]:
    """The images whose ZNCC the similarity averages: ``(B, H, W)`` each (linear in ``x``)."""
    if similarity == "gncc":
        return list(image_gradients(x))
    return [x]


def _eroded(mask: Tensor | None, similarity: str) -> Tensor | None:
    if mask is None or similarity != "gncc":
        return mask
    m = mask.to(torch.float64)
    return (-torch.nn.functional.max_pool2d(-m.reshape(-1, 1, *m.shape[-2:]), 3, 1, 1)).reshape(m.shape) > 0.5


@dataclass(frozen=True)
class Reference:
    """A fixed frame's side of :func:`residuals`, computed once per frame and level: per feature
    and view, the pixels used (mask, eroded for gradients) and the normalised values there."""

    masks: list[Tensor]  # (h, w) bool, one per feature and view
    values: list[Tensor]  # (n,) zero mean, unit variance


def reference(fixed: Tensor, mask: Tensor | None, similarity: str, compare: str) -> Reference:
    """``fixed``: ``(K, h, w)`` line integrals; ``mask``: ``(K, h, w)`` or None."""
    ref = torch.exp(-fixed) if compare == "intensity" else fixed
    m_all = _eroded(mask, similarity)
    masks, values = [], []
    for f in _features(ref, similarity):
        for view in range(f.shape[0]):
            m = torch.ones_like(f[view], dtype=torch.bool) if m_all is None else m_all[view]
            ff = f[view][m]
            masks.append(m)
            values.append((ff - ff.mean()) / ff.std(unbiased=False).clamp_min(1e-12))
    return Reference(masks, values)


def residuals(
    drr: Tensor, jac: Tensor | None, fixed: Tensor | Reference, mask: Tensor | None, similarity: str, compare: str
) -> tuple[Tensor, Tensor | None, float]:
    """Normalised residuals ``r = f_n - v_n`` (``R``), their Jacobian ``A = dv_n/dxi`` (``R x 6``), and the loss.

    ``drr``, ``fixed``: ``(K, h, w)`` (``fixed`` also as its :func:`reference`, then ``mask`` is
    not used); ``jac``: ``(K, h, w, 6)``, or None for the residuals and loss alone (``A`` is then
    None); the loss is ``1 -`` the mean ZNCC of the features over the views (``1 - similarity``
    for zncc and gncc).
    """
    ref = fixed if isinstance(fixed, Reference) else reference(fixed, mask, similarity, compare)
    if compare == "intensity":
        phi = torch.exp(-drr)
        dphi = None if jac is None else -phi[..., None] * jac
    else:
        phi, dphi = drr, jac
    k, h, w = drr.shape
    feats = _features(phi, similarity)
    # Linear: the features of the Jacobian's channels are the channels' features (all six in one batch).
    dfeat = None if dphi is None else [
        d.reshape(k, 6, h, w) for d in _features(dphi.permute(0, 3, 1, 2).reshape(k * 6, h, w), similarity)]
    rs, jacs, loss = [], [], 0.0
    for j, v in enumerate(feats):
        for view in range(k):
            m, fn = ref.masks[j * k + view], ref.values[j * k + view]
            vv = v[view][m]
            sv = vv.std(unbiased=False).clamp_min(1e-12)
            vn = (vv - vv.mean()) / sv
            n = vv.numel()
            scale = 1.0 / math.sqrt(2 * n)  # |r|^2 = 1 - ZNCC per feature and view
            rs.append((fn - vn) * scale)
            if dfeat is not None:
                dv = dfeat[j][view][:, m].T  # n 6
                jacs.append((dv - dv.mean(0) - vn[:, None] * (vn[:, None] * dv).mean(0)) / sv * scale)
            loss += float(((fn - vn) ** 2).sum()) / (2 * n)
    return torch.cat(rs), None if dfeat is None else torch.cat(jacs), loss / len(ref.values)


def _decrement(gram: Tensor, grad: Tensor) -> float:
    """How much a full Gauss-Newton step would lower ``|r|^2``: ``r^T A (A^T A)^-1 A^T r`` (``A^T A``, ``A^T r``)."""
    return float(grad @ torch.linalg.lstsq(gram, grad[:, None]).solution[:, 0])


def lm_refine(
    volume: VolumeLike,
    groups: list[ViewStack],
    level_detector: Detector,
    pose: Tensor,
    center_ct: Tensor,
    settings: RenderSettings,
    similarity: str,
    compare: str,
    max_iterations: int = 10,
    history: list[float] | None = None,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
    step_tolerance: tuple[float, float] = (0.05, 5e-4),
    decrement_tolerance: float = 1.0,
    max_rejections: int = 4,
) -> tuple[Tensor, float, int, str]:
    """Levenberg-Marquardt from ``pose`` (``T_cam_ct`` of the reference view): ``(pose, loss, iterations, reason)``.

    ``loss`` is ``1 - similarity`` (mean over views). ``reason``:

    * ``converged``: an accepted step below ``step_tolerance`` (mm, rad: 0.05 mm and 0.03 deg,
      a twentieth of a pixel at the isocentre and 0.05 mm at a 100 mm lever arm), or one after
      which a full Gauss-Newton step would lower ``|r|^2`` by less than ``decrement_tolerance``
      times the residual's variance per pixel (within about one white-noise sigma of the
      minimum). The decrement, not the loss's relative gain: on a noisy frame ``1 - ZNCC`` is
      large, and a gain of 0.1 % of it is still several sigmas of pose.
    * ``stalled``: no step lowers the loss, also after ``max_rejections`` increases of the
      damping (a minimum to the precision of the renderer, or outside the linearisation's reach).
    * ``max_iterations``.

    Trial steps render their DRR alone; the Jacobian is rendered at accepted poses only.
    """
    if similarity not in LM_SIMILARITIES:
        raise ValueError(f"Levenberg-Marquardt needs a sum-of-squares similarity {LM_SIMILARITIES}, "
                         f"got {similarity!r}")
    pose = pose.to(torch.float64).cpu()
    center = center_ct.to(torch.float64).cpu()

    def pivot_of(p: Tensor) -> Tensor:  # the CT centre in the reference camera, the steps' pivot
        return p[:3, :3] @ center + p[:3, 3]

    device = volume.data.device  # the images stay where the kernels ran; the 6-vectors live on the CPU
    refs = {id(g): reference(g.fixed.to(device, torch.float64), None if g.mask is None else g.mask.to(device),
                             similarity, compare) for g in groups}

    def evaluate(p: Tensor, want_jacobian: bool = True) -> tuple[Tensor, Tensor | None, float]:
        pivot = pivot_of(p)
        rs, jacs, losses, weights = [], [], [], []
        for g in groups:
            poses = g.poses(p[None].to(g.fixed.device)).cpu()  # K_g 4 4
            rel = torch.eye(4, dtype=torch.float64)[None] if g.cam_from_ref is None else g.cam_from_ref.cpu()
            rot = rel[:, :3, :3].expand(poses.shape[0], 3, 3)
            pivots = (rot @ pivot[:, None])[..., 0] + rel[:, :3, 3]  # the pivot in each view's camera
            det = level_detector if g.detector is None else g.detector
            drr, jac = render_with_pose_jacobian(volume, poses, det, pivots, settings, want_jacobian)
            if jac is not None:  # d/dxi_ref = d/dxi_k @ blockdiag(R, R): the reference step seen from view k's camera
                r_dev = rot.to(jac.device)[:, None]
                jac = torch.cat([jac[..., :3] @ r_dev, jac[..., 3:] @ r_dev], -1)
            r, a, loss = residuals(drr, jac, refs[id(g)], None, similarity, compare)
            rs.append(r)
            jacs.append(a)
            losses.append(loss)
            weights.append(g.count)
        total = sum(lo * w for lo, w in zip(losses, weights, strict=True)) / sum(weights)
        return torch.cat(rs), torch.cat(jacs) if want_jacobian else None, total

    def normal_equations(r: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:  # 6 x 6 and 6, on the CPU
        return (a.T @ a).cpu(), (a.T @ r).cpu()

    def small(d: Tensor, factor: float = 1.0) -> bool:
        return float(d[:3].norm()) < factor * step_tolerance[0] and float(d[3:].norm()) < factor * step_tolerance[1]

    r, a, loss = evaluate(pose)
    gram, grad = normal_equations(r, a)
    lam, reason, it, delta = 1e-4, "max_iterations", 0, torch.zeros(6, dtype=torch.float64)
    for it in range(1, max_iterations + 1):
        accepted = False
        for _ in range(max_rejections + 1):
            delta = torch.linalg.solve(gram + lam * torch.diag(gram.diagonal().clamp_min(1e-12)), grad)
            origin, pivot = pose, pivot_of(pose)
            candidate = step_pose(origin, pivot, delta[None])[0]
            loss_c = evaluate(candidate, want_jacobian=False)[2]  # trials need their loss only
            if loss_c < loss:
                pose, loss, accepted = candidate, loss_c, True
                # Far from the minimum the linearised step undershoots (edges are linear over a pixel
                # only): while a longer step keeps lowering the loss, take it; each try multiplies the
                # last accepted step by 2, 4 and 8 (2, 8 and 64 x the first; measured faster than 2, 4, 8).
                # A step within twice the tolerance is at the minimum already: no tries.
                for scale in () if small(delta, 2.0) else (2.0, 4.0, 8.0):
                    longer = step_pose(origin, pivot, (scale * delta)[None])[0]
                    loss_l = evaluate(longer, want_jacobian=False)[2]
                    if not loss_l < loss:
                        break
                    pose, loss, delta = longer, loss_l, scale * delta
                r, a, loss = evaluate(pose)  # the Jacobian at the accepted pose only
                gram, grad = normal_equations(r, a)  # for the stop test and the next step
                lam = max(lam / 10, 1e-7)
                break
            # A rejected step must change the damping, at once to where it shortens the step.
            lam = max(lam * 10, 1e-2)
        if history is not None:
            history.append(-(1.0 - loss))  # the loss as the Adam path records it (-similarity)
        if callback is not None:
            callback(it, pose[None], torch.tensor([loss - 1.0]))
        if not accepted:
            reason = "stalled"
            break
        if small(delta) or _decrement(gram, grad) < decrement_tolerance * float(r @ r) / r.numel():
            reason = "converged"
            break
    return pose, loss, it, reason


__all__ = ["LM_SIMILARITIES", "Reference", "lm_refine", "reference", "residuals"]
