"""Per-material density volumes of one CT on one grid: the polychromatic DRR's volume.

:class:`MaterialVolume` holds ``C`` density volumes (g/cm^3), one per material (e.g. soft
tissue and cortical bone from :mod:`diffdrr_ros.core.physics.materials`), sharing the
voxel-index -> CT (LPS, mm) affine of :class:`.volume.Volume`. It offers the grid operations
the registration uses on a :class:`Volume` (:meth:`box_average`, :meth:`resample`,
:meth:`downsample`, :meth:`to`), applied to every channel alike, and :attr:`channels`, each
material as a :class:`Volume` whose data is a view of one channel (stable objects, so the
renderer's per-tensor kernel caches hit on every call).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from jaxtyping import Float
from torch import Tensor

from ..physics.attenuation import material_key
from ..physics.materials import DEFAULT_TABLE, MaterialTable
from .volume import Volume

__all__ = ["MaterialVolume"]

_CACHE: weakref.WeakKeyDictionary[Volume, dict[tuple, MaterialVolume]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class MaterialVolume:
    """``C`` material density volumes (g/cm^3) on one grid.

    Attributes:
        data: ``(C, I, J, K)`` densities, g/cm^3, channel ``c`` the material ``materials[c]``;
            index order as :attr:`Volume.data`.
        affine: voxel index ``(i, j, k, 1)`` -> CT (LPS mm), float64 on the CPU (as :class:`Volume`).
        materials: the materials' names (keys of :data:`diffdrr_ros.core.physics.MU_RHO_TABLE`).
    """

    data: Float[Tensor, "C I J K"]
    affine: Float[Tensor, "4 4"]
    materials: tuple[str, ...] = ("soft", "bone")

    def __post_init__(self) -> None:
        data = torch.as_tensor(self.data)
        if data.ndim != 4:
            raise ValueError(f"MaterialVolume data must be 4-D (C, I, J, K), got shape {tuple(data.shape)}")
        if not data.is_floating_point():
            data = data.to(torch.float32)
        materials = tuple(material_key(m) for m in self.materials)
        if len(materials) != data.shape[0]:
            raise ValueError(f"MaterialVolume: {data.shape[0]} channels but {len(materials)} materials")
        grid = Volume(data[0], self.affine, "raw")  # validates the affine
        object.__setattr__(self, "data", data.contiguous())
        object.__setattr__(self, "affine", grid.affine)
        object.__setattr__(self, "materials", materials)

    # ---- constructors ------------------------------------------------------------------------

    @classmethod
    def from_hu(cls, volume: Volume, table: MaterialTable | None = None, *, cache: bool = True) -> MaterialVolume:
        """Decompose a ``kind="hu"`` CT with ``table`` (default: :data:`~diffdrr_ros.core.physics.DEFAULT_TABLE`,
        soft tissue and cortical bone). Cached per volume object and table (weakly) unless ``cache=False``;
        ``ValueError`` for a volume that is not in HU."""
        if volume.kind != "hu":
            raise ValueError(f"a material volume needs a CT in HU (kind 'hu'), this one is {volume.kind!r}")
        table = table or DEFAULT_TABLE
        key = (table.hu, tuple(table.densities.items()))  # by value: equal tables share the decomposition
        if cache and (hit := _CACHE.get(volume, {}).get(key)) is not None:
            return hit
        out = cls(table(volume.data), volume.affine, table.materials)
        if cache:
            _CACHE.setdefault(volume, {})[key] = out
        return out

    @classmethod
    def from_volumes(cls, volumes: Sequence[Volume], materials: Sequence[str]) -> MaterialVolume:
        """Stack density volumes (g/cm^3) that share one grid (shape and affine)."""
        if not volumes:
            raise ValueError("from_volumes needs at least one volume")
        first = volumes[0]
        for v in volumes[1:]:
            if v.shape != first.shape or not torch.allclose(v.affine, first.affine):
                raise ValueError("from_volumes: the volumes must share one grid (shape and affine)")
        return cls(torch.stack([v.data for v in volumes]), first.affine, tuple(materials))

    # ---- geometry (as Volume's) ----------------------------------------------------------------

    @cached_property
    def channels(self) -> tuple[Volume, ...]:
        """Each material's densities as a ``kind="raw"`` :class:`Volume` (a view of :attr:`data`)."""
        return tuple(Volume(self.data[c], self.affine, "raw") for c in range(self.data.shape[0]))

    @property
    def kind(self) -> str:
        """``"density"`` (g/cm^3): not a :data:`.volume.KINDS` value, this is no single-channel volume."""
        return "density"

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid's ``(I, J, K)``."""
        return self.channels[0].shape

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def spacing(self) -> Float[Tensor, "3"]:
        """Voxel size (mm) along i, j, k (float64, CPU)."""
        return self.channels[0].spacing

    @property
    def center(self) -> Float[Tensor, "3"]:
        """LPS position (mm) of the grid's geometric centre."""
        return self.channels[0].center

    @property
    def extent_mm(self) -> Float[Tensor, "3"]:
        """Physical size (mm) of the grid, voxel edge to voxel edge."""
        return self.channels[0].extent_mm

    def __repr__(self) -> str:
        return f"MaterialVolume(materials={self.materials}, grid={self.channels[0]!r})"

    # ---- conversions and grid operations (every channel alike) ----------------------------------

    def _stacked(self, parts: Sequence[Volume]) -> MaterialVolume:
        return MaterialVolume(torch.stack([p.data for p in parts]), parts[0].affine, self.materials)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MaterialVolume:
        """Data moved / cast; the affine stays float64 on the CPU."""
        return MaterialVolume(self.data.to(device=device, dtype=dtype), self.affine, self.materials)

    def box_average(self, factors: Sequence[int]) -> MaterialVolume:
        """:meth:`Volume.box_average` of every channel (mass-conserving block averages)."""
        if all(max(1, int(v)) == 1 for v in factors):
            return self
        return self._stacked([c.box_average(factors) for c in self.channels])

    def resample(self, spacing_mm: float | Sequence[float]) -> MaterialVolume:
        """:meth:`Volume.resample` of every channel."""
        return self._stacked([c.resample(spacing_mm) for c in self.channels])

    def downsample(self, factor: int) -> MaterialVolume:
        """:meth:`Volume.downsample` of every channel."""
        return self._stacked([c.downsample(factor) for c in self.channels])

    def crop(self, lo_ijk: Sequence[int], hi_ijk: Sequence[int]) -> MaterialVolume:
        """:meth:`Volume.crop` of every channel."""
        return self._stacked([c.crop(lo_ijk, hi_ijk) for c in self.channels])
