"""What a registration does: :class:`RegistrationConfig`, and the similarity it compares with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..metrics.similarity import get_similarity
from ..physics.materials import MaterialTable
from ..physics.poly_model import PolyModel
from ..physics.spectrum import Spectrum
from .optimizers import make_optimizer
from .parameterization import PARAMETERIZATIONS

#: Similarities Levenberg-Marquardt can minimise (sums of squares of normalised features).
LM_SIMILARITIES = ("zncc", "l2", "gncc")
#: The DRR's physics: "mono" (line integrals of one attenuation volume) or "poly" (:mod:`..drr.poly`).
DRR_MODELS = ("mono", "poly")


@dataclass
class RegistrationConfig:
    """Knobs of :meth:`Registrar.register`. Angles in rad, lengths in mm.

    ``lr_rotation`` / ``lr_translation``: step sizes for the rotation and translation
    parameters (the seed's separate step sizes); ``None`` takes the optimiser's default
    (see :data:`.optimizers.DEFAULT_STEP_SIZES`).

    ``parameterization``: how the optimiser sees the pose, ``"camera"`` (default), ``"so3"``
    or ``"carm"`` (see :mod:`.parameterization`).

    The initial search (``init_search``) runs on a ~16 px image (``init_size``; or at
    ``init_factor``): ``init_candidates`` rotations around the start (a scrambled Sobol set
    in the ``+-init_range_deg`` box of the C-arm angles; the start itself is candidate 0),
    each with its in-plane translation centred on the fixed image's intensity centroid
    (``init_center``), are scored in one batch; the best ``init_refine`` descend together
    for ``init_refine_iterations`` steps; the best ``init_keep`` then go through the
    pyramid together (``level_keep`` caps how many enter each level) and the choice between
    them is made at the finest level.

    ``drr_model``: ``"mono"`` (default: the monoenergetic DRR of ``hu_to_mu``) or ``"poly"``:
    the polychromatic two-material DRR (:mod:`..drr.poly`) of the CT decomposed into soft tissue
    and bone densities (``material_table``, default the piecewise-linear mapping of
    :mod:`..physics.materials`), through a tube spectrum of ``kvp`` (keV peak), ``filtration_mm_al``
    (mm Al) in ``energy_bins`` bins, an energy-integrating detector, and optionally a scatter
    estimate (``scatter_to_primary``, ``scatter_sigma_fraction``) and a heel gain (``heel_gain``),
    all as in the simulator (:mod:`..sim.polychromatic`, :class:`..sim.xray.XRayStyle`). Poly
    needs a CT in HU (or a ready :class:`..volume.MaterialVolume`).
    """

    optimizer: str = "adam"  # gd, gdm, gddm, adam (the seed's), or lm (Levenberg-Marquardt, .gauss_newton)
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
    # init_keep when more than one view is registered (None: init_keep): the other views rank the search's
    # candidates, so fewer need to go on (the node's biplane first frame: 2, i.e. one reaches the finest level)
    init_keep_joint: int | None = None
    init_range_deg: float = 45.0
    init_range_mm: float = 60.0  # translation range sampled when init_center is off
    init_center: bool = True
    init_factor: int | None = None  # detector downsampling of the search (None: from init_size)
    # auto init_factor: the search image is at most this many pixels a side. 24, not 16: at 16 px the
    # refined candidates of the README example all fell into one biased basin (13 mm off, "ok"), 0/20 starts
    # at +-20 deg / +-20 mm; at 24 px 20/20 (docs/results.md, "A wrong minimum the gate called ok").
    init_size: int = 24
    init_seed: int = 0
    method: str = "siddon"
    drr_blur_sigma_px: float = 0.0  # detector PSF applied to the DRRs (full-resolution pixels; 0: none)
    min_similarity: float = 0.9  # quality gate on the final full-resolution ZNCC
    seed_success_zncc: float = 0.999  # the seed/DiffDRR "converged" criterion, reported beside mTRE
    lm_max_iterations: int = 15  # Levenberg-Marquardt steps per pyramid level (optimizer="lm"; the search stays Adam)
    # The finest pyramid level's optimiser (None: `optimizer`). "lm": Levenberg-Marquardt polishes what Adam found
    # at the coarser levels (Adam's wide basin where the start is far, LM's few steps where it is close).
    polish_optimizer: str | None = None
    # With polish_optimizer="lm": the polish first runs on both images smoothed by these extra Gaussian sigmas
    # (full-resolution px, coarse to fine; the DRR's blur adds in quadrature), then unsmoothed. A coarse level
    # cannot land inside the finest level's narrow LM basin: its point-sampled DRR against the area-averaged fixed
    # image is biased (1.6 mm from the truth on the renderer's own noise-free DRR; 0.0 mm when the fixed image is
    # point-sampled too), and on real frames it ends ~1-3 mm off, where GNCC at full resolution has false minima
    # (a barrier at ~0.9 mm). Smoothing at full sampling widens that basin without the sampling mismatch.
    polish_smoothing_px: tuple[float, ...] = (2.0,)
    # With polish_optimizer="lm": iteration limit of the levels above the finest (None: max_iterations). The
    # smoothed polish takes over from ~4 mm; Adam's last ~100 coarse steps only crawl within the coarse level's bias
    # (bench_first_frame: 30 instead of 50, 24/24 and 16/16 at twice the spread, worst 0.55 mm, p50 -15-20 %).
    polish_coarse_iterations: int | None = 30
    # Views of the search and the levels above the finest: "all", or "reference" (the registered frame alone;
    # the other views join at the finest level). A biplane's wide first registration at half the cost: the
    # reference frame alone finds the pose up to its depth, which the finest level's pair then resolves.
    coarse_views: str = "all"
    drr_model: str = "mono"  # "mono" or "poly" (see above)
    kvp: float = 80.0  # poly: tube peak voltage, keV
    filtration_mm_al: float = 2.5  # poly: tube filtration, mm aluminium
    energy_bins: int = 6  # poly: spectrum bins
    scatter_to_primary: float = 0.0  # poly: scatter estimate, scatter / primary (0: off)
    scatter_sigma_fraction: float = 0.15  # poly: scatter kernel sigma, fraction of the detector's larger side
    heel_gain: float = 0.0  # poly: peak-to-peak gain change down the detector rows (0: off)
    material_table: MaterialTable | None = None  # poly: HU -> densities (None: physics.DEFAULT_TABLE)

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
        if self.init_keep_joint is not None and self.init_keep_joint < 1:
            raise ValueError("init_keep_joint must be positive (or None)")
        if self.init_factor is not None and self.init_factor < 1:
            raise ValueError("init_factor must be a positive integer")
        if self.init_size < 1:
            raise ValueError("init_size must be a positive integer")
        get_similarity(self.similarity)
        if self.compare not in COMPARE_DOMAINS:
            raise ValueError(f"compare must be one of {COMPARE_DOMAINS}, got {self.compare!r}")
        for name in {self.optimizer, self.polish_optimizer} - {None}:
            if name == "lm":
                if self.similarity not in LM_SIMILARITIES:
                    raise ValueError(f"optimizer 'lm' needs a sum-of-squares similarity {LM_SIMILARITIES}, "
                                     f"got {self.similarity!r}")
            else:
                make_optimizer(name, [torch.zeros(1, requires_grad=True)], [torch.zeros(1, requires_grad=True)])
        if any(float(v) < 0 for v in self.polish_smoothing_px):
            raise ValueError(f"polish_smoothing_px must be >= 0, got {self.polish_smoothing_px}")
        if self.polish_coarse_iterations is not None and int(self.polish_coarse_iterations) < 1:
            raise ValueError("polish_coarse_iterations must be positive (or None)")
        if self.lm_max_iterations < 1:
            raise ValueError("lm_max_iterations must be positive")
        if self.coarse_views not in COARSE_VIEWS:
            raise ValueError(f"coarse_views must be one of {COARSE_VIEWS}, got {self.coarse_views!r}")
        if self.drr_model not in DRR_MODELS:
            raise ValueError(f"drr_model must be one of {DRR_MODELS}, got {self.drr_model!r}")
        if self.drr_model == "poly":
            self.poly_model()  # validates the physics parameters

    def poly_model(self, materials: tuple[str, ...] | None = None) -> PolyModel | None:
        """The polychromatic signal model of ``drr_model="poly"`` for ``materials`` (default: the
        material table's), or None for ``"mono"``."""
        if self.drr_model != "poly":
            return None
        if materials is None:
            materials = self.material_table.materials if self.material_table is not None else ("soft", "bone")
        spectrum = Spectrum(kvp=float(self.kvp), filtration_mm_al=float(self.filtration_mm_al),
                            bins=int(self.energy_bins))
        return PolyModel.from_spectrum(spectrum, materials, scatter_to_primary=float(self.scatter_to_primary),
                                       scatter_sigma_fraction=float(self.scatter_sigma_fraction),
                                       heel_gain=float(self.heel_gain))

    def iterations_at(self, level: int) -> int:
        """Iteration limit of pyramid level ``level`` (``polish_coarse_iterations`` caps the coarse levels
        before an LM polish)."""
        its = self.max_iterations
        n = int(its[level]) if isinstance(its, (tuple, list)) else int(its)
        coarse = level not in (-1, len(self.pyramid) - 1)
        if coarse and self.polish_optimizer == "lm" and self.polish_coarse_iterations is not None:
            n = min(n, int(self.polish_coarse_iterations))
        return n

    def for_views(self, n_views: int) -> RegistrationConfig:
        """The settings of a registration of ``n_views`` views (``init_keep_joint`` applied when more than one)."""
        if n_views > 1 and self.init_keep_joint is not None:
            return replace(self, init_keep=self.init_keep_joint)
        return self

    def keep_at(self, level: int) -> int:
        """How many candidates enter pyramid level ``level`` (default: ``init_keep`` halved per level)."""
        if self.level_keep is not None:
            return int(self.level_keep[level])
        return max(1, self.init_keep >> level)


COMPARE_DOMAINS = ("line_integral", "intensity")
COARSE_VIEWS = ("all", "reference")


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
