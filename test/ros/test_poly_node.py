"""The node with the polychromatic DRR (``registration.drr_model: poly``), over real DDS (loopback).

Frames come from the project's polychromatic simulator (two materials, a 90 kVp spectrum, scatter
and a heel gain; :mod:`diffdrr_ros.core.sim.polychromatic`), and the node's physics parameters
match it: the pose on TF is within 2 mm, and /diagnostics names the model and its physics. The
model itself is fixed at start-up (read-only), its physics may change at run time; an unknown
model is a one-line FATAL.
"""

from __future__ import annotations

import pytest
import torch
from test_registration_node import DET, I0, JOINTS, NODE_PARAMS, Scene, send, start_expecting_fatal

from diffdrr_ros.core.geometry.kinematics import initial_pose
from diffdrr_ros.core.sim import MaterialCT, Spectrum, XRayStyle, simulate_polychromatic_xray
from diffdrr_ros.ros.conversions import array_to_image
from diffdrr_ros.ros.harness import running_node

KVP, SPR, HEEL = 90.0, 0.2, 0.1
#: Quantum noise, scatter and heel as the simulator makes them; no blur or collimator (NODE_PARAMS has neither).
STYLE = XRayStyle(i0=I0, gaussian_noise=0.0, blur_sigma_px=0.0, collimator_radius=0.0, bits=16,
                  scatter_to_primary=SPR, heel_gain=HEEL)
PARAMS = {**NODE_PARAMS, "registration.drr_model": "poly", "registration.kvp": KVP,
          "registration.scatter_to_primary": SPR, "registration.heel_gain": HEEL}


class PolyScene(Scene):
    """The phantom of :class:`Scene`, imaged by the polychromatic simulator."""

    def __init__(self) -> None:
        super().__init__()
        self.materials = MaterialCT.from_hu(self.volume)

    def frame(self, joints, seed: int = 0, det=DET):
        pose = initial_pose(joints, self.table_from_ct)
        return simulate_polychromatic_xray(self.materials, pose, det, STYLE, Spectrum(kvp=KVP),
                                           torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with running_node(PARAMS, tmp_path_factory.mktemp("node") / "node.log") as (client, node):
        yield client, PolyScene(), node


def _registered_values(client, sec) -> dict[str, str] | None:
    """The values of the first 'registered' status about the frame stamped ``sec`` (earlier frames' don't count)."""
    for d in client.diags:
        for s in d.status:
            values = {kv.key: kv.value for kv in s.values}
            if "registered" in s.message and values.get("stamp") == f"{sec:.6f}":
                return values
    return None


def _register(client, scene, node, sec):
    """A frame stamped ``sec``; its TF and the diagnostics values of its registration."""
    send(client, array_to_image(scene.frame(JOINTS, seed=sec), "mono16"), JOINTS, sec)
    assert client.spin_until(lambda: client.tf_for(sec) is not None, 90.0), f"no TF for a poly frame:\n{node.log()}"
    assert client.spin_until(lambda: _registered_values(client, sec) is not None, 10.0), node.log()
    return client.tf_for(sec), _registered_values(client, sec)


def test_poly_frame_registers_within_2mm_and_diagnostics_name_the_physics(system):
    client, scene, node = system
    tf, values = _register(client, scene, node, 100)
    assert scene.mtre(tf, JOINTS) < 2.0, node.log()
    assert values["drr_model"] == "poly"
    physics = dict(item.split("=") for item in values["drr_physics"].split())
    assert physics == {"kvp": "90.0", "filtration_mm_al": "2.5", "energy_bins": "6", "scatter_to_primary": "0.2",
                       "scatter_sigma_fraction": "0.15", "heel_gain": "0.1"}


def test_the_model_is_read_only_and_its_physics_change_at_run_time(system):
    client, scene, node = system
    set_param = client.set_parameter

    assert set_param("registration.drr_model", "mono").successful is False  # the volumes are built for poly
    assert set_param("registration.kvp", 200.0).successful is False  # beyond its range (and the tables)
    assert set_param("registration.kvp", 85.0).successful is True
    tf, values = _register(client, scene, node, 200)
    assert "kvp=85.0" in values["drr_physics"] and values["drr_model"] == "poly"
    assert scene.mtre(tf, JOINTS) < 2.0, node.log()
    assert set_param("registration.kvp", KVP).successful is True


def test_an_unknown_drr_model_is_a_one_line_fatal():
    fatal, stderr = start_expecting_fatal("registration.drr_model:=foo")
    assert len(fatal) == 1 and "registration.drr_model must be one of mono, poly, got 'foo'" in fatal[0], stderr
