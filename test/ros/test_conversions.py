"""Message conversions at the ROS boundary (images, transforms, joint states)."""

import math

import numpy as np
import pytest
import torch
from sensor_msgs.msg import Image, JointState

from diffdrr_ros.core.geometry.kinematics import CArmJoints
from diffdrr_ros.core.geometry.rotations import make_transform, rot_x, rot_y, rot_z
from diffdrr_ros.ros.conversions import (
    ImageConversionError,
    JointNames,
    JointStateError,
    array_to_image,
    covariance_to_ros,
    image_to_array,
    image_to_pixels,
    joints_from_message,
    joints_to_message,
    matrix_to_pose,
    matrix_to_transform,
    pose_to_matrix,
    prior_from_parameters,
    transform_to_matrix,
    xyz_rpy_to_matrix,
)


@pytest.mark.parametrize("encoding,dtype", [("mono8", np.uint8), ("mono16", np.uint16), ("16UC1", np.uint16),
                                            ("32FC1", np.float32), ("64FC1", np.float64), ("16SC1", np.int16)])
def test_grey_round_trip(encoding, dtype):
    arr = (np.arange(35).reshape(5, 7) * 3).astype(dtype)
    np.testing.assert_array_equal(image_to_array(array_to_image(arr, encoding)), arr)


def test_row_padding_and_big_endian():
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    msg = Image(height=3, width=4, encoding="mono16", is_bigendian=1, step=10)  # 2 bytes padding per row
    rows = [arr[r].astype(">u2").tobytes() + b"\xff\xff" for r in range(3)]
    msg.data = b"".join(rows)
    np.testing.assert_array_equal(image_to_array(msg), arr)


def test_colour_becomes_grey():
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    grey = image_to_array(array_to_image(rgb, "rgb8"))
    bgr = image_to_array(array_to_image(rgb[..., ::-1].copy(), "bgr8"))
    assert grey.shape == (4, 5) and np.all(grey == grey[0, 0]) and grey[0, 0] > 100
    np.testing.assert_array_equal(grey, bgr)


@pytest.mark.parametrize(
    "msg,match",
    [
        (Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)), "unsupported encoding"),
        (Image(height=0, width=2, encoding="mono8", step=2, data=b""), "empty"),
        (Image(height=2, width=2, encoding="mono16", step=4, data=bytes(5)), "buffer"),
        (Image(height=2, width=4, encoding="mono16", step=4, data=bytes(16)), "step"),
    ],
)
def test_bad_images_raise(msg, match):
    with pytest.raises(ImageConversionError, match=match):
        image_to_array(msg)


def test_transform_round_trip_in_metres():
    tf = make_transform(rot_z(torch.tensor(0.4, dtype=torch.float64)) @ rot_x(torch.tensor(-1.0, dtype=torch.float64)),
                        torch.tensor([100.0, -250.0, 30.0], dtype=torch.float64))
    msg = matrix_to_transform(tf)
    assert msg.translation.x == pytest.approx(0.1) and msg.translation.y == pytest.approx(-0.25)
    torch.testing.assert_close(transform_to_matrix(msg), tf)
    torch.testing.assert_close(pose_to_matrix(matrix_to_pose(tf)), tf)
    pose = matrix_to_pose(torch.eye(4, dtype=torch.float64))
    pose.position.x, pose.position.y, pose.position.z = 0.1, -0.2, 0.3
    pose.orientation.z, pose.orientation.w = math.sin(0.25), math.cos(0.25)  # 0.5 rad about z
    m = pose_to_matrix(pose).numpy()
    assert np.allclose(m[:3, 3], [100.0, -200.0, 300.0])
    assert np.allclose(m[:3, :3], [[math.cos(0.5), -math.sin(0.5), 0], [math.sin(0.5), math.cos(0.5), 0], [0, 0, 1]])


def test_joint_states():
    names = JointNames()
    j = CArmJoints(lao_rad=0.3, cranial_rad=-0.1, detector_rotation_rad=0.05, sdd_mm=1100.0, table_mm=(10.0, 0, -5))
    back = joints_from_message(joints_to_message(j, names), names)
    assert back.lao_rad == j.lao_rad and back.sdd_mm == pytest.approx(1100.0)
    assert back.table_mm == pytest.approx((10.0, 0.0, -5.0))
    with pytest.raises(JointStateError, match="lacks"):
        joints_from_message(JointState(name=["table_x"], position=[0.0]), names)
    with pytest.raises(JointStateError, match="non-finite"):
        joints_from_message(JointState(name=[names.lao, names.cranial], position=[float("nan"), 0.0]), names)


def test_parameter_units_change_here_once():
    tf = xyz_rpy_to_matrix([0.1, -0.2, 0.3], [0.1, 0.2, 0.3])  # m, rad -> mm
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    want = make_transform(rot_z(t(0.3)) @ rot_y(t(0.2)) @ rot_x(t(0.1)), t([100.0, -200.0, 300.0]))
    torch.testing.assert_close(tf, want)
    cov = torch.diag(torch.tensor([4.0, 9.0, 16.0, 1e-4, 2e-4, 3e-4], dtype=torch.float64))  # mm^2, rad^2
    ros = torch.tensor(covariance_to_ros(cov), dtype=torch.float64).reshape(6, 6)
    torch.testing.assert_close(ros.diag(), torch.tensor([4e-6, 9e-6, 16e-6, 1e-4, 2e-4, 3e-4], dtype=torch.float64))
    center = t([10.0, 20.0, 30.0])
    prior = prior_from_parameters([0.0, 0.0, 90.0], [5.0, 0.0, 0.0], center)
    torch.testing.assert_close(prior[:3, :3] @ center + prior[:3, 3], t([5.0, 0.0, 0.0]))  # CT centre -> b
    torch.testing.assert_close(prior[:3, :3], rot_z(t(torch.pi / 2)))


def test_pixels_keep_colour_and_honour_the_row_stride():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    msg = array_to_image(rgb, "rgb8")
    padded = Image(height=2, width=3, encoding="rgb8", step=12,
                   data=bytes(msg.data[:9]) + b"\0" * 3 + bytes(msg.data[9:]) + b"\0" * 3)
    np.testing.assert_array_equal(image_to_pixels(padded), rgb)
