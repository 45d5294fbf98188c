"""One way to open "a CT": a built-in phantom by name or a file / DICOM directory.

The node (``ct_path``), the command line (``--ct`` / ``--phantom``) and the studies all take
a CT this way, so ``phantom:head`` means the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .io import load_volume
from .phantoms import PHANTOMS, make_phantom
from .volume import Volume

PHANTOM_PREFIX = "phantom:"


def ct_source(path: str | Path | None, phantom: str | None = None) -> str:
    """The :func:`open_ct` spec of a ``--ct PATH`` / ``--phantom NAME`` pair (default: the head phantom)."""
    return str(path) if path is not None else f"{PHANTOM_PREFIX}{phantom or 'head'}"


def open_ct(
    source: str | Path,
    *,
    spacing_mm: float | Sequence[float] | None = None,
    downsample: int = 1,
    series_uid: str | None = None,
    allow_gantry_tilt: bool = False,
) -> Volume:
    """``"phantom:<name>"`` (see :data:`.phantoms.PHANTOMS`) or a DICOM directory, NIfTI or ``.npy`` path.

    Args:
        source: the phantom spec or the path.
        spacing_mm: voxel spacing of a ``.npy`` file (scalar or 3 values); DICOM and NIfTI
            carry their own (a given spacing is ignored with a warning).
        downsample: integer coarsening (:meth:`.Volume.downsample`); 1 keeps the grid.
        series_uid: the DICOM series to load from a directory holding several (empty or None:
            the only one).
        allow_gantry_tilt: load a series acquired with a tilted gantry (sheared slices; see
            :func:`.io.load_dicom_series`) instead of refusing it.

    Raises:
        VolumeLoadError: unreadable file (a ``ValueError``); ``ValueError``: unknown phantom.
    """
    text = str(source)
    if text.startswith(PHANTOM_PREFIX):
        vol = make_phantom(text[len(PHANTOM_PREFIX):])
    else:
        vol = load_volume(text, spacing=tuple(spacing_mm) if isinstance(spacing_mm, Sequence) else spacing_mm,
                          series_uid=series_uid or None, allow_gantry_tilt=allow_gantry_tilt)
    return vol.downsample(downsample) if downsample > 1 else vol


__all__ = ["PHANTOMS", "PHANTOM_PREFIX", "ct_source", "open_ct"]
