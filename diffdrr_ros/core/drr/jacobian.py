"""The DRR and its per-pixel pose Jacobian in one pass (CPU), for Gauss-Newton / Levenberg-Marquardt.

The fused CPU kernels already return, with each ray's line integral ``O = S L``, its gradient
with respect to the ray's end points in grid coordinates (:func:`.fused.trace_fused`). A pose
change is applied in the camera frame about a pivot ``c`` (the CT centre there):
``x' = R(w) (x - c) + c + t``, ``xi = (t, w)`` (mm, rad, camera axes), the parameters of
:mod:`..registration.uncertainty`. A camera point ``q`` (the source, a pixel centre) then maps
to grid coordinates through ``M inv(P(xi))`` with ``inv(P)(q) = R(w)^T (q - c - t) + c``, so at
``xi = 0``

    d q_grid / d t = -M_lin,    d q_grid / d w = M_lin skew(q - c),

and a ray's row of the Jacobian is ``g_s . d s/d xi + g_t . d p/d xi`` with ``g = dO/dq_grid``:
``dO/dt = -(g_s + g_t) M_lin``, ``dO/dw = (g_s M_lin) x (s - c) + (g_t M_lin) x (p - c)``.
No autograd graph, no finite differences: one kernel pass gives the image and its ``H x W x 6``
Jacobian. With a detector blur the Jacobian follows the blur's chain rule (blur of ``-I dL``).
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..geometry.detector import Detector, detector_points_np
from ..geometry.rotations import axis_angle_to_matrix, make_transform
from .fused import trace_fused
from .rays import grid_from_cam
from .render import RenderSettings, VolumeLike, gaussian_blur


def step_pose(
    pose: Float[Tensor, "4 4"], pivot_cam: Float[Tensor, " 3"], xi: Float[Tensor, "K 6"]
) -> Float[Tensor, "K 4 4"]:
    """``K`` poses ``P(xi) @ pose``: translate by ``xi[:, :3]`` (mm, camera axes), rotate by ``xi[:, 3:]``
    (rad) about the pivot (camera frame)."""
    rot = axis_angle_to_matrix(xi[:, 3:])  # K 3 3
    r = rot @ pose[:3, :3]
    t = (rot @ (pose[:3, 3] - pivot_cam)[:, None])[..., 0] + pivot_cam + xi[:, :3]
    return make_transform(r, t)


def render_with_pose_jacobian(
    volume: VolumeLike,
    pose: Float[Tensor, "B 4 4"],
    detector: Detector,
    pivot_cam: Float[Tensor, "B 3"],
    settings: RenderSettings | None = None,
    want_jacobian: bool = True,
) -> tuple[Float[Tensor, "B H W"], Float[Tensor, "B H W 6"] | None]:
    """DRRs at ``pose`` (``T_cam_ct``) and ``d DRR / d xi`` for ``x' = R(w)(x - c) + c + t`` about ``pivot_cam``.

    CPU volumes only (the numba kernels); the whole detector in one tile (tracking sizes).
    ``settings``: method, sampling and the detector blur as for :func:`.render.render`.
    ``want_jacobian=False``: the same DRRs alone (None for the Jacobian), from the same kernel
    (a trial step of Levenberg-Marquardt needs only its loss).
    """
    settings = settings or RenderSettings()
    if volume.data.device.type != "cpu":
        raise ValueError("render_with_pose_jacobian runs on the CPU kernels; move the volume to the CPU")
    pose = pose.to(torch.float64).cpu()
    m = np.ascontiguousarray(grid_from_cam(volume.affine, pose).numpy())  # B 4 4: camera -> grid
    a_ct_grid = np.ascontiguousarray(volume.affine[:3, :3].to(torch.float64).numpy())
    source, pixels = detector_points_np(detector)
    values, jac = trace_fused(volume.data, m, a_ct_grid, source, pixels, settings.method, settings.n_samples,
                              settings.step_voxels, settings.reorder, want_jacobian)
    b, n_pix = m.shape[0], pixels.shape[0]
    h, w = detector.shape
    if not want_jacobian:
        image = torch.from_numpy(values).reshape(b, h, w)
        if settings.blur_sigma_px > 0:
            image = -torch.log(gaussian_blur(torch.exp(-image), settings.blur_sigma_px).clamp_min(1e-30))
        return image, None
    jac = jac.reshape(b, n_pix, 6)
    m_lin = m[:, :3, :3]  # B 3 3
    g_s = np.einsum("bpi,bij->bpj", jac[..., :3], m_lin)  # dO/d source (camera), B P 3
    g_t = np.einsum("bpi,bij->bpj", jac[..., 3:], m_lin)  # dO/d pixel (camera)
    c = pivot_cam.to(torch.float64).cpu().numpy().reshape(b, 1, 3)
    out = np.empty((b, n_pix, 6))
    out[..., :3] = -(g_s + g_t)
    out[..., 3:] = np.cross(g_s, source[None, None, :] - c) + np.cross(g_t, pixels[None] - c)
    image = torch.from_numpy(values).reshape(b, h, w)
    jacobian = torch.from_numpy(out).reshape(b, h, w, 6)
    if settings.blur_sigma_px > 0:  # DRR = -log blur(exp(-L)): dDRR = blur(exp(-L) dL) / blur(exp(-L))
        i = torch.exp(-image)
        blurred = gaussian_blur(i, settings.blur_sigma_px).clamp_min(1e-30)
        weighted = (i[..., None] * jacobian).permute(0, 3, 1, 2).reshape(b * 6, h, w)
        d_blur = gaussian_blur(weighted, settings.blur_sigma_px).reshape(b, 6, h, w).permute(0, 2, 3, 1)
        image = -torch.log(blurred)
        jacobian = d_blur / blurred[..., None]
    return image, jacobian


__all__ = ["render_with_pose_jacobian", "step_pose"]
