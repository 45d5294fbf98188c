"""The projection geometry of an X-ray DICOM frame (XA, RF, DX): header tags -> Detector, CArmJoints.

DICOM tag -> project (frames and signs as in ``docs/geometry.md``, section "X-ray DICOM headers"):

* DistanceSourceToDetector (0018,1110)  -> ``Detector.sdd_mm`` (mm).
* DistanceSourceToIsocenter (0018,9402), else DistanceSourceToPatient (0018,1111) (XA/RF: source
  to isocentre) -> ``Detector.sid_mm`` (mm).
* ImagerPixelSpacing (0018,1164) = [row spacing, column spacing] at the detector plane, else
  DetectorElementSpacing (0018,7022) x DetectorBinning (0018,701A) -> ``Detector.spacing_mm = (dy, dx)``.
* Rows (0028,0010), Columns (0028,0011) -> ``Detector.height``, ``Detector.width``.
* PositionerPrimaryAngle (0018,1510), RAO -180..LAO +180 deg -> ``CArmJoints.lao_rad`` (same sign).
* PositionerSecondaryAngle (0018,1511), caudal -90..cranial +90 deg -> ``CArmJoints.cranial_rad``
  (same sign). A multi-frame file's per-frame increments (0018,1520) / (0018,1521) add to them.

The DICOM angles are patient-based (they follow the patient, not the room), as the project's
``iso`` axes are the LPS axes of the patient on the table; no further sign change is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..geometry import CArmJoints, Detector

__all__ = [
    "XRAY_MODALITIES",
    "MissingTagError",
    "XRayGeometry",
    "read_xray_geometry",
    "tag_label",
]

XRAY_MODALITIES = ("XA", "RF", "DX", "CR", "RG", "PX", "MG", "IO")


class MissingTagError(ValueError):
    """A DICOM header lacks a tag the projection geometry needs (and no override was given)."""


def tag_label(keyword: str) -> str:
    """``'DistanceSourceToDetector (0018,1110)'``: a keyword with its (group,element) tag."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return keyword if tag is None else f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _number(ds, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return float(value)


def _pair(ds, keyword: str) -> tuple[float, float] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = [float(v) for v in value] if hasattr(value, "__len__") and not isinstance(value, str) else [float(value)]
    if len(values) != 2:
        raise ValueError(f"{tag_label(keyword)} must hold 2 values (row, column), got {values}")
    return values[0], values[1]


def _frame_increment(ds, keyword: str, frame_index: int) -> float:
    """The positioner angle change (deg) of frame ``frame_index`` from the first frame (0 when absent).

    DICOM PS3.3 C.8.7.5.1.3: one value is the average change per frame (frame ``k`` is at
    ``k`` times it); one value per frame is each frame's offset from the first frame's angle.
    """
    value = ds.get(keyword)
    if value is None or value == "" or frame_index == 0:
        return 0.0
    values = [float(v) for v in value] if hasattr(value, "__len__") and not isinstance(value, str) else [float(value)]
    if len(values) == 1:
        return frame_index * values[0]
    if frame_index >= len(values):
        raise ValueError(f"{tag_label(keyword)} has {len(values)} values, frame {frame_index} requested")
    return values[frame_index]


@dataclass(frozen=True)
class XRayGeometry:
    """What an X-ray DICOM header says about its projection; ``None`` where a tag is absent.

    Attributes:
        rows, columns: pixels of the frame.
        spacing_mm: (dy, dx) detector-plane pixel pitch, mm (row spacing, column spacing).
        sdd_mm: source-to-detector distance, mm. sid_mm: source-to-isocentre distance, mm.
        lao_deg: PositionerPrimaryAngle, LAO +. cranial_deg: PositionerSecondaryAngle, cranial +.
        detector_rotation_deg: about the beam (no tag in XA/RF/DX: 0 unless a sidecar says).
        principal_point_mm: (x0, y0) from the detector centre (no tag: 0 unless a sidecar says).
        sources: for each field that was found, the tag it came from (for messages).
        label: names the file in error messages.
    """

    rows: int
    columns: int
    spacing_mm: tuple[float, float] | None = None
    sdd_mm: float | None = None
    sid_mm: float | None = None
    lao_deg: float | None = None
    cranial_deg: float | None = None
    detector_rotation_deg: float = 0.0
    principal_point_mm: tuple[float, float] = (0.0, 0.0)
    sources: dict[str, str] = field(default_factory=dict)
    label: str = "DICOM file"

    @property
    def has_angles(self) -> bool:
        return self.lao_deg is not None and self.cranial_deg is not None

    def _need(self, name: str, value, keywords: tuple[str, ...], flag: str):
        if value is None:
            tags = " or ".join(tag_label(k) for k in keywords)
            raise MissingTagError(f"{self.label}: the DICOM header lacks {tags}; give {flag}")
        return value

    def detector(
        self,
        *,
        spacing_mm: tuple[float, float] | None = None,
        sdd_mm: float | None = None,
        sid_mm: float | None = None,
        principal_point_mm: tuple[float, float] | None = None,
    ) -> Detector:
        """The :class:`Detector` of the header; a given argument overrides its tag.

        Raises:
            MissingTagError: a needed tag is absent and its argument not given (the message
                names the tag, keyword and (gggg,eeee), and the CLI flag that supplies it).
        """
        spacing = spacing_mm or self._need("spacing", self.spacing_mm,
                                           ("ImagerPixelSpacing", "DetectorElementSpacing"), "--spacing DY DX")
        sdd = sdd_mm if sdd_mm is not None else self._need("sdd", self.sdd_mm, ("DistanceSourceToDetector",),
                                                           "--sdd")
        sid = sid_mm if sid_mm is not None else self._need(
            "sid", self.sid_mm, ("DistanceSourceToIsocenter", "DistanceSourceToPatient"), "--sid")
        pp = self.principal_point_mm if principal_point_mm is None else principal_point_mm
        return Detector(self.rows, self.columns, spacing_mm=(float(spacing[0]), float(spacing[1])),
                        sdd_mm=float(sdd), sid_mm=float(sid), principal_point_mm=(float(pp[0]), float(pp[1])))

    def joints(
        self,
        *,
        lao_deg: float | None = None,
        cranial_deg: float | None = None,
        detector_rotation_deg: float | None = None,
    ) -> CArmJoints:
        """The :class:`CArmJoints` of the header (rad, mm); a given argument overrides its tag.

        Raises:
            MissingTagError: PositionerPrimaryAngle / PositionerSecondaryAngle absent and not given.
        """
        lao = lao_deg if lao_deg is not None else self._need("lao", self.lao_deg, ("PositionerPrimaryAngle",),
                                                              "the C-arm angles (--init or --xray-angles)")
        cranial = cranial_deg if cranial_deg is not None else self._need(
            "cranial", self.cranial_deg, ("PositionerSecondaryAngle",), "the C-arm angles (--init or --xray-angles)")
        gamma = self.detector_rotation_deg if detector_rotation_deg is None else detector_rotation_deg
        return CArmJoints(lao_rad=math.radians(lao), cranial_rad=math.radians(cranial),
                          detector_rotation_rad=math.radians(gamma), sdd_mm=self.sdd_mm)


def read_xray_geometry(ds, *, frame_index: int = 0, label: str = "DICOM file") -> XRayGeometry:
    """The projection geometry in the header of ``ds`` (a pydicom Dataset; pixel data not needed).

    Raises:
        MissingTagError: Rows (0028,0010) or Columns (0028,0011) absent (every image has them).
        ValueError: a malformed value (wrong multiplicity, frame index past the increments).
    """
    for keyword in ("Rows", "Columns"):
        if keyword not in ds:
            raise MissingTagError(f"{label}: the DICOM header lacks {tag_label(keyword)}")
    sources: dict[str, str] = {}

    def first(name: str, *keywords: str, pair: bool = False):
        for keyword in keywords:
            value = _pair(ds, keyword) if pair else _number(ds, keyword)
            if value is not None:
                sources[name] = tag_label(keyword)
                return value
        return None

    spacing = first("spacing", "ImagerPixelSpacing", pair=True)
    if spacing is None:
        element = first("spacing", "DetectorElementSpacing", pair=True)
        binning = _pair(ds, "DetectorBinning") or (1.0, 1.0)
        spacing = None if element is None else (element[0] * binning[0], element[1] * binning[1])
    lao = first("lao", "PositionerPrimaryAngle")
    cranial = first("cranial", "PositionerSecondaryAngle")
    if lao is not None:
        lao += _frame_increment(ds, "PositionerPrimaryAngleIncrement", frame_index)
    if cranial is not None:
        cranial += _frame_increment(ds, "PositionerSecondaryAngleIncrement", frame_index)
    return XRayGeometry(
        rows=int(ds.Rows), columns=int(ds.Columns), spacing_mm=spacing,
        sdd_mm=first("sdd", "DistanceSourceToDetector"),
        sid_mm=first("sid", "DistanceSourceToIsocenter", "DistanceSourceToPatient"),
        lao_deg=lao, cranial_deg=cranial, sources=sources, label=label,
    )
