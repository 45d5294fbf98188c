"""The studies end to end on the tiny phantom (seconds), and their shared helpers."""

import json
import math

import pytest
import torch

from diffdrr_ros.app.cli import main
from diffdrr_ros.studies import common
from diffdrr_ros.studies.landscape import capture_range

TINY = ["--phantom", "head_tiny", "--size", "24", "--no-progress", "--threads", "1"]
CHEAP = ["--set", "init_candidates=16", "--set", "init_refine=4", "--set", "init_refine_iterations=5",
         "--set", "max_iterations=15", "--set", "pyramid=[2,1]"]


def test_montecarlo_writes_its_outputs(tmp_path):
    assert main(["study", "montecarlo", *TINY, *CHEAP, "--n", "2", "--no-warmup", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["summary"]["n"] == 2 and 0.0 <= summary["summary"]["success_rate"] <= 1.0
    assert summary["config"]["init_candidates"] == 16 and summary["config"]["pyramid"] == [2, 1]
    rows = (tmp_path / "runs.csv").read_text().splitlines()
    assert len(rows) == 3 and "mtre_mm" in rows[0] and "seed_success" in rows[0]
    curves = json.loads((tmp_path / "curves.json").read_text())
    assert len(curves["loss_per_iteration"]) == 2 and all(len(c) > 0 for c in curves["loss_per_iteration"])
    assert (tmp_path / "montecarlo.png").stat().st_size > 10_000


def test_optimizers_runs_every_optimizer_from_the_same_starts(tmp_path):
    args = ["study", "optimizers", *TINY, "--n", "1", "--optimizers", "adam", "gd", "--presets", "seed",
            "--set", "max_iterations=4", "--out", str(tmp_path)]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["summary"]) == {"seed/adam", "seed/gd"}
    assert summary["seed_table2_success"]["adam"] == pytest.approx(0.857)
    assert (tmp_path / "optimizers.png").exists() and (tmp_path / "convergence.png").exists()
    starts = [line.split(",")[1] for line in (tmp_path / "runs.csv").read_text().splitlines()[1:]]
    assert len(starts) == 2 and starts[0] == starts[1]  # same start mTRE: the same start


def test_landscape_minimum_sits_at_the_truth(tmp_path):
    args = ["study", "landscape", *TINY, "--steps", "7", "--steps-2d", "3", "--pairs", "theta:phi",
            "--range-deg", "15", "--range-mm", "20", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "landscape.json").read_text())
    for name, sweep in result["sweeps_1d"].items():
        for sim in ("zncc", "l2"):
            assert sweep["argmin_offset"][sim] == 0.0, (name, sim)
            lo, hi = sweep["capture_range"][sim]
            assert lo < 0 < hi
    grid = result["grids_2d"]["theta:phi"]["loss"]["zncc"]
    assert len(grid) == 3 and min(min(r) for r in grid) == grid[1][1]
    assert (tmp_path / "landscape_1d.png").exists() and (tmp_path / "landscape_2d.png").exists()


def test_capture_range_stops_at_the_first_uphill_step():
    x = torch.linspace(-3, 3, 7).numpy()
    loss = torch.tensor([0.5, 0.9, 0.4, 0.0, 0.2, 0.6, 0.5]).numpy()
    assert capture_range(x, loss) == (-2.0, 2.0)


def test_overrides_presets_and_starts():
    assert common.parse_overrides(["pyramid=[4,2]", "similarity=mncc+gncc", "init-keep=2"]) == {
        "pyramid": (4, 2), "similarity": "mncc+gncc", "init_keep": 2}
    seed = common.make_config("seed")
    assert seed.pyramid == (1,) and not seed.init_search and seed.parameterization == "carm"
    with pytest.raises(ValueError, match="unknown RegistrationConfig"):
        common.make_config("default", {"no_such_field": 1})
    with pytest.raises(ValueError, match="key=value"):
        common.parse_overrides(["pyramid"])

    class _Reg:
        center = torch.zeros(3, dtype=torch.float64)

    truth = torch.eye(4, dtype=torch.float64)
    a = common.random_starts(_Reg(), truth, 5, seed=3)
    b = common.random_starts(_Reg(), truth, 5, seed=3)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, common.random_starts(_Reg(), truth, 5, seed=4))
    assert math.isfinite(float(a.sum()))


def test_montecarlo_fixed_image_kinds():
    import numpy as np
    import torch

    from diffdrr_ros.core.geometry import Detector
    from diffdrr_ros.core.registration import Registrar, RegistrationConfig
    from diffdrr_ros.core.volume.phantoms import make_phantom
    from diffdrr_ros.studies.montecarlo import FIXED_KINDS, fixed_image

    ct = make_phantom("head_tiny")
    reg = Registrar(ct, Detector(32, 32, spacing_mm=(16.0, 16.0)), RegistrationConfig(), device="cpu")
    truth = reg.pose_from_carm([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    drr, none = fixed_image(reg, truth, "drr")
    assert none is None
    for kind in FIXED_KINDS[1:]:
        img, mask = fixed_image(reg, truth, kind, ct=ct)
        assert mask.dtype == bool and 0.3 < mask.mean() < 1.0  # collimator (and dense pixels) masked
        corr = np.corrcoef(img.numpy()[mask], drr.numpy()[mask])[0, 1]
        assert 0.9 < corr < 1.0, (kind, corr)  # like the DRR, but not the DRR
    assert torch.isfinite(img[torch.from_numpy(mask)]).all()
