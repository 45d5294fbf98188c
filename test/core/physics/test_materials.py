"""HU -> material densities (diffdrr_ros.core.physics.materials)."""

import pytest
import torch

from diffdrr_ros.core.physics import DEFAULT_TABLE, MaterialTable, decompose_hu


def test_default_table_is_decompose_hu():
    hu = torch.linspace(-1500.0, 4000.0, 5501, dtype=torch.float64)
    soft, bone = decompose_hu(hu)
    dens = DEFAULT_TABLE(hu)
    assert DEFAULT_TABLE.materials == ("soft", "bone") and dens.shape == (2, *hu.shape)
    torch.testing.assert_close(dens[0], soft, atol=1e-12, rtol=0)
    torch.testing.assert_close(dens[1], bone, atol=1e-12, rtol=0)


def test_user_table_piecewise_linear_and_validated():
    table = MaterialTable.from_rows([(-1000, 0.0, 0.0), (0, 1.0, 0.0), (1000, 0.5, 1.0)], ["water", "cortical_bone"])
    assert table.materials == ("soft", "bone")
    d = table(torch.tensor([[-2000.0, -500.0], [500.0, 2000.0]]))
    assert d.shape == (2, 2, 2)
    torch.testing.assert_close(d[0], torch.tensor([[0.0, 0.5], [0.75, 0.0]]))  # above: slope -0.5/1000, clamped
    torch.testing.assert_close(d[1], torch.tensor([[0.0, 0.0], [0.5, 2.0]]))  # above: last slope continues
    assert table(torch.zeros(3, dtype=torch.int16)).dtype == torch.float32
    with pytest.raises(ValueError):
        MaterialTable((0.0, 0.0), {"soft": (1.0, 1.0)})
    with pytest.raises(ValueError):
        MaterialTable((0.0, 1.0), {"lead": (1.0, 1.0)})
    with pytest.raises(ValueError):
        MaterialTable((0.0, 1.0), {"soft": (1.0, -1.0)})
