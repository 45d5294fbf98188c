"""Decoding DICOM pixel data, compressed or not, with an error that names the missing plugin.

pydicom decodes native (uncompressed) pixel data itself and compressed transfer syntaxes
through its pixel-data plugins: ``pylibjpeg`` with ``pylibjpeg-libjpeg`` (JPEG baseline /
extended / lossless), ``pylibjpeg-openjpeg`` (JPEG 2000), ``pyjpegls`` (JPEG-LS) and
``pylibjpeg-rle`` or pydicom's own decoder (RLE Lossless). Shared by the X-ray frame reader
and the CT loader (:mod:`diffdrr_ros.core.volume.io`).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Shaped

__all__ = ["PixelDataError", "decode_pixels", "plugin_hint"]

# What to install for each family of compressed transfer syntaxes (by UID prefix).
_PLUGIN_HINTS = (
    ("1.2.840.10008.1.2.4.8", "pyjpegls (JPEG-LS)"),
    ("1.2.840.10008.1.2.4.9", "pylibjpeg and pylibjpeg-openjpeg (JPEG 2000)"),
    ("1.2.840.10008.1.2.4.20", "pylibjpeg and pylibjpeg-openjpeg (HTJ2K)"),
    ("1.2.840.10008.1.2.4.", "pylibjpeg and pylibjpeg-libjpeg (JPEG)"),
    ("1.2.840.10008.1.2.5", "pylibjpeg-rle (RLE)"),
)


class PixelDataError(ValueError):
    """The pixel data of a DICOM file is absent or cannot be decoded (no plugin, corrupt stream)."""


def plugin_hint(transfer_syntax_uid: str) -> str:
    """The PyPI packages that decode ``transfer_syntax_uid`` through pydicom (a hint for error messages)."""
    for prefix, hint in _PLUGIN_HINTS:
        if str(transfer_syntax_uid).startswith(prefix):
            return hint
    return "a pydicom pixel-data plugin for this transfer syntax"


def decode_pixels(ds, *, index: int | None = None, label: str = "DICOM file") -> Shaped[np.ndarray, "..."]:
    """The stored pixel values of ``ds`` (no Modality LUT applied): ``(rows, cols)`` for one frame.

    Args:
        ds: a :class:`pydicom.Dataset` read with its pixel data.
        index: the frame of a multi-frame file (0-based); ``None`` decodes all frames,
            ``(frames, rows, cols)`` for a multi-frame file.
        label: names the file in error messages.

    Raises:
        PixelDataError: no pixel data, a transfer syntax without an installed decoder (the
            message names the transfer syntax and the package to install), or a decoding failure.
    """
    from pydicom.pixels import get_decoder, pixel_array

    if "PixelData" not in ds:
        raise PixelDataError(f"{label}: no pixel data (PixelData (7FE0,0010) missing)")
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None)
    if ts is None:
        raise PixelDataError(f"{label}: no TransferSyntaxUID (0002,0010) in the file meta information")
    name = f"{ts.name} ({ts})"
    if ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError as exc:
            raise PixelDataError(f"{label}: pixel data in {name}: pydicom has no decoder for it") from exc
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies)
            raise PixelDataError(
                f"{label}: pixel data in {name} cannot be decoded: no pydicom plugin for it is installed; "
                f"install {plugin_hint(ts)} (pydicom: {missing})"
            )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if index is not None and not 0 <= index < frames:
        raise PixelDataError(f"{label}: frame {index} requested, the file has {frames} frame(s)")
    try:
        return np.asarray(pixel_array(ds, index=index if frames > 1 else None))
    except Exception as exc:
        raise PixelDataError(f"{label}: cannot decode pixel data ({name}): {type(exc).__name__}: {exc}") from exc
