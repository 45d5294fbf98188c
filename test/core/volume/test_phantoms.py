"""Tests for diffdrr_ros.core.volume.phantoms."""

import math

import pytest
import torch

from diffdrr_ros.core.volume.phantoms import PHANTOMS, box_phantom, head_phantom, make_phantom, sphere_phantom


@pytest.fixture(scope="module")
def head():
    return head_phantom(48)


def test_registry():
    assert {"head_tiny", "head_small", "head", "head_large"} <= set(PHANTOMS)
    vol = make_phantom("head_tiny")
    assert vol.shape == (32, 32, 32) and vol.kind == "hu"
    with pytest.raises(ValueError, match="head_small"):
        make_phantom("no_such_phantom")


def test_head_geometry_and_ranges(head):
    assert head.shape == (48, 48, 48)
    assert head.kind == "hu" and head.data.dtype == torch.float32
    torch.testing.assert_close(head.spacing, torch.full((3,), 5.0, dtype=torch.float64))
    torch.testing.assert_close(head.center, torch.zeros(3, dtype=torch.float64))
    d = head.data
    assert float(d.min()) == -1000.0 and 2500.0 <= float(d.max()) <= 3500.0
    # air margin all round: the grid boundary is air
    for face in (d[0], d[-1], d[:, 0], d[:, -1], d[:, :, 0], d[:, :, -1]):
        assert bool((face == -1000.0).all())
    # physical size of the non-air region, roughly 180 (LR) x 220 (AP) x 200 (SI) mm
    body = d > -500
    idx = torch.nonzero(body)
    size = (idx.max(0).values - idx.min(0).values + 1).double() * 5.0
    assert 160 <= size[0] <= 195 and 200 <= size[1] <= 235 and 185 <= size[2] <= 215
    # tissue classes are present in sensible proportions
    n = body.sum()
    bone = (d >= 700).sum()
    brain = ((d > 30) & (d < 50)).sum()
    assert 0.05 < bone / n < 0.35
    assert 0.2 < brain / n < 0.6
    assert ((d > -1000) & (d < -50)).sum() > 0  # orbital fat
    # air pockets (sinuses) inside the body, i.e. -1000 HU voxels enclosed in the head
    inner = d[8:40, 8:40, 8:40]
    assert (inner == -1000).sum() > 10


def test_head_is_asymmetric(head):
    d = head.data
    # left-right mirror (x -> -x) differs clearly, and so do AP and SI flips
    lr = (d - d.flip(0)).abs()
    assert (lr > 300).sum() > 100
    assert float(lr.mean()) > 1.0
    assert float((d - d.flip(1)).abs().mean()) > 50
    assert float((d - d.flip(2)).abs().mean()) > 50
    # a PA-like projection (integrate along y) is not mirror symmetric either
    mu = head.to_attenuation().data
    img = mu.sum(1)
    assert float((img - img.flip(0)).norm() / img.norm()) > 0.01
    # 180 deg rotation about the SI axis (x -> -x, y -> -y)
    assert float((d - d.flip(0).flip(1)).abs().mean()) > 50


def test_head_landmarks_sides():
    vol = head_phantom(96)  # 2.5 mm voxels
    d = vol.data
    left = vol.index_to_world(torch.nonzero(d >= 2900).double())  # metal filling
    assert left.shape[0] > 0 and bool((left[:, 0] > 0).all())  # on the patient's left (+x)
    assert bool((left[:, 1] < 0).all())  # anterior (-y)
    assert bool((left[:, 2] < -40).all())  # inferior (lower jaw)
    # calcification in the left posterior hemisphere
    ijk = vol.world_to_index(torch.tensor([32.0, 28.0, 45.0], dtype=torch.float64)).round().long()
    assert float(d[tuple(ijk)]) == 1200.0


def test_head_deterministic_and_noise():
    a, b = head_phantom(32), head_phantom(32)
    assert torch.equal(a.data, b.data)
    n1 = head_phantom(32, noise_std_hu=10.0, seed=3)
    n2 = head_phantom(32, noise_std_hu=10.0, seed=3)
    assert torch.equal(n1.data, n2.data)
    std = float((n1.data - a.data).std())
    assert 8.0 < std < 12.0


def test_head_explicit_spacing():
    vol = head_phantom(40, spacing=6.0)
    torch.testing.assert_close(vol.spacing, torch.full((3,), 6.0, dtype=torch.float64))
    torch.testing.assert_close(vol.extent_mm, torch.full((3,), 240.0, dtype=torch.float64))


def test_sphere_phantom_voxel_centre_rule():
    vol = sphere_phantom(5.0, center_mm=(1.0, -2.0, 0.5), value=3.0, shape=(20, 16, 28), spacing=(1.0, 1.0, 0.5))
    assert vol.kind == "raw" and vol.shape == (20, 16, 28)
    torch.testing.assert_close(vol.center, torch.zeros(3, dtype=torch.float64))
    ijk = torch.stack(torch.meshgrid(*[torch.arange(n) for n in vol.shape], indexing="ij"), -1).double()
    xyz = vol.index_to_world(ijk)
    inside = (xyz - torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)).norm(dim=-1) <= 5.0
    assert torch.equal(vol.data, torch.where(inside, 3.0, 0.0).float())
    assert set(torch.unique(vol.data).tolist()) == {0.0, 3.0}
    # voxel count approximates the sphere volume
    approx = float((vol.data > 0).sum()) * 1.0 * 1.0 * 0.5
    assert abs(approx - 4.0 / 3.0 * math.pi * 125.0) / (4.0 / 3.0 * math.pi * 125.0) < 0.1


def test_box_phantom_voxel_centre_rule():
    # 1 mm voxels centred at half-integers for an even grid: edges at integers
    vol = box_phantom((-2.0, -1.0, 0.0), (3.0, 1.0, 4.0), value=2.0, shape=10, spacing=1.0)
    xs = vol.index_to_world(torch.stack([torch.arange(10.0), torch.zeros(10), torch.zeros(10)], -1))[:, 0]
    assert xs.tolist() == [-4.5, -3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 4.5]
    mask = vol.data > 0
    idx = torch.nonzero(mask)
    assert idx.min(0).values.tolist() == [3, 4, 5] and idx.max(0).values.tolist() == [7, 5, 8]
    assert int(mask.sum()) == 5 * 2 * 4
    assert set(torch.unique(vol.data).tolist()) == {0.0, 2.0}
    # a centre exactly on the boundary counts as inside (closed box)
    edge = box_phantom((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), value=1.0, shape=3, spacing=0.5)
    assert int(edge.data.sum()) == 27
