"""``diffdrr-ros demo``'s options (the demo itself runs a node for ~30 s: `make demo`, not a test)."""

from __future__ import annotations

import pytest

from diffdrr_ros.app.cli import build_parser
from diffdrr_ros.app.demo import CAM_B_FROM_A
from diffdrr_ros.ros.params import PARAMS_BY_NAME


def test_demo_is_biplane_unless_asked_for_one_plane():
    parse = build_parser().parse_args
    assert parse(["demo"]).planes == 2
    assert parse(["demo", "--planes", "1"]).planes == 1
    with pytest.raises(SystemExit):
        parse(["demo", "--planes", "3"])


def test_demo_plane_b_is_the_nodes_default_geometry():
    default = PARAMS_BY_NAME["biplane.cam_b_from_cam_a"].default
    assert default == CAM_B_FROM_A
