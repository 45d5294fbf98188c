"""X-ray frame files: DICOM projection geometry, frames read in the right domain, frames written with sidecars.

* :mod:`.dicom_xray` - XA / RF / DX header tags -> :class:`~..geometry.Detector`, :class:`~..geometry.CArmJoints`;
* :mod:`.dicom_pixels` - pixel data decoding (compressed transfer syntaxes through pydicom's plugins);
* :mod:`.frames` - :func:`read_frame`: any frame file -> line integrals, refusing the wrong domain;
* :mod:`.frame_sidecar` - the ``<file>.json`` that says what a written frame holds;
* :mod:`.frame_writer`, :mod:`.dicom_writer` - frames to .npy / .png / .tif / XA DICOM.

Frames and signs: ``docs/geometry.md`` ("X-ray DICOM headers"); formats: ``docs/dicom.md``.
"""

from .dicom_pixels import PixelDataError, decode_pixels, plugin_hint
from .dicom_writer import patient_orientation, write_xa_dicom
from .dicom_xray import XRAY_MODALITIES, MissingTagError, XRayGeometry, read_xray_geometry, tag_label
from .frame_sidecar import FRAME_DOMAINS, FrameSidecar, SidecarError, sidecar_path
from .frame_writer import FRAME_SUFFIXES, stored_uint16, write_frame
from .frames import LINE_INTEGRAL_RANGE, FrameDomainError, XRayFrame, is_dicom_path, read_frame, read_stored_image

__all__ = [
    "FRAME_DOMAINS",
    "FRAME_SUFFIXES",
    "LINE_INTEGRAL_RANGE",
    "XRAY_MODALITIES",
    "FrameDomainError",
    "FrameSidecar",
    "MissingTagError",
    "PixelDataError",
    "SidecarError",
    "XRayFrame",
    "XRayGeometry",
    "decode_pixels",
    "is_dicom_path",
    "patient_orientation",
    "plugin_hint",
    "read_frame",
    "read_stored_image",
    "read_xray_geometry",
    "sidecar_path",
    "stored_uint16",
    "tag_label",
    "write_frame",
    "write_xa_dicom",
]
