"""``diffdrr-ros replay``: a simulated case through the node, every frame in turn, twice; a regression; a bad start.

Each replay starts the node in its own process and ROS domain (loopback), records its outputs
and plays the case, paced by the node's diagnostics (``--every-frame``).
"""

from __future__ import annotations

import json

import pytest

from diffdrr_ros.bag import record_messages
from diffdrr_ros.bag.replay import _score, compare, replay
from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.sim import Trajectory, XRayStyle
from diffdrr_ros.core.volume.phantoms import make_phantom
from diffdrr_ros.ros.carm_simulator import Simulator, simulate_messages

DET = Detector(48, 48, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)
STYLE = XRayStyle(blur_sigma_px=0.0)
PARAMS = {"ct_path": "phantom:head_small", "detector.height": 48, "detector.width": 48,
          "detector.pixel_spacing_mm": [8.0, 8.0], "image.i0": STYLE.i0, "registration.pyramid": [4, 2, 1],
          "registration.init_search_first_frame": False,
          "gate.allow_unresolved_depth": True}  # a few degrees of sweep: single-angle poses, on TF for the errors


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    sim = Simulator(make_phantom("head_small"), DET, Trajectory(lao_amplitude_deg=10, cranial_amplitude_deg=5), STYLE)
    path = tmp_path_factory.mktemp("case") / "case"
    record_messages(path, simulate_messages(sim, 4, frame_rate_hz=1.0, joint_rate_hz=10.0))
    return path


@pytest.fixture(scope="module")
def runs(case, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = replay(case, root / "a", params=PARAMS, every_frame=True, progress=False)
    b = replay(case, root / "b", params=PARAMS, every_frame=True, progress=False)
    return root, a, b


@pytest.mark.slow
def test_every_frame_replay_twice_gives_the_same_verdicts(runs):
    root, a, b = runs
    assert a["node"]["started"] and a["node"]["exit_code"] == 0 and not a["node"]["frames_not_finished_in_time"]
    cats_a = [f["category"] for f in a["frames"]]
    assert cats_a == [f["category"] for f in b["frames"]] == ["on_tf"] * 4  # every frame, in order
    for fa, fb in zip(a["frames"], b["frames"], strict=True):
        assert fa["mtre_mm"] < 2.0 and abs(fa["mtre_mm"] - fb["mtre_mm"]) < 0.05
        assert fa["inplane_mm"] is not None and fa["depth_mm"] is not None
        assert fa["latency_ms"] is not None and 0 < fa["latency_ms"] < 60_000
    assert json.loads((root / "a" / "replay.json").read_text())["summary"]["on_tf"] == 4
    assert (root / "a" / "frames.csv").read_text().count("\n") == 5 and (root / "a" / "replay.png").exists()
    assert (root / "a" / "outputs").is_dir() and "CT phantom:head_small" in (root / "a" / "node.log").read_text()
    code, text = compare(root / "a", root / "b")
    assert code == 0 and "no regression" in text


@pytest.mark.slow
def test_compare_flags_a_parameter_change_that_breaks_the_registration(case, runs):
    root, _, _ = runs
    broken = replay(case, root / "broken", params={**PARAMS, "image.invert": True}, every_frame=True, progress=False)
    assert broken["summary"]["on_tf"] < 4
    code, text = compare(root / "a", root / "broken")
    assert code == 1 and "REGRESSION" in text and "changed category" in text


def test_a_node_that_cannot_start_is_reported_not_scored(case, tmp_path):
    report = replay(case, tmp_path / "run", params={**PARAMS, "detector.height": -5}, progress=False,
                    startup_timeout_s=60)
    assert report["node"]["started"] is False and report["node"]["exit_code"] == 1
    assert "detector.height out of range" in report["node"]["reason"]
    code, text = compare(tmp_path / "run", tmp_path / "run")
    assert code == 2 and "did not start" in text


@pytest.mark.slow
def test_a_case_without_ground_truth_still_gets_verdicts(case, runs):
    root, a, _ = runs
    done = {round(f["stamp_s"], 6): {"message": f["verdict"], "values": {}} for f in a["frames"]}
    scored = _score(case, root / "a" / "outputs", [f["stamp_s"] for f in a["frames"]], done, PARAMS, None,
                    "/no/ground_truth", "/fluoro/image")
    assert scored["summary"]["ground_truth"].startswith("none")
    assert [f["category"] for f in scored["frames"]] == ["on_tf"] * 4 and "mtre_mm" not in scored["frames"][0]
    assert all(f["latency_ms"] is not None for f in scored["frames"])  # latency needs no ground truth
