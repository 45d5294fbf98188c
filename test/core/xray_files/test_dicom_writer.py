"""The XA DICOM a render writes: geometry tags, value semantics, patient orientation."""

import math

import numpy as np
import pydicom
import pytest
from pydicom.uid import XRayAngiographicImageStorage

from diffdrr_ros.core.geometry import CArmJoints, Detector
from diffdrr_ros.core.xray_files import patient_orientation, read_xray_geometry, write_xa_dicom


def test_the_header_holds_the_geometry_and_the_value_semantics(tmp_path):
    det = Detector(20, 30, spacing_mm=(1.5, 2.0), sdd_mm=1100.0, sid_mm=800.0)
    joints = CArmJoints(lao_rad=math.radians(-30), cranial_rad=math.radians(12))
    stored = np.arange(600, dtype=np.uint16).reshape(20, 30) * 100
    path = write_xa_dicom(tmp_path / "f.dcm", stored, rescale=(1e-4, 0.5), domain="line_integral", detector=det,
                          joints=joints, description="test")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == XRayAngiographicImageStorage and ds.Modality == "XA"
    assert ds.PixelIntensityRelationship == "LOG" and ds.PixelIntensityRelationshipSign == -1
    assert float(ds.RescaleSlope) == 1e-4 and float(ds.RescaleIntercept) == 0.5
    np.testing.assert_array_equal(ds.pixel_array, stored)
    geo = read_xray_geometry(ds)
    back = geo.detector()
    assert (back.shape, back.spacing_mm, back.sdd_mm, back.sid) == ((20, 30), (1.5, 2.0), 1100.0, 800.0)
    assert (geo.lao_deg, geo.cranial_deg) == pytest.approx((-30.0, 12.0))
    with pytest.raises(ValueError, match="does not match the detector"):
        write_xa_dicom(tmp_path / "g.dcm", stored[:10], rescale=(1, 0), domain="intensity", detector=det,
                       joints=joints)


def test_patient_orientation_follows_the_c_arm():
    # AP: image rows run to the patient's right, columns to the feet (docs/geometry.md)
    assert patient_orientation(CArmJoints(0.0, 0.0)) == ["R", "F"]
    # LAO 90: the beam goes to the patient's left; the C-arm turned the rows from the right to the anterior
    assert patient_orientation(CArmJoints(math.radians(90), 0.0)) == ["A", "F"]
    assert patient_orientation(CArmJoints(math.radians(-30), 0.0))[0] == "RP"  # RAO 30: rows turn to the back
