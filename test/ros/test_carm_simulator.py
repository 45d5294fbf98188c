"""The simulated C-arm node publishes frames, joints and ground truth (separate process, real DDS)."""

from __future__ import annotations

from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState

from diffdrr_ros.ros.harness import GraphClient, NodeProcess


def test_simulator_node_publishes_its_topics(tmp_path):
    node = NodeProcess({"ct_path": "phantom:head_tiny", "detector.height": 24, "detector.width": 24,
                        "detector.pixel_spacing_mm": [16.0, 16.0], "frame_rate_hz": 4.0},
                       tmp_path / "sim.log", module="diffdrr_ros.ros.carm_simulator", params_file=None)
    client = GraphClient()
    got: dict[str, list] = {"image": [], "joints": [], "truth": []}
    client.node.create_subscription(Image, "fluoro/image", got["image"].append, 10)
    client.node.create_subscription(JointState, "carm/joint_states", got["joints"].append, 50)
    client.node.create_subscription(PoseStamped, "carm_sim/ground_truth", got["truth"].append, 10)
    try:
        ok = client.spin_until(lambda: (len(got["image"]) >= 3 and len(got["truth"]) >= 3 and len(got["joints"]) >= 10)
                               or not node.alive(), 60.0)
        assert ok and node.alive(), node.log()
    finally:
        rc = node.stop()
        client.close()
    assert rc == 0, node.log()
    img = got["image"][-1]
    assert (img.height, img.width, img.encoding) == (24, 24, "mono16")
    assert max(img.data) > 0
    def rate_hz(msgs) -> float:  # from the stamps: independent of when each subscription matched
        t = sorted(m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in msgs)
        return (len(t) - 1) / (t[-1] - t[0])

    assert rate_hz(got["joints"]) > 2 * rate_hz(got["image"])  # joints come faster than frames (20 vs 4 Hz)
    assert {"carm_lao_rao", "carm_cranial_caudal"} <= set(got["joints"][-1].name)
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["image"]}
    assert any((t.header.stamp.sec, t.header.stamp.nanosec) in stamps for t in got["truth"])
    assert got["truth"][-1].header.frame_id == "carm_isocenter"
