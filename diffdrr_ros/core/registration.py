"""Intensity-based 2D/3D registration with the differentiable DRR.

The loop of the seed (its Fig. 4): render a DRR at the current pose, compare it with the
fixed X-ray, step the pose along the gradient of the loss, repeat until the loss stops
improving. Beyond the seed, and on by default (each measured in ``docs/results.md``):

* an initial search on a ~16 px image that widens the capture range at +-45 deg / +-60 mm
  from ~45-85 % (the seed's protocol) to ~98-100 %: 256 candidate rotations (a Sobol set in
  the +-45 deg box of the C-arm angles) with their in-plane translation centred on the fixed
  image's intensity centroid, scored in one batched render; the best 32 descend together
  for 30 steps; the best 2 go on;
* a coarse-to-fine pyramid (32 then 64 px for a 64 px detector, each level on a CT
  box-averaged to its pixel footprint), the candidates halving per level (2, 1) and the step
  sizes too, so the choice between them is made where the similarity is most telling;
* a decoupled pose parameterisation (rotation about the CT centre, translation in the
  camera frame), reduce-on-plateau step sizes (absolute threshold) and early stopping;
* a result with per-stage timings and a quality verdict the caller can gate on.

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
from .optimizers import DEFAULT_STEP_SIZES, make_optimizer
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

    Parameterisations of the pose being optimised:

    * ``"camera"`` - rotation (axis-angle, camera axes) about the CT centre and translation
      of the CT centre in the camera frame (in-plane x/y, depth z): rotating does not move
      the CT centre's projection, so rotation and translation are nearly decoupled.
    * ``"so3"`` - axis-angle about the current pose, translation in the seed's iso frame
      (rotations turn the C-arm about the isocentre, moving an off-centre CT).
    * ``"carm"`` - the seed's own parameters ``(theta, phi, gamma, bx, by, bz)``.

    The initial search (``init_search``) runs on a ~16 px image (``init_size``; or at
    ``init_factor``): ``init_candidates`` rotations around the start (a scrambled Sobol set
    in the ``+-init_range_deg`` box of the C-arm angles; the start itself is candidate 0),
    each with its in-plane translation centred on the fixed image's intensity centroid
    (``init_center``), are scored in one batch; the best ``init_refine`` descend together
    for ``init_refine_iterations`` steps; the best ``init_keep`` then go through the
    pyramid together (``level_keep`` caps how many enter each level) and the choice between
    them is made at the finest level.
    """

    optimizer: str = "adam"
    lr_rotation: float | None = None
    lr_translation: float | None = None
    momentum: float = 0.9
    dampening: float = 0.2
    similarity: str = "zncc"
    compare: str = "line_integral"  # or "intensity": the similarity sees exp(-L) of both images
    parameterization: str = "camera"  # "camera", "so3" or "carm" (see above)
    pyramid: tuple[int, ...] = (2, 1)  # detector downsampling factors, coarse to fine
    downsample_volume: bool = True  # coarse levels render a CT averaged to the pixel footprint
    max_iterations: int | tuple[int, ...] = 150  # per pyramid level (one value, or one per level)
    patience: int = 25  # stop a level when the loss has not improved by `tolerance` for this long
    tolerance: float = 1e-5
    plateau_patience: int = 10  # halve the step sizes after this many non-improving iterations
    plateau_factor: float = 0.5
    level_keep: tuple[int, ...] | None = None  # candidates entering each level (None: halve per level)
    level_lr_decay: float = 0.5  # step sizes x decay**i at level i (finer levels take smaller steps)
    init_search: bool = True  # batch search at the coarsest level before descending
    init_candidates: int = 256
    init_refine: int = 32
    init_refine_iterations: int = 30
    init_keep: int = 2
    init_range_deg: float = 45.0
    init_range_mm: float = 60.0  # translation range sampled when init_center is off
    init_center: bool = True
    init_factor: int | None = None  # detector downsampling of the search (None: from init_size)
    init_size: int = 16  # auto init_factor: the search image is at most this many pixels a side
    init_seed: int = 0
    method: str = "siddon"
    drr_blur_sigma_px: float = 0.0  # detector PSF applied to the DRRs (full-resolution pixels; 0: none)
    min_similarity: float = 0.9  # quality gate on the final full-resolution ZNCC
    seed_success_zncc: float = 0.999  # the seed/DiffDRR "converged" criterion, reported beside mTRE

    def __post_init__(self) -> None:
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}"
            )
        if not self.pyramid or any(int(f) < 1 for f in self.pyramid):
            raise ValueError(f"pyramid factors must be positive integers, got {self.pyramid}")
        if isinstance(self.max_iterations, (tuple, list)):
            if len(self.max_iterations) != len(self.pyramid) or min(self.max_iterations) < 1:
                raise ValueError("max_iterations needs one positive value per pyramid level")
        elif int(self.max_iterations) < 1:
            raise ValueError("max_iterations must be positive")
        if self.level_keep is not None and (
            len(self.level_keep) != len(self.pyramid) or min(self.level_keep) < 1
        ):
            raise ValueError("level_keep needs one positive value per pyramid level")
        if not 0 < self.level_lr_decay <= 1:
            raise ValueError(f"level_lr_decay must lie in (0, 1], got {self.level_lr_decay}")
        if self.init_candidates < 1 or self.init_keep < 1 or self.init_refine < 1:
            raise ValueError("init_candidates, init_refine and init_keep must be positive")
        if self.init_factor is not None and self.init_factor < 1:
            raise ValueError("init_factor must be a positive integer")
        if self.init_size < 1:
            raise ValueError("init_size must be a positive integer")
        get_similarity(self.similarity)
        if self.compare not in COMPARE_DOMAINS:
            raise ValueError(f"compare must be one of {COMPARE_DOMAINS}, got {self.compare!r}")
        make_optimizer(self.optimizer, [torch.zeros(1, requires_grad=True)], [torch.zeros(1, requires_grad=True)])

    def iterations_at(self, level: int) -> int:
        """Iteration limit of pyramid level ``level``."""
        its = self.max_iterations
        return int(its[level]) if isinstance(its, (tuple, list)) else int(its)

    def keep_at(self, level: int) -> int:
        """How many candidates enter pyramid level ``level`` (default: ``init_keep`` halved per level)."""
        if self.level_keep is not None:
            return int(self.level_keep[level])
        return max(1, self.init_keep >> level)


PARAMETERIZATIONS = ("camera", "so3", "carm")
COMPARE_DOMAINS = ("line_integral", "intensity")


def similarity_fn(cfg: RegistrationConfig) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """The configured similarity, in the configured domain (see ``RegistrationConfig.compare``).

    ``intensity`` compares the transmitted fractions ``exp(-L)`` instead of the line integrals
    ``L``: scatter, which adds a smooth background to the intensity, is then close to the
    offset that ZNCC ignores, while in the log domain it compresses the contrast of dense
    structures unevenly (measured: 12.6 mm of bias from a scatter-to-primary ratio of 0.3 in
    the line-integral domain; ``docs/results.md``).
    """
    sim = get_similarity(cfg.similarity)
    if cfg.compare == "line_integral":
        return sim

    def in_intensity(drr: Tensor, fixed: Tensor, mask: Tensor | None = None) -> Tensor:
        return sim(torch.exp(-drr), torch.exp(-fixed), mask)

    return in_intensity


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
    stages: list[dict] = field(default_factory=list)  # per stage (search, levels): size, iterations, time

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


def _coarsen_volume(vol: Volume, footprint_mm: float) -> Volume:
    """Box-average ``vol`` per axis to voxels no smaller than ``footprint_mm`` (same extent).

    Each axis is reduced by ``floor(footprint / spacing)`` (so an anisotropic CT, e.g.
    0.7 x 0.7 x 2.5 mm, is coarsened in-plane first); non-divisible sizes use adaptive
    average pooling, which still averages every voxel (no aliasing from point sampling).
    """
    spacing = vol.spacing
    factors = [max(1, int(footprint_mm // float(s))) for s in spacing]
    if all(f == 1 for f in factors):
        return vol
    n = torch.tensor(vol.shape, dtype=torch.float64)
    new_n = torch.tensor([max(1, round(int(a) / f)) for a, f in zip(vol.shape, factors, strict=True)],
                         dtype=torch.float64)
    data = F.adaptive_avg_pool3d(vol.data[None, None], tuple(int(v) for v in new_n.tolist()))[0, 0]
    f = n / new_n
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = torch.diag(f)
    m[:3, 3] = (f - 1.0) / 2.0
    return Volume(data.contiguous(), vol.affine @ m, vol.kind)


def _centroid_mm(img: Tensor, det: Detector, mask: Tensor | None) -> Tensor:
    """Intensity centroid ``(u, v)`` in mm on the detector of ``(B, H, W)`` images (min removed)."""
    b = img.shape[0]
    w = img - img.reshape(b, -1).min(-1).values[:, None, None]
    if mask is not None:
        w = w * mask.to(w)
    dy, dx = (float(s) for s in det.spacing_mm)
    x0, y0 = (float(p) for p in det.principal_point_mm)
    v = (torch.arange(det.height, dtype=img.dtype, device=img.device) - (det.height - 1) / 2) * dy + y0
    u = (torch.arange(det.width, dtype=img.dtype, device=img.device) - (det.width - 1) / 2) * dx + x0
    total = w.sum((-1, -2)).clamp_min(1e-12)
    return torch.stack([(w.sum(-2) * u).sum(-1) / total, (w.sum(-1) * v).sum(-1) / total], -1)


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
        self._level_cache: dict[tuple[int, ...], list[_Level]] = {
            tuple(int(f) for f in self.config.pyramid): self.levels
        }
        self._search_level_cache: _Level | None = None

    def _make_level(self, factor: int) -> _Level:
        det = self.detector.scaled(factor) if factor > 1 else self.detector
        vol = self.volume
        if self.config.downsample_volume:
            # Match the CT voxel to the detector pixel footprint at the isocentre.
            sid, sdd = float(det.sid), float(det.sdd_mm)
            footprint = min(float(s) for s in det.spacing_mm) * sid / sdd
            vol = _coarsen_volume(self.volume, footprint)
        return _Level(int(factor), det, vol)

    def _build_levels(self, pyramid: tuple[int, ...]) -> list[_Level]:
        return [self._make_level(int(f)) for f in pyramid]

    def use_pyramid(self, pyramid: tuple[int, ...]) -> None:
        """Switch to another detector pyramid, building each level's CT (and DRR settings) once.

        Callers that alternate between pyramids (the ROS node: a wide first frame, then
        tracking frames) keep the prepared levels: they are cached per pyramid here.
        :meth:`register` calls it with its config's pyramid. A level depends on the detector
        and on ``downsample_volume`` as well: change those with a new :class:`Registrar`.
        """
        key = tuple(int(f) for f in pyramid)
        if key not in self._level_cache:
            self._level_cache[key] = self._build_levels(key)
        self.levels = self._level_cache[key]

    def search_factor(self) -> int:
        """Detector downsampling of the initial search: ``init_factor``, or the smallest factor
        (at least the coarsest pyramid level's) that makes the image ``init_size`` px or less."""
        cfg = self.config
        if cfg.init_factor is not None:
            return int(cfg.init_factor)
        return max(int(cfg.pyramid[0]), math.ceil(max(self.detector.shape) / cfg.init_size))

    def _search_level(self) -> _Level:
        f = self.search_factor()
        if int(f) == self.levels[0].factor:
            return self.levels[0]
        if self._search_level_cache is None or self._search_level_cache.factor != int(f):
            self._search_level_cache = self._make_level(int(f))
        return self._search_level_cache

    # ------------------------------------------------------------------ rendering helpers

    def settings(self, factor: int = 1) -> RenderSettings:
        """Render settings at a pyramid level of detector downsampling ``factor``."""
        return RenderSettings(method=self.config.method, blur_sigma_px=self.config.drr_blur_sigma_px / factor)

    def render(self, pose: Float[Tensor, "... 4 4"], level: int = -1) -> Tensor:
        """DRR(s) at ``pose`` at pyramid ``level`` (default: full resolution), no grad."""
        lvl = self.levels[level]
        with torch.no_grad():
            return render(lvl.volume, pose.to(self.device, torch.float64), lvl.detector, self.settings(lvl.factor))

    def pose_from_carm(self, angles_rad: Tensor | list[float], translation_mm: Tensor | list[float]) -> Tensor:
        """``T_cam_ct`` from the seed's C-arm parameters, for this CT's centre."""
        a = torch.as_tensor(angles_rad, dtype=torch.float64)
        t = torch.as_tensor(translation_mm, dtype=torch.float64)
        return carm_to_matrix(a, t, self.center)

    def mtre(self, pose: Tensor, truth: Tensor) -> Tensor:
        """mTRE (mm) over this CT's fixed 27 targets (see :func:`metrics.target_points`)."""
        return mean_target_registration_error(pose.to(torch.float64), truth.to(torch.float64), self.targets)

    # ------------------------------------------------------------------ the optimisation

    def _param_to_pose(self, rot: Tensor, trans: Tensor, base: tuple[Tensor, Tensor]) -> Tensor:
        kind = self.config.parameterization
        center = self.center.to(trans)
        if kind == "carm":
            return carm_to_matrix(rot, trans, center)
        if kind == "camera":
            # x_cam = exp(rot) R0 (x - c) + p_c + trans: rotation about the CT centre.
            r0, p_c = base
            r = axis_angle_to_matrix(rot) @ r0
            t = p_c + trans - (r @ center[:, None])[..., 0]
            return make_transform(r, t)
        base_rot_iso_cam = base[0]
        r_iso_cam = base_rot_iso_cam @ axis_angle_to_matrix(rot)
        r_cam_iso = r_iso_cam.transpose(-1, -2)
        offset = trans - center
        return make_transform(r_cam_iso, (r_cam_iso @ offset[..., None])[..., 0])

    def _initial_params(self, pose: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        kind = self.config.parameterization
        if kind == "camera":
            r0 = pose[..., :3, :3].clone()
            p_c = (r0 @ self.center.to(pose)[:, None])[..., 0] + pose[..., :3, 3]
            zeros = torch.zeros_like(p_c)
            return zeros, zeros.clone(), (r0, p_c)
        angles, trans = matrix_to_carm(pose, self.center.to(pose))
        base = pose[..., :3, :3].transpose(-1, -2)
        rot = angles.clone() if kind == "carm" else torch.zeros_like(angles)
        return rot, trans.clone(), (base, base)

    def _optimise_level(
        self,
        lvl: _Level,
        fixed: Tensor,
        mask: Tensor | None,
        pose: Tensor,
        history: list[float],
        callback: Callable[[int, Tensor, Tensor], None] | None,
        max_iterations: int | None = None,
        lr_scale: float = 1.0,
    ) -> tuple[Tensor, Tensor, int, str]:
        """Descend at one level for a batch of poses; return best poses, their losses, iters, reason."""
        cfg = self.config
        sim = similarity_fn(cfg)
        rot, trans, base = self._initial_params(pose)
        rot.requires_grad_(True)
        trans.requires_grad_(True)
        d_rot, d_trans = DEFAULT_STEP_SIZES[cfg.optimizer]
        lr_rot = (d_rot if cfg.lr_rotation is None else cfg.lr_rotation) * lr_scale
        lr_trans = (d_trans if cfg.lr_translation is None else cfg.lr_translation) * lr_scale
        opt, sched = make_optimizer(
            cfg.optimizer, [rot], [trans], lr_rotation=lr_rot, lr_translation=lr_trans,
            momentum=cfg.momentum, dampening=cfg.dampening, plateau_patience=cfg.plateau_patience,
            plateau_factor=cfg.plateau_factor,
        )
        best_loss = torch.full((pose.shape[0],), math.inf, dtype=torch.float64, device=pose.device)
        best_pose = pose.clone()
        stale, reason, it = 0, "max_iterations", 0
        settings = self.settings(lvl.factor)
        limit = cfg.iterations_at(-1) if max_iterations is None else max_iterations
        for it in range(1, limit + 1):
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

    def _center_translation(self, lvl: _Level, fixed: Tensor, mask: Tensor | None, cand: Tensor) -> Tensor:
        """Shift each candidate in the camera x/y plane so its DRR's centroid meets the fixed one."""
        det = lvl.detector
        target = _centroid_mm(fixed[None], det, mask)[0]
        sdd, sid = float(det.sdd_mm), float(det.sid)
        center = self.center.to(cand)
        for _ in range(2):
            with torch.no_grad():
                drr = render(lvl.volume, cand, det, self.settings(lvl.factor))
            shift_det = target - _centroid_mm(drr, det, mask)
            depth = (cand[:, :3, :3] @ center[:, None])[:, 2, 0] + cand[:, 2, 3]  # CT centre z_cam
            mag = sdd / (sid + depth).clamp_min(0.1 * sid)
            cand = cand.clone()
            cand[:, :2, 3] += shift_det / mag[:, None]
        return cand

    def _candidates(self, pose: Tensor) -> Tensor:
        """``init_candidates`` poses around ``pose`` (candidate 0 is ``pose`` itself)."""
        cfg = self.config
        n = cfg.init_candidates
        angles, trans = matrix_to_carm(pose.cpu()[None], self.center)
        dims = 3 if cfg.init_center else 6
        sobol = torch.quasirandom.SobolEngine(dims, scramble=True, seed=cfg.init_seed)
        u = sobol.draw(max(n - 1, 1), dtype=torch.float64)[: n - 1] * 2 - 1
        da = u[:, :3] * math.radians(cfg.init_range_deg)
        a = torch.cat([angles, angles + da], 0)
        t = trans.expand(n, 3).clone()
        if dims == 6:
            t[1:] += u[:, 3:] * cfg.init_range_mm
        return carm_to_matrix(a, t, self.center)

    def _search(self, lvl: _Level, fixed: Tensor, mask: Tensor | None, pose: Tensor,
                history: list[float] | None = None) -> Tensor:
        """Widen the capture range: score many candidates, descend the best, return ``init_keep``.

        Returns ``(init_keep, 4, 4)`` poses, best (lowest loss at ``lvl``) first.
        """
        cfg = self.config
        sim = similarity_fn(cfg)
        cand = self._candidates(pose).to(self.device)
        chunk = 256
        if cfg.init_center:
            cand = torch.cat([self._center_translation(lvl, fixed, mask, cand[s : s + chunk])
                              for s in range(0, cand.shape[0], chunk)])
        scores = []
        with torch.no_grad():
            for s in range(0, cand.shape[0], chunk):
                c = cand[s : s + chunk]
                scores.append(sim(render(lvl.volume, c, lvl.detector, self.settings(lvl.factor)), fixed, mask))
        order = torch.cat(scores).argsort(descending=True)
        best = cand[order[: min(cfg.init_refine, cand.shape[0])]]
        if cfg.init_refine_iterations > 0:
            hist = [] if history is None else history
            best, losses, _, _ = self._optimise_level(
                lvl, fixed, mask, best, hist, None, max_iterations=cfg.init_refine_iterations
            )
            best = best[losses.argsort()]
        return best[: cfg.init_keep]

    def _stage(self, name: str, lvl: _Level, size: int, its: int, reason: str, t0: float, pose: Tensor,
               truth: Tensor | None, rays: int) -> dict:
        """One stage's record; ``rays`` counts rendered rays (a load-independent cost measure)."""
        d = {"stage": name, "image": list(lvl.detector.shape), "ct": list(lvl.volume.shape), "batch": int(size),
             "iterations": int(its), "reason": reason, "time_s": round(time.perf_counter() - t0, 4),
             "rays": int(rays)}
        if truth is not None:
            d["mtre_best_mm"] = round(float(self.mtre(pose[0].cpu(), truth.cpu())), 3)
        return d

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
        losses)`` is called every iteration of the pyramid levels (progress bars,
        convergence curves); the search's own iterations are in ``history`` but not called back.
        """
        t0 = time.perf_counter()
        cfg = self.config
        self.use_pyramid(cfg.pyramid)  # the config may have been swapped since the last call
        fixed_t = prepare_fixed(fixed)
        if tuple(fixed_t.shape) != self.detector.shape:
            raise FixedImageError(f"image is {tuple(fixed_t.shape)}, detector expects {self.detector.shape}")
        fixed_t = fixed_t.to(self.device, torch.float64)
        mask_t = None
        if mask is not None:
            mask_t = torch.as_tensor(np.asarray(mask)).to(self.device, torch.bool)
            if tuple(mask_t.shape) != self.detector.shape:
                raise FixedImageError(f"mask is {tuple(mask_t.shape)}, detector expects {self.detector.shape}")

        def at(lvl: _Level) -> tuple[Tensor, Tensor | None]:
            f = _downsample_image(fixed_t, lvl.detector)
            m = None if mask_t is None else _downsample_image(mask_t.double(), lvl.detector) > 0.99
            return f, m

        pose = init_pose.to(self.device, torch.float64).reshape(1, 4, 4)
        history: list[float] = []
        stages: list[dict] = []
        if cfg.init_search:
            slvl = self._search_level()
            ts = time.perf_counter()
            pose = self._search(slvl, *at(slvl), pose[0], history)
            px = slvl.detector.height * slvl.detector.width
            renders = cfg.init_candidates * (3 if cfg.init_center else 1)
            renders += min(cfg.init_refine, cfg.init_candidates) * len(history)
            stages.append(self._stage("search", slvl, cfg.init_candidates, len(history), "done", ts, pose, truth,
                                      renders * px))
        iterations, reason, losses = len(history), "no levels", torch.zeros(1)
        for i, lvl in enumerate(self.levels):
            ts = time.perf_counter()
            fixed_l, mask_l = at(lvl)
            # Candidates arrive sorted best first (search, or the sort below).
            pose = pose[: cfg.keep_at(i)]
            # All candidates descend together (one batched render per step); the choice
            # between them is made at the finest level, where the similarity is most telling.
            pose, losses, its, reason = self._optimise_level(
                lvl, fixed_l, mask_l, pose, history, callback, max_iterations=cfg.iterations_at(i),
                lr_scale=cfg.level_lr_decay**i,
            )
            order = losses.argsort()
            pose, losses = pose[order], losses[order]
            iterations += its
            px = lvl.detector.height * lvl.detector.width
            stages.append(self._stage(f"level x{lvl.factor}", lvl, pose.shape[0], its, reason, ts, pose, truth,
                                      pose.shape[0] * its * px))
            if reason.startswith("diverged"):
                break
        final = pose[losses.argmin()]
        with torch.no_grad():
            drr = render(self.levels[-1].volume, final[None], self.levels[-1].detector,
                         self.settings(self.levels[-1].factor))
            fine = self.levels[-1].detector.shape == self.detector.shape
            ref = fixed_t if fine else _downsample_image(fixed_t, self.levels[-1].detector)
            m = mask_t if (mask_t is not None and fine) else None
            final_zncc = float(zncc(drr, ref, m)[0])
            final_sim = float(similarity_fn(cfg)(drr, ref, m)[0])
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
            stages=stages,
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
