"""The detector: one pixel grid for torch and NumPy, and K <-> Detector."""

import numpy as np
import pytest
import torch

from diffdrr_ros.core.geometry import Detector, detector_points, detector_points_np, pixel_axes_mm


def test_intrinsic_matrix_round_trip():
    det = Detector(48, 64, spacing_mm=(0.5, 0.4), sdd_mm=1100.0, sid_mm=700.0, principal_point_mm=(3.0, -2.0))
    back = Detector.from_intrinsic_matrix(det.intrinsic_matrix().reshape(-1).tolist(), 48, 64, (0.5, 0.4), sid_mm=700.0)
    assert back.shape == det.shape and back.sid == pytest.approx(700.0)
    assert back.sdd_mm == pytest.approx(1100.0)
    assert back.principal_point_mm == pytest.approx((3.0, -2.0))
    with pytest.raises(ValueError, match="uncalibrated"):
        Detector.from_intrinsic_matrix([0.0] * 9, 48, 64, (0.5, 0.4))


def test_pixel_axes_agree_with_the_ray_end_points_in_both_array_libraries():
    det = Detector(5, 7, spacing_mm=(2.0, 3.0), sdd_mm=900.0, principal_point_mm=(1.5, -0.5))
    u, v = pixel_axes_mm(det, dtype=torch.float64)
    _, pix = detector_points(det, dtype=torch.float64)
    torch.testing.assert_close(pix[0, :, 0], u)
    torch.testing.assert_close(pix[:, 0, 1], v)
    assert float(u[3]) == pytest.approx(1.5) and float(v[2]) == pytest.approx(-0.5)  # centre pixel
    _, pix_np = detector_points_np(det)
    np.testing.assert_allclose(pix_np, pix.reshape(-1, 3).numpy())
