"""Writing a frame as an X-ray angiographic (XA) DICOM file with its projection geometry.

The header carries what :mod:`.dicom_xray` reads back: DistanceSourceToDetector,
DistanceSourceToPatient (source to isocentre), ImagerPixelSpacing (row, column), the
positioner angles (LAO +, cranial +), and what the values are: PixelIntensityRelationship
``LOG`` (line integrals, sign -1) or ``LIN`` (intensities, sign +1), with RescaleSlope /
RescaleIntercept mapping the 16-bit stored values to the physical values.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np
from jaxtyping import UInt16

from ..geometry import CArmJoints, Detector, carm_rotation

__all__ = ["patient_orientation", "write_xa_dicom"]

_LPS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # + / - direction of the LPS x, y, z axes


def _letters(direction: np.ndarray) -> str:
    """DICOM patient-orientation letters of a direction (LPS), most significant first."""
    order = np.argsort(-np.abs(direction))
    return "".join(_LPS_LETTERS[i][0 if direction[i] > 0 else 1] for i in order if abs(direction[i]) > 1e-3)


def patient_orientation(joints: CArmJoints) -> list[str]:
    """PatientOrientation (0020,0020) of a detector image: the row then the column direction.

    Rows of the image run along ``x_cam`` (increasing column index), columns along ``y_cam``
    (increasing row index); the ``iso`` axes are the patient's LPS axes (``docs/geometry.md``).
    """
    r_iso_cam = carm_rotation(joints.angles()).numpy()
    return [_letters(r_iso_cam[:, 0]), _letters(r_iso_cam[:, 1])]


def _ds(value: float) -> str:
    """A Decimal String (at most 16 characters) holding ``value`` as precisely as DICOM allows."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def write_xa_dicom(
    path: str | Path,
    stored: UInt16[np.ndarray, "H W"],
    *,
    rescale: tuple[float, float],
    domain: str,
    detector: Detector,
    joints: CArmJoints,
    description: str = "",
) -> Path:
    """Write ``stored`` (16-bit) as an XA DICOM file (explicit VR little endian).

    Args:
        stored: the 16-bit stored values, ``(rows, columns)``.
        rescale: ``(slope, intercept)``: physical value = intercept + slope * stored.
        domain: ``"line_integral"`` (LOG, sign -1) or ``"intensity"`` (LIN, sign +1).
        detector, joints: the projection geometry written into the header (mm, deg).
        description: ImageComments (free text).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

    arr = np.ascontiguousarray(stored, dtype=np.uint16)
    if arr.ndim != 2 or arr.shape != detector.shape:
        raise ValueError(f"stored image {arr.shape} does not match the detector {detector.shape}")
    now = _dt.datetime.now(_dt.UTC)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DRR^Phantom", "diffdrr-ros", "", ""
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "XA", 1, 1
    ds.Manufacturer = "diffdrr-ros"
    ds.ImageType = ["DERIVED", "SECONDARY", "SINGLE PLANE"]
    ds.PatientOrientation = patient_orientation(joints)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelIntensityRelationship = "LOG" if domain == "line_integral" else "LIN"
    ds.PixelIntensityRelationshipSign = -1 if domain == "line_integral" else 1
    slope, intercept = rescale
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
    ds.KVP, ds.RadiationSetting = "", "GR"
    ds.DistanceSourceToDetector = _ds(detector.sdd_mm)
    ds.DistanceSourceToPatient = _ds(detector.sid)
    ds.ImagerPixelSpacing = [_ds(detector.spacing_mm[0]), _ds(detector.spacing_mm[1])]
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = _ds(math.degrees(joints.lao_rad))
    ds.PositionerSecondaryAngle = _ds(math.degrees(joints.cranial_rad))
    ds.DerivationDescription = "digitally reconstructed radiograph (diffdrr-ros render)"
    if description:
        ds.ImageComments = description
    ds.PixelData = arr.tobytes()
    out = Path(path)
    ds.save_as(out, enforce_file_format=True)
    return out

