"""Compressed X-ray DICOM pixel data decodes to the uncompressed original; a missing plugin is named."""

import subprocess
import sys
import textwrap

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    XRayAngiographicImageStorage,
    generate_uid,
)

from diffdrr_ros.core.xray_files import PixelDataError, decode_pixels, plugin_hint


def _xa(pixels: np.ndarray) -> Dataset:
    """A minimal XA dataset holding ``pixels`` (uint16, (rows, cols) or (frames, rows, cols)) uncompressed."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = XRayAngiographicImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "XA", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def _frame(seed: int = 0, shape=(40, 56)) -> np.ndarray:
    """A smooth 16-bit X-ray-like frame with noise (compressors see real structure)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    body = 20000 + 30000 * np.exp(-(((xx - shape[1] / 2) / 15) ** 2 + ((yy - shape[0] / 2) / 12) ** 2))
    return (body + rng.normal(0, 300, shape)).clip(0, 65535).astype(np.uint16)


def _jpeg_lossless_sv1(img: np.ndarray) -> bytes:
    """A JPEG Lossless (process 14, selection value 1) codestream of a 16-bit grey image.

    Written for the tests: pydicom has no JPEG Lossless encoder and no installed package has
    one. Prediction from the left neighbour (the row above in the first column, 2^15 at the
    origin), differences modulo 2^16, one Huffman table with a 5-bit code per category.
    """
    x = img.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << 15
    pred[0, 1:], pred[1:, 0], pred[1:, 1:] = x[0, :-1], x[:-1, 0], x[1:, :-1]
    diff = (x - pred) % 65536
    diff = np.where(diff > 32768, diff - 65536, diff)
    bits: list[str] = []
    for d in diff.ravel().tolist():
        ssss = abs(d).bit_length()
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else d - 1 + (1 << ssss), f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)  # byte stuffing
    h, w = img.shape
    sof3 = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([16]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") \
        + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5: categories 0..16
    dht = b"\xff\xc4" + (2 + 1 + 16 + 17).to_bytes(2, "big") + bytes([0x00]) + bytes(counts) + bytes(range(17))
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof3 + dht + sos + bytes(data) + b"\xff\xd9"


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_frames_decode_to_the_original(tmp_path, syntax):
    original = np.stack([_frame(0), _frame(1)])
    ds = _xa(original)
    ds.compress(syntax)  # RLE: pydicom/pylibjpeg-rle, JPEG-LS: pyjpegls, J2K: pylibjpeg-openjpeg
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(decode_pixels(back, index=1, label="cine"), original[1])
    np.testing.assert_array_equal(decode_pixels(back, label="cine"), original)


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEGLossless])
def test_jpeg_lossless_decodes_to_the_original(tmp_path, syntax):
    original = _frame(2)
    ds = _xa(original)
    ds.PixelData = encapsulate([_jpeg_lossless_sv1(original)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "jpeg_lossless.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(decode_pixels(pydicom.dcmread(path)), original)


def test_a_real_gdcm_jpeg_lossless_file_decodes():
    """pydicom's own JPEG Lossless test file, written by GDCM (a colour image: the codec, not an X-ray)."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    px = decode_pixels(ds)
    assert px.shape == (100, 100, 3) and px.dtype == np.uint8
    np.testing.assert_array_equal(px[0, 0], [255, 0, 0])  # the file's red top band


def test_errors_name_the_problem():
    ds = _xa(_frame(0))
    with pytest.raises(PixelDataError, match=r"frame 3 requested, the file has 1"):
        decode_pixels(ds, index=3, label="f")
    del ds.PixelData
    with pytest.raises(PixelDataError, match=r"PixelData \(7FE0,0010\) missing"):
        decode_pixels(ds, label="f")
    assert "pyjpegls" in plugin_hint(JPEGLSLossless) and "openjpeg" in plugin_hint(JPEG2000Lossless)
    assert "libjpeg" in plugin_hint(JPEGLosslessSV1) and "rle" in plugin_hint(RLELossless)


def test_a_missing_plugin_is_named(tmp_path):
    """Without pylibjpeg (blocked in a fresh interpreter) JPEG Lossless cannot be decoded: the error says so."""
    original = _frame(3, shape=(16, 16))
    ds = _xa(original)
    ds.PixelData = encapsulate([_jpeg_lossless_sv1(original)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    path = tmp_path / "jpeg_lossless.dcm"
    ds.save_as(path, enforce_file_format=True)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["pylibjpeg"] = None  # as if pylibjpeg were not installed
        import pydicom
        from diffdrr_ros.core.xray_files.dicom_pixels import PixelDataError, decode_pixels
        try:
            decode_pixels(pydicom.dcmread({str(path)!r}), label="frame")
        except PixelDataError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "JPEG Lossless" in out.stdout and "1.2.840.10008.1.2.4.70" in out.stdout, out.stdout + out.stderr
    assert "install pylibjpeg and pylibjpeg-libjpeg" in out.stdout
