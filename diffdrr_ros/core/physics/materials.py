"""CT numbers to material densities: HU -> soft tissue and cortical bone (g/cm^3), piecewise linear.

The default mapping (:data:`DEFAULT_TABLE`, :func:`decompose_hu`) is the usual two-material
"bi-linear" water/bone decomposition of beam-hardening correction and CT-based simulation,
here without hard thresholds so that it is continuous in HU:

============================  ===================================  ===================
HU                            soft tissue (g/cm^3)                 bone (g/cm^3)
============================  ===================================  ===================
``<= -1000`` (air)            0                                    0
``-1000 .. 100``              ``1 + HU / 1000`` (0 -> 1.1)         0
``100 .. 1600``               ``1.1 (1 - f)``                      ``1.92 f``
``>= 1600``                   0                                    ``1.92 (1000 + HU) / 2600``
============================  ===================================  ===================

with ``f = (HU - 100) / 1500``. Below 100 HU the HU definition is taken literally for a
water-like medium (density proportional to ``1 + HU / 1000``; water 0 HU -> 1.0). 1600 HU is
pure ICRU-44 cortical bone (1.92 g/cm^3): with the NIST tables of :mod:`.attenuation`,
``1000 (1.92 mu_bone / mu_water - 1)`` is 1594 HU at 70 keV, the effective energy of a 120 kVp
CT beam, so the mapping is consistent with the HU scale (linear attenuation linear in HU on
every piece at that energy). Denser voxels (teeth, metal) are bone of proportionally higher
density.

A user's own mapping is a :class:`MaterialTable`: HU nodes and, per material (a name of
:data:`.attenuation.MU_RHO_TABLE`), the densities at those nodes, linear in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from jaxtyping import Float
from torch import Tensor

from .attenuation import material_key

__all__ = ["BONE_DENSITY", "BONE_HU", "DEFAULT_TABLE", "SOFT_END_HU", "MaterialTable", "decompose_hu"]

#: Density (g/cm^3) of ICRU-44 cortical bone (NIST SRD 126, Table 2).
BONE_DENSITY: float = 1.92
#: HU where pure (water-like) soft tissue ends and the soft-tissue/bone mix begins.
SOFT_END_HU: float = 100.0
#: HU of pure cortical bone (1.92 g/cm^3); see the module docstring for why 1600.
BONE_HU: float = 1600.0


@dataclass(frozen=True)
class MaterialTable:
    """A piecewise-linear HU -> density (g/cm^3) mapping per material.

    ``hu``: increasing HU nodes (at least 2); ``densities``: per material name (a key or alias of
    :data:`.attenuation.MU_RHO_TABLE`, e.g. ``"soft"``, ``"bone"``) the densities at the nodes.
    Linear between nodes; below the first node the first value; above the last node the last
    segment's slope continues (clamped at 0), so dense bone keeps growing with HU.
    """

    hu: tuple[float, ...]
    densities: Mapping[str, tuple[float, ...]]

    def __post_init__(self) -> None:
        hu = tuple(float(v) for v in self.hu)
        if len(hu) < 2 or any(b <= a for a, b in pairwise(hu)):
            raise ValueError(f"MaterialTable: need >= 2 strictly increasing HU nodes, got {hu}")
        dens: dict[str, tuple[float, ...]] = {}
        for name, values in self.densities.items():
            vals = tuple(float(v) for v in values)
            if len(vals) != len(hu):
                raise ValueError(f"MaterialTable: {name!r} has {len(vals)} densities for {len(hu)} HU nodes")
            if min(vals) < 0:
                raise ValueError(f"MaterialTable: densities must be >= 0, {name!r} has {min(vals)}")
            key = material_key(name)
            if key in dens:
                raise ValueError(f"MaterialTable: material {key!r} given twice")
            dens[key] = vals
        if not dens:
            raise ValueError("MaterialTable: no materials")
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "densities", dens)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float]], materials: Sequence[str]) -> MaterialTable:
        """From table rows ``(HU, density_1, ..., density_C)`` (e.g. a user's CSV) and the materials' names."""
        cols = list(zip(*rows, strict=True))
        if len(cols) != len(materials) + 1:
            raise ValueError(f"rows have {len(cols)} columns, expected HU + {len(materials)} materials")
        return cls(tuple(cols[0]), {m: tuple(c) for m, c in zip(materials, cols[1:], strict=True)})

    @property
    def materials(self) -> tuple[str, ...]:
        """The materials' :data:`.attenuation.MU_RHO_TABLE` keys, in channel order."""
        return tuple(self.densities)

    def __call__(self, hu: Float[Tensor, "*shape"]) -> Float[Tensor, "C ..."]:
        """Densities (g/cm^3) of voxels in HU, one channel per material; floating dtype and device kept
        (integers -> float32)."""
        hu = torch.as_tensor(hu)
        if not hu.is_floating_point():
            hu = hu.to(torch.float32)
        nodes = torch.tensor(self.hu, dtype=hu.dtype, device=hu.device)
        x = hu.clamp_min(nodes[0])
        i = torch.searchsorted(nodes, x.contiguous().reshape(-1), right=True).clamp(1, len(self.hu) - 1)
        i = i.reshape(hu.shape)
        x0, x1 = nodes[i - 1], nodes[i]
        t = (x - x0) / (x1 - x0)  # > 1 above the last node: the last segment extrapolated
        out = []
        for vals in self.densities.values():
            v = torch.tensor(vals, dtype=hu.dtype, device=hu.device)
            out.append((v[i - 1] + t * (v[i] - v[i - 1])).clamp_min(0.0))
        return torch.stack(out)


#: The default two-material mapping of the module docstring (soft tissue, cortical bone).
DEFAULT_TABLE = MaterialTable(
    (-1000.0, SOFT_END_HU, BONE_HU, BONE_HU + 1000.0),
    {"soft": (0.0, 1.0 + SOFT_END_HU / 1000.0, 0.0, 0.0),
     "bone": (0.0, 0.0, BONE_DENSITY, BONE_DENSITY * (2000.0 + BONE_HU) / (1000.0 + BONE_HU))},
)


def decompose_hu(
    hu: Float[Tensor, "*shape"], *, soft_end_hu: float = SOFT_END_HU, bone_hu: float = BONE_HU
) -> tuple[Float[Tensor, "*shape"], Float[Tensor, "*shape"]]:
    """Soft-tissue and cortical-bone densities (g/cm^3) of CT voxels in HU.

    The piecewise-linear water/bone mapping of the module docstring (continuous in HU): air 0,
    water-like ``1 + HU / 1000`` up to ``soft_end_hu``, then soft tissue is replaced linearly by
    1.92 g/cm^3 bone up to ``bone_hu``, above which bone density grows as ``1000 + HU``. Pure
    function: shape, floating dtype and device kept (integers -> float32).
    """
    if not -1000.0 < soft_end_hu < bone_hu:
        raise ValueError(f"need -1000 < soft_end_hu < bone_hu, got {soft_end_hu}, {bone_hu}")
    hu = torch.as_tensor(hu)
    if not hu.is_floating_point():
        hu = hu.to(torch.float32)
    soft_end_density = 1.0 + soft_end_hu / 1000.0
    f = ((hu - soft_end_hu) / (bone_hu - soft_end_hu)).clamp(0.0, 1.0)
    soft = torch.where(hu <= soft_end_hu, (1.0 + hu / 1000.0).clamp_min(0.0), soft_end_density * (1.0 - f))
    bone = BONE_DENSITY * torch.where(hu <= bone_hu, f, (1000.0 + hu) / (1000.0 + bone_hu))
    return soft, bone
