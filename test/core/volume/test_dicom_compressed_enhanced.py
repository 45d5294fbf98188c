"""CT from compressed DICOM (RLE, JPEG-LS, JPEG 2000) and from Enhanced (multi-frame) CT files."""

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from diffdrr_ros.core.volume import VolumeLoadError, load_dicom_series, load_volume

ROWS, COLS, SLICES = 36, 40, 6  # JPEG 2000's default 6 resolutions need >= 32 px
SPACING = (0.8, 0.7)  # PixelSpacing: row spacing, column spacing (mm)
IOP = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _stored(seed: int = 0) -> np.ndarray:
    """(slices, rows, cols) 16-bit stored values; HU = stored - 1024."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3000, (SLICES, ROWS, COLS), dtype=np.uint16)


def _base(sop_class) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CT", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _classic_series(directory, stored, series_uid, syntax=None):
    directory.mkdir()
    for k, plane in enumerate(stored):
        ds = _base(CTImageStorage)
        ds.SeriesInstanceUID, ds.InstanceNumber = series_uid, k + 1
        ds.ImagePositionPatient = [-5.0, -3.0, 2.5 * k]
        ds.ImageOrientationPatient, ds.PixelSpacing = IOP, list(SPACING)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        if syntax is not None:
            ds.compress(syntax)
        ds.save_as(directory / f"{k}.dcm", enforce_file_format=True)
    return directory


def _enhanced(path, stored, *, shared_orientation=True, order=None, syntax=None, drop_position=False):
    ds = _base(EnhancedCTImageStorage)
    ds.SeriesInstanceUID = generate_uid()
    order = list(range(SLICES)) if order is None else order
    ds.NumberOfFrames = len(order)
    pixel_measures = Dataset()
    pixel_measures.PixelSpacing, pixel_measures.SliceThickness = list(SPACING), 2.5
    orientation = Dataset()
    orientation.ImageOrientationPatient = IOP
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence = [pixel_measures]
    shared.PixelValueTransformationSequence = [transform]
    if shared_orientation:
        shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-5.0, -3.0, 2.5 * k]
        if not (drop_position and k == order[-1]):
            item.PlanePositionSequence = [position]
        if not shared_orientation:
            item.PlaneOrientationSequence = [orientation]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.ascontiguousarray(stored[order]).tobytes()
    if syntax is not None:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_equals_the_uncompressed_one(tmp_path, syntax):
    stored, uid = _stored(), generate_uid()
    plain = load_dicom_series(_classic_series(tmp_path / "plain", stored, uid))
    packed_dir = _classic_series(tmp_path / "packed", stored, uid, syntax)
    assert pydicom.dcmread(packed_dir / "0.dcm").file_meta.TransferSyntaxUID == syntax
    packed = load_dicom_series(packed_dir)
    torch.testing.assert_close(packed.data, plain.data, rtol=0, atol=0)
    torch.testing.assert_close(packed.affine, plain.affine)
    assert float(plain.data.min()) == float(stored.min()) - 1024  # HU through the rescale


@pytest.mark.parametrize("syntax", [None, JPEGLSLossless])
def test_enhanced_ct_equals_the_classic_series(tmp_path, syntax):
    stored = _stored(1)
    classic = load_dicom_series(_classic_series(tmp_path / "classic", stored, generate_uid()))
    (tmp_path / "enh").mkdir()
    path = _enhanced(tmp_path / "enh" / "ct.dcm", stored, order=[3, 0, 5, 1, 4, 2], syntax=syntax)
    enhanced = load_volume(path)  # frames out of order: sorted along the normal
    assert enhanced.kind == "hu"
    torch.testing.assert_close(enhanced.data, classic.data, rtol=0, atol=0)
    torch.testing.assert_close(enhanced.affine, classic.affine)
    torch.testing.assert_close(load_dicom_series(tmp_path / "enh").data, classic.data, rtol=0, atol=0)


def test_enhanced_ct_per_frame_orientation_and_missing_groups(tmp_path):
    stored = _stored(2)
    per_frame = load_volume(_enhanced(tmp_path / "a.dcm", stored, shared_orientation=False))
    shared = load_volume(_enhanced(tmp_path / "b.dcm", stored))
    torch.testing.assert_close(per_frame.affine, shared.affine)
    (tmp_path / "c").mkdir()
    broken = _enhanced(tmp_path / "c" / "c.dcm", stored, drop_position=True)
    with pytest.raises(VolumeLoadError, match=r"frame 6: no PlanePositionSequence > ImagePositionPatient"):
        load_volume(broken)


def test_multi_frame_without_functional_groups_is_refused(tmp_path):
    d = tmp_path / "mf"
    d.mkdir()
    ds = _base(CTImageStorage)
    ds.SeriesInstanceUID, ds.NumberOfFrames = generate_uid(), 2
    ds.PixelData = np.ascontiguousarray(_stored()[:2]).tobytes()
    ds.save_as(d / "mf.dcm", enforce_file_format=True)
    with pytest.raises(VolumeLoadError, match="multi-frame without functional groups"):
        load_dicom_series(d)


def test_gantry_tilt_is_a_load_volume_option(tmp_path):
    d = tmp_path / "tilt"
    d.mkdir()
    stored, uid = _stored(3), generate_uid()
    for k, plane in enumerate(stored):
        ds = _base(CTImageStorage)
        ds.SeriesInstanceUID = uid
        ds.ImagePositionPatient = [0.0, 0.5 * k, 2.5 * k]  # the slices step along y too: a tilted gantry
        ds.ImageOrientationPatient, ds.PixelSpacing = IOP, list(SPACING)
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        ds.save_as(d / f"{k}.dcm", enforce_file_format=True)
    with pytest.raises(VolumeLoadError, match="allow_gantry_tilt"):
        load_volume(d)
    vol = load_volume(d / "0.dcm", allow_gantry_tilt=True)
    torch.testing.assert_close(vol.affine[:3, 2], torch.tensor([0.0, 0.5, 2.5], dtype=torch.float64))
