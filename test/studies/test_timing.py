"""The DRR timing study (the seed's Table 1) and the rendering benchmark, on tiny inputs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffdrr_ros.app.cli import main
from diffdrr_ros.core.geometry import Detector, carm_to_matrix
from diffdrr_ros.core.volume.phantoms import make_phantom
from diffdrr_ros.studies import timing

ROOT = Path(__file__).resolve().parents[2]


def test_timing_study_writes_table_json_csv_and_plot(tmp_path):
    args = ["study", "timing", "--phantom", "head_tiny", "--sizes", "16", "24", "--patched-sizes", "24",
            "--patch", "10", "--patch-image", "20", "--patch-sizes", "8", "20", "--repeats", "2", "--backward",
            "--in-process", "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "timing.json").read_text())
    rows = result["rows"]
    assert [(r["size"], r["patch"]) for r in rows] == [(16, None), (24, None), (24, 10), (20, 8), (20, 20)]
    assert rows[2]["n_tiles"] == 9 and rows[3]["n_tiles"] == 9 and rows[0]["n_tiles"] == 1
    for r in rows:
        assert len(r["fwd_ms"]) == 2 and len(r["fwd_bwd_ms"]) == 2 and r["fwd_median_ms"] > 0
        assert r["voxel_samples"] > 0 and r["fwd_msamples_per_s"] > 0
    assert result["seed"]["table1"][0] == [100, None, 21.2, 2.86]
    assert (tmp_path / "timing.csv").read_text().count("\n") == 6
    assert (tmp_path / "timing.png").stat().st_size > 10_000


def test_timing_child_process_measures_one_configuration():
    opts = {"ct": None, "phantom": "head_tiny", "method": "trilinear", "samples": 20, "repeats": 1,
            "budget_s": 10.0, "backward": False, "memory_budget_mb": 256.0, "panel_mm": 400.0, "sdd": 1020.0,
            "sid": None, "device": "cpu", "threads": 1, "size": 12, "patch": 5}
    res = timing._measure_in_child(opts)
    assert res["n_tiles"] == 9 and len(res["fwd_ms"]) == 1 and res["first_call_s"] > 0
    assert res["peak_mb"] is None or res["peak_mb"] >= 0


def test_seed_table_lookup_and_voxel_sample_estimate():
    assert timing._seed_value(1024, 16) == (7450.0, 647.0) and timing._seed_value(700, None) is None
    vol = make_phantom("head_tiny")
    det = Detector(6, 6, spacing_mm=(30.0, 30.0), sdd_mm=1020.0)
    pose = carm_to_matrix(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), vol.center)
    siddon = timing.voxel_samples(vol, det, pose, "siddon", None)
    assert 36 * max(vol.shape) * 0.5 < siddon < 36 * sum(vol.shape) + 36
    assert timing.voxel_samples(vol, det, pose, "trilinear", 10) <= 360


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_render_benchmark_runs_for_this_package_alone(tmp_path):
    nib = pytest.importorskip("nibabel")
    ct = tmp_path / "ct.nii.gz"
    hu = (np.random.default_rng(0).random((20, 18, 12)) * 1000 - 500).astype(np.float32)
    nib.save(nib.Nifti1Image(hu, np.diag([2.0, 2.0, 3.0, 1.0])), str(ct))
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_render.py"), "--ct", str(ct), "--libs", "ours",
           "--sizes", "8", "--methods", "siddon", "--repeats", "1", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 8 | siddon | ours |" in proc.stdout
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["fwd_ms_median"] > 0 and row["fwd_bwd_ms_median"] > 0 and row["voxel_samples"] > 0
    assert "load_average" in report and report["machine"]["cpu_count"] >= 1
