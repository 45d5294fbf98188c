"""Image streams as cameras publish them: compressed frames, cv_bridge, binning, the image QoS.

The DDS test plays 2048 x 2048 mono16 frames (8 MB) from another process as ``diffdrr-ros bag
play`` publishes them (reliable, keep last 100) into a subscription with the node's default
image QoS: every frame must arrive (with the former best-effort default, 1-3 of 10 did).
"""

from __future__ import annotations

import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from diffdrr_ros.ros import conversions
from diffdrr_ros.ros.conversions import (
    ENCODINGS,
    ImageConversionError,
    array_to_compressed,
    array_to_image,
    bin_frame,
    compressed_format,
    compressed_to_array,
    image_to_array,
    image_to_pixels,
    image_to_pixels_builtin,
)
from diffdrr_ros.ros.qos import image_qos

GREY = (np.arange(48 * 64).reshape(48, 64) * 17 % 4096).astype(np.uint16)


# --------------------------------------------------------------------------- CompressedImage

def _compressed(data: bytes, fmt: str) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg


@pytest.mark.parametrize("fmt", ["mono16; png compressed", "16UC1; png compressed mono16", "png", "PNG"])
def test_16bit_png_stays_16bit(fmt):
    _ok, buf = cv2.imencode(".png", GREY)
    out = compressed_to_array(_compressed(buf.tobytes(), fmt))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, GREY)


def test_compressed_depth_png():
    _ok, buf = cv2.imencode(".png", GREY)
    header = bytes(12)  # compressed_depth_image_transport's ConfigHeader precedes the PNG
    out = compressed_to_array(_compressed(header + buf.tobytes(), "16UC1; compressedDepth png"))
    np.testing.assert_array_equal(out, GREY)


def test_jpeg_mono8_and_colour_to_grey():
    grey8 = (GREY // 16).astype(np.uint8)
    _ok, buf = cv2.imencode(".jpg", grey8, [cv2.IMWRITE_JPEG_QUALITY, 95])
    for fmt in ("mono8; jpeg compressed mono8", "jpeg", "jpg"):
        out = compressed_to_array(_compressed(buf.tobytes(), fmt))
        assert out.shape == grey8.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - grey8).mean() < 3  # lossy
    bgr = np.dstack([grey8, grey8 // 2, grey8 // 3])  # what the plugin encodes for rgb8/bgr8 (as bgr8)
    _ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = compressed_to_array(_compressed(buf.tobytes(), "rgb8; jpeg compressed bgr8"))
    expect = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert out.ndim == 2 and np.abs(out.astype(int) - expect).mean() < 3


def test_array_to_compressed_round_trip():
    msg = array_to_compressed(GREY, "mono16")
    assert msg.format == "mono16; png compressed"
    np.testing.assert_array_equal(compressed_to_array(msg), GREY)


@pytest.mark.parametrize("data,fmt,expect", [
    (b"\x89PNG\r\n\x1a\n" + bytes(50), "mono16; png compressed", "cannot decode"),
    (b"not an image at all", "jpeg", "cannot decode"),
    (b"", "png", "empty"),
    (b"abc", "mono16; tiff compressed", "unsupported CompressedImage format"),
    (b"abc", "", "unsupported CompressedImage format"),
])
def test_bad_compressed_images_are_refused(data, fmt, expect):
    with pytest.raises(ImageConversionError, match=expect):
        compressed_to_array(_compressed(data, fmt))


def test_compressed_format_strings():
    assert compressed_format("mono16; png compressed") == ("mono16", "png", False)
    assert compressed_format("bgr8; jpeg compressed bgr8") == ("bgr8", "jpeg", False)
    assert compressed_format("jpg") == ("", "jpeg", False)
    assert compressed_format("16UC1; compressedDepth") == ("16UC1", "png", True)


# --------------------------------------------------------------------------- cv_bridge

def _sample(encoding: str) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    rng = np.random.default_rng(3)
    if dtype.kind == "f":
        a = rng.normal(size=(5, 7, channels)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=(5, 7, channels), dtype=dtype, endpoint=True)
    return a[..., 0] if channels == 1 else a


try:
    import cv_bridge  # noqa: F401

    HAVE_BRIDGE = True
except Exception:
    HAVE_BRIDGE = False


@pytest.mark.skipif(not HAVE_BRIDGE, reason="cv_bridge not importable: needs a sourced ROS 2 install")
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_cv_bridge_and_ours_agree(encoding):
    from cv_bridge import CvBridge

    bridge = CvBridge()
    arr = _sample(encoding)
    ours = conversions.array_to_image_builtin(np.ascontiguousarray(arr.reshape(5, 7, -1)), encoding)
    theirs = bridge.cv2_to_imgmsg(arr, encoding=encoding)
    assert (theirs.height, theirs.width, theirs.step, theirs.encoding) == (ours.height, ours.width, ours.step,
                                                                          ours.encoding)
    assert bytes(theirs.data) == bytes(ours.data)
    for msg in (ours, theirs):
        np.testing.assert_array_equal(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough").reshape(5, 7, -1),
                                      image_to_pixels_builtin(msg))
    # big-endian and padded rows: what a driver on another machine may send
    swapped = Image(height=5, width=7, encoding=encoding, is_bigendian=1, step=ours.step)
    swapped.data = np.ascontiguousarray(arr.reshape(5, 7, -1)).astype(arr.dtype.newbyteorder(">")).tobytes()
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(swapped, desired_encoding="passthrough").reshape(5, 7, -1),
                                  image_to_pixels_builtin(swapped))


def test_the_converter_in_use_decodes_every_encoding():
    """Whichever converter is in use (cv_bridge or ours), every encoding round-trips."""
    assert conversions.IMAGE_BACKEND in ("cv_bridge", "builtin")
    if not HAVE_BRIDGE:
        assert conversions.IMAGE_BACKEND == "builtin"
    for encoding in ENCODINGS:
        arr = _sample(encoding)
        np.testing.assert_array_equal(image_to_pixels(array_to_image(arr, encoding)), arr.reshape(5, 7, -1))
        assert image_to_array(array_to_image(arr, encoding)).shape == (5, 7)


# --------------------------------------------------------------------------- binning

def test_bin_frame_is_the_block_mean():
    a = np.random.default_rng(0).integers(0, 4000, (1024, 1024), dtype=np.uint16)
    b = bin_frame(a, 8)
    assert b.shape == (128, 128) and b.dtype == np.float32
    assert b[3, 5] == pytest.approx(a[24:32, 40:48].mean(), rel=1e-6)
    assert bin_frame(a, 1) is a
    with pytest.raises(ValueError, match="does not divide"):
        bin_frame(a[:1000], 16)


# --------------------------------------------------------------------------- QoS

def test_image_qos_choices():
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    q = image_qos("auto", 2)
    assert (q.reliability, q.history, q.depth, q.durability) == (ReliabilityPolicy.RELIABLE, HistoryPolicy.KEEP_LAST,
                                                                 2, DurabilityPolicy.VOLATILE)
    assert image_qos("auto", 2, [reliable]).reliability == ReliabilityPolicy.RELIABLE
    assert image_qos("auto", 2, [reliable, qos_profile_sensor_data]).reliability == ReliabilityPolicy.BEST_EFFORT
    assert image_qos("reliable", 1, [qos_profile_sensor_data]).reliability == ReliabilityPolicy.RELIABLE
    assert image_qos("best_effort", 1).reliability == ReliabilityPolicy.BEST_EFFORT
    with pytest.raises(ValueError, match="one of"):
        image_qos("sometimes", 1)


PLAYER = r"""
import sys, time
import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
n, size = int(sys.argv[1]), int(sys.argv[2])
rclpy.init()
node = rclpy.create_node("large_frame_player")
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.VOLATILE)  # diffdrr_ros.bag.player.playback_qos
pub = node.create_publisher(Image, "large_frames/image", qos)
end = time.monotonic() + 30
while pub.get_subscription_count() == 0 and time.monotonic() < end:
    time.sleep(0.05)
time.sleep(0.3)
data = np.random.default_rng(0).integers(0, 4000, (size, size), dtype=np.uint16).tobytes()
for k in range(n):
    msg = Image(height=size, width=size, encoding="mono16", step=2 * size)
    msg.header.frame_id = str(k)
    msg.data = data
    pub.publish(msg)
    time.sleep(0.2)
time.sleep(float(sys.argv[3]))
"""


def test_large_frames_arrive_with_the_default_image_qos(ros_env):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("large_frame_sink", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    got: set[str] = set()
    sizes: set[int] = set()

    def on_image(m: Image) -> None:
        got.add(m.header.frame_id)
        sizes.add(len(m.data))

    node.create_subscription(Image, "large_frames/image", on_image, image_qos("auto", 2))
    n, size = 6, 2048
    player = subprocess.Popen([sys.executable, "-c", PLAYER, str(n), str(size), "20"], env=ros_env)
    try:
        end = time.monotonic() + 60
        while len(got) < n and time.monotonic() < end and player.poll() is None:
            executor.spin_once(timeout_sec=0.05)
        assert got == {str(k) for k in range(n)}, f"received {sorted(got)} of {n} frames of {size} px"
        assert sizes == {2 * size * size}
    finally:
        player.kill()
        player.wait()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
