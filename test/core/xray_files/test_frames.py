"""Frame files read in the right domain: sidecars, DICOM value semantics, refusals with hints."""

import json

import cv2
import numpy as np
import pydicom
import pytest

from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.xray_files import FrameDomainError, read_frame, sidecar_path, write_frame

DET = Detector(24, 32, spacing_mm=(2.0, 2.5), sdd_mm=1000.0, sid_mm=700.0)
POSE = [10.0, 25.0, 0.0, 1.0, 2.0, 3.0]


def _line_integrals(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:24, :32]
    return (4 * np.exp(-((xx - 16) ** 2 + (yy - 12) ** 2) / 60) + rng.uniform(0, 0.3, (24, 32))).astype(np.float32)


@pytest.mark.parametrize("suffix", [".npy", ".png", ".tif", ".dcm"])
@pytest.mark.parametrize("domain", ["line_integral", "intensity"])
def test_written_frames_come_back_as_their_line_integrals(tmp_path, suffix, domain):
    line_int = _line_integrals()
    values = line_int if domain == "line_integral" else np.exp(-line_int)
    path, side = write_frame(tmp_path / f"f{suffix}", values, domain=domain, detector=DET, pose_carm_deg_mm=POSE)
    assert side == sidecar_path(path) and json.loads(side.read_text())["domain"] == domain
    frame = read_frame(path)
    # 16-bit quantisation of the value range; exact for .npy
    tol = 1e-6 if suffix == ".npy" else (2e-4 if domain == "line_integral" else 3e-3)
    np.testing.assert_allclose(frame.line_integral, line_int, atol=tol)
    assert frame.domain == domain
    det = frame.geometry.detector()
    assert (det.shape, det.spacing_mm, det.sdd_mm, det.sid) == (DET.shape, DET.spacing_mm, 1000.0, 700.0)
    assert (frame.geometry.cranial_deg, frame.geometry.lao_deg) == pytest.approx((10.0, 25.0))


def test_flags_that_contradict_the_file_are_refused(tmp_path):
    path, _ = write_frame(tmp_path / "f.png", _line_integrals(), domain="line_integral", detector=DET,
                          pose_carm_deg_mm=POSE)
    with pytest.raises(FrameDomainError, match=r"sidecar f\.png\.json says it holds line integrals.*drop"):
        read_frame(path, domain="intensity")
    with pytest.raises(FrameDomainError, match="drop --scaled-range"):
        read_frame(path, scaled_range=(0.0, 1.0))
    dcm, _ = write_frame(tmp_path / "f.dcm", np.exp(-_line_integrals()), domain="intensity", detector=DET,
                         pose_carm_deg_mm=POSE)
    with pytest.raises(FrameDomainError, match=r"PixelIntensityRelationship \(0028,1040\) LIN"):
        read_frame(dcm, domain="line_integral")


def test_a_png_without_sidecar_is_intensity_and_a_stretched_one_is_refused(tmp_path):
    line_int = _line_integrals()
    counts = (3000 * np.exp(-line_int)).astype(np.uint16)  # a detector frame: I0 = 3000 counts
    cv2.imwrite(str(tmp_path / "det.png"), counts)
    frame = read_frame(tmp_path / "det.png", i0=3000.0)
    np.testing.assert_allclose(frame.line_integral, -np.log(counts / 3000.0), rtol=1e-5)
    assert frame.domain == "intensity"
    # the old render output: min-max scaled line integrals without a sidecar
    path, side = write_frame(tmp_path / "old.png", line_int, domain="line_integral", detector=DET,
                             pose_carm_deg_mm=POSE)
    side.unlink()
    with pytest.raises(FrameDomainError, match=r"span exactly 0\.\.65535.*--scaled-range MIN MAX"):
        read_frame(path)
    with pytest.raises(FrameDomainError, match=r"cannot be line integrals.*--frame-domain intensity"):
        read_frame(path, domain="line_integral")
    rescued = read_frame(path, domain="line_integral", scaled_range=(float(line_int.min()), float(line_int.max())))
    np.testing.assert_allclose(rescued.line_integral, line_int, atol=2e-4)
    assert read_frame(path, domain="intensity").domain == "intensity"  # explicit: the user's call


def test_an_npy_without_sidecar_is_line_integrals_and_checked(tmp_path):
    np.save(tmp_path / "line_int.npy", _line_integrals())
    np.testing.assert_array_equal(read_frame(tmp_path / "line_int.npy").line_integral, _line_integrals())
    np.save(tmp_path / "counts.npy", (3000 * np.exp(-_line_integrals())).astype(np.float32))
    with pytest.raises(FrameDomainError, match=r"cannot be line integrals.*--frame-domain intensity"):
        read_frame(tmp_path / "counts.npy")
    assert read_frame(tmp_path / "counts.npy", domain="intensity").line_integral.max() > 3


def test_changed_files_and_raw_renders_are_refused(tmp_path):
    path, _ = write_frame(tmp_path / "f.png", _line_integrals(), domain="line_integral", detector=DET,
                          pose_carm_deg_mm=POSE)
    cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[:, :20])
    with pytest.raises(FrameDomainError, match="changed after it was written"):
        read_frame(path)
    raw, _ = write_frame(tmp_path / "raw.npy", _line_integrals(), domain="line_integral", detector=DET,
                         pose_carm_deg_mm=POSE, volume_values="raw")
    with pytest.raises(FrameDomainError, match="without --raw"):
        read_frame(raw)


def _dicom(tmp_path, name, stored, **tags):
    """An XA frame written by write_frame, its sidecar removed, the header then edited."""
    path, side = write_frame(tmp_path / name, np.exp(-_line_integrals()), domain="intensity", detector=DET,
                             pose_carm_deg_mm=POSE)
    side.unlink()
    ds = pydicom.dcmread(path)
    ds.PixelData = np.ascontiguousarray(stored, dtype=np.uint16).tobytes()
    for k, v in tags.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(path)
    return path


def test_dicom_value_semantics(tmp_path):
    line_int = _line_integrals()
    counts = np.round(4000 * np.exp(-line_int)).astype(np.uint16)
    lin = _dicom(tmp_path, "lin.dcm", counts, RescaleSlope="1", RescaleIntercept="0")
    expected = -np.log(counts / counts.max())
    np.testing.assert_allclose(read_frame(lin).line_integral, expected, rtol=1e-5, atol=1e-6)
    # MONOCHROME1 without a sign tag: stored values inverted (65535 - counts are the same intensities)
    mono1 = _dicom(tmp_path, "mono1.dcm", 65535 - counts, RescaleSlope="1", RescaleIntercept="0",
                   PhotometricInterpretation="MONOCHROME1", PixelIntensityRelationshipSign=None)
    frame = read_frame(mono1)
    np.testing.assert_allclose(frame.line_integral, expected, rtol=1e-5, atol=1e-6)
    assert "inverted (MONOCHROME1)" in frame.description
    # the sign tag rules over the photometric interpretation
    signed = _dicom(tmp_path, "sign.dcm", 65535 - counts, RescaleSlope="1", RescaleIntercept="0",
                    PixelIntensityRelationshipSign=-1)
    np.testing.assert_allclose(read_frame(signed).line_integral, expected, rtol=1e-5, atol=1e-6)
    # the Modality LUT is applied before the log: intensity = 2 * stored + 20
    stored = (counts.astype(np.int64) - 20) // 2
    resc = _dicom(tmp_path, "rescale.dcm", stored, RescaleSlope="2", RescaleIntercept="20")
    intensity = 2 * stored + 20
    np.testing.assert_allclose(read_frame(resc).line_integral, -np.log(intensity / intensity.max()), rtol=1e-5,
                               atol=1e-6)
    # LOG: line integrals after the Modality LUT (0.001 per stored unit)
    log = _dicom(tmp_path, "log.dcm", np.round(line_int / 0.001), RescaleSlope="0.001", RescaleIntercept="0",
                 PixelIntensityRelationship="LOG", PixelIntensityRelationshipSign=-1)
    np.testing.assert_allclose(read_frame(log).line_integral, np.round(line_int / 0.001) * 0.001, atol=1e-6)
    # 12-bit LOG values never scaled to line integrals: refused with the hint
    unscaled = _dicom(tmp_path, "unscaled.dcm", np.round(line_int * 1000), RescaleSlope="1", RescaleIntercept="0",
                      PixelIntensityRelationship="LOG", PixelIntensityRelationshipSign=-1)
    with pytest.raises(FrameDomainError, match="cannot be line integrals"):
        read_frame(unscaled)


def test_a_ct_slice_is_not_an_xray_frame(tmp_path):
    path = _dicom(tmp_path, "ct.dcm", np.zeros((24, 32)), Modality="CT")
    with pytest.raises(FrameDomainError, match=r"Modality CT.*--ct"):
        read_frame(path)


def test_a_mirrored_image_is_flipped_back_by_its_patient_orientation(tmp_path):
    """At AP the project's rows run to the patient's right (seen from the source); "L\\F" is the mirror image."""
    line_int = _line_integrals()
    path, _ = write_frame(tmp_path / "ap.dcm", line_int, domain="line_integral", detector=DET,
                          pose_carm_deg_mm=[0, 0, 0, 0, 0, 0])
    ds = pydicom.dcmread(path)
    assert list(ds.PatientOrientation) == ["R", "F"]
    assert "flipped" not in read_frame(path).description
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()  # displayed facing the patient
    ds.PatientOrientation = ["L", "F"]
    ds.save_as(path)
    frame = read_frame(path)
    assert "columns flipped (PatientOrientation L/F" in frame.description
    np.testing.assert_allclose(frame.line_integral, line_int, atol=2e-4)


def test_a_cine_frame_is_read_with_its_own_angles(tmp_path):
    first, second = _line_integrals(0), _line_integrals(1)
    path, _ = write_frame(tmp_path / "cine.dcm", first, domain="line_integral", detector=DET, pose_carm_deg_mm=POSE)
    ds = pydicom.dcmread(path)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    frames = np.stack([ds.pixel_array, np.round((second - intercept) / slope).clip(0, 65535).astype(np.uint16)])
    ds.NumberOfFrames, ds.PixelData = 2, frames.tobytes()
    ds.PositionerPrimaryAngleIncrement, ds.PositionerSecondaryAngleIncrement = ["0", "5"], ["0", "-2"]
    ds.save_as(path)
    frame = read_frame(path, frame_index=1)
    np.testing.assert_allclose(frame.line_integral, intercept + slope * frames[1].astype(np.float64), atol=1e-6)
    assert (frame.geometry.lao_deg, frame.geometry.cranial_deg) == pytest.approx((30.0, 8.0))
    assert read_frame(path).geometry.lao_deg == pytest.approx(25.0)
