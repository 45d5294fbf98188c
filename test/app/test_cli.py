"""The diffdrr-ros CLI: render and register through the same core API."""

import json
import math

import numpy as np
import torch

from diffdrr_ros.app.cli import load_xray, main
from diffdrr_ros.core.drr import render
from diffdrr_ros.core.geometry import Detector, carm_to_matrix
from diffdrr_ros.core.volume.phantoms import make_phantom


def test_render_raw_npy_matches_core(tmp_path):
    out = tmp_path / "drr.npy"
    rc = main(["render", "--phantom", "head_tiny", "--size", "16", "20", "--spacing", "20", "20", "--sdd", "1000",
               "--pose", "10", "20", "0", "5", "0", "0", "--raw", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    img = np.load(out)
    vol = make_phantom("head_tiny")
    pose = carm_to_matrix(torch.tensor([math.radians(10), math.radians(20), 0.0], dtype=torch.float64),
                          torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64), vol.center)
    ref = render(vol, pose, Detector(16, 20, spacing_mm=(20.0, 20.0), sdd_mm=1000.0))
    np.testing.assert_allclose(img, ref.numpy(), rtol=1e-6)
    assert img.min() < -1000  # raw HU integrated: air is -1000 HU x mm


def test_render_png_and_bad_ct_path(tmp_path, capsys):
    out = tmp_path / "drr.png"
    assert main(["render", "--phantom", "head_tiny", "--size", "8", "8", "--out", str(out), "--device", "cpu"]) == 0
    img = load_xray(out)
    assert img.shape == (8, 8) and img.dtype == np.uint16 and img.max() == 65535
    rc = main(["render", "--ct", str(tmp_path / "missing.nii.gz"), "--out", str(out)])
    assert rc == 1 and "error" in capsys.readouterr().err


def test_register_cli_recovers_pose(tmp_path, capsys):
    vol = make_phantom("head_small")
    det = Detector(48, 48, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)
    truth = [5.0, 10.0, 0.0, 3.0, -2.0, 4.0]
    pose = carm_to_matrix(torch.tensor([math.radians(a) for a in truth[:3]], dtype=torch.float64),
                          torch.tensor(truth[3:], dtype=torch.float64), vol.center)
    frame = render(vol.to_attenuation(), pose, det).numpy()
    np.save(tmp_path / "frame.npy", frame)
    init = [9.0, 6.0, 3.0, 10.0, -8.0, 0.0]
    rc = main(["register", "--phantom", "head_small", "--xray", str(tmp_path / "frame.npy"), "--spacing", "8", "8",
               "--sdd", "1020", "--sid", "750", "--init", *map(str, init), "--truth", *map(str, truth),
               "--json", str(tmp_path / "r.json"), "--device", "cpu"])
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0, printed
    assert result["mtre_mm"] < 2.0 and "mTRE" in printed
    np.testing.assert_allclose(result["pose_carm_deg_mm"], truth, atol=1.0)


def test_register_cli_with_a_second_view(tmp_path, capsys):
    vol = make_phantom("head_small")
    det = Detector(48, 48, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)
    truth = [5.0, 10.0, 0.0, 3.0, -2.0, 4.0]
    for name, phi in (("ap.npy", truth[1]), ("lao.npy", truth[1] + 30.0)):
        pose = carm_to_matrix(torch.tensor([math.radians(a) for a in (truth[0], phi, truth[2])], dtype=torch.float64),
                              torch.tensor(truth[3:], dtype=torch.float64), vol.center)
        np.save(tmp_path / name, render(vol.to_attenuation(), pose, det).numpy())
    rc = main(["register", "--phantom", "head_small", "--xray", str(tmp_path / "ap.npy"), "--spacing", "8", "8",
               "--sdd", "1020", "--sid", "750", "--init", "9", "6", "3", "10", "-8", "0", "--truth", *map(str, truth),
               "--xray-angles", "5", "10", "0", "--view", str(tmp_path / "lao.npy"), "5", "40", "0",
               "--covariance", "--json", str(tmp_path / "r.json"), "--device", "cpu"])
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0, printed
    assert result["mtre_mm"] < 1.0 and len(result["view_zncc"]) == 2 and min(result["view_zncc"]) > 0.99
    assert "2 views" in printed and "along the beam" in printed and "predicted 1-sigma" in printed


def test_sim_writes_a_bag_of_the_simulated_c_arm(tmp_path):
    from diffdrr_ros.bag.scoring import read_records

    bag = tmp_path / "sim"
    rc = main(["sim", "--bag", str(bag), "--frames", "3", "--phantom", "head_tiny", "--size", "16", "16",
               "--spacing", "20", "20", "--storage", "sqlite3"])
    assert rc == 0
    topics = [r[0] for r in read_records([bag])]
    assert topics.count("/fluoro/image") == 3 and topics.count("/carm_sim/ground_truth") == 3
    assert topics.count("/carm/joint_states") >= 3


def _render(tmp_path, name, pose, *extra):
    out = tmp_path / name
    rc = main(["render", "--phantom", "head", "--pose", *map(str, pose), "--size", "64", "64", "--out", str(out),
               "--device", "cpu", *extra])
    assert rc == 0
    return out


def test_a_png_the_tool_wrote_is_registered_in_its_domain(tmp_path, capsys):
    """The issue's round trip: a rendered PNG holds scaled line integrals; its sidecar says so (was 9.2 mm off)."""
    png = _render(tmp_path, "f.png", [10, 25, 0, 0, 0, 0])
    assert json.loads((tmp_path / "f.png.json").read_text())["domain"] == "line_integral"
    rc = main(["register", "--phantom", "head", "--xray", str(png), "--init", "0", "20", "0", "5", "5", "5",
               "--truth", "10", "25", "0", "0", "0", "0", "--json", str(tmp_path / "r.json"), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert json.loads((tmp_path / "r.json").read_text())["mtre_mm"] < 1.0
    assert "line integrals; scaling from f.png.json" in printed and "--init angles" in printed


def test_a_frame_in_the_wrong_domain_is_refused_with_a_hint(tmp_path, capsys):
    png = _render(tmp_path, "old.png", [10, 25, 0, 0, 0, 0])
    (tmp_path / "old.png.json").unlink()  # as written before sidecars: scaled line integrals, nothing says so
    register = ["register", "--phantom", "head", "--xray", str(png), "--init", "0", "20", "0", "5", "5", "5",
                "--device", "cpu"]
    assert main(register) == 1
    err = capsys.readouterr().err
    assert "min-max scaled" in err and "--frame-domain line_integral --scaled-range MIN MAX" in err
    assert main([*register, "--frame-domain", "line_integral"]) == 1
    assert "cannot be line integrals" in capsys.readouterr().err
    intensity = _render(tmp_path, "i.png", [10, 25, 0, 0, 0, 0], "--intensity")
    assert main([*register[:4], str(intensity), *register[5:], "--frame-domain", "line_integral"]) == 1
    assert "says it holds intensities" in capsys.readouterr().err


def test_register_takes_the_angles_and_detector_from_the_dicom_header(tmp_path, capsys):
    import pydicom

    truth = [10, 25, 0, 4, -3, 2]
    dcm = _render(tmp_path, "f.dcm", truth, "--sid", "700", "--sdd", "1000", "--spacing", "6", "6")
    (tmp_path / "f.dcm.json").unlink()  # the header alone
    ds = pydicom.dcmread(dcm)
    assert (ds.Modality, float(ds.PositionerPrimaryAngle), float(ds.PositionerSecondaryAngle)) == ("XA", 25, 10)
    rc = main(["register", "--phantom", "head", "--xray", str(dcm), "--truth", *map(str, truth),
               "--json", str(tmp_path / "r.json"), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "init: the C-arm angles of" in printed and "[10.0, 25.0, 0.0]" in printed
    assert "SDD 1000 mm, SID 700 mm" in printed and "pitch 6 x 6 mm" in printed
    assert json.loads((tmp_path / "r.json").read_text())["mtre_mm"] < 1.0


def test_flags_override_the_header_and_a_missing_tag_is_named(tmp_path, capsys):
    import pydicom

    from diffdrr_ros.app.args import detector_for_frame
    from diffdrr_ros.app.cli import build_parser
    from diffdrr_ros.core.xray_files import read_frame

    dcm = _render(tmp_path, "f.dcm", [0, 0, 0, 0, 0, 0], "--sid", "700")
    args = build_parser().parse_args(["register", "--xray", str(dcm), "--sdd", "1100"])
    det, notes = detector_for_frame(args, read_frame(dcm))
    assert det.sdd_mm == 1100.0 and det.sid == 700.0
    assert notes == [f"--sdd 1100.0 overrides DistanceSourceToDetector (0018,1110) = 1020.0 of {dcm}"]
    ds = pydicom.dcmread(dcm)
    del ds.DistanceSourceToDetector
    ds.save_as(dcm)
    assert main(["register", "--phantom", "head", "--xray", str(dcm), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "lacks DistanceSourceToDetector (0018,1110)" in err and "--sdd" in err
    (tmp_path / "f.dcm.json").unlink()
    del ds.PositionerPrimaryAngle
    ds.save_as(dcm)
    assert main(["register", "--phantom", "head", "--xray", str(dcm), "--sdd", "1020", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "--init is required" in err and "PositionerPrimaryAngle (0018,1510)" in err


def _ct_series(directory, series_uid, hu_offset):
    """A small classic CT series (6 slices of 16 x 16, 4 mm) in ``directory``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    directory.mkdir(exist_ok=True)
    for k in range(6):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID, \
            series_uid
        ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = "CT", 1, "MONOCHROME2", \
            16, 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [-30.0, -30.0, 4.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept = [4.0, 4.0], 1, -1024
        ds.PixelData = np.full((16, 16), 1024 + hu_offset, dtype=np.uint16).tobytes()
        ds.save_as(directory / f"{series_uid[-6:]}_{k}.dcm", enforce_file_format=True)


def test_ct_series_uid_chooses_a_series(tmp_path, capsys):
    d = tmp_path / "ct"
    _ct_series(d, "1.2.3.4.111111", 0)
    _ct_series(d, "1.2.3.4.222222", 1000)
    render = ["render", "--ct", str(d), "--size", "8", "8", "--device", "cpu", "--out"]
    assert main([*render, str(tmp_path / "x.npy")]) == 1
    assert "pass series_uid=" in capsys.readouterr().err
    assert main([*render, str(tmp_path / "water.npy"), "--ct-series-uid", "1.2.3.4.111111"]) == 0
    assert main([*render, str(tmp_path / "bone.npy"), "--ct-series-uid", "1.2.3.4.222222"]) == 0
    assert np.load(tmp_path / "bone.npy").max() > 1.5 * np.load(tmp_path / "water.npy").max()


def test_register_cli_with_the_polychromatic_drr(tmp_path, capsys):
    """A frame of the polychromatic simulator (90 kVp, scatter 0.2, heel 0.1; noise-free), registered with the
    same physics (``--drr-model poly``): the pose is recovered (measured 0.08 mm; the mono DRR: 3.4 mm, along
    the beam)."""
    from diffdrr_ros.core.registration import prepare_fixed
    from diffdrr_ros.core.sim import MaterialCT, Spectrum, XRayStyle, simulate_polychromatic_xray

    vol = make_phantom("head_small")
    det = Detector(48, 48, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)
    truth = [5.0, 10.0, 0.0, 3.0, -2.0, 4.0]
    pose = carm_to_matrix(torch.tensor([math.radians(a) for a in truth[:3]], dtype=torch.float64),
                          torch.tensor(truth[3:], dtype=torch.float64), vol.center)
    style = XRayStyle(i0=40000.0, poisson=False, gaussian_noise=0.0, blur_sigma_px=0.0, collimator_radius=0.0,
                      bits=16, scatter_to_primary=0.2, heel_gain=0.1)
    raw = simulate_polychromatic_xray(MaterialCT.from_hu(vol), pose, det, style, Spectrum(kvp=90.0))
    np.save(tmp_path / "frame.npy", prepare_fixed(raw, log_transform=True, i0=style.i0).numpy())  # -log(I/I0)
    register = ["register", "--phantom", "head_small", "--xray", str(tmp_path / "frame.npy"), "--spacing", "8", "8",
                "--sdd", "1020", "--sid", "750", "--init", "7", "8", "1", "6", "-4", "0", "--truth", *map(str, truth),
                "--no-init-search", "--json", str(tmp_path / "r.json"), "--device", "cpu"]
    rc = main([*register, "--drr-model", "poly", "--kvp", "90", "--scatter-to-primary", "0.2", "--heel-gain", "0.1"])
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0, printed
    assert "DRR poly: 90 kVp, 2.5 mm Al, 6 bins, scatter/primary 0.2" in printed
    assert result["drr"] == {"drr_model": "poly", "kvp": 90.0, "filtration_mm_al": 2.5, "energy_bins": 6,
                             "scatter_to_primary": 0.2, "scatter_sigma_fraction": 0.15, "heel_gain": 0.1}
    assert result["mtre_mm"] < 1.0, printed
    # Physics flags without the poly model would be ignored: refused, before anything is loaded.
    assert main([*register, "--kvp", "90"]) == 1
    assert "add --drr-model poly" in capsys.readouterr().err
