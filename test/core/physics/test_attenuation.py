"""NIST mass attenuation tables (diffdrr_ros.core.physics.attenuation)."""

import math

import pytest
import torch

from diffdrr_ros.core import physics
from diffdrr_ros.core.physics import ENERGY_NODES_KEV, MU_RHO_TABLE, mass_attenuation
from diffdrr_ros.core.sim import mass_attenuation as sim_mass_attenuation


def test_nodes_and_log_log_interpolation():
    for material, values in MU_RHO_TABLE.items():
        for e, v in zip(ENERGY_NODES_KEV, values, strict=True):
            assert float(mass_attenuation(material, e)) == pytest.approx(v, rel=1e-12)
        for lo, hi, a, b in zip(ENERGY_NODES_KEV, ENERGY_NODES_KEV[1:], values, values[1:], strict=False):
            assert float(mass_attenuation(material, math.sqrt(lo * hi))) == pytest.approx(math.sqrt(a * b), rel=1e-9)
    assert float(mass_attenuation("water", 60.0)) == pytest.approx(0.2059)
    with pytest.raises(ValueError):
        mass_attenuation("soft", 151.0)
    assert physics.material_key("Aluminum") == "aluminium"


def test_simulator_uses_the_shared_table():
    e = torch.linspace(20.0, 120.0, 11, dtype=torch.float64)
    torch.testing.assert_close(sim_mass_attenuation("bone", e), mass_attenuation("bone", e), rtol=0, atol=0)
