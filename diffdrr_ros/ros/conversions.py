"""Message <-> array conversions at the ROS boundary (units change here, once).

* Images: ``sensor_msgs/Image`` <-> numpy. Where ROS 2's ``cv_bridge`` imports (a sourced
  ROS 2 install) its ``CvBridge`` does the pixel conversion; the project's own converter is
  the fall-back, written here because ``cv_bridge`` is not installable from PyPI (the PyPI
  ``cv-bridge`` is an old ROS 1 copy that fails on NumPy 2). Both paths are checked the same
  way first (encoding, size, ``step``, buffer length) and give the same arrays (a test
  compares them on every encoding when cv_bridge is present); ``DIFFDRR_ROS_CV_BRIDGE=0``
  forces ours. Handles row padding (``step``), endianness and the encodings fluoroscopy
  drivers send; colour is converted to grey with OpenCV.
* Compressed images: ``sensor_msgs/CompressedImage`` as image_transport's ``compressed``
  plugin publishes them (``"mono16; png compressed"``, ``"bgr8; jpeg compressed bgr8"``, plain
  ``"png"`` / ``"jpeg"``) and ``compressedDepth`` (``"16UC1; compressedDepth png"``), decoded
  with ``cv2.imdecode`` (16-bit PNG kept 16-bit).
* Transforms: core poses are 4x4 in mm; ROS wants metres (REP-103) and quaternions.
* Joint states: positions in rad and m -> :class:`~diffdrr_ros.core.geometry.kinematics.CArmJoints`.
* Parameters and covariances: ``x y z`` (m) ``roll pitch yaw`` (rad) -> 4x4 in mm; a 6 x 6
  covariance in mm / rad -> the row-major list a ``PoseWithCovariance`` carries, in m / rad.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Quaternion, Transform, TransformStamped, Vector3
from sensor_msgs.msg import CompressedImage, Image, JointState

from ..core.geometry.kinematics import CArmJoints
from ..core.geometry.rotations import make_transform, matrix_to_quaternion, rpy_to_matrix

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "16SC1": (np.dtype(np.int16), 1),
    "32SC1": (np.dtype(np.int32), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "64FC1": (np.dtype(np.float64), 1),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "rgb16": (np.dtype(np.uint16), 3),
    "bgr16": (np.dtype(np.uint16), 3),
}
_TO_GREY = {
    "rgb8": cv2.COLOR_RGB2GRAY,
    "bgr8": cv2.COLOR_BGR2GRAY,
    "rgba8": cv2.COLOR_RGBA2GRAY,
    "bgra8": cv2.COLOR_BGRA2GRAY,
    "rgb16": cv2.COLOR_RGB2GRAY,
    "bgr16": cv2.COLOR_BGR2GRAY,
}


class ImageConversionError(ValueError):
    """The Image message cannot be read as a grey frame (encoding, size, buffer)."""


def _load_cv_bridge():
    """``cv_bridge.CvBridge()`` where it imports (and ``DIFFDRR_ROS_CV_BRIDGE`` is not ``0``), else None."""
    if os.environ.get("DIFFDRR_ROS_CV_BRIDGE", "1").strip() == "0":
        return None
    try:
        from cv_bridge import CvBridge
    except Exception:  # ImportError, or a ROS 1 copy failing on NumPy 2 at import
        return None
    return CvBridge()


_BRIDGE = _load_cv_bridge()
#: Which converter turns Image messages into arrays: "cv_bridge" or "builtin".
IMAGE_BACKEND = "cv_bridge" if _BRIDGE is not None else "builtin"


def image_to_array(msg: Image) -> np.ndarray:
    """Decode an Image into an ``(H, W)`` grey array (colour converted to grey).

    Raises:
        ImageConversionError: unknown encoding, empty frame, or a buffer that does not
            match ``height``, ``width`` and ``step``.
    """
    arr = image_to_pixels(msg)
    if arr.shape[2] == 1:
        return arr[..., 0]
    return cv2.cvtColor(arr, _TO_GREY[msg.encoding])


def image_to_pixels(msg: Image) -> np.ndarray:
    """Decode an Image into its ``(H, W, channels)`` pixels, native byte order, rows unpadded.

    The message is checked here; the pixels then come from ``CvBridge`` when present, else
    from :func:`image_to_pixels_builtin`.

    Raises:
        ImageConversionError: as :func:`image_to_array`.
    """
    _check_image(msg)
    if _BRIDGE is None:
        return image_to_pixels_builtin(msg)
    try:
        arr = np.asarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    except Exception:  # CvBridgeError, or a layout it does not take (odd row padding, unpadded last row)
        return image_to_pixels_builtin(msg)
    arr = arr.reshape(int(msg.height), int(msg.width), ENCODINGS[msg.encoding][1])
    return np.array(arr, dtype=arr.dtype.newbyteorder("="))  # a native-endian, writable copy


def _check_image(msg: Image) -> None:
    """Raise :class:`ImageConversionError` for an encoding, size, step or buffer that cannot be read."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise ImageConversionError(f"unsupported encoding {enc!r}; supported: {', '.join(ENCODINGS)}")
    dtype, channels = ENCODINGS[enc]
    h, w = int(msg.height), int(msg.width)
    if h == 0 or w == 0:
        raise ImageConversionError(f"empty image ({h}x{w})")
    row_bytes = w * channels * dtype.itemsize
    step = int(msg.step) or row_bytes
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than a row ({row_bytes} bytes)")
    if len(msg.data) < step * (h - 1) + row_bytes:
        raise ImageConversionError(f"buffer has {len(msg.data)} bytes, {h}x{w} {enc} with step {step} needs "
                                   f"{step * (h - 1) + row_bytes}")


def image_to_pixels_builtin(msg: Image) -> np.ndarray:
    """The project's own Image decoder (:func:`image_to_pixels` without cv_bridge)."""
    _check_image(msg)
    dtype, channels = ENCODINGS[msg.encoding]
    h, w = int(msg.height), int(msg.width)
    row_bytes = w * channels * dtype.itemsize
    step = int(msg.step) or row_bytes
    data = bytes(msg.data) if not isinstance(msg.data, bytes | bytearray) else msg.data
    raw = np.frombuffer(data, dtype=np.uint8, count=step * (h - 1) + row_bytes)
    rows = np.lib.stride_tricks.as_strided(raw, shape=(h, row_bytes), strides=(step, 1))
    big = bool(msg.is_bigendian)
    arr = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if big else "<")).reshape(h, w, channels)
    return arr.astype(dtype.newbyteorder("="))  # a native-endian, writable copy


def array_to_image(arr: np.ndarray, encoding: str, stamp: Time | None = None, frame_id: str = "") -> Image:
    """Encode an array as an Image (``(H, W)`` or ``(H, W, C)``; dtype must match ``encoding``)."""
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported encoding {encoding!r}")
    dtype, channels = ENCODINGS[encoding]
    a = np.ascontiguousarray(arr)
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype != dtype or a.shape[2] != channels:
        raise ImageConversionError(f"array {a.dtype} x{a.shape[2]} does not match {encoding}")
    if _BRIDGE is not None:
        msg = _BRIDGE.cv2_to_imgmsg(a if channels > 1 else a[..., 0], encoding=encoding)
    else:
        msg = array_to_image_builtin(a, encoding)
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def array_to_image_builtin(a: np.ndarray, encoding: str) -> Image:
    """The project's own Image encoder (``(H, W, C)`` contiguous, dtype already checked)."""
    dtype, channels = ENCODINGS[encoding]
    msg = Image()
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = int(a.shape[1] * channels * dtype.itemsize)
    msg.data = a.tobytes()
    return msg


# --------------------------------------------------------------------------- compressed images

_COMPRESSED_DEPTH_HEADER = 12  # compressed_depth_image_transport's ConfigHeader: format (int32), 2 floats


def compressed_format(fmt: str) -> tuple[str, str, bool]:
    """``(original encoding or "", codec "png"/"jpeg", compressedDepth?)`` of a CompressedImage format.

    image_transport's compressed plugin writes ``"<encoding>; <png|jpeg> compressed [<target>]"``,
    compressed_depth's ``"<encoding>; compressedDepth [png]"``; other publishers (and ROS 1 bags) write
    ``"png"``, ``"jpeg"`` or ``"jpg"``. Raises :class:`ImageConversionError` for anything else.
    """
    original, _, rest = fmt.strip().rpartition(";")
    words = rest.lower().replace(",", " ").split()
    if "compresseddepth" in words:
        return original.strip(), "png", True
    codec = next((w for w in words if w in ("png", "jpeg", "jpg")), None)
    if codec is None:
        raise ImageConversionError(f"unsupported CompressedImage format {fmt!r}: expected png or jpeg "
                                   "(e.g. 'mono16; png compressed', 'bgr8; jpeg compressed bgr8', 'png')")
    return original.strip(), "jpeg" if codec == "jpg" else codec, False


def compressed_to_array(msg: CompressedImage) -> np.ndarray:
    """Decode a CompressedImage into an ``(H, W)`` grey array (16-bit PNG stays 16-bit; colour to grey).

    Raises:
        ImageConversionError: an unknown format, or bytes OpenCV cannot decode.
    """
    _, codec, depth = compressed_format(msg.format)
    data = bytes(msg.data)
    if depth:
        data = data[_COMPRESSED_DEPTH_HEADER:]
    if not data:
        raise ImageConversionError(f"empty CompressedImage ({msg.format!r})")
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise ImageConversionError(f"cannot decode {len(data)} bytes as {codec} ({msg.format!r}): corrupt or not "
                                   f"{codec} data")
    if arr.ndim == 3:  # OpenCV decodes colour as BGR(A), whatever the original encoding was
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2GRAY if arr.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(arr)


def array_to_compressed(arr: np.ndarray, encoding: str, codec: str = "png", stamp: Time | None = None,
                        frame_id: str = "") -> CompressedImage:
    """Encode an ``(H, W)`` grey array as image_transport's compressed plugin would (tests, simulator)."""
    ok, buf = cv2.imencode(".png" if codec == "png" else ".jpg", np.ascontiguousarray(arr))
    if not ok:
        raise ImageConversionError(f"cv2 cannot encode {arr.dtype} {arr.shape} as {codec}")
    msg = CompressedImage()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.format = f"{encoding}; {codec} compressed" + ("" if codec == "png" else f" {encoding}")
    msg.data = buf.tobytes()
    return msg


def matrix_to_transform(tf_mm: torch.Tensor | np.ndarray) -> Transform:
    """4x4 rigid transform in mm -> geometry_msgs/Transform in metres."""
    m = torch.as_tensor(np.asarray(tf_mm), dtype=torch.float64)
    q = matrix_to_quaternion(m[:3, :3]).tolist()  # w, x, y, z
    t = (m[:3, 3] / 1000.0).tolist()
    return Transform(translation=Vector3(x=t[0], y=t[1], z=t[2]),
                     rotation=Quaternion(w=q[0], x=q[1], y=q[2], z=q[3]))


def matrix_to_pose(tf_mm: torch.Tensor | np.ndarray) -> Pose:
    """4x4 rigid transform in mm -> geometry_msgs/Pose in metres."""
    t = matrix_to_transform(tf_mm)
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = t.translation.x, t.translation.y, t.translation.z
    pose.orientation = t.rotation
    return pose


def transform_to_matrix(t: Transform) -> torch.Tensor:
    """geometry_msgs/Transform (metres) -> 4x4 float64 in mm."""
    from ..core.geometry.rotations import quaternion_to_matrix

    q = torch.tensor([t.rotation.w, t.rotation.x, t.rotation.y, t.rotation.z], dtype=torch.float64)
    trans = torch.tensor([t.translation.x, t.translation.y, t.translation.z], dtype=torch.float64) * 1000.0
    return make_transform(quaternion_to_matrix(q), trans)


def pose_to_matrix(pose: Pose) -> torch.Tensor:
    """geometry_msgs/Pose (metres) -> 4x4 float64 in mm (the inverse of :func:`matrix_to_pose`)."""
    p, q = pose.position, pose.orientation
    return transform_to_matrix(Transform(translation=Vector3(x=p.x, y=p.y, z=p.z),
                                         rotation=Quaternion(x=q.x, y=q.y, z=q.z, w=q.w)))


def xyz_rpy_to_matrix(xyz_m: list[float], rpy_rad: list[float]) -> torch.Tensor:
    """A URDF-style ``x y z`` (m) ``roll pitch yaw`` (rad) transform -> 4x4 float64 in mm."""
    rot = rpy_to_matrix(*(float(v) for v in rpy_rad))
    return make_transform(rot, torch.tensor([float(v) for v in xyz_m], dtype=torch.float64) * 1000.0)


def prior_from_parameters(rotation_deg: list[float], translation_mm: list[float],
                          ct_center: torch.Tensor) -> torch.Tensor:
    """The node's ``prior.rotation_deg`` (roll, pitch, yaw) and ``prior.translation_mm`` -> ``T_table_ct`` (mm)."""
    from ..core.geometry.kinematics import placement_prior

    rx, ry, rz = (math.radians(float(v)) for v in rotation_deg)
    return placement_prior(rpy_to_matrix(rx, ry, rz), torch.tensor([float(v) for v in translation_mm],
                                                                    dtype=torch.float64), ct_center)


def covariance_to_ros(cov_mm_rad: torch.Tensor) -> list[float]:
    """6 x 6 pose covariance (translation first, mm and rad) -> 36 row-major values in m and rad."""
    scale = torch.tensor([1e-3] * 3 + [1.0] * 3, dtype=torch.float64)
    c = cov_mm_rad.to(torch.float64)
    return (scale[:, None] * c * scale[None, :]).reshape(-1).tolist()


def stamped_transform(tf_mm, parent: str, child: str, stamp: Time) -> TransformStamped:
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent
    msg.child_frame_id = child
    msg.transform = matrix_to_transform(tf_mm)
    return msg


def stamp_to_seconds(stamp: Time) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def seconds_to_stamp(t: float) -> Time:
    """Seconds (float) -> builtin_interfaces/Time, nanoseconds rounded."""
    ns = round(t * 1e9)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


@dataclass(frozen=True)
class JointNames:
    """Which JointState names carry which C-arm quantity (configurable in YAML)."""

    lao: str = "carm_lao_rao"
    cranial: str = "carm_cranial_caudal"
    detector_rotation: str = "carm_detector_rotation"
    sdd: str = "carm_source_detector_distance"
    table: tuple[str, str, str] = ("table_x", "table_y", "table_z")


class JointStateError(ValueError):
    """A JointState lacks the C-arm joints or carries non-finite values."""


def joints_from_message(msg: JointState, names: JointNames) -> CArmJoints:
    """Read C-arm joints (rad, m) into :class:`CArmJoints` (rad, mm).

    The two gantry angles are required; detector rotation, SDD and table joints are
    optional (0, the configured SDD, and 0 when absent).
    """
    pos: Mapping[str, float] = dict(zip(msg.name, msg.position, strict=False))
    missing = [n for n in (names.lao, names.cranial) if n not in pos]
    if missing:
        raise JointStateError(f"joint state lacks {missing} (has {list(msg.name)})")
    values = {k: float(v) for k, v in pos.items()}
    bad = [k for k, v in values.items() if not np.isfinite(v)]
    if bad:
        raise JointStateError(f"non-finite joint values for {bad}")
    sdd = values.get(names.sdd)
    return CArmJoints(
        lao_rad=values[names.lao],
        cranial_rad=values[names.cranial],
        detector_rotation_rad=values.get(names.detector_rotation, 0.0),
        sdd_mm=None if sdd is None else sdd * 1000.0,
        table_mm=tuple(values.get(n, 0.0) * 1000.0 for n in names.table),
    )


def joints_to_message(joints: CArmJoints, names: JointNames, stamp: Time | None = None) -> JointState:
    """Inverse of :func:`joints_from_message` (for the simulator and tests)."""
    msg = JointState()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.name = [names.lao, names.cranial, names.detector_rotation, *names.table]
    msg.position = [joints.lao_rad, joints.cranial_rad, joints.detector_rotation_rad,
                    *(v / 1000.0 for v in joints.table_mm)]
    if joints.sdd_mm is not None:
        msg.name.append(names.sdd)
        msg.position.append(joints.sdd_mm / 1000.0)
    return msg


def bin_frame(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` pixel blocks (a panel's binning), float32; ``factor`` 1: unchanged.

    The mean, not the sum, so intensities keep their scale (``image.i0`` stays in the panel's
    units). Raises ``ValueError`` when ``factor`` does not divide both sizes.
    """
    if factor == 1:
        return pixels
    h, w = pixels.shape
    if h % factor or w % factor:
        raise ValueError(f"binning {factor} does not divide the frame size {h}x{w}")
    return pixels.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float32)
