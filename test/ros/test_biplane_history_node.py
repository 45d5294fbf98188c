"""``biplane.with_history: false``: a pair is registered alone (its depth is known), not with earlier views."""

from __future__ import annotations

import math

from test_biplane_node import AP, PARAMS, _answered, _frame_b, biplane_system, register_pair
from test_registration_node import send

from diffdrr_ros.core.geometry import CArmJoints
from diffdrr_ros.ros.conversions import array_to_image


def _views_of(client, sec: float) -> str | None:
    for d in client.diags:
        for st in d.status:
            kv = {v.key: v.value for v in st.values}
            if "stamp" in kv and abs(float(kv["stamp"]) - sec) < 1e-6 and "views" in kv:
                return kv["views"]
    return None


def test_a_pair_without_the_angle_history_registers_alone(tmp_path):
    gen = biplane_system({**PARAMS, "biplane.with_history": False}, tmp_path)
    system = next(gen)
    try:
        client, pub_b, scene, node = system
        assert register_pair(system, _frame_b(scene, AP, 200), AP, 200) is not None, node.log()
        lao = CArmJoints(lao_rad=math.radians(30), cranial_rad=math.radians(5))  # a new angle: a view for the history
        pub_b.publish(_frame_b(scene, lao, 201))
        client.spin_for(0.3)
        n = len(client.diags)
        send(client, array_to_image(scene.frame(lao, seed=201), "mono16"), lao, 201)
        assert _answered(client, 201, n), node.log()
        assert client.spin_until(lambda: _views_of(client, 201) is not None, 10.0), node.log()
        assert _views_of(client, 201) == "2", node.log()  # with the history: 3 (the AP frame)
        client.spin_for(0.5)
        assert client.tf_for(201) is not None and scene.mtre(client.tf_for(201), lao) < 2.0, node.log()
    finally:
        gen.close()
