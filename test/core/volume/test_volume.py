"""Tests for diffdrr_ros.core.volume: Volume geometry, HU -> mu, and the loaders."""

import random
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from diffdrr_ros.core.volume import (
    MU_WATER_PER_MM,
    Volume,
    VolumeLoadError,
    hu_to_mu,
    load_dicom_series,
    load_nifti,
    load_npy,
    load_volume,
    open_ct,
)

# ----------------------------------------------------------------------------------------------
# synthetic DICOM series
# ----------------------------------------------------------------------------------------------

ROW_COS = np.array([0.6, 0.8, 0.0])  # direction of increasing column index (i)
COL_COS = np.array([-0.48, 0.36, 0.8])  # direction of increasing row index (j)
NORMAL = np.cross(ROW_COS, COL_COS)  # (0.64, -0.48, 0.6)
PIXEL_SPACING = (0.8, 0.6)  # [row spacing (between rows, along COL_COS), column spacing]
ORIGIN = np.array([-12.5, 30.25, 101.0])
ROWS, COLS, NSLICES = 6, 7, 5
SLOPE, INTERCEPT = 2.0, -1024.0


def _stored(k: int) -> np.ndarray:
    r = np.arange(ROWS)[:, None]
    c = np.arange(COLS)[None, :]
    return (100 * k + 10 * r + c).astype(np.int16)  # (rows, columns)


def _write_slice(path, position, stored, series_uid, *, instance=1, modality="CT", slope=SLOPE):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*ROW_COS, *COL_COS)]
    ds.PixelSpacing = [f"{v:.6f}" for v in PIXEL_SPACING]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{INTERCEPT:g}"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _positions(step_mm=2.5, n=NSLICES, lateral=(0.0, 0.0, 0.0), gaps=None):
    if gaps is None:
        gaps = [step_mm] * (n - 1)
    offs = np.concatenate([[0.0], np.cumsum(gaps)])
    return [ORIGIN + o * NORMAL + k * np.asarray(lateral) for k, o in enumerate(offs)]


def _write_series(directory, positions=None, series_uid=None, seed=0, name_prefix="im"):
    directory.mkdir(parents=True, exist_ok=True)
    positions = _positions() if positions is None else positions
    series_uid = series_uid or generate_uid()
    order = list(range(len(positions)))
    random.Random(seed).shuffle(order)  # file order (and names) unrelated to slice order
    for n, k in enumerate(order):
        _write_slice(directory / f"{name_prefix}{n:03d}.dcm", positions[k], _stored(k), series_uid, instance=n)
    return series_uid


def _expected_affine(step=2.5):
    a = np.eye(4)
    a[:3, 0] = ROW_COS * PIXEL_SPACING[1]
    a[:3, 1] = COL_COS * PIXEL_SPACING[0]
    a[:3, 2] = NORMAL * step
    a[:3, 3] = ORIGIN
    return torch.from_numpy(a)


def test_dicom_round_trip(tmp_path):
    d = tmp_path / "series"
    _write_series(d)
    (d / "README.txt").write_text("not a dicom file\n")  # ignored
    vol = load_dicom_series(d)
    assert vol.kind == "hu"
    assert vol.shape == (COLS, ROWS, NSLICES)
    assert vol.data.dtype == torch.float32
    assert vol.affine.dtype == torch.float64
    # values: data[i=column, j=row, k=slice] = slope * stored + intercept, slices in spatial order
    for k in range(NSLICES):
        expected = SLOPE * _stored(k).astype(np.float64).T + INTERCEPT
        np.testing.assert_array_equal(vol.data[:, :, k].numpy(), expected.astype(np.float32))
    torch.testing.assert_close(vol.affine, _expected_affine(), atol=1e-5, rtol=0)
    torch.testing.assert_close(vol.spacing, torch.tensor([0.6, 0.8, 2.5], dtype=torch.float64))
    # ImagePositionPatient of slice k is voxel (0, 0, k)
    ipp = torch.tensor(np.stack(_positions()), dtype=torch.float64)
    expected_idx = torch.tensor([[0.0, 0.0, k] for k in range(NSLICES)], dtype=torch.float64)
    torch.testing.assert_close(vol.world_to_index(ipp), expected_idx, atol=1e-5, rtol=0)
    # DICOM pixel (row r, column c) of slice k sits at IPP + c*dc*row_cos + r*dr*col_cos
    r, c, k = 4, 5, 3
    world = _positions()[k] + c * PIXEL_SPACING[1] * ROW_COS + r * PIXEL_SPACING[0] * COL_COS
    torch.testing.assert_close(vol.index_to_world(torch.tensor([c, r, k])), torch.from_numpy(world), atol=1e-5, rtol=0)
    assert float(vol.data[c, r, k]) == SLOPE * (100 * k + 10 * r + c) + INTERCEPT
    # load_volume on the directory and on a single file of the series give the same volume
    for path in (d, d / "im002.dcm"):
        other = load_volume(path)
        torch.testing.assert_close(other.data, vol.data)
        torch.testing.assert_close(other.affine, vol.affine)


def test_dicom_reversed_positions_sorted_along_normal(tmp_path):
    # slices listed from superior-most to inferior-most still load in +normal order
    d = tmp_path / "rev"
    _write_series(d, positions=_positions()[::-1])
    vol = load_dicom_series(d)
    # the slice written with stored pattern k=0 is now the last in space
    np.testing.assert_array_equal(vol.data[:, :, -1].numpy(), (SLOPE * _stored(0).T + INTERCEPT).astype(np.float32))
    torch.testing.assert_close(vol.affine[:3, 2], torch.from_numpy(NORMAL * 2.5), atol=1e-5, rtol=0)


def test_dicom_mixed_series(tmp_path):
    d = tmp_path / "mixed"
    uid_a = _write_series(d, name_prefix="a", seed=1)
    uid_b = _write_series(d, positions=_positions()[:3], name_prefix="b", seed=2)
    with pytest.raises(VolumeLoadError) as exc:
        load_dicom_series(d)
    msg = str(exc.value)
    assert uid_a in msg and uid_b in msg and "5 file" in msg and "3 file" in msg
    vol = load_dicom_series(d, series_uid=uid_b)
    assert vol.shape == (COLS, ROWS, 3)
    assert load_volume(d, series_uid=uid_a).shape == (COLS, ROWS, NSLICES)
    assert open_ct(d, series_uid=uid_b).shape == (COLS, ROWS, 3)  # the node's ct_series_uid
    with pytest.raises(VolumeLoadError, match="not found"):
        load_dicom_series(d, series_uid="1.2.3.999")


def test_dicom_non_uniform_spacing(tmp_path):
    d = tmp_path / "gappy"
    _write_series(d, positions=_positions(gaps=[2.5, 2.5, 5.0, 2.5]))
    with pytest.raises(VolumeLoadError, match="non-uniform slice spacing"):
        load_dicom_series(d)


def test_dicom_small_jitter_is_tolerated(tmp_path):
    d = tmp_path / "jitter"
    _write_series(d, positions=_positions(gaps=[2.5, 2.505, 2.497, 2.5]))
    vol = load_dicom_series(d)
    assert vol.shape == (COLS, ROWS, NSLICES)


def test_dicom_gantry_tilt(tmp_path):
    d = tmp_path / "tilt"
    lateral = 0.5 * ROW_COS  # every slice shifted 0.5 mm along the rows: sheared grid
    _write_series(d, positions=_positions(lateral=lateral))
    with pytest.raises(VolumeLoadError, match="gantry-tilted"):
        load_dicom_series(d)
    with pytest.raises(VolumeLoadError, match="gantry-tilted"):
        open_ct(d)
    vol = load_dicom_series(d, allow_gantry_tilt=True)
    torch.testing.assert_close(open_ct(d, allow_gantry_tilt=True).affine, vol.affine)  # ct_allow_gantry_tilt
    step = NORMAL * 2.5 + lateral
    torch.testing.assert_close(vol.affine[:3, 2], torch.from_numpy(step), atol=1e-5, rtol=0)
    ipp = torch.tensor(np.stack(_positions(lateral=lateral)), dtype=torch.float64)
    idx = vol.world_to_index(ipp)
    torch.testing.assert_close(idx[:, 2], torch.arange(NSLICES, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(idx[:, :2], torch.zeros(NSLICES, 2, dtype=torch.float64), atol=1e-5, rtol=0)


def test_dicom_errors(tmp_path):
    with pytest.raises(VolumeLoadError, match="does not exist"):
        load_volume(tmp_path / "nope")
    with pytest.raises(VolumeLoadError, match="does not exist"):
        load_dicom_series(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VolumeLoadError, match="empty"):
        load_volume(empty)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("hello")
    (junk / "b.bin").write_bytes(b"\x00" * 300)
    with pytest.raises(VolumeLoadError, match="no DICOM image files"):
        load_dicom_series(junk)
    single = tmp_path / "single"
    _write_series(single, positions=_positions()[:1])
    with pytest.raises(VolumeLoadError, match="single slice"):
        load_dicom_series(single)
    dup = tmp_path / "dup"
    pos = _positions()
    _write_series(dup, positions=[pos[0], pos[1], pos[1], pos[2]])
    with pytest.raises(VolumeLoadError, match="same position"):
        load_dicom_series(dup)
    # a file that claims to be DICOM (preamble + "DICM") but is truncated garbage
    broken = tmp_path / "broken"
    _write_series(broken)
    (broken / "zz_broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f")
    with pytest.raises(VolumeLoadError, match="zz_broken"):
        load_dicom_series(broken)
    # a truncated copy of one slice of the series (pixel data cut off)
    trunc = tmp_path / "trunc"
    _write_series(trunc)
    victim = trunc / "im001.dcm"
    victim.write_bytes(victim.read_bytes()[:600])
    with pytest.raises(VolumeLoadError, match="im001"):
        load_dicom_series(trunc)
    with pytest.raises(VolumeLoadError, match="unrecognised"):
        load_volume(junk / "a.txt")
    assert issubclass(VolumeLoadError, ValueError)


def test_dicom_non_ct_modality_is_raw(tmp_path):
    d = tmp_path / "mr"
    uid = generate_uid()
    d.mkdir()
    for k, p in enumerate(_positions()[:3]):
        _write_slice(d / f"{k}.dcm", p, _stored(k), uid, modality="MR")
    assert load_dicom_series(d).kind == "raw"
    assert pydicom.dcmread(d / "0.dcm").Modality == "MR"


# ----------------------------------------------------------------------------------------------
# NIfTI / npy
# ----------------------------------------------------------------------------------------------


def test_nifti_round_trip_ras_to_lps(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) - 50.0
    ras = np.array(
        [
            [-1.5, 0.0, 0.0, 90.0],  # i runs towards -R = patient left
            [0.0, 2.0, 0.0, -120.0],
            [0.0, 0.0, 3.0, -70.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, ras), str(path))
    for vol in (load_nifti(path), load_volume(path)):
        assert vol.kind == "hu" and vol.shape == (4, 5, 6)
        np.testing.assert_array_equal(vol.data.numpy(), data)
        expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
        torch.testing.assert_close(vol.affine, torch.from_numpy(expected))
        # voxel (1, 2, 3): RAS (88.5, -116, -61)  ->  LPS (-88.5, 116, -61)
        torch.testing.assert_close(
            vol.index_to_world(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)),
            torch.tensor([-88.5, 116.0, -61.0], dtype=torch.float64),
        )
        torch.testing.assert_close(vol.spacing, torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64))


def test_nifti_4d_singleton_is_squeezed(tmp_path):
    path = tmp_path / "ct4.nii"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.int16), np.eye(4)), str(path))
    vol = load_nifti(path)
    assert vol.shape == (3, 4, 5) and vol.data.dtype == torch.float32


def test_npy_round_trip(tmp_path):
    arr = np.random.default_rng(0).normal(size=(4, 6, 8)).astype(np.float64)
    path = tmp_path / "ct.npy"
    np.save(path, arr)
    vol = load_volume(path, spacing=(1.0, 2.0, 0.5))
    assert vol.data.dtype == torch.float32 and vol.kind == "hu"
    np.testing.assert_allclose(vol.data.numpy(), arr.astype(np.float32))
    torch.testing.assert_close(vol.center, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(vol.origin, torch.tensor([-1.5, -5.0, -1.75], dtype=torch.float64))
    torch.testing.assert_close(vol.extent_mm, torch.tensor([4.0, 12.0, 4.0], dtype=torch.float64))
    vol2 = load_npy(path, 2.0, origin=(1.0, 2.0, 3.0), kind="raw")
    torch.testing.assert_close(vol2.origin, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert vol2.kind == "raw"
    with pytest.raises(VolumeLoadError, match="spacing"):
        load_volume(path)
    np.save(tmp_path / "flat.npy", np.zeros((3, 3)))
    with pytest.raises(VolumeLoadError, match="3-D"):
        load_npy(tmp_path / "flat.npy", 1.0)


def test_spacing_ignored_for_self_describing_formats(tmp_path):
    path = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(path))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        vol = load_volume(path, spacing=5.0)
    assert any("ignored" in str(w.message) for w in rec)
    torch.testing.assert_close(vol.spacing, torch.ones(3, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# Volume geometry
# ----------------------------------------------------------------------------------------------


def _oblique_volume(shape=(8, 6, 10)):
    # rotation about z by 30 deg, anisotropic spacing, arbitrary origin
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.5, 1.0, 2.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    data = torch.arange(np.prod(shape), dtype=torch.float32).reshape(shape)
    return Volume(data, torch.from_numpy(affine), "raw")


def test_volume_validation_and_basics():
    vol = _oblique_volume()
    assert vol.shape == (8, 6, 10)
    torch.testing.assert_close(vol.spacing, torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(vol.extent_mm, torch.tensor([4.0, 6.0, 20.0], dtype=torch.float64))
    torch.testing.assert_close(vol.center, vol.index_to_world(torch.tensor([3.5, 2.5, 4.5])).double())
    torch.testing.assert_close(vol.direction.T @ vol.direction, torch.eye(3, dtype=torch.float64))
    # batched round trip, float32 input stays float32
    ijk = torch.rand(2, 5, 3) * 5
    xyz = vol.index_to_world(ijk)
    assert xyz.shape == (2, 5, 3) and xyz.dtype == torch.float32
    torch.testing.assert_close(vol.world_to_index(xyz), ijk, atol=1e-4, rtol=0)
    # corners are the outer voxel edges: their mean is the centre
    torch.testing.assert_close(vol.corners.mean(0), vol.center)
    # integer data -> float32; the affine is float64 on the CPU
    v = Volume(torch.zeros(2, 3, 4, dtype=torch.int16), torch.eye(4, dtype=torch.float32))
    assert v.data.dtype == torch.float32 and v.affine.dtype == torch.float64
    assert "shape=(2, 3, 4)" in repr(v)
    with pytest.raises(ValueError):
        Volume(torch.zeros(2, 3), torch.eye(4))
    with pytest.raises(ValueError):
        Volume(torch.zeros(2, 3, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError):
        Volume(torch.zeros(2, 3, 4), torch.eye(4), kind="density")
    with pytest.raises(ValueError):
        Volume(torch.zeros(2, 3, 4), torch.eye(3))


def test_to_keeps_affine_on_cpu():
    vol = _oblique_volume()
    v64 = vol.to(dtype=torch.float64)
    assert v64.data.dtype == torch.float64 and v64.affine.device.type == "cpu"
    assert v64.kind == vol.kind
    torch.testing.assert_close(v64.affine, vol.affine)


def test_crop_keeps_world_positions():
    vol = _oblique_volume()
    sub = vol.crop((2, 1, 3), (6, 5, 9))
    assert sub.shape == (4, 4, 6)
    torch.testing.assert_close(sub.data, vol.data[2:6, 1:5, 3:9])
    torch.testing.assert_close(sub.index_to_world(torch.zeros(3)), vol.index_to_world(torch.tensor([2.0, 1.0, 3.0])))
    torch.testing.assert_close(sub.spacing, vol.spacing)
    torch.testing.assert_close(sub.center, vol.index_to_world(torch.tensor([3.5, 2.5, 5.5], dtype=torch.float64)))
    with pytest.raises(ValueError):
        vol.crop((0, 0, 0), (9, 6, 10))
    with pytest.raises(ValueError):
        vol.crop((3, 0, 0), (3, 6, 10))


def test_resample_integer_factor_is_box_average():
    vol = _oblique_volume((8, 6, 10))
    coarse = vol.resample(vol.spacing * 2)
    assert coarse.shape == (4, 3, 5)
    torch.testing.assert_close(coarse.spacing, vol.spacing * 2)
    torch.testing.assert_close(coarse.center, vol.center)
    torch.testing.assert_close(coarse.extent_mm, vol.extent_mm)
    torch.testing.assert_close(coarse.data[1, 2, 3], vol.data[2:4, 4:6, 6:8].mean())
    # the coarse voxel (0,0,0) centre is the mean of the fine voxel centres it covers
    fine_centres = vol.index_to_world(torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]))
    torch.testing.assert_close(coarse.origin, fine_centres.mean(0))
    down = vol.downsample(2)
    torch.testing.assert_close(down.data, coarse.data)
    torch.testing.assert_close(down.affine, coarse.affine)
    assert vol.downsample(1).shape == vol.shape


def test_resample_non_integer_keeps_extent_and_centre():
    vol = Volume.from_array(torch.ones(10, 9, 7), (1.0, 1.5, 2.0), origin=(3.0, -4.0, 8.0), kind="hu")
    out = vol.resample(3.0)
    # n' = round(n * s / 3) = (3, 4, 5); spacing adjusted so the extent is exact
    assert out.shape == (3, 4, 5)
    torch.testing.assert_close(out.extent_mm, vol.extent_mm)
    torch.testing.assert_close(out.center, vol.center)
    torch.testing.assert_close(out.spacing, vol.extent_mm / torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(out.data, torch.ones(3, 4, 5))  # constant stays constant
    assert out.kind == "hu"
    odd = vol.downsample(2)  # 10 -> 5 (box), 9 -> round(4.5)=4 (trilinear), 7 -> 4
    torch.testing.assert_close(odd.center, vol.center)
    torch.testing.assert_close(odd.extent_mm, vol.extent_mm)


def test_hu_to_mu_values():
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0, 3000.0])
    mu = hu_to_mu(hu)
    expected = MU_WATER_PER_MM * torch.tensor([0.0, 0.0, 1.0, 2.0, 4.0])
    torch.testing.assert_close(mu, expected)
    # bone boost: only the part above the threshold is scaled, continuous at the threshold
    boosted = hu_to_mu(torch.tensor([0.0, 350.0, 1350.0]), bone_threshold_hu=350.0, bone_multiplier=2.0)
    torch.testing.assert_close(
        boosted, MU_WATER_PER_MM * torch.tensor([1.0, 1.35, 1.0 + (350.0 + 2.0 * 1000.0) / 1000.0])
    )
    assert hu_to_mu(torch.tensor([0], dtype=torch.int16)).dtype == torch.float32
    assert hu_to_mu(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64
    # differentiable
    x = torch.tensor([100.0], requires_grad=True)
    hu_to_mu(x, mu_water=0.02).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.02 / 1000.0]))


def test_to_attenuation_kinds():
    hu = Volume.from_array(torch.tensor([-1000.0, 0.0, 1000.0]).reshape(3, 1, 1), 1.0, kind="hu")
    mu = hu.to_attenuation()
    assert mu.kind == "mu" and hu.kind == "hu"
    torch.testing.assert_close(mu.data.flatten(), MU_WATER_PER_MM * torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(hu.data.flatten(), torch.tensor([-1000.0, 0.0, 1000.0]))  # untouched
    torch.testing.assert_close(mu.affine, hu.affine)
    assert mu.to_attenuation() is mu
    with pytest.raises(ValueError, match="raw"):
        Volume(torch.zeros(1, 1, 1), torch.eye(4), kind="raw").to_attenuation()
