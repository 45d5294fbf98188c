"""Rotation parameterisations and rigid transforms (pure torch, batched, differentiable).

Conventions
-----------
* Rotation matrices act on column vectors: ``x_a = R_ab @ x_b``.
* Quaternions are ``(w, x, y, z)`` with ``w >= 0`` on output (scalar first).
* Axis-angle (so(3)) vectors ``omega`` have norm = angle in radians.
* The 6D representation (Zhou et al. 2019) is the first two columns of ``R``,
  concatenated: ``(r00, r10, r20, r01, r11, r21)``.
* Rigid transforms are ``Float[Tensor, "... 4 4"]`` with the last row ``0 0 0 1``;
  translations in mm inside the core.

Every function accepts any number of leading batch dimensions.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

_EPS = 1e-8


def skew(v: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3 3"]:
    """Cross-product matrix ``[v]_x`` so that ``[v]_x @ u == v x u``."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack(
        [
            torch.stack([zero, -z, y], -1),
            torch.stack([z, zero, -x], -1),
            torch.stack([-y, x, zero], -1),
        ],
        -2,
    )


def axis_angle_to_matrix(omega: Float[Tensor, "... 3"]) -> Float[Tensor, "... 3 3"]:
    """Rodrigues' formula, exp: so(3) -> SO(3); smooth at zero (Taylor series)."""
    theta2 = (omega * omega).sum(-1, keepdim=True).unsqueeze(-1)
    theta = torch.sqrt(theta2.clamp_min(_EPS * _EPS))
    small = theta2 < 1e-8
    # sin(t)/t and (1-cos t)/t^2 with series fall-backs near zero.
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(_EPS))
    k = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def matrix_to_axis_angle(rot: Float[Tensor, "... 3 3"]) -> Float[Tensor, "... 3"]:
    """log: SO(3) -> so(3), via the quaternion (stable for all angles up to pi)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(rot))


def quaternion_to_matrix(q: Float[Tensor, "... 4"]) -> Float[Tensor, "... 3 3"]:
    """Unit quaternion ``(w, x, y, z)`` to rotation matrix (the input is normalised)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def matrix_to_quaternion(rot: Float[Tensor, "... 3 3"]) -> Float[Tensor, "... 4"]:
    """Rotation matrix to unit quaternion ``(w, x, y, z)``, ``w >= 0``.

    Uses the largest-pivot branch (Shepperd's method) so it is accurate for every angle.
    """
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Four candidate (unnormalised) quaternions; pick the best-conditioned per element.
    cand = torch.stack(
        [
            torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2],
                         m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22,
                         m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                         1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                         m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1),
        ],
        -2,
    )
    pivots = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = pivots.argmax(-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_axis_angle(q: Float[Tensor, "... 4"]) -> Float[Tensor, "... 3"]:
    """Unit quaternion to axis-angle, angle in [0, pi]."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    q = torch.where(q[..., :1] < 0, -q, q)
    w, xyz = q[..., 0], q[..., 1:]
    s = xyz.norm(dim=-1)
    angle = 2 * torch.atan2(s, w)
    # angle / sin(angle/2) with the series 2 + angle^2/12 near zero.
    scale = torch.where(s < 1e-6, 2 + angle * angle / 12, angle / s.clamp_min(1e-12))
    return xyz * scale[..., None]


def rotation_6d_to_matrix(d6: Float[Tensor, "... 6"]) -> Float[Tensor, "... 3 3"]:
    """Gram-Schmidt of two 3-vectors (Zhou et al., CVPR 2019); columns of the result."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    a2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2 / a2.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], -1)


def matrix_to_rotation_6d(rot: Float[Tensor, "... 3 3"]) -> Float[Tensor, "... 6"]:
    """First two columns of ``rot``."""
    return torch.cat([rot[..., :, 0], rot[..., :, 1]], -1)


def rot_x(angle: Float[Tensor, "..."]) -> Float[Tensor, "... 3 3"]:
    """Right-handed rotation by ``angle`` (rad) about +x."""
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([torch.stack([o, z, z], -1), torch.stack([z, c, -s], -1), torch.stack([z, s, c], -1)], -2)


def rot_y(angle: Float[Tensor, "..."]) -> Float[Tensor, "... 3 3"]:
    """Right-handed rotation by ``angle`` (rad) about +y."""
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


def rot_z(angle: Float[Tensor, "..."]) -> Float[Tensor, "... 3 3"]:
    """Right-handed rotation by ``angle`` (rad) about +z."""
    c, s = torch.cos(angle), torch.sin(angle)
    o, z = torch.ones_like(angle), torch.zeros_like(angle)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def rpy_to_matrix(roll: float, pitch: float, yaw: float) -> Float[Tensor, "3 3"]:
    """``Rz(yaw) Ry(pitch) Rx(roll)`` (rad, float64): the ROS / URDF roll-pitch-yaw convention."""
    r, p, y = (torch.tensor(float(v), dtype=torch.float64) for v in (roll, pitch, yaw))
    return rot_z(y) @ rot_y(p) @ rot_x(r)


def make_transform(rot: Float[Tensor, "... 3 3"], trans: Float[Tensor, "... 3"]) -> Float[Tensor, "... 4 4"]:
    """Assemble a 4x4 rigid transform from ``R`` and ``t`` (``x' = R x + t``)."""
    top = torch.cat([rot, trans[..., None]], -1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], -2)


def invert_transform(tf: Float[Tensor, "... 4 4"]) -> Float[Tensor, "... 4 4"]:
    """Inverse of a rigid transform, exact (uses ``R^T``)."""
    rot_t = tf[..., :3, :3].transpose(-1, -2)
    return make_transform(rot_t, -(rot_t @ tf[..., :3, 3:4])[..., 0])


def apply_transform(tf: Float[Tensor, "... 4 4"], pts: Float[Tensor, "... N 3"]) -> Float[Tensor, "... N 3"]:
    """Apply ``tf`` to points (row vectors): ``pts @ R^T + t``."""
    return pts @ tf[..., :3, :3].transpose(-1, -2) + tf[..., None, :3, 3]


def se3_exp(xi: Float[Tensor, "... 6"]) -> Float[Tensor, "... 4 4"]:
    """Exponential map of se(3), ``xi = (rho, omega)`` (translation part first, mm, rad)."""
    rho, omega = xi[..., :3], xi[..., 3:]
    rot = axis_angle_to_matrix(omega)
    theta2 = (omega * omega).sum(-1, keepdim=True).unsqueeze(-1)
    theta = torch.sqrt(theta2.clamp_min(_EPS * _EPS))
    small = theta2 < 1e-8
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(_EPS))
    c = torch.where(small, 1 / 6 - theta2 / 120, (theta - torch.sin(theta)) / (theta2 * theta).clamp_min(_EPS))
    k = skew(omega)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand_as(k)
    v = eye + b * k + c * (k @ k)
    return make_transform(rot, (v @ rho[..., None])[..., 0])


def geodesic_angle(rot_a: Float[Tensor, "... 3 3"], rot_b: Float[Tensor, "... 3 3"]) -> Float[Tensor, "..."]:
    """Angle (rad) of ``rot_a^T rot_b``: the rotation error between two orientations."""
    rel = rot_a.transpose(-1, -2) @ rot_b
    return matrix_to_axis_angle(rel).norm(dim=-1)
