"""Metrics: image similarity (the registration's loss) and pose error (mTRE, in-plane / depth)."""

from .pose_error import (
    CameraAxisError,
    inplane_depth_error,
    mean_target_registration_error,
    target_errors_cam,
    target_points,
)
from .similarity import (
    SIMILARITIES,
    get_similarity,
    gradient_ncc,
    image_gradients,
    mncc_gncc,
    multiscale_ncc,
    neg_l2,
    neg_mse,
    patch_ncc,
    zncc,
)
from .summary import percentile

__all__ = [
    "SIMILARITIES",
    "CameraAxisError",
    "get_similarity",
    "gradient_ncc",
    "image_gradients",
    "inplane_depth_error",
    "mean_target_registration_error",
    "mncc_gncc",
    "multiscale_ncc",
    "neg_l2",
    "neg_mse",
    "patch_ncc",
    "percentile",
    "target_errors_cam",
    "target_points",
    "zncc",
]
