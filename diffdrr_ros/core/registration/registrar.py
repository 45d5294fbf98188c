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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..drr import RenderSettings, render, resolve_device
from ..drr import cuda as cuda_kernels
from ..geometry.carm import carm_to_matrix, matrix_to_carm
from ..geometry.detector import Detector
from ..metrics import mean_target_registration_error, target_points, zncc
from ..physics.poly_model import PolyModel
from ..volume import MaterialVolume, Volume
from .config import RegistrationConfig, similarity_fn
from .fixed_image import FixedImageError, downsample_image, erode_mask, prepare_fixed, smooth_image
from .gauss_newton import lm_refine
from .optimizers import DEFAULT_STEP_SIZES, make_optimizer
from .parameterization import initial_params, params_to_pose
from .result import RegistrationResult
from .search import center_translations, sobol_candidates
from .views import View, ViewStack, mean_similarity


def coarsen_to_footprint(vol: Volume | MaterialVolume, footprint_mm: float) -> Volume | MaterialVolume:
    """Box-average ``vol`` per axis to voxels no smaller than ``footprint_mm`` (same extent).

    Each axis is reduced by ``floor(footprint / spacing)`` (so an anisotropic CT, e.g.
    0.7 x 0.7 x 2.5 mm, is coarsened in-plane first), through :meth:`.Volume.box_average`,
    which averages every voxel also for non-divisible sizes (no aliasing from point sampling);
    a :class:`.MaterialVolume` has every material channel averaged alike.
    """
    return vol.box_average([max(1, int(footprint_mm // float(s))) for s in vol.spacing])


@dataclass
class _Level:
    factor: int
    detector: Detector
    volume: Volume | MaterialVolume


class Registrar:
    """A CT prepared for registration against frames from one detector geometry.

    Args:
        volume: the CT; HU volumes are mapped to attenuation, ``mu``/``raw`` used as they are;
            with ``config.drr_model="poly"`` a HU CT is decomposed into material densities
            (:meth:`.MaterialVolume.from_hu`, ``config.material_table``), or a ready
            :class:`.MaterialVolume` is used as it is (anything else: ``ValueError``).
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
        vol = self._prepared_volume(volume, self.config)
        self.volume = vol.to(self.device, torch.float32)
        self._poly_cache: tuple[tuple, PolyModel] | None = None
        self.detector = detector
        self.center = vol.center.to(torch.float64)
        self.targets = target_points(vol.center, vol.extent_mm)
        self.success_mtre_mm = success_mtre_mm
        self.levels = self._build_levels(self.config.pyramid)
        self._level_cache: dict[tuple[int, ...], list[_Level]] = {
            tuple(int(f) for f in self.config.pyramid): self.levels
        }
        self._search_level_cache: _Level | None = None

    @staticmethod
    def _prepared_volume(volume: Volume | MaterialVolume, cfg: RegistrationConfig) -> Volume | MaterialVolume:
        """The volume the DRR renders: attenuation (mono) or material densities (poly)."""
        if cfg.drr_model == "poly":
            if isinstance(volume, MaterialVolume):
                return volume
            if volume.kind != "hu":
                raise ValueError(f"drr_model 'poly' needs a CT in HU (to decompose into materials), this volume is "
                                 f"{volume.kind!r}; load the CT in HU or pass a MaterialVolume")
            return MaterialVolume.from_hu(volume, cfg.material_table)
        if isinstance(volume, MaterialVolume):
            raise ValueError("a MaterialVolume renders with drr_model 'poly' only")
        return volume.to_attenuation() if volume.kind == "hu" else volume

    def poly_model(self) -> PolyModel | None:
        """The DRR's polychromatic model (None for ``drr_model="mono"``), from the current config.

        ``drr_model`` itself is fixed by the prepared volume: switching it needs a new
        :class:`Registrar`; the physics parameters may change between calls (cached per value).
        """
        cfg = self.config
        poly_volume = isinstance(self.volume, MaterialVolume)
        if (cfg.drr_model == "poly") != poly_volume:
            raise ValueError(f"this Registrar was built for a {'poly' if poly_volume else 'mono'} DRR, the config "
                             f"asks for {cfg.drr_model!r}: build a new Registrar")
        if not poly_volume:
            return None
        key = (cfg.kvp, cfg.filtration_mm_al, cfg.energy_bins, cfg.scatter_to_primary, cfg.scatter_sigma_fraction,
               cfg.heel_gain, self.volume.materials)
        if self._poly_cache is None or self._poly_cache[0] != key:
            self._poly_cache = (key, cfg.poly_model(self.volume.materials))
        return self._poly_cache[1]

    def rebuilt(self, detector: Detector | None = None, device: str | torch.device | None = None) -> Registrar:
        """The same CT and config for another detector geometry or device (new CT pyramids)."""
        return Registrar(self.volume, detector or self.detector, self.config,
                         device=self.device if device is None else device, success_mtre_mm=self.success_mtre_mm)

    def _make_level(self, factor: int) -> _Level:
        det = self.detector.scaled(factor) if factor > 1 else self.detector
        vol = self.volume
        if self.config.downsample_volume:
            # Match the CT voxel to the detector pixel footprint at the isocentre.
            sid, sdd = float(det.sid), float(det.sdd_mm)
            footprint = min(float(s) for s in det.spacing_mm) * sid / sdd
            vol = coarsen_to_footprint(self.volume, footprint)
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
        """Render settings at a pyramid level of detector downsampling ``factor`` (with the poly model
        of ``drr_model="poly"``: its scatter width is a fraction of the detector, the same at every level)."""
        return RenderSettings(method=self.config.method, blur_sigma_px=self.config.drr_blur_sigma_px / factor,
                              poly=self.poly_model())

    def render(self, pose: Float[Tensor, "... 4 4"], level: int = -1, detector: Detector | None = None) -> Tensor:
        """DRR(s) at ``pose`` at pyramid ``level`` (default: full resolution), no grad; ``detector``: another
        panel's intrinsics (a biplane's plane B, at its full resolution) instead of the level's."""
        lvl = self.levels[level]
        with torch.no_grad():
            return render(lvl.volume, pose.to(self.device, torch.float64), lvl.detector if detector is None
                          else detector, self.settings(lvl.factor))

    def pose_from_carm(self, angles_rad: Tensor | list[float], translation_mm: Tensor | list[float]) -> Tensor:
        """``T_cam_ct`` from the seed's C-arm parameters, for this CT's centre."""
        a = torch.as_tensor(angles_rad, dtype=torch.float64)
        t = torch.as_tensor(translation_mm, dtype=torch.float64)
        return carm_to_matrix(a, t, self.center)

    def mtre(self, pose: Tensor, truth: Tensor) -> Tensor:
        """mTRE (mm) over this CT's fixed 27 targets (see :func:`..metrics.target_points`)."""
        return mean_target_registration_error(pose.to(torch.float64), truth.to(torch.float64), self.targets)

    # ------------------------------------------------------------------ the optimisation

    def _optimise_level(
        self,
        lvl: _Level,
        frames: list[ViewStack],
        pose: Tensor,
        history: list[float],
        callback: Callable[[int, Tensor, Tensor], None] | None,
        max_iterations: int | None = None,
        lr_scale: float = 1.0,
        optimizer: str | None = None,
        smoothing: Sequence[float] = (),
    ) -> tuple[Tensor, Tensor, int, str]:
        """Descend at one level for a batch of poses; return best poses, their losses, iters, reason.

        ``smoothing``: Levenberg-Marquardt only, extra blur sigmas (px) of passes before the unsmoothed one.
        """
        cfg = self.config
        if (optimizer or cfg.optimizer) == "lm" and (self.device.type == "cpu" or cuda_kernels.ready(self.device)):
            return self._lm_level(lvl, frames, pose, history, callback, smoothing)
        if (optimizer or cfg.optimizer) == "lm":  # the analytic Jacobian needs the numba (CPU) or numba-cuda kernels
            optimizer = "adam"
        optimizer = optimizer or cfg.optimizer
        sim = similarity_fn(cfg)
        rot, trans, base = initial_params(cfg.parameterization, pose, self.center)
        rot.requires_grad_(True)
        trans.requires_grad_(True)
        d_rot, d_trans = DEFAULT_STEP_SIZES[optimizer]
        lr_rot = (d_rot if cfg.lr_rotation is None else cfg.lr_rotation) * lr_scale
        lr_trans = (d_trans if cfg.lr_translation is None else cfg.lr_translation) * lr_scale
        opt, sched = make_optimizer(
            optimizer, [rot], [trans], lr_rotation=lr_rot, lr_translation=lr_trans,
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
            current = params_to_pose(cfg.parameterization, rot, trans, base, self.center)
            loss = -mean_similarity(frames, sim, self._group_renderer(lvl, settings), current)  # one render per C-arm
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

    def _lm_level(self, lvl: _Level, frames: list[ViewStack], pose: Tensor, history: list[float],
                  callback: Callable[[int, Tensor, Tensor], None] | None,
                  smoothing: Sequence[float] = ()) -> tuple[Tensor, Tensor, int, str]:
        """Levenberg-Marquardt on each candidate (:func:`.gauss_newton.lm_refine`); same returns as Adam's.

        Each ``smoothing`` sigma (px, coarse to fine) first runs a pass on both images smoothed alike (the fixed
        by :func:`.smooth_image` within its mask, the mask eroded by a sigma where that keeps half of it; the
        DRR's blur widened in quadrature): a wider basin on the same pixel grid; then the unsmoothed pass, whose
        result and loss count.
        """
        cfg = self.config
        base = self.settings(lvl.factor)
        passes = []
        for s in (float(v) for v in smoothing if float(v) > 0):
            smoothed = [ViewStack(smooth_image(g.fixed, s, g.mask), erode_mask(g.mask, math.ceil(s), keep_fraction=0.5),
                                  g.cam_from_ref, g.detector, g.indices) for g in frames]
            passes.append((smoothed, replace(base, blur_sigma_px=math.hypot(base.blur_sigma_px, s))))
        poses, losses, its, reasons = [], [], 0, []
        for b in range(pose.shape[0]):
            start, it_s = pose[b], 0
            for fr_s, set_s in passes:
                start, _, it_p, _ = lm_refine(lvl.volume, fr_s, lvl.detector, start, self.center, set_s,
                                              cfg.similarity, cfg.compare, max_iterations=cfg.lm_max_iterations,
                                              history=history, callback=callback)
                start, it_s = start.to(pose), it_s + it_p
            p, loss, it, reason = lm_refine(lvl.volume, frames, lvl.detector, start, self.center,
                                            base, cfg.similarity, cfg.compare,
                                            max_iterations=cfg.lm_max_iterations, history=history, callback=callback)
            it += it_s
            if reason == "max_iterations":  # still far: fall back to Adam from where it got to
                p_a, l_a, it_a, reason = self._optimise_level(lvl, frames, p.to(pose)[None], history, callback,
                                                              optimizer="adam")
                p, loss, it = p_a[0], float(l_a[0]) + 1.0, it + it_a
            poses.append(p.to(pose))
            losses.append(loss - 1.0)  # -similarity, as the Adam path's losses
            its = max(its, it)
            reasons.append(reason)
        # "stalled": no step lowers the loss any more, i.e. at a minimum (to the step tolerance).
        reason = "converged" if all(r in ("converged", "stalled") for r in reasons) else reasons[0]
        return torch.stack(poses), torch.tensor(losses, dtype=torch.float64, device=pose.device), its, reason

    def _group_renderer(self, lvl: _Level, settings: RenderSettings) -> Callable[[ViewStack, Tensor], Tensor]:
        def render_group(group: ViewStack, poses: Tensor) -> Tensor:
            return render(lvl.volume, poses, lvl.detector if group.detector is None else group.detector, settings)

        return render_group

    def _search(self, lvl: _Level, frames: list[ViewStack], pose: Tensor, history: list[float] | None = None,
                cfg: RegistrationConfig | None = None) -> Tensor:
        """Widen the capture range: score many candidates, descend the best, return ``init_keep``.

        Returns ``(init_keep, 4, 4)`` poses, best (lowest loss at ``lvl``) first (``cfg``: default the config).
        """
        cfg = self.config if cfg is None else cfg
        sim = similarity_fn(cfg)
        cand = sobol_candidates(pose, self.center, cfg).to(self.device)
        chunk = 256

        def drrs(c: Tensor) -> Tensor:
            return render(lvl.volume, c, lvl.detector, self.settings(lvl.factor))

        ref = frames[0]
        if cfg.init_center:  # on the reference view (candidates are its poses)
            ref_mask = None if ref.mask is None else ref.mask[0]
            cand = torch.cat([center_translations(drrs, lvl.detector, ref.fixed[0], ref_mask, cand[s : s + chunk],
                                                  self.center) for s in range(0, cand.shape[0], chunk)])
        scores = []
        render_group = self._group_renderer(lvl, self.settings(lvl.factor))
        with torch.no_grad():
            for s in range(0, cand.shape[0], chunk):
                scores.append(mean_similarity(frames, sim, render_group, cand[s : s + chunk]))
        order = torch.cat(scores).argsort(descending=True)
        best = cand[order[: min(cfg.init_refine, cand.shape[0])]]
        if cfg.init_refine_iterations > 0:
            hist = [] if history is None else history
            best, losses, _, _ = self._optimise_level(  # Adam: Levenberg-Marquardt's basin is too narrow here
                lvl, frames, best, hist, None, max_iterations=cfg.init_refine_iterations,
                optimizer="adam" if cfg.optimizer == "lm" else None,
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

    def _full_frames(self, fixed: np.ndarray | Tensor, mask, views: Sequence[View]) -> list[ViewStack]:
        """Check the reference frame and the extra views at full resolution; one stack per detector geometry.

        The first stack holds the reference frame and every view on the same detector (one
        C-arm: one batched render); a biplane's other panel makes a second stack.
        """
        items = [(fixed, mask, None, None)] + [(v.fixed, v.mask, v.cam_from_ref, v.detector) for v in views]
        groups: list[tuple[Detector | None, list[int]]] = []
        for k, (_, _, _, det) in enumerate(items):
            key = None if det is None or det == self.detector else det
            for g_det, members in groups:
                if g_det == key:
                    members.append(k)
                    break
            else:
                groups.append((key, [k]))
        stacks = []
        for g_det, members in groups:
            det = self.detector if g_det is None else g_det
            images, masks, rel = [], [], []
            for k in members:
                f, m, t, _ = items[k]
                what = "image" if k == 0 else f"view {k} image"
                f_t = prepare_fixed(f)
                if tuple(f_t.shape) != det.shape:
                    raise FixedImageError(f"{what} is {tuple(f_t.shape)}, detector expects {det.shape}")
                images.append(f_t.to(self.device, torch.float64))
                m_t = None
                if m is not None:
                    m_t = torch.as_tensor(np.asarray(m)).to(self.device, torch.bool)
                    if tuple(m_t.shape) != det.shape:
                        raise FixedImageError(f"{what.replace('image', 'mask')} is {tuple(m_t.shape)}, detector "
                                              f"expects {det.shape}")
                masks.append(m_t)
                rel.append(torch.eye(4, dtype=torch.float64) if t is None else torch.as_tensor(t, dtype=torch.float64))
            mask_t = None
            if any(m is not None for m in masks):
                mask_t = torch.stack([torch.ones(det.shape, dtype=torch.bool, device=self.device)
                                      if m is None else m for m in masks])
            single = len(items) == 1
            stacks.append(ViewStack(torch.stack(images), mask_t, None if single else torch.stack(rel).to(self.device),
                                    g_det, tuple(members)))
        return stacks

    @staticmethod
    def _frames_at(full: list[ViewStack], lvl: _Level) -> list[ViewStack]:
        out = []
        for g in full:
            det = None if g.detector is None else (g.detector.scaled(lvl.factor) if lvl.factor > 1 else g.detector)
            shape_det = lvl.detector if det is None else det
            f = downsample_image(g.fixed, shape_det)
            m = None if g.mask is None else downsample_image(g.mask.double(), shape_det) > 0.99
            out.append(ViewStack(f, m, g.cam_from_ref, det, g.indices))
        return out

    def view_stacks(self, fixed: np.ndarray | Tensor, mask: Bool[Tensor, "H W"] | np.ndarray | None = None,
                    views: Sequence[View] = (), level: int = -1) -> list[ViewStack]:
        """The frame and its ``views`` as the optimiser sees them at pyramid level ``level`` (default: the finest).

        Checked as :meth:`register` checks them; one :class:`.ViewStack` per detector geometry.
        """
        return self._frames_at(self._full_frames(fixed, mask, views), self.levels[level])

    def register(
        self,
        fixed: np.ndarray | Tensor,
        init_pose: Float[Tensor, "4 4"],
        *,
        mask: Bool[Tensor, "H W"] | np.ndarray | None = None,
        truth: Float[Tensor, "4 4"] | None = None,
        callback: Callable[[int, Tensor, Tensor], None] | None = None,
        views: Sequence[View] = (),
    ) -> RegistrationResult:
        """Register one fixed image (and optionally more views of it), starting from ``init_pose`` (``T_cam_ct``).

        ``fixed`` must already be in DRR-like units (see :func:`prepare_fixed`; it is checked
        again here) and have the detector's full-resolution shape. ``views`` (:class:`.View`)
        are more frames of the same, still patient with known relative cameras: one pose is
        registered to all of them (the mean of the per-view similarities, one batched render
        per iteration), which resolves the depth a single view sees only through magnification;
        no views is exactly the single-view registration. ``truth`` (``T_cam_ct``) adds the
        mTRE and the success flag to the result. ``callback(iteration, poses, losses)`` is
        called every iteration of the pyramid levels (progress bars, convergence curves); the
        search's own iterations are in ``history`` but not called back.
        """
        t0 = time.perf_counter()
        self.use_pyramid(self.config.pyramid)  # the config may have been swapped since the last call
        full = self._full_frames(fixed, mask, views)
        n_views = sum(g.count for g in full)
        cfg = self.config.for_views(n_views)
        # The frames of the search and the coarse levels (see RegistrationConfig.coarse_views).
        coarse, n_coarse = full, n_views
        if cfg.coarse_views == "reference" and n_views > 1:
            coarse, n_coarse = self._full_frames(fixed, mask, ()), 1

        pose = init_pose.to(self.device, torch.float64).reshape(1, 4, 4)
        history: list[float] = []
        stages: list[dict] = []
        if cfg.init_search:
            slvl = self._search_level()
            ts = time.perf_counter()
            pose = self._search(slvl, self._frames_at(coarse, slvl), pose[0], history, cfg)
            px = slvl.detector.height * slvl.detector.width
            renders = cfg.init_candidates * (2 + n_coarse if cfg.init_center else n_coarse)
            renders += min(cfg.init_refine, cfg.init_candidates) * len(history) * n_coarse
            stages.append(self._stage("search", slvl, cfg.init_candidates, len(history), "done", ts, pose, truth,
                                      renders * px))
        iterations, reason, losses = len(history), "no levels", torch.zeros(1)
        for i, lvl in enumerate(self.levels):
            ts = time.perf_counter()
            # Candidates arrive sorted best first (search, or the sort below).
            pose = pose[: cfg.keep_at(i)]
            # All candidates descend together (one batched render per step); the choice
            # between them is made at the finest level, where the similarity is most telling.
            finest = i == len(self.levels) - 1
            pose, losses, its, reason = self._optimise_level(
                lvl, self._frames_at(full if finest else coarse, lvl), pose, history, callback,
                max_iterations=cfg.iterations_at(i),
                lr_scale=cfg.level_lr_decay**i, optimizer=cfg.polish_optimizer if finest else None,
                smoothing=cfg.polish_smoothing_px if finest and cfg.polish_optimizer == "lm" else (),
            )
            order = losses.argsort()
            pose, losses = pose[order], losses[order]
            iterations += its
            px = lvl.detector.height * lvl.detector.width
            stages.append(self._stage(f"level x{lvl.factor}", lvl, pose.shape[0], its, reason, ts, pose, truth,
                                      pose.shape[0] * its * px * (n_views if finest else n_coarse)))
            if reason.startswith("diverged"):
                break
        final = pose[losses.argmin()]
        # Another minimum the finest level ended in: how far from the chosen one (mm at the targets) and
        # how much worse (similarity); a near-equal one far away says the frame does not decide between them.
        runner_up = None
        if pose.shape[0] > 1:  # sorted best first
            runner_up = (float(self.mtre(pose[1].cpu(), final.cpu())), float(losses[1] - losses[0]))
        last = self.levels[-1]
        fine = last.detector.shape == self.detector.shape
        sim = similarity_fn(cfg)
        view_zncc, sims = [0.0] * n_views, [0.0] * n_views
        with torch.no_grad():
            for g in full if fine else self._frames_at(full, last):
                det = last.detector if g.detector is None else g.detector
                drr = render(last.volume, g.poses(final[None]), det, self.settings(last.factor))  # K_g h w
                if n_views == 1:  # exactly the single-view numbers
                    m = None if g.mask is None else g.mask[0]
                    view_zncc[0] = float(zncc(drr, g.fixed[0], m)[0])
                    sims[0] = float(sim(drr, g.fixed[0], m)[0])
                    continue
                for k, z, v in zip(g.indices, zncc(drr, g.fixed, g.mask), sim(drr, g.fixed, g.mask), strict=True):
                    view_zncc[k], sims[k] = float(z), float(v)
        final_zncc, final_sim = min(view_zncc), sum(sims) / n_views
        converged = reason == "converged"
        if not math.isfinite(final_zncc):
            accepted, verdict = False, "non-finite similarity"
        elif not converged:
            accepted, verdict = False, f"did not converge ({reason})"
        elif final_zncc < cfg.min_similarity:
            accepted, verdict = False, f"similarity {final_zncc:.4f} below gate {cfg.min_similarity:.4f}"
        else:
            accepted, verdict = True, f"ok (ZNCC {final_zncc:.4f})" if n_views == 1 else (
                f"ok ({n_views} views, lowest ZNCC {final_zncc:.4f})")
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
            view_zncc=view_zncc,
            runner_up_mm=None if runner_up is None else runner_up[0],
            runner_up_gap=None if runner_up is None else runner_up[1],
        )
        if truth is not None:
            result.mtre_mm = float(self.mtre(result.pose, truth.cpu()))
            result.success = result.mtre_mm < self.success_mtre_mm
        return result
