"""X-ray DICOM headers -> Detector and CArmJoints: tags, row/column order, signs, missing tags."""

import math
import re

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from diffdrr_ros.core.geometry import CArmJoints, cam_from_iso, carm_rotation
from diffdrr_ros.core.xray_files import MissingTagError, read_xray_geometry, tag_label


def _header(**tags) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.Rows, ds.Columns = "XA", 48, 64
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = "1100", "780"
    ds.ImagerPixelSpacing = ["0.8", "0.6"]  # row spacing (dy), column spacing (dx)
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = "30", "-15"
    for k, v in tags.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


def test_header_maps_onto_detector_and_joints():
    geo = read_xray_geometry(_header(), label="f.dcm")
    det = geo.detector()
    assert (det.height, det.width) == (48, 64)
    assert det.spacing_mm == (0.8, 0.6)  # DICOM [row, column] is the Detector's (dy, dx)
    assert det.sdd_mm == 1100.0 and det.sid == 780.0
    joints = geo.joints()
    assert joints.lao_rad == pytest.approx(math.radians(30)) and joints.cranial_rad == pytest.approx(math.radians(-15))
    assert geo.sources["sdd"] == "DistanceSourceToDetector (0018,1110)"


def test_isocenter_tag_wins_and_element_spacing_with_binning_is_the_fallback():
    ds = _header(ImagerPixelSpacing=None, DistanceSourceToIsocenter=760.0)
    ds.DetectorElementSpacing, ds.DetectorBinning = [0.2, 0.15], [2.0, 4.0]
    det = read_xray_geometry(ds).detector()
    assert det.spacing_mm == pytest.approx((0.4, 0.6)) and det.sid == 760.0


@pytest.mark.parametrize(("keyword", "flag", "tag"), [
    ("DistanceSourceToDetector", "--sdd", "(0018,1110)"),
    ("DistanceSourceToPatient", "--sid", "(0018,1111)"),
    ("ImagerPixelSpacing", "--spacing", "(0018,1164)"),
])
def test_a_missing_tag_is_named_with_its_tag_unless_overridden(keyword, flag, tag):
    geo = read_xray_geometry(_header(**{keyword: None}), label="frame.dcm")
    with pytest.raises(MissingTagError, match=rf"frame\.dcm.*{keyword} {re.escape(tag)}.*{flag}"):
        geo.detector()
    override = {"DistanceSourceToDetector": {"sdd_mm": 1000.0}, "DistanceSourceToPatient": {"sid_mm": 700.0},
                "ImagerPixelSpacing": {"spacing_mm": (1.0, 1.0)}}[keyword]
    det = geo.detector(**override)
    assert det.sdd_mm in (1000.0, 1100.0) and det.height == 48


def test_missing_angles_are_named_and_overrides_win():
    geo = read_xray_geometry(_header(PositionerPrimaryAngle=None))
    with pytest.raises(MissingTagError, match=r"PositionerPrimaryAngle \(0018,1510\)"):
        geo.joints()
    assert geo.joints(lao_deg=-20.0).lao_rad == pytest.approx(math.radians(-20))
    assert not geo.has_angles
    assert tag_label("PositionerSecondaryAngle") == "PositionerSecondaryAngle (0018,1511)"


def test_rows_and_columns_are_required():
    with pytest.raises(MissingTagError, match=r"Rows \(0028,0010\)"):
        read_xray_geometry(_header(Rows=None))


def test_cine_frames_add_the_angle_increments():
    ds = _header()
    ds.NumberOfFrames = 3
    ds.PositionerPrimaryAngleIncrement = ["0", "2.5", "5"]  # offsets from the first frame
    ds.PositionerSecondaryAngleIncrement = "1"  # one value: the change per frame
    geo = read_xray_geometry(ds, frame_index=2)
    assert geo.lao_deg == pytest.approx(35.0) and geo.cranial_deg == pytest.approx(-13.0)
    with pytest.raises(ValueError, match="frame 3"):
        read_xray_geometry(ds, frame_index=3)


def _beam_in_lps(joints: CArmJoints) -> np.ndarray:
    """The beam (source -> detector) direction in the patient's LPS axes."""
    return cam_from_iso(joints)[:3, :3].T[:, 2].numpy()


def test_dicom_sign_conventions_match_the_project():
    # DICOM PS3.3 C.8.7.5.1.2: at 0/0 the patient faces the detector; +90 primary puts the
    # detector at the patient's left (LAO); +90 secondary towards the head (cranial).
    ap = read_xray_geometry(_header(PositionerPrimaryAngle="0", PositionerSecondaryAngle="0")).joints()
    np.testing.assert_allclose(_beam_in_lps(ap), [0, -1, 0], atol=1e-12)  # to the anterior (detector in front)
    lao = read_xray_geometry(_header(PositionerPrimaryAngle="90", PositionerSecondaryAngle="0")).joints()
    np.testing.assert_allclose(_beam_in_lps(lao), [1, 0, 0], atol=1e-12)  # to the patient's left
    cra = read_xray_geometry(_header(PositionerPrimaryAngle="0", PositionerSecondaryAngle="40")).joints()
    beam = _beam_in_lps(cra)
    assert beam[2] > 0.6 and beam[1] < 0  # tilted towards the head, still anterior
    # and the header's angles are the seed's (theta, phi) of carm_rotation
    r = carm_rotation(torch.tensor([math.radians(40), 0.0, 0.0], dtype=torch.float64))
    np.testing.assert_allclose(beam, r[:, 2].numpy(), atol=1e-12)
