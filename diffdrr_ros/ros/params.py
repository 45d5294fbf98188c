"""The registration node's parameters: names, defaults, descriptions, ranges.

One table, so that the node declares them, ``config/registration.yaml`` documents them, and
a test checks the two agree. ``read_only`` parameters are structural (the CT, the device,
topics, frames); changing them at run time is refused by rclpy with a reason. The others
take effect from the next frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    read_only: bool = False
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None  # the values a string parameter may take

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(description=self.description, read_only=self.read_only)
        if self.range is not None:
            lo, hi = self.range
            if isinstance(self.default, bool):
                pass
            elif isinstance(self.default, int):
                d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
            elif isinstance(self.default, float):
                d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        return d


PARAMS: list[Param] = [
    # The CT and where it runs
    Param("ct_path", "phantom:head", "CT: DICOM directory, .nii/.nii.gz, .npy, or phantom:<name> (built-in)", True),
    Param("ct_series_uid", "", "SeriesInstanceUID to load from a DICOM directory holding several ('': the only one)",
          True),
    Param("ct_allow_gantry_tilt", False, "load a DICOM series acquired with a tilted gantry (sheared slices) instead "
          "of refusing it", True),
    Param("ct_spacing_mm", [1.0, 1.0, 1.0], "voxel size (mm) for a .npy CT", True),
    Param("ct_downsample", 1, "integer CT downsampling factor (speed vs detail)", True, (1, 16)),
    Param("device", "auto", "torch device: auto (CUDA when present), cpu, cuda, cuda:N", True),
    # Detector intrinsics (CameraInfo, when enabled and received, overrides size and principal point)
    Param("detector.height", 128, "detector rows of incoming frames (pixels)", True, (1, 8192)),
    Param("detector.width", 128, "detector columns of incoming frames (pixels)", True, (1, 8192)),
    Param("detector.pixel_spacing_mm", [3.125, 3.125], "pixel pitch (row, column), mm", True),
    Param("detector.sdd_mm", 1020.0, "source-to-detector distance, mm", True, (1.0, 5000.0)),
    Param("detector.sid_mm", 750.0, "source-to-isocentre distance, mm (0: half the SDD)", True, (0.0, 5000.0)),
    Param("detector.principal_point_mm", [0.0, 0.0], "principal point offset from the detector centre, mm", True),
    Param("use_camera_info", False, "take detector size and principal point from CameraInfo", True),
    # How frames are read
    Param("image.transport", "raw", "how frames arrive: raw (sensor_msgs/Image on topics.image) or compressed "
          "(sensor_msgs/CompressedImage on <topics.image>/compressed, png or jpeg as image_transport's compressed "
          "plugin publishes them; 16-bit png stays 16-bit); also for plane B", True, choices=("raw", "compressed")),
    Param("image.binning", 1, "bin frames by this factor per side (mean of b x b pixels) as they arrive, before "
          "anything else: detector.height x detector.width (and the pitch) are the panel's as delivered, the "
          "registration works on (height/b) x (width/b) pixels of b x the pitch (a 1024 px panel: 8 -> 128 px; "
          "docs/image-streams.md); must divide both sizes", True, (1, 64)),
    Param("image.log_transform", True, "frames are raw intensities: register -log(I/I0)"),
    Param("image.i0", 0.0, "unattenuated intensity I0 for the log transform (0: frame maximum)", False, (0.0, 1e9)),
    Param("image.invert", False, "negate frames after the log transform"),
    Param("image.detector_blur_px", 0.0, "detector PSF (Gaussian sigma, pixels) applied to the DRRs; calibrate it: "
          "an unmodelled blur biases the depth", False, (0.0, 20.0)),
    Param("image.mask_dark_fraction", 0.02, "with the log transform, ignore pixels darker than this fraction of "
          "I0 (collimator, no exposure)", False, (0.0, 0.5)),
    # Registration
    Param("registration.optimizer", "adam", "gd, gdm, gddm or adam (the seed's optimisers)"),
    Param("registration.similarity", "gncc", "zncc, l2, pncc, mncc, gncc, mncc+gncc (gncc with compare=intensity: "
          "robust to scatter and beam hardening, see docs/results.md)"),
    Param("registration.compare", "intensity", "domain of the similarity: intensity (exp(-L), robust to scatter) or "
          "line_integral (the seed's)"),
    Param("registration.lr_rotation", 0.02, "rotation step size (rad per step for Adam)", False, (1e-6, 10.0)),
    Param("registration.lr_translation", 2.0, "translation step size (mm per step for Adam)", False, (1e-6, 1000.0)),
    Param("registration.max_iterations", 150, "iteration limit per pyramid level", False, (1, 10000)),
    Param("registration.pyramid", [2, 1], "detector downsampling factors for the first frame, coarse to fine (the "
          "search runs first on a ~16 px image)"),
    Param("registration.tracking_pyramid", [1], "pyramid for tracking frames (start from the last good pose; "
          "[2, 1] with tracking_optimizer adam)"),
    Param("registration.tracking_optimizer", "lm", "optimiser of tracking frames: lm (Levenberg-Marquardt on the "
          "analytic pose Jacobian: 5-10 steps; numba kernels on the CPU, numba-cuda on a GPU, else Adam) or adam "
          "(as the first frame's, 100-200 steps); a tracking result below the last frame's similarity is "
          "registered again with the wide search"),
    Param("registration.init_keep", 4, "candidates carried from the first frame's search into the pyramid "
          "(halved per level; 4: 24/24 first frames < 2 mm vs 11/12 with 2, +0.7 s, docs/results.md)", False,
          (1, 64)),
    Param("registration.init_keep_joint", 2, "registration.init_keep when the wide registration has more than one "
          "view (a biplane pair, the angle history): the other views rank the search's candidates, so fewer are "
          "carried (2: one reaches the finest level, 0.6 s less on 2 cores; no runner-up for gate.ambiguity_mm)",
          False, (1, 64)),
    Param("registration.coarse_views", "all", "views of the wide registration's search and coarse levels: all, or "
          "reference (this frame alone, the other views join at the finest level: 0.25 s less for a pair, but the "
          "other views no longer rank the candidates)", choices=("all", "reference")),
    Param("registration.first_frame_polish", "lm", "optimiser of the first frame's finest level: lm "
          "(Levenberg-Marquardt polishes what the search and Adam found, first on both images smoothed by 2 px, "
          "after at most 30 coarse Adam steps: 24/24 first frames < 2 mm, p50 1.4 s on 2 cores, docs/results.md) "
          "or none (registration.optimizer throughout)", choices=("lm", "none")),
    Param("registration.tracking_step_scale", 0.5, "step sizes of tracking frames relative to the first frame's "
          "(they start close)", False, (1e-3, 1.0)),
    Param("registration.max_similarity_drop", 0.002, "tracking quality gate: reject a ZNCC this far below the median "
          "of the last accepted frames (then re-register from the joints)", False, (0.0, 2.0)),
    Param("registration.max_similarity_drop_relative", 1.0, "... or this multiple of that median's own mismatch "
          "(1 - ZNCC), whichever is larger", False, (0.0, 100.0)),
    Param("registration.init_search_first_frame", True, "batch search around the joint-state pose on wide captures"),
    Param("registration.covariance", True, "pose covariance from the loss curvature of every view (2 x 13 "
          "full-resolution DRRs per view; core/registration/uncertainty.py), published on ~/ct_pose and used by "
          "the known-pose gate; false: zeros = unknown, and the gate counts views instead"),
    Param("registration.scale_uncertainty", 0.003, "relative magnification error the DRR's physics may leave "
          "(0.003: 0.3 % of size, 2.3 mm of depth at SID 750 mm); one view cannot tell it from depth",
          False, (0.0, 0.1)),
    Param("registration.covariance_jacobian", "fd", "the covariance's Jacobian: fd (central differences at the "
          "scale of the sigmas, 13 DRRs per view; calibrated) or analytic (the kernels' pose Jacobian, one pass per "
          "view; 5-30 % smaller sigmas, i.e. more optimistic; bench/bench_covariance.py)",
          choices=("fd", "analytic")),
    # What may go on /tf: a pose that is known, per axis
    Param("gate.max_target_sigma_mm", 1.0, "publish on /tf only when the predicted 1-sigma error of the CT's 27 "
          "targets is below this along every camera axis (in plane and along the beam)", False, (0.0, 1000.0)),
    Param("gate.ambiguity_mm", 2.0, "hold a pose back from /tf when the registration's finest level ended in "
          "another minimum at least this far away (mm at the CT's targets) ...", False, (0.0, 1000.0)),
    Param("gate.ambiguity_gap", 0.001, "... whose similarity is within this of the best (the frame cannot tell "
          "them apart; whatever gate.allow_unresolved_depth says)", False, (0.0, 1.0)),
    Param("gate.allow_unresolved_depth", False, "also put poses whose depth is not resolved on /tf (a 2-D overlay "
          "use); otherwise they go to ~/ct_pose only, with their covariance and a diagnostic"),
    # The angle history: joint registration with recent frames from other angles (depth from several views)
    Param("multiview.max_views", 3, "views in a joint registration: the new frame and up to this minus one "
          "recent frames from other angles (1: single view)", False, (1, 8)),
    Param("multiview.min_separation_deg", 15.0, "a frame counts as a new view only this far (beam angle) from "
          "every kept view; a nearer one replaces it", False, (0.0, 180.0)),
    Param("multiview.max_age_s", 60.0, "views older than this are dropped (the patient is assumed still on the "
          "table in between; table motion comes from the joints)", False, (0.0, 86400.0)),
    Param("multiview.patient_motion_mm", 0.1, "1 sigma the patient may move between two views taken at different "
          "times, beside the drift (the covariance trusts an old view only to within it)", False, (0.0, 100.0)),
    Param("multiview.min_drift_mm_per_s", 0.02, "the patient's drift rate assumed at least (the node measures it "
          "from the frames' in-plane positions and takes the larger); times a view's age it is added to the above",
          False, (0.0, 100.0)),
    Param("multiview.max_view_motion_mm", 0.5, "a kept view joins a registration only while the patient may have "
          "moved less than this since (the two above; at 30 deg, 0.5 mm of motion is ~1 mm of depth)", False,
          (0.0, 100.0)),
    Param("multiview.max_view_shift_mm", 1.5, "views disagree (the patient moved; the window is reset) when the "
          "joint pose moves the CT's targets by more than this in an earlier view's image plane (where that view "
          "knows the pose well) from where it registered them", False, (0.0, 1000.0)),
    Param("multiview.max_new_view_shift_mm", 0.8, "... or when the new frame alone (2 Levenberg-Marquardt steps on "
          "its own view from the joint pose) moves the targets in its image plane by more than this plus the "
          "motion the covariance allows the earlier views (multiview.patient_motion_mm + drift x age, at most "
          "multiview.max_view_motion_mm): a jump the earlier views absorb into the new frame's depth (head "
          "phantom: a 3 mm jump left the joint pose 2.6 mm off, the new frame alone moved it 1.0 mm, 0.02 mm "
          "without the jump); 0 disables", False, (0.0, 1000.0)),
    Param("registration.min_similarity", 0.9, "quality gate: final ZNCC below this is not published", False,
          (-1.0, 1.0)),
    # The DRR's physics (core/drr/poly.py, core/physics): mono, or polychromatic two-material
    Param("registration.drr_model", "mono", "the DRR: mono (line integrals of one attenuation volume, the seed's) "
          "or poly (the CT decomposed into soft tissue and bone densities at start-up, rendered through a tube "
          "spectrum with the physics below, registration.kvp ... heel_gain; up to 2x a mono DRR's cost); the CT's "
          "volumes are built for one model at start-up, so a change needs a restart (the physics below may change "
          "at run time)", True,
          choices=("mono", "poly")),
    Param("registration.kvp", 80.0, "poly: tube peak voltage, kVp (the attenuation tables end at 150 keV)", False,
          (20.0, 150.0)),
    Param("registration.filtration_mm_al", 2.5, "poly: tube filtration, mm aluminium", False, (0.0, 20.0)),
    Param("registration.energy_bins", 6, "poly: energy bins of the spectrum", False, (1, 64)),
    Param("registration.scatter_to_primary", 0.0, "poly: scatter estimate, scatter / primary at the mean primary "
          "(a broad Gaussian of the primary; 0: off)", False, (0.0, 5.0)),
    Param("registration.scatter_sigma_fraction", 0.15, "poly: scatter kernel sigma, fraction of the detector's "
          "larger side", False, (0.01, 1.0)),
    Param("registration.heel_gain", 0.0, "poly: anode heel effect, peak-to-peak gain change down the detector rows "
          "(0: off)", False, (0.0, 1.0)),
    # Calibration of the poly DRR's physics from the first known frames (core/registration/calibration.py)
    Param("calibration.enabled", False, "poly only: after calibration.frames poses went on /tf (known: several "
          "views or a biplane pair; never held-back single-view poses, whose depth trades off against the kVp), fit "
          "the physics (calibration.fit) once at those poses and set registration.kvp etc. to the fitted values "
          "from the next frame on; /diagnostics reports physics_calibration (with drr_model mono: FATAL at start)",
          True),
    Param("calibration.frames", 3, "poses on /tf to collect before the calibration", True, (1, 100)),
    Param("calibration.fit", "", "the physics parameters to fit, comma- or space-separated, of kvp, "
          "filtration_mm_al, scatter_to_primary, heel_gain ('': the core's default_fit: kvp and scatter_to_primary, "
          "plus heel_gain unless gncc on line integrals)", True),
    # Biplane: a second image stream, paired with the first by stamp (a fixed second plane)
    Param("biplane.enabled", False, "subscribe to a second plane's frames (topics.image_b) and register each pair "
          "jointly", True),
    Param("biplane.max_pair_dt_s", 0.05, "largest |stamp A - stamp B| of a pair, s; an unpaired frame A is "
          "registered alone (diagnostic biplane_unpaired)", False, (0.0, 10.0)),
    Param("biplane.wait_s", 0.1, "how long a plane A frame waits for its plane B partner (s, wall clock) before "
          "it is registered alone: the planes' drivers publish independently", False, (0.0, 5.0)),
    Param("biplane.with_history", True, "a biplane pair is registered with the angle history's earlier views too "
          "(false: the pair alone, whose depth is known: about half the cost, make demo frame-to-TF p50 0.46-0.56 s "
          "vs 1.1-1.6 s, but fewer poses known well enough: external-physics sweep 7 vs 11 of 16 pairs on TF, "
          "docs/results.md)", False),
    Param("biplane.cam_b_from_cam_a", [0.0, 0.0, 0.0, 0.0, 1.5707963267948966, 0.0], "plane B's camera seen from "
          "plane A's (both at the isocentre): x y z (m) roll pitch yaw (rad); default: B turned 90 deg about A's "
          "detector rows (a lateral plane to an AP one)", True),
    Param("biplane.joints.lao", "", "JointState name of plane B's LAO/RAO angle (rad); with biplane.joints.cranial "
          "plane B's camera follows its own joints (both planes at one isocentre) instead of biplane.cam_b_from_cam_a "
          "('': the static transform)", True),
    Param("biplane.joints.cranial", "", "JointState name of plane B's cranial/caudal angle (rad)", True),
    Param("biplane.joints.detector_rotation", "", "JointState name of plane B's detector rotation (rad; optional)",
          True),
    Param("detector_b.height", 0, "plane B detector rows (0: the same detector as plane A)", True, (0, 8192)),
    Param("detector_b.width", 0, "plane B detector columns", True, (0, 8192)),
    Param("detector_b.pixel_spacing_mm", [3.125, 3.125], "plane B pixel pitch (row, column), mm", True),
    Param("detector_b.sdd_mm", 1020.0, "plane B source-to-detector distance, mm", True, (1.0, 5000.0)),
    Param("detector_b.sid_mm", 750.0, "plane B source-to-isocentre distance, mm (0: half the SDD)", True,
          (0.0, 5000.0)),
    Param("detector_b.principal_point_mm", [0.0, 0.0], "plane B principal point offset, mm", True),
    # Joint states
    Param("joints.max_age_s", 0.5, "largest |frame stamp - joint stamp| accepted, s", False, (0.0, 60.0)),
    Param("joints.lao", "carm_lao_rao", "JointState name of the LAO(+)/RAO(-) angle (rad)", True),
    Param("joints.cranial", "carm_cranial_caudal", "JointState name of the cranial(+)/caudal(-) angle (rad)", True),
    Param("joints.detector_rotation", "carm_detector_rotation", "JointState name of the detector rotation (rad)", True),
    Param("joints.sdd", "carm_source_detector_distance", "JointState name of the SDD (m), optional", True),
    Param("joints.follow_sdd", True, "move the detector to the SDD in the joint state when present (the SID stays "
          "detector.sid_mm); ignored with use_camera_info"),
    Param("joints.table", ["table_x", "table_y", "table_z"], "JointState names of the table translations (m)", True),
    # Prior placement of the CT on the table (the seed's translation b; rotation of the CT axes)
    Param("prior.translation_mm", [0.0, 0.0, 0.0], "CT centre from the isocentre with the table at zero, mm", True),
    Param("prior.rotation_deg", [0.0, 0.0, 0.0], "rotation of the CT axes about x, y, z of the table, degrees", True),
    # Frames and topics
    Param("frames.carm", "carm_isocenter", "fixed C-arm frame: parent of the CT frame on /tf", True),
    Param("frames.ct", "ct", "CT frame (child); LPS axes of the volume, metres", True),
    Param("frames.source", "carm_source_optical", "X-ray source frame (z along the beam), on /tf", True),
    Param("frames.detector", "carm_detector_optical", "detector frame on /tf (centre of the detector, axes as "
          "frames.source), for every frame paired with joints; name it as the images' frame_id ('' to not "
          "publish it, e.g. when a C-arm URDF does)", True),
    Param("frames.source_b", "carm_source_b_optical", "plane B's X-ray source frame on /tf (biplane.enabled), at "
          "the stamp of every plane B frame paired with a plane A frame", True),
    Param("frames.detector_b", "carm_detector_b_optical", "plane B's detector frame on /tf (as frames.detector, for "
          "plane B's images' frame_id; '' to not publish it)", True),
    Param("frames.world", "world", "parent of the C-arm frame on /tf_static ('' to not publish it)", True),
    Param("frames.world_to_carm", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "world->C-arm static transform: x y z (m) "
          "roll pitch yaw (rad)", True),
    Param("topics.image", "fluoro/image", "incoming fluoroscopy frames (sensor_msgs/Image)", True),
    Param("topics.camera_info", "fluoro/camera_info", "detector intrinsics (sensor_msgs/CameraInfo)", True),
    Param("topics.image_b", "fluoro_b/image", "plane B frames (sensor_msgs/Image), with biplane.enabled", True),
    Param("topics.joint_states", "carm/joint_states", "C-arm and table joints (sensor_msgs/JointState)", True),
    Param("topics.prior", "~/prior_pose", "CT placement prior (geometry_msgs/PoseStamped of the CT frame in "
          "frames.carm, m; e.g. from igtl_bridge): the next frame registers from it with the wide search "
          "('': not subscribed)",
          True),
    Param("qos.image_reliability", "auto", "image subscription reliability: auto (reliable, or best effort while a "
          "publisher of the topic offers only best effort: a reliable subscription would not match it), reliable, "
          "best_effort (frames above ~256 px a side are lost on loopback unless both sides use "
          "config/fastdds_large_frames.xml; docs/image-streams.md)", True, choices=("auto", "reliable", "best_effort")),
    Param("qos.image_depth", 2, "image subscription depth (keep last): a busy node never builds a backlog", True,
          (1, 100)),
    # Input stream status on /diagnostics (diagnostic_updater's FrequencyStatus / TimeStampStatus)
    Param("topic_status.image.min_hz", 1.0, "lowest expected frame rate, Hz (below: WARN 'Frequency too low.'; "
          "none in the window: ERROR 'No events recorded.')", True, (0.0, 1000.0)),
    Param("topic_status.image.max_hz", 30.0, "highest expected frame rate, Hz", True, (0.0, 1000.0)),
    Param("topic_status.joint_states.min_hz", 5.0, "lowest expected joint-state rate, Hz", True, (0.0, 10000.0)),
    Param("topic_status.joint_states.max_hz", 1000.0, "highest expected joint-state rate, Hz", True, (0.0, 10000.0)),
    Param("topic_status.tolerance", 0.1, "relative tolerance on the rates above", True, (0.0, 10.0)),
    Param("topic_status.window", 5, "diagnostics periods the rates are measured over", True, (1, 1000)),
    Param("topic_status.min_delay_s", -1.0, "earliest acceptable stamp delay (now - header stamp), s (below: ERROR "
          "'Timestamps too far in future seen.')", True, (-3600.0, 3600.0)),
    Param("topic_status.max_delay_s", 5.0, "latest acceptable stamp delay, s (above: ERROR 'Timestamps too far in "
          "past seen.')", True, (-3600.0, 3600.0)),
    # Outputs
    Param("overlay.mode", "edges", "overlay style: edges or blend", choices=("edges", "blend")),
    Param("diagnostics_period_s", 1.0, "diagnostics publishing period, s", True, (0.05, 60.0)),
]

PARAMS_BY_NAME = {p.name: p for p in PARAMS}


def check_choices(values: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a value outside its parameter's ``choices`` (names without choices pass)."""
    for name, value in values.items():
        p = PARAMS_BY_NAME.get(name)
        if p is not None and p.choices is not None and value not in p.choices:
            raise ValueError(f"{name} must be one of {', '.join(p.choices)}, got {value!r}")


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    return repr(v)


def render_yaml() -> str:
    """The commented defaults file (``config/registration.yaml``), generated from :data:`PARAMS`."""
    lines = [
        "# diffdrr_ros registration node: parameters with their defaults.",
        "# Generated from diffdrr_ros/ros/params.py (python -m diffdrr_ros.ros.params > config/registration.yaml).",
        "# [read-only] parameters are structural: changing them needs a restart. Units: mm, rad unless stated.",
        "/**:",
        "  ros__parameters:",
    ]
    for p in PARAMS:
        note = " [read-only]" if p.read_only else ""
        rng = f" (range {p.range[0]}..{p.range[1]})" if p.range else ""
        rng += f" (one of {', '.join(p.choices)})" if p.choices else ""
        lines.append(f"    # {p.description}{rng}{note}")
        lines.append(f"    {p.name}: {_yaml_value(p.default)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_yaml(), end="")
