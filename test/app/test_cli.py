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
