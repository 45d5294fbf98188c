"""The studies with the polychromatic DRR: ``--drr-model poly`` and its physics flags, ``--fixed poly``."""

import json

import numpy as np
import pytest
import torch

from diffdrr_ros.app.cli import build_parser, main
from diffdrr_ros.studies import common

TINY = ["--phantom", "head_tiny", "--size", "24", "--no-progress", "--threads", "1"]
#: Frames of the polychromatic simulator with noise, blur 0.6 px (modelled) and the collimator; from near the truth.
POLY_FRAMES = ["--phantom", "head_small", "--size", "48", "--no-progress", "--threads", "2", "--n", "1",
               "--no-warmup", "--max-deg", "3", "--max-mm", "5", "--fixed", "poly", "--set", "init_search=false",
               "--set", "similarity=gncc", "--set", "compare=intensity", "--set", "polish_optimizer=lm",
               "--set", "max_iterations=40", "--set", "drr_blur_sigma_px=0.6"]


def test_montecarlo_poly_drr_on_polychromatic_frames_removes_the_depth_bias(tmp_path):
    """The same frame and start: the mono DRR is off along the beam (measured 3.3 mm), the poly DRR with the
    frame's physics is not (0.1 mm)."""
    summaries = {}
    for model in ("mono", "poly"):
        out = tmp_path / model
        assert main(["study", "montecarlo", *POLY_FRAMES, "--drr-model", model, "--out", str(out)]) == 0
        summaries[model] = json.loads((out / "summary.json").read_text())
    poly, mono = summaries["poly"], summaries["mono"]
    assert poly["fixed"] == "poly" and poly["config"]["drr_model"] == "poly" and mono["config"]["drr_model"] == "mono"
    assert poly["summary"]["success_rate"] == 1.0 and poly["summary"]["depth_median_mm"] < 0.5
    assert mono["summary"]["depth_median_mm"] > 1.5
    assert mono["summary"]["depth_median_mm"] > 5 * poly["summary"]["depth_median_mm"]


def test_montecarlo_physics_flags_reach_the_config(tmp_path):
    args = ["study", "montecarlo", *TINY, "--n", "1", "--no-warmup", "--set", "init_candidates=8", "--set",
            "init_refine=2", "--set", "init_refine_iterations=2", "--set", "max_iterations=3", "--fixed", "xray",
            "--drr-model", "poly", "--kvp", "100", "--filtration-mm-al", "3", "--energy-bins", "4",
            "--scatter-to-primary", "0.1", "--scatter-sigma-fraction", "0.2", "--heel-gain", "0.05",
            "--out", str(tmp_path)]
    assert main(args) == 0  # the xray frame of a poly registration starts from its own (poly) DRR
    cfg = json.loads((tmp_path / "summary.json").read_text())["config"]
    assert {k: cfg[k] for k in ("drr_model", "kvp", "filtration_mm_al", "energy_bins", "scatter_to_primary",
                                "scatter_sigma_fraction", "heel_gain")} == {
        "drr_model": "poly", "kvp": 100.0, "filtration_mm_al": 3.0, "energy_bins": 4, "scatter_to_primary": 0.1,
        "scatter_sigma_fraction": 0.2, "heel_gain": 0.05}


def test_physics_flags_need_the_poly_model(capsys):
    parse = build_parser().parse_args
    with pytest.raises(ValueError, match="add --drr-model poly"):
        common.config_overrides(parse(["study", "montecarlo", "--kvp", "90"]))
    assert common.config_overrides(parse(["study", "montecarlo", "--kvp", "90", "--set", "drr_model=poly"])) == {
        "kvp": 90.0, "drr_model": "poly"}  # the model from --set counts
    assert common.config_overrides(parse(["study", "montecarlo", "--drr-model", "poly", "--set", "kvp=70"])) == {
        "drr_model": "poly", "kvp": 70}  # --set wins over the flags
    assert main(["study", "montecarlo", *TINY, "--n", "1", "--scatter-to-primary", "0.1"]) == 1
    assert "add --drr-model poly" in capsys.readouterr().err


def test_landscape_and_optimizers_take_the_poly_drr(tmp_path):
    args = ["study", "landscape", *TINY, "--steps", "5", "--steps-2d", "3", "--pairs", "theta:phi",
            "--range-deg", "10", "--range-mm", "10", "--similarities", "zncc", "--drr-model", "poly", "--kvp", "70",
            "--out", str(tmp_path / "landscape")]
    assert main(args) == 0
    result = json.loads((tmp_path / "landscape" / "landscape.json").read_text())
    assert result["drr"]["drr_model"] == "poly" and result["drr"]["kvp"] == 70.0
    assert all(sweep["argmin_offset"]["zncc"] == 0.0 for sweep in result["sweeps_1d"].values())
    args = ["study", "optimizers", *TINY, "--n", "1", "--optimizers", "adam", "--presets", "seed",
            "--set", "max_iterations=3", "--drr-model", "poly", "--out", str(tmp_path / "optimizers")]
    assert main(args) == 0
    summary = json.loads((tmp_path / "optimizers" / "summary.json").read_text())
    assert summary["overrides"]["drr_model"] == "poly" and summary["summary"]["seed/adam"]["n"] == 1


def test_poly_fixed_image_needs_a_ct_in_hu():
    from diffdrr_ros.core.geometry import Detector
    from diffdrr_ros.core.registration import Registrar, RegistrationConfig
    from diffdrr_ros.core.volume.phantoms import make_phantom
    from diffdrr_ros.studies.montecarlo import fixed_image

    ct = make_phantom("head_tiny")
    reg = Registrar(ct, Detector(32, 32, spacing_mm=(16.0, 16.0)), RegistrationConfig(drr_model="poly"), device="cpu")
    truth = reg.pose_from_carm([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="HU"):
        fixed_image(reg, truth, "poly", ct=ct.to_attenuation())
    drr, _ = fixed_image(reg, truth, "drr")  # the poly DRR: the same physics as the frame, less noise and blur
    for kind in ("poly", "xray"):
        img, mask = fixed_image(reg, truth, kind, ct=ct)
        assert torch.isfinite(img[torch.from_numpy(mask)]).all() and 0.3 < mask.mean() < 1.0
        corr = np.corrcoef(img.numpy()[mask], drr.numpy()[mask])[0, 1]
        assert 0.95 < corr < 1.0, (kind, corr)
