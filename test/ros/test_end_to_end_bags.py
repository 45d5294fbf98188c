"""End to end by bag replay, as integrators test: simulator bag -> node -> recorded output -> score.

Three processes besides pytest: the registration node, `diffdrr-ros bag record` of the
node's output, and `diffdrr-ros bag play` of a bag the simulator wrote offline. A second
run replays a bag with bad messages interleaved (wrong encoding, NaN frame, a frame with
no joints near it): nothing crashes, bad frames get no TF, good frames still register.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diffdrr_ros.bag import record_messages, score_bag
from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.core.sim import Trajectory, XRayStyle
from diffdrr_ros.core.volume.phantoms import make_phantom
from diffdrr_ros.ros.carm_simulator import IMAGE_TOPIC, Simulator, simulate_messages
from diffdrr_ros.ros.conversions import array_to_image, image_to_array
from diffdrr_ros.ros.harness import REPO, NodeProcess, ros_env

H = W = 48
DET = Detector(H, W, spacing_mm=(8.0, 8.0), sdd_mm=1020.0, sid_mm=750.0)
STYLE = XRayStyle(blur_sigma_px=0.0)  # the DRR does not model detector blur (yet): keep frames sharp
NODE_PARAMS = {
    "ct_path": "phantom:head_small", "device": "cpu", "detector.height": H, "detector.width": W,
    "detector.pixel_spacing_mm": [8.0, 8.0], "image.i0": STYLE.i0, "registration.pyramid": [4, 2, 1],
    "registration.init_search_first_frame": False,
    # The bag pipeline is under test here, on a sweep of a few degrees; the known-pose gate, which holds
    # single-angle poses back from /tf, has its own tests (test_multiview_node.py).
    "gate.allow_unresolved_depth": True,
}
N_FRAMES = 6
FRAME_RATE = 1.0


def _simulated(bad: bool) -> list:
    sim = Simulator(make_phantom("head_small"), DET, Trajectory(lao_amplitude_deg=10, cranial_amplitude_deg=5),
                    STYLE)
    msgs = list(simulate_messages(sim, N_FRAMES, frame_rate_hz=FRAME_RATE, joint_rate_hz=10.0))
    if not bad:
        return msgs
    images = [i for i, m in enumerate(msgs) if m[0] == IMAGE_TOPIC]
    out = list(msgs)
    # Frame 1: unsupported encoding. Frame 3: NaN pixels. Frame 4: joints around it dropped.
    topic, mt, ns, img = out[images[1]]
    img.encoding = "yuv422"
    topic, mt, ns, img = out[images[3]]
    raw = image_to_array(img).astype(np.float32)
    raw[10:20, 10:20] = np.nan
    out[images[3]] = (topic, mt, ns, array_to_image(raw, "32FC1", img.header.stamp, img.header.frame_id))
    t4 = out[images[4]][2]
    out = [m for m in out if not (m[0] == "carm/joint_states" and abs(m[2] - t4) < 0.9e9)]
    return out


def _run(tmp: Path, bad: bool) -> tuple[dict, NodeProcess]:
    sim_bag, out_bag = tmp / "sim", tmp / "out"
    record_messages(sim_bag, _simulated(bad))
    node = NodeProcess(NODE_PARAMS, tmp / "node.log")
    env = ros_env()
    rec = subprocess.Popen([sys.executable, "-m", "diffdrr_ros.app.cli", "bag", "record", str(out_bag), "--topics",
                            "/tf", IMAGE_TOPIC, "--no-progress", "--discovery-timeout", "30"],
                           env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(4.0)  # node and recorder come up (the node loads the CT, the recorder discovers)
        assert node.alive(), node.log()
        play = subprocess.run([sys.executable, "-m", "diffdrr_ros.app.cli", "bag", "play", str(sim_bag),
                               "--rate", "0.5", "--no-progress", "--wait-for-subscribers", "20"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert play.returncode == 0, play.stdout + play.stderr
        time.sleep(4.0)  # the last registrations finish
        assert node.alive(), node.log()
    finally:
        rec.send_signal(signal.SIGINT)
        rec_out = rec.communicate(timeout=30)[0]
        rc = node.stop()
    assert rec.returncode == 0, rec_out
    assert rc == 0, node.log()
    result = score_bag([sim_bag, out_bag], make_phantom("head_small"), tf_child="ct")
    return result, node


@pytest.mark.slow
def test_replayed_simulator_bag_registers(tmp_path):
    result, node = _run(tmp_path, bad=False)
    s = result["summary"]
    assert s["frames"] == N_FRAMES
    registered = [f for f in result["frames"] if f["has_tf"]]
    assert len(registered) >= N_FRAMES - 2, node.log()  # the first one or two may be superseded (latest wins)
    assert all(f["mtre_mm"] < 2.0 for f in registered), result["frames"]


@pytest.mark.slow
def test_replayed_bag_with_bad_messages(tmp_path):
    result, node = _run(tmp_path, bad=True)
    frames = sorted(result["frames"], key=lambda f: f["stamp_ns"])
    assert not frames[1]["has_tf"] and not frames[3]["has_tf"] and not frames[4]["has_tf"]
    log = node.log(tail=100_000)
    assert "unsupported encoding" in log and "NaN" in log and "stale joint state" in log
    good = [f for i, f in enumerate(frames) if i in (2, 5)]
    assert all(f["has_tf"] and f["mtre_mm"] < 2.0 for f in good), (frames, log[-3000:])
