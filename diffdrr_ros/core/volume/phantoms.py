"""Procedural, deterministic test volumes (no files needed).

All phantoms live on axis-aligned grids centred at the origin of the CT frame (DICOM LPS,
mm: x = patient left, y = posterior, z = superior; ``data[i, j, k]`` is the voxel centred at
``(x_i, y_j, z_k)`` with ``x_i = (i - (n - 1) / 2) * spacing``).

* :func:`head_phantom` - a head in Hounsfield units (``kind="hu"``), about 176 x 216 x 200 mm
  (left-right x anterior-posterior x superior-inferior): scalp/soft tissue (0 HU), a skull
  shell with dense outer/inner tables (1500 HU) around diploe (1000 HU), a skull base with a
  foramen magnum, brain (40 HU) with off-centre lateral ventricles (8 HU), orbits (fat,
  -100 HU), frontal/maxillary sinuses and nasal cavity (air), hard palate, a mandible,
  upper/lower teeth (2200 HU) and cervical vertebrae.  Deliberately asymmetric features make
  every pose identifiable, including 180 degree flips and mirror images: a calcification in the
  left hemisphere, a burr hole through the right frontal-parietal skull, unequal ventricles and
  maxillary sinuses, a metal filling (3000 HU) in a left lower molar and a missing right
  upper premolar, plus a radiopaque shunt catheter (1200 HU) from the burr hole into the right
  lateral ventricle.  Face = anterior = -y, vertex = +z.
* :data:`PHANTOMS` / :func:`make_phantom` - named head phantoms at several resolutions.
* :func:`sphere_phantom`, :func:`box_phantom` - analytic ``kind="raw"`` phantoms whose voxels
  are exactly ``value`` where the voxel **centre** is inside the (closed) sphere/box and exactly 0
  elsewhere, for comparison with analytic chord lengths.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from jaxtyping import Float
from torch import Tensor

from .volume import Volume

__all__ = [
    "HEAD_FOV_MM",
    "PHANTOMS",
    "box_phantom",
    "head_phantom",
    "make_phantom",
    "sphere_phantom",
]

#: Default cubic field of view (mm) of :func:`head_phantom`: spacing = HEAD_FOV_MM / size.
HEAD_FOV_MM: float = 240.0

AIR_HU = -1000.0
SOFT_HU = 0.0
BRAIN_HU = 40.0
CSF_HU = 8.0
FAT_HU = -100.0
DIPLOE_HU = 1000.0
TABLE_HU = 1500.0
BASE_HU = 1200.0
MANDIBLE_HU = 1300.0
PALATE_HU = 900.0
VERTEBRA_HU = 1000.0
TOOTH_HU = 2200.0
FILLING_HU = 3000.0
CALCIFICATION_HU = 1200.0
CATHETER_HU = 1200.0


def _as3f(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except TypeError:
        return (float(value),) * 3  # type: ignore[arg-type]
    if len(vals) != 3:
        raise ValueError(f"{name} must be a scalar or have 3 elements, got {len(vals)}")
    return vals  # type: ignore[return-value]


def _as3i(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    try:
        vals = tuple(int(v) for v in value)  # type: ignore[union-attr]
    except TypeError:
        vals = (int(value),) * 3  # type: ignore[arg-type]
    if len(vals) != 3 or min(vals) < 1:
        raise ValueError(f"{name} must be a positive int or 3 positive ints, got {value!r}")
    return vals  # type: ignore[return-value]


class _Grid:
    """Centred axis-aligned grid with 1-D coordinate vectors and bounding-box painting."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape = shape
        self.spacing = spacing
        self.axes = [
            (torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)
        ]
        self.data = torch.empty(shape, dtype=torch.float32)

    def _range(self, ax: int, lo: float, hi: float) -> slice:
        n, s = self.shape[ax], self.spacing[ax]
        a = max(0, math.floor(lo / s + (n - 1) / 2.0))
        b = min(n, math.ceil(hi / s + (n - 1) / 2.0) + 1)
        return slice(a, max(a, b))

    def region(self, lo: Sequence[float], hi: Sequence[float]):
        """Index slices covering the box [lo, hi] (mm) and broadcastable float32 coordinates."""
        sl = tuple(self._range(ax, lo[ax], hi[ax]) for ax in range(3))
        x = self.axes[0][sl[0]].to(torch.float32)[:, None, None]
        y = self.axes[1][sl[1]].to(torch.float32)[None, :, None]
        z = self.axes[2][sl[2]].to(torch.float32)[None, None, :]
        return sl, x, y, z

    def paint(self, lo, hi, inside: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor], value) -> None:
        """Set ``value`` where ``inside(x, y, z, current)`` holds, within the box [lo, hi].

        ``value`` may be a float or a callable ``(x, y, z, current) -> tensor``.
        """
        sl, x, y, z = self.region(lo, hi)
        if any(s.start >= s.stop for s in sl):
            return
        cur = self.data[sl]
        mask = inside(x, y, z, cur).expand(cur.shape)
        if callable(value):
            cur.copy_(torch.where(mask, value(x, y, z, cur).to(cur.dtype), cur))
        else:
            cur.masked_fill_(mask, float(value))


def _ellipsoid(c, r):
    """Predicate: inside the axis-aligned ellipsoid with centre ``c`` and semi-axes ``r`` (mm)."""

    def inside(x, y, z, cur=None):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0

    return inside


def _ellipsoid_box(c, r, pad: float = 0.0):
    return [c[a] - r[a] - pad for a in range(3)], [c[a] + r[a] + pad for a in range(3)]


def _paint_ellipsoid(g: _Grid, c, r, value) -> None:
    lo, hi = _ellipsoid_box(c, r)
    g.paint(lo, hi, _ellipsoid(c, r), value)


def head_phantom(
    size: int = 96,
    spacing: float | None = None,
    *,
    noise_std_hu: float = 0.0,
    seed: int = 0,
) -> Volume:
    """A procedural head phantom in HU on a ``size``^3 grid centred at the LPS origin.

    ``spacing`` defaults to ``HEAD_FOV_MM / size`` (240 mm field of view, so the whole head plus
    an air margin fits); with a smaller explicit ``spacing * size`` the head is simply cut off.
    The result is deterministic; ``noise_std_hu > 0`` adds Gaussian noise from a generator seeded
    with ``seed`` (still deterministic).  See the module docstring for the anatomy and the
    asymmetric landmarks.
    """
    if int(size) != size or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size}")
    size = int(size)
    sp = HEAD_FOV_MM / size if spacing is None else float(spacing)
    if not sp > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    g = _Grid((size, size, size), (sp, sp, sp))
    g.data.fill_(AIR_HU)
    big = 1e4

    # -- soft tissue envelope: cranium, face and neck ---------------------------------------
    cranium_c, cranium_r = (0.0, 2.0, 15.0), (88.0, 108.0, 85.0)
    _paint_ellipsoid(g, cranium_c, cranium_r, SOFT_HU)
    _paint_ellipsoid(g, (0.0, -22.0, -42.0), (72.0, 75.0, 60.0), SOFT_HU)
    g.paint(
        (-50, -36, -101),
        (50, 72, -20),
        lambda x, y, z, c: ((x / 48.0) ** 2 + ((y - 18.0) / 52.0) ** 2 <= 1.0) & (z >= -100.0),
        SOFT_HU,
    )

    # -- skull: shell between outer and inner ellipsoids, cut below a sloping skull base ----
    def z_base(y):
        return -15.0 - 0.2 * y  # anterior (-y) fossa higher than posterior

    sc = cranium_c
    outer = (83.0, 103.0, 80.0)
    inner = (76.0, 96.0, 73.0)
    outer_t = tuple(v - 2.0 for v in outer)
    inner_t = tuple(v + 2.0 for v in inner)

    def rho(x, y, z, r):
        return ((x - sc[0]) / r[0]) ** 2 + ((y - sc[1]) / r[1]) ** 2 + ((z - sc[2]) / r[2]) ** 2

    lo_o, hi_o = _ellipsoid_box(sc, outer)

    # brain inside the inner table, above the skull base
    g.paint(
        lo_o,
        hi_o,
        lambda x, y, z, c: (rho(x, y, z, inner) <= 1.0) & (z >= z_base(y) + 3.5),
        BRAIN_HU,
    )
    # unequal, off-centre lateral ventricles (left = +x is larger)
    _paint_ellipsoid(g, (13.0, 6.0, 28.0), (7.0, 26.0, 11.0), CSF_HU)
    _paint_ellipsoid(g, (-9.0, 10.0, 24.0), (4.5, 19.0, 8.0), CSF_HU)

    def skull_value(x, y, z, c):
        table = (rho(x, y, z, outer_t) > 1.0) | (rho(x, y, z, inner_t) <= 1.0)
        return torch.where(table, torch.tensor(TABLE_HU), torch.tensor(DIPLOE_HU))

    g.paint(
        lo_o,
        hi_o,
        lambda x, y, z, c: (rho(x, y, z, outer) <= 1.0) & (rho(x, y, z, inner) > 1.0) & (z >= z_base(y) - 8.0),
        skull_value,
    )
    # skull base plate with the foramen magnum (off the mid-line a little, posteriorly)
    g.paint(
        lo_o,
        hi_o,
        lambda x, y, z, c: (
            (rho(x, y, z, inner) <= 1.0) & ((z - z_base(y)).abs() <= 3.5) & ((x - 1.0) ** 2 + (y - 32.0) ** 2 > 16.0**2)
        ),
        BASE_HU,
    )

    # burr hole through the right (-x) frontal-parietal skull, filled with scalp tissue
    u = torch.tensor([-45.0, -30.0, 75.0], dtype=torch.float64)
    u = (u / u.norm()).tolist()
    hole_r = 7.0

    def in_hole(x, y, z, c):
        dx, dy, dz = x - sc[0], y - sc[1], z - sc[2]
        along = dx * u[0] + dy * u[1] + dz * u[2]
        perp2 = dx**2 + dy**2 + dz**2 - along**2
        return (along > 0) & (perp2 <= hole_r**2) & (c >= 500.0)

    g.paint((-big, -big, -big), (0.0, big, big), in_hole, SOFT_HU)

    # ventricular shunt catheter: from the burr hole (outer skull surface) to the right ventricle
    t_out = 1.0 / math.sqrt(sum((u[a] / outer[a]) ** 2 for a in range(3)))
    p0 = [sc[a] + (t_out + 2.0) * u[a] for a in range(3)]
    p1 = [-9.0, 10.0, 24.0]
    seg = [p1[a] - p0[a] for a in range(3)]
    seg2 = sum(v * v for v in seg)
    cath_r = 2.5

    def in_catheter(x, y, z, c):
        dx, dy, dz = x - p0[0], y - p0[1], z - p0[2]
        t = ((dx * seg[0] + dy * seg[1] + dz * seg[2]) / seg2).clamp(0.0, 1.0)
        return (dx - t * seg[0]) ** 2 + (dy - t * seg[1]) ** 2 + (dz - t * seg[2]) ** 2 <= cath_r**2

    g.paint(
        [min(p0[a], p1[a]) - cath_r for a in range(3)],
        [max(p0[a], p1[a]) + cath_r for a in range(3)],
        in_catheter,
        CATHETER_HU,
    )

    # calcification in the left (+x) posterior hemisphere, a smaller one right-anterior-inferior
    _paint_ellipsoid(g, (32.0, 28.0, 45.0), (4.5, 4.5, 4.5), CALCIFICATION_HU)
    _paint_ellipsoid(g, (-24.0, -30.0, 12.0), (2.5, 2.5, 2.5), CALCIFICATION_HU)

    # -- face: orbits, sinuses, nasal cavity ------------------------------------------------
    _paint_ellipsoid(g, (32.0, -84.0, 2.0), (15.0, 14.0, 13.0), FAT_HU)
    _paint_ellipsoid(g, (-32.0, -84.0, 2.0), (15.0, 14.0, 13.0), FAT_HU)
    _paint_ellipsoid(g, (6.0, -93.0, 26.0), (17.0, 6.0, 10.0), AIR_HU)  # frontal sinus, off-centre
    _paint_ellipsoid(g, (0.0, -76.0, -22.0), (7.0, 22.0, 17.0), AIR_HU)  # nasal cavity
    _paint_ellipsoid(g, (25.0, -58.0, -28.0), (14.0, 16.0, 15.0), AIR_HU)  # left maxillary sinus (larger)
    _paint_ellipsoid(g, (-24.0, -56.0, -27.0), (10.0, 13.0, 12.0), AIR_HU)  # right maxillary sinus

    # hard palate
    g.paint(
        (-31, -65, -51),
        (31, -3, -46),
        lambda x, y, z, c: ((x / 30.0) ** 2 + ((y + 34.0) / 30.0) ** 2 <= 1.0) & (z >= -50.0) & (z <= -47.0),
        PALATE_HU,
    )

    # -- mandible: horseshoe body open posteriorly + two rami -----------------------------
    def horseshoe(x, y, z, c):
        e_out = (x / 44.0) ** 2 + ((y + 16.0) / 52.0) ** 2
        e_in = (x / 36.0) ** 2 + ((y + 16.0) / 44.0) ** 2
        return (e_out <= 1.0) & (e_in > 1.0) & (y <= -6.0) & (z >= -84.0) & (z <= -72.0)

    g.paint((-45, -70, -85), (45, -5, -71), horseshoe, MANDIBLE_HU)
    for sx in (1.0, -1.0):
        g.paint(
            (sx * 44 - 6, -16, -84),
            (sx * 44 + 6, 4, -40),
            lambda x, y, z, c, sx=sx: (
                ((x - sx * 42.0).abs() <= 4.0) & (y >= -14.0) & (y <= 2.0) & (z >= -84.0) & (z <= -42.0)
            ),
            MANDIBLE_HU,
        )

    # -- teeth: spheres on an arc; missing right upper premolar; filling in a left lower molar
    n_teeth = 14
    for row_z, arc in ((-67.0, (40.0, 48.0)), (-57.0, (41.0, 50.0))):
        for t in range(n_teeth):
            ang = math.pi * (0.08 + 0.84 * t / (n_teeth - 1))  # 0 -> +x (left) ... pi -> -x (right)
            tx = arc[0] * math.cos(ang)
            ty = -16.0 - arc[1] * math.sin(ang)
            upper = row_z > -60.0
            if upper and t == 10:  # right premolar missing
                continue
            _paint_ellipsoid(g, (tx, ty, row_z), (4.2, 4.2, 4.8), TOOTH_HU)
            if (not upper) and t == 1:  # left lower molar filling (metal)
                _paint_ellipsoid(g, (tx, ty, row_z + 1.5), (2.8, 2.8, 2.5), FILLING_HU)

    # -- cervical vertebrae (bodies with discs) ---------------------------------------------
    for z0 in (-100.0, -86.0, -72.0, -58.0, -44.0):
        g.paint(
            (-12, 14, z0),
            (12, 40, z0 + 11),
            lambda x, y, z, c, z0=z0: (x**2 + (y - 26.0) ** 2 <= 11.0**2) & (z >= z0) & (z <= z0 + 10.0),
            VERTEBRA_HU,
        )

    data = g.data
    if noise_std_hu > 0:
        gen = torch.Generator().manual_seed(int(seed))
        data = data + noise_std_hu * torch.randn(data.shape, generator=gen, dtype=torch.float32)
    return Volume.from_array(data, (sp, sp, sp), kind="hu")


#: Named head phantoms (zero-argument factories), from fastest to most detailed.
PHANTOMS: dict[str, Callable[[], Volume]] = {
    "head_tiny": partial(head_phantom, 32),  # 7.5 mm voxels, for very fast tests
    "head_small": partial(head_phantom, 48),  # 5 mm
    "head": partial(head_phantom, 96),  # 2.5 mm
    "head_large": partial(head_phantom, 192),  # 1.25 mm
}


def make_phantom(name: str) -> Volume:
    """Build the named phantom from :data:`PHANTOMS` (a fresh Volume each call)."""
    try:
        factory = PHANTOMS[name]
    except KeyError:
        raise ValueError(f"unknown phantom {name!r}; available: {sorted(PHANTOMS)}") from None
    return factory()


def _centred_coords(shape: tuple[int, int, int], spacing: tuple[float, float, float]):
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def sphere_phantom(
    radius_mm: float,
    center_mm: Sequence[float] = (0.0, 0.0, 0.0),
    value: float = 1.0,
    shape: int | Sequence[int] = 32,
    spacing: float | Sequence[float] = 1.0,
    *,
    dtype: torch.dtype = torch.float32,
) -> Volume:
    """Sphere on a grid centred at the LPS origin (``kind="raw"``).

    A voxel is exactly ``value`` iff its centre ``p`` satisfies ``|p - center_mm| <= radius_mm``
    (tested in float64), else exactly 0.
    """
    shp, sp = _as3i(shape, "shape"), _as3f(spacing, "spacing")
    c = _as3f(center_mm, "center_mm")
    x, y, z = _centred_coords(shp, sp)
    inside = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= float(radius_mm) ** 2
    data: Float[Tensor, "I J K"] = torch.where(inside, float(value), 0.0).to(dtype)
    return Volume.from_array(data, sp, kind="raw")


def box_phantom(
    lo_mm: Sequence[float],
    hi_mm: Sequence[float],
    value: float = 1.0,
    shape: int | Sequence[int] = 32,
    spacing: float | Sequence[float] = 1.0,
    *,
    dtype: torch.dtype = torch.float32,
) -> Volume:
    """Axis-aligned box on a grid centred at the LPS origin (``kind="raw"``).

    A voxel is exactly ``value`` iff its centre lies in the closed box ``lo_mm <= p <= hi_mm``
    (per axis, tested in float64), else exactly 0.  Choose ``lo``/``hi`` on voxel edges
    (half-way between centres) if you want the voxelised box to coincide with the analytic one.
    """
    shp, sp = _as3i(shape, "shape"), _as3f(spacing, "spacing")
    lo, hi = _as3f(lo_mm, "lo_mm"), _as3f(hi_mm, "hi_mm")
    x, y, z = _centred_coords(shp, sp)
    inside = (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])
    data: Float[Tensor, "I J K"] = torch.where(inside, float(value), 0.0).to(dtype)
    return Volume.from_array(data, sp, kind="raw")
