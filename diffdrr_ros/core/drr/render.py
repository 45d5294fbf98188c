"""DRR rendering: poses + detector + CT -> line-integral images, patch-wise, any device.

``render`` is the single entry point the registration, the node, the CLI and the studies
use. Pixel value = line integral of the volume's voxel values along the source -> pixel
ray, path length in mm (so a volume of linear attenuation in 1/mm gives the dimensionless
optical depth; :func:`to_intensity` turns it into the X-ray-like ``exp(-integral)``).

Patch-wise rendering: the detector is cut into tiles whose ray count fits a memory budget,
so any image size renders with bounded working memory; the result equals whole-image
rendering, and gradients flow through every tile (with the torch reference backends each
tile is checkpointed, so the backward pass does not keep all tiles' intermediates; the
numba path keeps six float64 per ray).

Two paths: on the CPU (``backend="numba"``) each tile goes through :mod:`.fused`, which
builds the rays, runs the Siddon/trilinear kernel and chains the gradient to the pose in
numba, so that PyTorch only handles 4 x 4 matrices and the image (see there for why);
when a detector intrinsic requires a gradient, on CUDA (``backend="cuda"``: the same
kernels compiled for the GPU, :mod:`.cuda`) and with the ``"torch"`` references, the
rays are built with PyTorch operations and autograd does the chaining. Both give the same
images and pose gradients (``test/core/test_kernel_layout.py``). Speed and memory:
``docs/benchmarks.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..geometry.detector import Detector, detector_points, detector_points_np
from ..geometry.rotations import invert_transform
from ..physics.poly_model import PolyModel
from .backends import BACKENDS, METHODS, resolve_backend, trace_rays
from .fused import render_rays_fused
from .rays import grid_from_ct_transform, rays_in_grid


class VolumeLike(Protocol):
    """What the renderer needs from a volume (see :class:`diffdrr_ros.core.volume.Volume`)."""

    data: Float[Tensor, "I J K"]
    affine: Float[Tensor, "4 4"]


def bytes_per_ray(method: str, backend: str, shape: tuple[int, ...], n_samples: int) -> int:
    """Rough working memory per ray, used to size patches."""
    if backend == "torch":
        if method == "siddon":
            return 72 * (sum(shape) + 5)  # several float tensors per plane crossing + sort
        return 48 * n_samples
    if backend == "cuda":
        return 512  # rays built by PyTorch (a few N x 3 tensors kept for autograd), output, Jacobian
    return 256  # fused kernels: end points (and their reordered copies), output, Jacobian; float64


def plan_patches(height: int, width: int, max_rays: int) -> list[tuple[slice, slice]]:
    """Cut an ``height x width`` detector into row-major tiles of at most ``max_rays`` rays.

    Whole rows are taken when possible (contiguous memory); otherwise square-ish tiles.
    """
    max_rays = max(1, int(max_rays))
    if height * width <= max_rays:
        return [(slice(0, height), slice(0, width))]
    if width <= max_rays:
        rows = max_rays // width
        return [(slice(r, min(r + rows, height)), slice(0, width)) for r in range(0, height, rows)]
    side = max(1, math.isqrt(max_rays))
    return [
        (slice(r, min(r + side, height)), slice(c, min(c + side, width)))
        for r in range(0, height, side)
        for c in range(0, width, side)
    ]


@dataclass
class RenderSettings:
    """How to render.

    Attributes:
        method: ``"siddon"`` (exact) or ``"trilinear"`` (ray marching).
        backend: ``"auto"``, ``"numba"`` (CPU kernels), ``"cuda"`` (the same kernels on a
            GPU) or ``"torch"`` (reference, any device); see :mod:`.backends`.
        n_samples: trilinear samples per ray; ``None`` chooses them per ray so that
            consecutive samples are ``step_voxels`` voxels apart along the dominant axis.
        step_voxels: see ``n_samples``; 1 is within 2e-4 of a converged integral on a
            real CT, 2 halves the time at about 5e-4 (``docs/benchmarks.md``).
        memory_budget_mb: working memory per tile of rays (patch-wise rendering).
        patch_size: (rows, cols) tiles; overrides the memory-budget tiling.
        reorder: numba kernels only: walk a cached copy of the volume whose contiguous
            axis follows the rays (one extra copy of the volume in memory), rays grouped
            by neighbourhood. Same image, 1.5-4x faster; ``False`` saves the copy.
        blur_sigma_px: detector point-spread function, a Gaussian of this standard
            deviation in pixels (0: none), applied to the transmitted intensity
            ``exp(-integral)`` and returned as an integral again (the detector blurs photons,
            not line integrals; for attenuation volumes). A DRR sharper than the frame
            biases the registered depth (magnification).
        poly: ``None`` (default): the monoenergetic DRR, line integrals of the voxel values.
            A :class:`~diffdrr_ros.core.physics.PolyModel`: the polychromatic DRR of a material
            volume (``MaterialVolume``, densities in g/cm^3), returned as the effective line
            integral ``-log I`` of the detected intensity (:mod:`.poly`).
    """

    method: str = "siddon"
    backend: str = "auto"
    n_samples: int | None = None
    memory_budget_mb: float = 256.0
    patch_size: tuple[int, int] | None = None
    step_voxels: float = 1.0
    reorder: bool = True
    blur_sigma_px: float = 0.0
    poly: PolyModel | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {BACKENDS}")
        if self.n_samples is not None and self.n_samples < 1:
            raise ValueError("n_samples must be >= 1")
        if not self.step_voxels > 0:
            raise ValueError("step_voxels must be > 0")
        if self.patch_size is not None and min(self.patch_size) < 1:
            raise ValueError("patch_size must be positive")
        if self.blur_sigma_px < 0:
            raise ValueError("blur_sigma_px must be >= 0")
        if self.poly is not None and not isinstance(self.poly, PolyModel):
            raise TypeError(f"poly must be a PolyModel or None, got {type(self.poly).__name__}")


def _render_rays(
    data: Tensor,
    grid_from_ct: Tensor,
    t_ct_cam: Tensor,
    source_cam: Tensor,
    pixels_cam: Tensor,
    settings: RenderSettings,
    backend: str,
) -> Tensor:
    """Line integrals (mm x value) for ``B`` poses and ``P`` pixels -> ``(B, P)``."""
    src_g, tgt_g, length = rays_in_grid(grid_from_ct, t_ct_cam, source_cam, pixels_cam)
    s = trace_rays(settings.method, data, src_g, tgt_g, backend=backend, n_samples=settings.n_samples,
                   step_voxels=settings.step_voxels, reorder=settings.reorder)
    return s.reshape(length.shape) * length


def render(
    volume: VolumeLike,
    pose: Float[Tensor, "B 4 4"],
    detector: Detector,
    settings: RenderSettings | None = None,
    **overrides,
) -> Float[Tensor, "B H W"]:
    """Render DRRs of ``volume`` at poses ``T_cam_ct`` (CT/LPS mm -> camera frame).

    Args:
        volume: voxel values and the voxel-index -> CT affine (mm); with ``settings.poly`` a
            material volume (``(C, I, J, K)`` densities, g/cm^3; see :mod:`.poly`).
        pose: ``(B, 4, 4)`` or ``(4, 4)`` rigid transforms ``T_cam_ct``; may require grad.
        detector: intrinsics (fields may be tensors that require grad).
        settings: :class:`RenderSettings`; keyword ``overrides`` replace its fields.

    Returns:
        ``(B, H, W)`` line integrals (value x mm), dtype of ``pose``, device of the volume; with
        ``settings.poly`` the effective line integral ``-log I`` (dimensionless).
    """
    settings = settings or RenderSettings()
    if overrides:
        settings = RenderSettings(**{**settings.__dict__, **overrides})
    if settings.poly is not None or volume.data.ndim == 4:
        from .poly import render_poly  # .poly renders its channels through this function

        return render_poly(volume, pose, detector, settings)
    squeeze = pose.dim() == 2
    pose = pose[None] if squeeze else pose
    data = volume.data
    device = data.device
    dtype = pose.dtype if pose.dtype in (torch.float32, torch.float64) else torch.float32
    pose = pose.to(device=device, dtype=dtype)
    backend = resolve_backend(settings.backend, device, data.requires_grad)
    n_samples = settings.n_samples or math.ceil(max(data.shape) / settings.step_voxels)  # for the budget
    grid_from_ct = grid_from_ct_transform(volume.affine).to(device=device, dtype=dtype)
    t_ct_cam = invert_transform(pose)
    h, w = detector.shape
    b = pose.shape[0]
    if settings.patch_size is not None:
        ph, pw = settings.patch_size
        tiles = [
            (slice(r, min(r + ph, h)), slice(c, min(c + pw, w)))
            for r in range(0, h, ph)
            for c in range(0, w, pw)
        ]
    else:
        per_ray = bytes_per_ray(settings.method, backend, tuple(data.shape), n_samples) * b
        tiles = plan_patches(h, w, int(settings.memory_budget_mb * 2**20 / per_ray))
    intrinsics_grad = torch.is_grad_enabled() and any(
        isinstance(x, Tensor) and x.requires_grad for x in _intrinsics(detector)
    )
    needs_grad = (torch.is_grad_enabled() and pose.requires_grad) or intrinsics_grad
    fused = backend == "numba" and not intrinsics_grad
    if fused:  # everything per ray in numba (see .fused); the pose gradient flows through M
        m_grid_cam = grid_from_ct @ t_ct_cam
        a_ct_grid = volume.affine[:3, :3].to(torch.float64).numpy()
    out_rows = []
    for rows in _group_rows(tiles):
        row_parts = []
        for rs, cs in rows:
            if fused:
                source_np, pixels_np = detector_points_np(detector, rs, cs)
                part = render_rays_fused(data, m_grid_cam, a_ct_grid, source_np, pixels_np, settings.method,
                                         settings.n_samples, settings.step_voxels, settings.reorder)
            else:
                source, pixels = detector_points(detector, rows=rs, cols=cs, dtype=dtype, device=device)
                pixels = pixels.reshape(-1, 3)
                args = (data, grid_from_ct, t_ct_cam, source, pixels, settings, backend)
                if needs_grad and backend == "torch" and len(tiles) > 1:
                    part = checkpoint(_render_rays, *args, use_reentrant=False)
                else:
                    part = _render_rays(*args)
            row_parts.append(part.reshape(b, rs.stop - rs.start, cs.stop - cs.start))
        out_rows.append(row_parts[0] if len(row_parts) == 1 else torch.cat(row_parts, -1))
    image = out_rows[0] if len(out_rows) == 1 else torch.cat(out_rows, -2)
    if settings.blur_sigma_px > 0:  # the detector blurs photons: blur exp(-L), then back to L
        image = -torch.log(gaussian_blur(torch.exp(-image), settings.blur_sigma_px).clamp_min(1e-30))
    return image[0] if squeeze else image


#: Up to this half-width (taps each side), :func:`gaussian_blur` sums shifted slices instead of convolving on
#: the CPU: float64 ``conv2d`` there has no fast path (a 128 px, 7-channel blur: ~1.3 vs 0.3 ms). Other devices
#: convolve (one kernel launch, not 2 x (2k + 1); not measured on a GPU yet).
SLICED_BLUR_MAX_HALF_WIDTH = 8


def _gaussian_taps(sigma_px: float, like: Tensor) -> Tensor:
    k = max(1, math.ceil(3 * sigma_px))
    ax = torch.arange(-k, k + 1, dtype=like.dtype, device=like.device)
    g = torch.exp(-(ax**2) / (2 * sigma_px**2))
    return g / g.sum()


def gaussian_blur(image: Float[Tensor, "B H W"], sigma_px: float) -> Float[Tensor, "B H W"]:
    """Separable Gaussian blur (replicate borders, 3 sigma), differentiable; the detector PSF model.

    Narrow kernels on the CPU: weighted sums of shifted slices; else :func:`gaussian_blur_reference` (conv2d).
    """
    g = _gaussian_taps(sigma_px, image)
    k = g.numel() // 2
    if k > SLICED_BLUR_MAX_HALF_WIDTH or image.device.type != "cpu":
        return gaussian_blur_reference(image, sigma_px)
    h, w = image.shape[-2:]
    x = F.pad(image[:, None], (k, k, k, k), mode="replicate")[:, 0]
    rows = sum(g[j] * x[:, :, j : j + w] for j in range(2 * k + 1))  # along the columns: B (H+2k) W
    return sum(g[j] * rows[:, j : j + h, :] for j in range(2 * k + 1))


def gaussian_blur_reference(image: Float[Tensor, "B H W"], sigma_px: float) -> Float[Tensor, "B H W"]:
    """:func:`gaussian_blur` as two 1-D convolutions (any width; the readable reference)."""
    g = _gaussian_taps(sigma_px, image)
    k = g.numel() // 2
    x = F.pad(image[:, None], (k, k, k, k), mode="replicate")
    x = F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    return x[:, 0]


def _intrinsics(det: Detector) -> list[object]:
    return [*det.spacing_mm, det.sdd_mm, det.sid_mm, *det.principal_point_mm]


def _group_rows(tiles: list[tuple[slice, slice]]) -> list[list[tuple[slice, slice]]]:
    """Group row-major tiles by their row band so they can be concatenated."""
    groups: dict[tuple[int, int], list[tuple[slice, slice]]] = {}
    for rs, cs in tiles:
        groups.setdefault((rs.start, rs.stop), []).append((rs, cs))
    return [groups[k] for k in sorted(groups)]


def to_intensity(line_integral: Tensor, i0: float = 1.0) -> Tensor:
    """Beer-Lambert: X-ray intensity ``i0 * exp(-integral)`` (integral of mu in 1/mm x mm)."""
    return i0 * torch.exp(-line_integral)
