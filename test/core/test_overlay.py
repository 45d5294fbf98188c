"""Overlay images for the OR monitor."""

import numpy as np
import pytest

from diffdrr_ros.core.overlay import overlay, side_by_side, to_uint8


def _disc(shift=0):
    y, x = np.mgrid[:64, :64]
    return ((x - 32 - shift) ** 2 + (y - 32) ** 2 < 15**2).astype(np.float64)


def test_edges_follow_the_drr():
    out = overlay(np.zeros((64, 64)), _disc(), mode="edges", color=(255, 0, 0))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    red = (out[..., 0] == 255) & (out[..., 1] == 0)
    ys, xs = np.nonzero(red)
    r = np.hypot(xs - 32, ys - 32)
    assert red.sum() > 40 and np.all(np.abs(r - 15) < 3)  # on the disc's rim only


def test_blend_and_errors():
    out = overlay(_disc(), _disc(5), mode="blend")
    assert out.shape == (64, 64, 3)
    with pytest.raises(ValueError):
        overlay(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(ValueError):
        overlay(np.zeros((4, 4)), np.zeros((4, 4)), mode="sparkles")


def test_to_uint8_handles_nan_and_constant():
    assert to_uint8(np.full((3, 3), 5.0)).max() == 0
    img = np.array([[np.nan, 0.0], [1.0, 2.0]])
    out = to_uint8(img, percentiles=(0, 100))
    assert out[1, 1] == 255 and out[0, 1] == 0
    assert side_by_side(np.zeros((2, 2)), np.zeros((2, 3))).shape == (2, 5, 3)
