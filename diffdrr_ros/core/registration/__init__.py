"""Intensity-based 2D/3D registration with the differentiable DRR (the seed's loop and beyond).

* :class:`Registrar` (:mod:`.registrar`) - a CT prepared once (pyramid), registered to many frames;
* :class:`RegistrationConfig` (:mod:`.config`), :class:`RegistrationResult` (:mod:`.result`);
* :mod:`.fixed_image` - frame checks and units; :mod:`.search` - the wide initial search;
  :mod:`.parameterization` - the optimiser's view of the pose; :mod:`.optimizers` - the
  seed's GD / momentum / damped momentum / Adam with separate rotation and translation steps;
* :mod:`.uncertainty` - the pose covariance from the loss curvature;
* :mod:`.tracking` - what the node does frame after frame (start pose, lost-track gate);
* :mod:`.calibration` - the poly DRR's physics (kVp, scatter, heel) fitted from registered frames.
"""

from ..geometry.carm import perturb_pose
from .calibration import (
    DEFAULT_BOUNDS,
    DEFAULT_FIT,
    PHYSICS_PARAMETERS,
    PhysicsCalibration,
    PhysicsSensitivity,
    calibrate_physics,
    default_fit,
    physics_sensitivity,
    register_with_calibration,
)
from .config import COMPARE_DOMAINS, RegistrationConfig, similarity_fn
from .consistency import own_view_shift_mm
from .fixed_image import FixedImageError, centroid_mm, downsample_image, prepare_fixed
from .optimizers import DEFAULT_STEP_SIZES, OPTIMIZERS, make_optimizer
from .parameterization import PARAMETERIZATIONS, initial_params, params_to_pose
from .registrar import Registrar, coarsen_to_footprint
from .result import RegistrationResult
from .tracking import (
    AmbiguityGate,
    FrameStart,
    KnownPoseGate,
    LostTrackGate,
    PatientDrift,
    Tracker,
    ViewWindow,
    WindowView,
    disagreeing_views,
)
from .uncertainty import PoseCovariance, pose_covariance
from .views import View, ViewStack, view_from_joints

__all__ = [
    "COMPARE_DOMAINS",
    "DEFAULT_BOUNDS",
    "DEFAULT_FIT",
    "DEFAULT_STEP_SIZES",
    "OPTIMIZERS",
    "PARAMETERIZATIONS",
    "PHYSICS_PARAMETERS",
    "AmbiguityGate",
    "FixedImageError",
    "FrameStart",
    "KnownPoseGate",
    "LostTrackGate",
    "PatientDrift",
    "PhysicsCalibration",
    "PhysicsSensitivity",
    "PoseCovariance",
    "Registrar",
    "RegistrationConfig",
    "RegistrationResult",
    "Tracker",
    "View",
    "ViewStack",
    "ViewWindow",
    "WindowView",
    "calibrate_physics",
    "centroid_mm",
    "coarsen_to_footprint",
    "default_fit",
    "disagreeing_views",
    "downsample_image",
    "initial_params",
    "make_optimizer",
    "own_view_shift_mm",
    "params_to_pose",
    "perturb_pose",
    "physics_sensitivity",
    "pose_covariance",
    "prepare_fixed",
    "register_with_calibration",
    "similarity_fn",
    "view_from_joints",
]
