"""Intensity-based 2D/3D registration with the differentiable DRR.

The loop of the seed (its Fig. 4): render a DRR at the current pose, compare it with the
fixed X-ray, step the pose along the gradient of the loss, repeat until the loss stops
improving. Beyond the seed:

* a coarse-to-fine pyramid (a small DRR of a downsampled CT first, then finer),
* an initial search at the coarsest level (a batch of candidate poses scored at once;
  the best few are refined together) that widens the capture range,
* reduce-on-plateau learning rates and early stopping,
* a result with a quality verdict the caller can gate on.

:class:`Registrar` holds the prepared CT pyramid so that a ROS node, a CLI or a study can
register many frames without redoing that work. The node and the studies use this same API.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from .geometry import Detector, carm_to_matrix, matrix_to_carm
from .metrics import get_similarity, mean_target_registration_error, target_points, zncc
from .optimizers import make_optimizer
from .render import RenderSettings, render, resolve_device
from .rotations import axis_angle_to_matrix, make_transform
from .volume import Volume


class FixedImageError(ValueError):
    """The X-ray frame cannot be used (NaN/Inf, constant, empty, wrong shape or type)."""


def prepare_fixed(
    image: np.ndarray | Tensor,
    *,
    log_transform: bool = False,
    i0: float | None = None,
    invert: bool = False,
) -> Float[Tensor, "H W"]:
    """Turn a raw X-ray frame into a float image comparable with a DRR (line integrals).

    Args:
        image: ``(H, W)`` uint8/uint16/int/float array or tensor (a singleton channel is
            squeezed; colour images must be converted to grey by the caller).
        log_transform: apply Beer-Lambert, ``-log(I / I0)``: raw detector intensities become
            line integrals. ``i0`` defaults to the frame's maximum (the unattenuated level).
        invert: negate the image (for displays that show bone dark).

    Raises:
        FixedImageError: empty, not 2-D, non-finite or constant images.
    """
    arr = image if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if arr.dim() == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr.squeeze(0) if arr.shape[0] == 1 else arr.squeeze(-1)
    if arr.dim() != 2:
        raise FixedImageError(f"expected a 2-D grey image, got shape {tuple(arr.shape)}")
    if arr.numel() == 0:
        raise FixedImageError("empty image")
    if arr.dtype == torch.bool or arr.is_complex():
        raise FixedImageError(f"unsupported pixel type {arr.dtype}")
    x = arr.to(torch.float32)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise FixedImageError(f"image has {bad} NaN/Inf pixels")
    if float(x.max() - x.min()) <= 1e-12 * max(1.0, float(x.abs().max())):
        raise FixedImageError("image is constant (no structure to register)")
    if log_transform:
        ref = float(x.max()) if i0 is None else float(i0)
        if ref <= 0:
            raise FixedImageError("log transform needs a positive I0")
        x = -torch.log(x.clamp_min(ref * 1e-6) / ref)
    return -x if invert else x


@dataclass
class RegistrationConfig:
    """Knobs of :meth:`Registrar.register`. Angles in rad, lengths in mm.

    ``lr_rotation`` / ``lr_translation``: step sizes for the rotation and translation
    parameters (the seed's separate step sizes); ``None`` takes the optimiser's default
    (see :data:`diffdrr_ros.core.optimizers.DEFAULT_STEP_SIZES`).
    """

    optimizer: str = "adam"
    lr_rotation: float | None = None
    lr_translation: float | None = None
    momentum: float = 0.9
    dampening: float = 0.2
    similarity: str = "zncc"
    parameterization: str = "so3"  # "so3" (axis-angle about the current pose) or "carm" (seed's angles)
    pyramid: tuple[int, ...] = (4, 2, 1)  # detector downsampling factors, coarse to fine
    max_iterations: int = 150  # per pyramid level
    patience: int = 15  # stop a level when the loss has not improved by `tolerance` for this long
    tolerance: float = 1e-5
    plateau_patience: int = 6  # halve the step sizes after this many non-improving iterations
    plateau_factor: float = 0.5
    init_search: bool = False  # batch search at the coarsest level before descending
    init_candidates: int = 256
    init_keep: int = 4
    init_range_deg: float = 45.0
    init_range_mm: float = 60.0
    init_seed: int = 0
    method: str = "siddon"
    min_similarity: float = 0.9  # quality gate on the final full-resolution ZNCC
    seed_success_zncc: float = 0.999  # the seed/DiffDRR "converged" criterion, reported beside mTRE

    def __post_init__(self) -> None:
        if self.parameterization not in ("so3", "carm"):
            raise ValueError(f"parameterization must be 'so3' or 'carm', got {self.parameterization!r}")
        if not self.pyramid or any(int(f) < 1 for f in self.pyramid):
            raise ValueError(f"pyramid factors must be positive integers, got {self.pyramid}")
        get_similarity(self.similarity)
        make_optimizer(self.optimizer, [torch.zeros(1, requires_grad=True)], [torch.zeros(1, requires_grad=True)])


@dataclass
class RegistrationResult:
    """Outcome of one registration. Poses are ``T_cam_ct`` (CT/LPS mm -> camera frame)."""

    pose: Float[Tensor, "4 4"]
    angles_rad: Float[Tensor, " 3"]
    translation_mm: Float[Tensor, " 3"]
    similarity: float  # configured similarity, full resolution
    zncc: float  # full-resolution ZNCC (the seed's metric)
    iterations: int
    wall_time_s: float
    converged: bool  # the last level stopped on the convergence criterion, not on max_iterations
    stop_reason: str
    accepted: bool  # passed the quality gate
    verdict: str  # why it was (not) accepted
    history: list[float] = field(default_factory=list)  # loss per iteration, all levels
    mtre_mm: float | None = None  # when a ground truth was given
    success: bool | None = None  # mTRE below the success threshold (when a truth was given)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("pose", "angles_rad", "translation_mm"):
            d[key] = getattr(self, key).tolist()
        return d


@dataclass
class _Level:
    factor: int
    detector: Detector
    volume: Volume


def _downsample_image(img: Tensor, det: Detector) -> Tensor:
    """Area-average ``img`` to ``det``'s shape (the detector pyramid of the fixed image)."""
    if tuple(img.shape[-2:]) == det.shape:
        return img
    return F.interpolate(img[None, None], size=det.shape, mode="area")[0, 0]


class Registrar:
    """A CT prepared for registration against frames from one detector geometry.

    Args:
        volume: the CT; HU volumes are mapped to attenuation, ``mu``/``raw`` used as they are.
        detector: full-resolution detector of the fixed images.
        config: :class:`RegistrationConfig`.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
        success_mtre_mm: the success threshold for the mTRE (default 2 mm).
    """

    def __init__(
        self,
        volume: Volume,
        detector: Detector,
        config: RegistrationConfig | None = None,
        device: str | torch.device | None = "auto",
        success_mtre_mm: float = 2.0,
    ) -> None:
        self.config = config or RegistrationConfig()
        self.device = resolve_device(device)
        vol = volume.to_attenuation() if volume.kind == "hu" else volume
        self.volume = vol.to(self.device, torch.float32)
        self.detector = detector
        self.center = vol.center.to(torch.float64)
        self.targets = target_points(vol.center, vol.extent_mm)
        self.success_mtre_mm = success_mtre_mm
        self.levels = self._build_levels(self.config.pyramid)

    def _build_levels(self, pyramid: tuple[int, ...]) -> list[_Level]:
        levels = []
        fine_voxel = float(self.volume.spacing.min())
        for factor in pyramid:
            det = self.detector.scaled(factor) if factor > 1 else self.detector
            # Match the CT voxel to the detector pixel footprint at the isocentre.
            sid, sdd = float(det.sid), float(det.sdd_mm)
            footprint = min(float(s) for s in det.spacing_mm) * sid / sdd
            k = max(1, int(footprint // fine_voxel))
            vol = self.volume if k == 1 else self.volume.downsample(k)
            levels.append(_Level(int(factor), det, vol))
        return levels

    # ------------------------------------------------------------------ rendering helpers

    def settings(self) -> RenderSettings:
        return RenderSettings(method=self.config.method)

    def render(self, pose: Float[Tensor, "... 4 4"], level: int = -1) -> Tensor:
        """DRR(s) at ``pose`` at pyramid ``level`` (default: full resolution), no grad."""
        lvl = self.levels[level]
        with torch.no_grad():
            return render(lvl.volume, pose.to(self.device, torch.float64), lvl.detector, self.settings())

    def pose_from_carm(self, angles_rad: Tensor | list[float], translation_mm: Tensor | list[float]) -> Tensor:
        """``T_cam_ct`` from the seed's C-arm parameters, for this CT's centre."""
        a = torch.as_tensor(angles_rad, dtype=torch.float64)
        t = torch.as_tensor(translation_mm, dtype=torch.float64)
        return carm_to_matrix(a, t, self.center)

    def mtre(self, pose: Tensor, truth: Tensor) -> Tensor:
        """mTRE (mm) over this CT's fixed 27 targets (see :func:`metrics.target_points`)."""
        return mean_target_registration_error(pose.to(torch.float64), truth.to(torch.float64), self.targets)

    # ------------------------------------------------------------------ the optimisation

    def _param_to_pose(self, rot: Tensor, trans: Tensor, base_rot_iso_cam: Tensor) -> Tensor:
        if self.config.parameterization == "carm":
            return carm_to_matrix(rot, trans, self.center.to(self.device))
        r_iso_cam = base_rot_iso_cam @ axis_angle_to_matrix(rot)
        r_cam_iso = r_iso_cam.transpose(-1, -2)
        offset = trans - self.center.to(trans)
        return make_transform(r_cam_iso, (r_cam_iso @ offset[..., None])[..., 0])

    def _initial_params(self, pose: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        angles, trans = matrix_to_carm(pose, self.center.to(pose))
        base = pose[..., :3, :3].transpose(-1, -2)
        rot = angles.clone() if self.config.parameterization == "carm" else torch.zeros_like(angles)
        return rot, trans.clone(), base

    def _optimise_level(
        self,
        lvl: _Level,
        fixed: Tensor,
        mask: Tensor | None,
        pose: Tensor,
        history: list[float],
        callback: Callable[[int, Tensor, Tensor], None] | None,
    ) -> tuple[Tensor, Tensor, int, str]:
        """Descend at one level for a batch of poses; return best poses, their losses, iters, reason."""
        cfg = self.config
        sim = get_similarity(cfg.similarity)
        rot, trans, base = self._initial_params(pose)
        rot.requires_grad_(True)
        trans.requires_grad_(True)
        opt, sched = make_optimizer(
            cfg.optimizer, [rot], [trans], lr_rotation=cfg.lr_rotation, lr_translation=cfg.lr_translation,
            momentum=cfg.momentum, dampening=cfg.dampening, plateau_patience=cfg.plateau_patience,
            plateau_factor=cfg.plateau_factor,
        )
        best_loss = torch.full((pose.shape[0],), math.inf, dtype=torch.float64, device=pose.device)
        best_pose = pose.clone()
        stale, reason, it = 0, "max_iterations", 0
        settings = self.settings()
        for it in range(1, cfg.max_iterations + 1):
            opt.zero_grad(set_to_none=True)
            current = self._param_to_pose(rot, trans, base)
            drr = render(lvl.volume, current, lvl.detector, settings)
            loss = -sim(drr, fixed, mask)
            if not torch.isfinite(loss).all():
                reason = "diverged (non-finite loss)"
                break
            loss.sum().backward()
            with torch.no_grad():
                improved = loss.detach() < best_loss - cfg.tolerance
                best_pose = torch.where(improved[:, None, None], current.detach(), best_pose)
                best_loss = torch.where(improved, loss.detach(), best_loss)
            history.append(float(loss.detach().min()))
            if callback is not None:
                callback(it, current.detach(), loss.detach())
            stale = 0 if bool(improved.any()) else stale + 1
            if stale >= cfg.patience:
                reason = "converged"
                break
            opt.step()
            if sched is not None:
                sched.step(float(loss.detach().sum()))
        return best_pose, best_loss, it, reason

    def _search(self, lvl: _Level, fixed: Tensor, mask: Tensor | None, pose: Tensor) -> Tensor:
        """Score a batch of perturbed candidates (no gradients); return the best ``init_keep``."""
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.init_seed)
        n = cfg.init_candidates
        cand = perturb_pose(
            pose.expand(n, 4, 4).cpu(), self.center, math.radians(cfg.init_range_deg), cfg.init_range_mm, g
        )
        cand[0] = pose.cpu()  # keep the initial guess in the running
        sim = get_similarity(cfg.similarity)
        scores = []
        chunk = 64
        with torch.no_grad():
            for s in range(0, n, chunk):
                c = cand[s : s + chunk].to(self.device)
                scores.append(sim(render(lvl.volume, c, lvl.detector, self.settings()), fixed, mask).cpu())
        order = torch.cat(scores).argsort(descending=True)
        return cand[order[: cfg.init_keep]].to(self.device)

    def register(
        self,
        fixed: np.ndarray | Tensor,
        init_pose: Float[Tensor, "4 4"],
        *,
        mask: Bool[Tensor, "H W"] | np.ndarray | None = None,
        truth: Float[Tensor, "4 4"] | None = None,
        callback: Callable[[int, Tensor, Tensor], None] | None = None,
    ) -> RegistrationResult:
        """Register one fixed image, starting from ``init_pose`` (``T_cam_ct``).

        ``fixed`` must already be in DRR-like units (see :func:`prepare_fixed`; it is checked
        again here) and have the detector's full-resolution shape. ``truth`` (``T_cam_ct``)
        adds the mTRE and the success flag to the result. ``callback(iteration, poses,
        losses)`` is called every iteration (progress bars, convergence curves).
        """
        t0 = time.perf_counter()
        cfg = self.config
        fixed_t = prepare_fixed(fixed)
        if tuple(fixed_t.shape) != self.detector.shape:
            raise FixedImageError(f"image is {tuple(fixed_t.shape)}, detector expects {self.detector.shape}")
        fixed_t = fixed_t.to(self.device, torch.float64)
        mask_t = None
        if mask is not None:
            mask_t = torch.as_tensor(np.asarray(mask)).to(self.device, torch.bool)
            if tuple(mask_t.shape) != self.detector.shape:
                raise FixedImageError(f"mask is {tuple(mask_t.shape)}, detector expects {self.detector.shape}")
        pose = init_pose.to(self.device, torch.float64).reshape(1, 4, 4)
        history: list[float] = []
        iterations, reason, losses = 0, "no levels", torch.zeros(1)
        for i, lvl in enumerate(self.levels):
            fixed_l = _downsample_image(fixed_t, lvl.detector)
            mask_l = None if mask_t is None else _downsample_image(mask_t.double(), lvl.detector) > 0.99
            if i == 0 and cfg.init_search:
                pose = self._search(lvl, fixed_l, mask_l, pose[0])
            # All candidates descend together (one batched render per step); the choice
            # between them is made at the finest level, where the similarity is most telling.
            pose, losses, its, reason = self._optimise_level(lvl, fixed_l, mask_l, pose, history, callback)
            iterations += its
            if reason.startswith("diverged"):
                break
        final = pose[losses.argmin()]
        with torch.no_grad():
            drr = render(self.levels[-1].volume, final[None], self.levels[-1].detector, self.settings())
            fine = self.levels[-1].detector.shape == self.detector.shape
            ref = fixed_t if fine else _downsample_image(fixed_t, self.levels[-1].detector)
            m = mask_t if (mask_t is not None and fine) else None
            final_zncc = float(zncc(drr, ref, m)[0])
            final_sim = float(get_similarity(cfg.similarity)(drr, ref, m)[0])
        converged = reason == "converged"
        if not math.isfinite(final_zncc):
            accepted, verdict = False, "non-finite similarity"
        elif not converged:
            accepted, verdict = False, f"did not converge ({reason})"
        elif final_zncc < cfg.min_similarity:
            accepted, verdict = False, f"similarity {final_zncc:.4f} below gate {cfg.min_similarity:.4f}"
        else:
            accepted, verdict = True, f"ok (ZNCC {final_zncc:.4f})"
        angles, trans = matrix_to_carm(final.cpu(), self.center)
        result = RegistrationResult(
            pose=final.detach().cpu(),
            angles_rad=angles.detach(),
            translation_mm=trans.detach(),
            similarity=final_sim,
            zncc=final_zncc,
            iterations=iterations,
            wall_time_s=time.perf_counter() - t0,
            converged=converged,
            stop_reason=reason,
            accepted=accepted,
            verdict=verdict,
            history=history,
        )
        if truth is not None:
            result.mtre_mm = float(self.mtre(result.pose, truth.cpu()))
            result.success = result.mtre_mm < self.success_mtre_mm
        return result


def perturb_pose(
    pose: Float[Tensor, "B 4 4"],
    ct_center: Float[Tensor, " 3"],
    max_angle_rad: float,
    max_translation_mm: float,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "B 4 4"]:
    """Perturb the seed's C-arm parameters uniformly in ``+-max_angle`` and ``+-max_translation``.

    This is the seed's Monte Carlo protocol (45 degrees, 60 mm along each axis).
    """
    angles, trans = matrix_to_carm(pose.to(torch.float64), ct_center.to(torch.float64))
    b = angles.shape[0]
    da = (torch.rand(b, 3, generator=generator, dtype=torch.float64) * 2 - 1) * max_angle_rad
    dt = (torch.rand(b, 3, generator=generator, dtype=torch.float64) * 2 - 1) * max_translation_mm
    return carm_to_matrix(angles + da.to(angles), trans + dt.to(trans), ct_center.to(torch.float64))


def with_overrides(config: RegistrationConfig, **kw) -> RegistrationConfig:
    """A copy of ``config`` with fields replaced (validated)."""
    return replace(config, **kw)


__all__ = [
    "FixedImageError",
    "Registrar",
    "RegistrationConfig",
    "RegistrationResult",
    "perturb_pose",
    "prepare_fixed",
    "with_overrides",
]
