"""The registration node's image input (:class:`diffdrr_ros.ros.image_input.ImageInput`) without a ROS graph:
topic names, the working detector, binning and decoding on arrival, and the lost-frame counters."""

import threading

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage

from diffdrr_ros.core.geometry import Detector
from diffdrr_ros.ros.conversions import array_to_compressed, array_to_image, bin_frame
from diffdrr_ros.ros.image_input import ImageInput
from diffdrr_ros.ros.params import PARAMS
from diffdrr_ros.ros.runtime import StartupError
from diffdrr_ros.ros.topic_status import TopicStatus, TopicStatusParams


class _Logger:
    def __init__(self):
        self.lines = []

    def warning(self, msg, **_):
        self.lines.append(("warning", msg))

    def info(self, msg, **_):
        self.lines.append(("info", msg))


class _Param:
    def __init__(self, value):
        self.value = value


class _Node:
    """The little of a node that the frame path of ImageInput uses: parameters and a logger."""

    def __init__(self, **overrides):
        self.params = {p.name: p.default for p in PARAMS}
        self.params.update(overrides)
        self.logger = _Logger()

    def get_parameter(self, name):
        return _Param(self.params[name])

    def get_logger(self):
        return self.logger


def _input(**overrides):
    counts = {}
    images = ImageInput(_Node(**overrides), threading.Lock(),
                        lambda counter, n: counts.__setitem__(counter, counts.get(counter, 0) + n))
    images.configure()
    return images, counts


DET = Detector(4, 6, spacing_mm=(2.0, 2.0), sdd_mm=1000.0, sid_mm=700.0)


def test_topic_follows_the_transport():
    assert _input()[0].topic("fluoro/image") == "fluoro/image"
    assert _input(**{"image.transport": "compressed"})[0].topic("fluoro/image") == "fluoro/image/compressed"


def test_working_detector_is_binned_and_must_divide():
    images, _ = _input(**{"image.binning": 2})
    assert images.binning == 2
    assert images.working_detector(Detector(8, 12, spacing_mm=(1.0, 1.0), sdd_mm=1000.0)).shape == (4, 6)
    with pytest.raises(StartupError, match=r"image\.binning 2 must divide the detector size 7x12"):
        images.working_detector(Detector(7, 12, spacing_mm=(1.0, 1.0), sdd_mm=1000.0))


@pytest.mark.parametrize("compressed", [False, True])
def test_frames_are_decoded_and_binned_on_arrival(compressed):
    images, counts = _input(**{"image.binning": 2, "image.log_transform": True, "image.i0": 0.0})
    raw = (np.arange(8 * 12, dtype=np.uint16).reshape(8, 12) * 300 + 1000).astype(np.uint16)
    msg = array_to_compressed(raw, "mono16") if compressed else array_to_image(raw, "mono16")
    pixels, fixed, _mask = images.prepare(msg, DET)
    np.testing.assert_array_equal(pixels, bin_frame(raw, 2))
    assert tuple(fixed.shape[-2:]) == DET.shape and not counts
    with pytest.raises(ValueError, match=r"wrong image size 8x12, expected 16x24 \(binned by 2 to 8x12\)"):
        images.prepare(msg, Detector(8, 12, spacing_mm=(1.0, 1.0), sdd_mm=1000.0))


def test_a_corrupt_compressed_frame_is_counted():
    images, counts = _input()
    msg = CompressedImage(format="mono16; png compressed", data=b"not a png")
    with pytest.raises(ValueError, match="bad compressed image"):
        images.prepare(msg, DET)
    assert counts == {"compressed_decode_errors": 1}


def test_stamp_gaps_are_counted_and_logged():
    images, counts = _input()
    status = TopicStatus("/fluoro/image", TopicStatusParams(1.0, 30.0, 0.1, 5, -1.0, 5.0), lambda: 0.0)
    images.statuses = {"image": status}
    for i in [*range(10), 12]:  # 10 Hz, then two frames missing
        images.tick("image", 1.0 + 0.1 * i)
    images.tick("unknown", 1.0)  # an input without a status: nothing
    assert counts == {"frames_missing_stamp_gaps": 2}
    assert any("2 frame(s) missing on /fluoro/image" in line for _, line in images.node.logger.lines)
