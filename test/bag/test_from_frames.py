"""``diffdrr-ros bag from-frames``: X-ray frame files (XA DICOM, a cine, frames with sidecars) -> a bag.

The files are written with the project's own writers (``write_xa_dicom``, ``write_frame``) and
a cine with pydicom; the bag is read back with the project's bag reader and checked message by
message: counts, stamps, joint angles (the headers' in rad), CameraInfo K (the detector's), and
pixels that round-trip to the written line integrals within the 16-bit quantisations.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy not importable: run scripts/setup.sh")
pytest.importorskip("rosbags", reason="rosbags not installed")
pydicom = pytest.importorskip("pydicom")

from rclpy.serialization import deserialize_message  # noqa: E402

from diffdrr_ros.app.cli import main  # noqa: E402
from diffdrr_ros.bag.common import message_class  # noqa: E402
from diffdrr_ros.bag.scoring import read_records  # noqa: E402
from diffdrr_ros.core.geometry import CArmJoints, Detector  # noqa: E402
from diffdrr_ros.core.xray_files import read_frame, stored_uint16, write_frame, write_xa_dicom  # noqa: E402
from diffdrr_ros.ros.conversions import JointNames, image_to_array, joints_from_message  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DET = Detector(64, 64, spacing_mm=(3.125, 3.125), sdd_mm=1020.0, sid_mm=750.0)
CINE_DET = Detector(64, 64, spacing_mm=(3.0, 3.2), sdd_mm=1100.0, sid_mm=800.0)
I0 = 60000.0  # the command's default
CINE_I0 = 4000.0
TOPICS = ("/fluoro/image", "/carm/joint_states", "/fluoro/camera_info")


def _line_integrals(seed: int) -> np.ndarray:
    """A smooth 64 x 64 frame of line integrals in 0.1 .. 4 (what a DRR of a head spans)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64] / 63.0
    cx, cy = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.08)
    return (0.1 + 3.9 * (0.6 * blob + 0.4 * x * y)).astype(np.float32)


def _xa(path: Path, line: np.ndarray, lao: float, cranial: float, **tags) -> tuple[Path, float]:
    """An XA file as a hospital archive holds it (no sidecar); returns it and its line-integral step."""
    stored, lo, hi = stored_uint16(line)
    slope = (hi - lo) / 65535
    write_xa_dicom(path, stored, rescale=(slope, lo), domain="line_integral", detector=DET,
                   joints=CArmJoints(lao_rad=math.radians(lao), cranial_rad=math.radians(cranial)))
    _retag(path, **tags)
    return path, slope


def _retag(path: Path, **tags) -> None:
    """Set (value) or delete (None) header elements of a written DICOM file."""
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def _cine(path: Path, lines: list[np.ndarray], **extra) -> np.ndarray:
    """A 3-frame XA cine of raw intensities (LIN) as pydicom writes it; returns the stored frames."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

    stored = np.stack([np.rint(CINE_I0 * np.exp(-ln.astype(np.float64))) for ln in lines]).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "XA", "Cine^Test", "cine"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 64, 64, len(lines)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LIN", 1
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = "1100", "800"
    ds.ImagerPixelSpacing = ["3.0", "3.2"]
    ds.PositionerMotion = "DYNAMIC"
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = "-10", "15"
    ds.PositionerPrimaryAngleIncrement = ["0", "4", "9"]  # each frame's offset from the first
    ds.PositionerSecondaryAngleIncrement = "2"  # the mean change per frame
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return stored


def _bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    """``topic -> [(log time ns, message)]`` read back with the project's bag reader."""
    out: dict[str, list[tuple[int, object]]] = {}
    for topic, msgtype, log_ns, data in read_records([path]):
        out.setdefault(topic, []).append((int(log_ns), deserialize_message(bytes(data), message_class(msgtype))))
    return out


def _ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _utc_ns(*args) -> int:
    delta = dt.datetime(*args, tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return delta // dt.timedelta(microseconds=1) * 1000


def _no_scratch(parent: Path) -> bool:
    return not any(".partial-" in p.name for p in parent.iterdir())


def test_xa_files_and_a_cine_become_images_joints_and_camera_info(tmp_path, capsys):
    lines = [_line_integrals(k) for k in range(5)]
    a, step_a = _xa(tmp_path / "a.dcm", lines[0], lao=20.0, cranial=5.0,
                    AcquisitionDateTime="20240305101500.250000")
    # b: the project's own frame file (DICOM + sidecar, detector rotation in the sidecar), local time + offset
    b = tmp_path / "b.dcm"
    write_frame(b, lines[1], domain="line_integral", detector=DET, pose_carm_deg_mm=(-8.0, 30.0, 3.0, 0, 0, 0))
    _retag(b, AcquisitionDate="20240305", AcquisitionTime="111500.5", TimezoneOffsetFromUTC="+0100")
    _, lo_b, hi_b = stored_uint16(lines[1])
    cine = tmp_path / "cine.dcm"
    cine_stored = _cine(cine, lines[2:], AcquisitionDateTime="20240305101459.900",
                        FrameTimeVector=["0", "40", "60"])

    rc = main(["bag", "from-frames", str(b), str(a), str(cine), "--bag", str(tmp_path / "case"),
               "--frame-i0", str(CINE_I0)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "5 frames from 3 file(s)" in printed and "frame times from the DICOM headers" in printed
    assert "put in time order" in printed and "different detectors" in printed
    bag = _bag(tmp_path / "case")
    assert {t: len(v) for t, v in bag.items()} == dict.fromkeys(TOPICS, 5)

    # time order: the cine's frames (start + 0, 40, 100 ms), then a, then b (10:15:00.5 UTC)
    t0 = _utc_ns(2024, 3, 5, 10, 14, 59, 900_000)
    expected = [t0, t0 + 40_000_000, t0 + 100_000_000, _utc_ns(2024, 3, 5, 10, 15, 0, 250_000),
                _utc_ns(2024, 3, 5, 10, 15, 0, 500_000)]
    images, joints, infos = (bag[t] for t in TOPICS)
    assert [_ns(m) for _, m in images] == expected
    assert [_ns(m) for _, m in joints] == expected and [_ns(m) for _, m in infos] == expected
    for (t_img, _), (t_joint, _), (t_info, _) in zip(images, joints, infos, strict=True):
        assert t_info < t_joint < t_img  # a player hands the node the intrinsics and joints first

    # joints: the headers' angles (cine increments: primary per-frame offsets, secondary 2 deg per frame)
    angles = [(-10.0, 15.0, 0.0), (-6.0, 17.0, 0.0), (-1.0, 19.0, 0.0), (20.0, 5.0, 0.0), (30.0, -8.0, 3.0)]
    sdds = [1100.0] * 3 + [1020.0] * 2
    names = JointNames()
    for (_, msg), (lao, cranial, rot), sdd in zip(joints, angles, sdds, strict=True):
        assert list(msg.name) == [names.lao, names.cranial, names.detector_rotation, names.sdd]
        np.testing.assert_allclose(msg.position, [math.radians(lao), math.radians(cranial), math.radians(rot),
                                                  sdd / 1000.0], rtol=0, atol=1e-12)
        read = joints_from_message(msg, names)  # as the node reads it
        assert read.sdd_mm == pytest.approx(sdd) and read.table_mm == (0.0, 0.0, 0.0)

    # camera info: the detector's K; the node's reading of it gives the header's SDD and principal point
    for (_, info), det in zip(infos, [CINE_DET] * 3 + [DET] * 2, strict=True):
        assert (info.height, info.width) == (64, 64) and info.header.frame_id == "carm_detector_optical"
        np.testing.assert_allclose(info.k, det.intrinsic_matrix().reshape(-1).numpy(), rtol=1e-12)
        k = det.intrinsic_matrix().numpy()
        np.testing.assert_allclose(np.asarray(info.p).reshape(3, 4), np.hstack([k, np.zeros((3, 1))]), rtol=1e-12)
        back = Detector.from_intrinsic_matrix(info.k, 64, 64, det.spacing_mm, sid_mm=float(det.sid))
        assert float(back.sdd_mm) == pytest.approx(float(det.sdd_mm)) and back.principal_point_mm == (0, 0)
    assert infos[0][1].k[0] == pytest.approx(1100.0 / 3.2) and infos[0][1].k[4] == pytest.approx(1100.0 / 3.0)

    # pixels: mono16 intensities I0 exp(-L); -log(I / I0) gives back the written L within the quantisations
    originals = [lines[2], lines[3], lines[4], lines[0], lines[1]]
    cine_step = [0.5 / cine_stored[k].astype(np.float64) for k in range(3)]  # LIN storage: dL = dI / I
    file_step = [step_a / 2, (hi_b - lo_b) / 65535 / 2]  # LOG storage: half a rescale step
    for (_, img), line, step in zip(images, originals, [*cine_step, *file_step], strict=True):
        assert img.encoding == "mono16" and (img.height, img.width) == (64, 64)
        pixels = image_to_array(img).astype(np.float64)
        back = -np.log(pixels / I0)
        err = np.abs(back - line)
        assert np.all(err <= step + 0.5 / pixels + 1e-6), float(err.max())
        assert float(err.max()) < 0.01
    assert not np.array_equal(image_to_array(images[0][1]), image_to_array(images[1][1]))


def test_a_header_without_the_sdd_is_refused_naming_the_tag(tmp_path, ros_env):
    good, _ = _xa(tmp_path / "good.dcm", _line_integrals(0), 10.0, 0.0)
    bad, _ = _xa(tmp_path / "bad.dcm", _line_integrals(1), 20.0, 0.0, DistanceSourceToDetector=None)
    out = tmp_path / "case"
    proc = subprocess.run([sys.executable, "-m", "diffdrr_ros.app.cli", "bag", "from-frames", str(good), str(bad),
                           "--bag", str(out)], cwd=REPO, env=ros_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "DistanceSourceToDetector (0018,1110)" in proc.stderr and "bad.dcm" in proc.stderr
    assert not out.exists() and _no_scratch(tmp_path)


def test_a_frame_that_fails_while_writing_leaves_no_bag(tmp_path, capsys):
    good, _ = _xa(tmp_path / "good.dcm", _line_integrals(0), 10.0, 0.0)
    # a good header whose values (rescaled to 40..105) cannot be line integrals: found only when its pixels are read
    stored, _, _ = stored_uint16(_line_integrals(1))
    bad = write_xa_dicom(tmp_path / "bad.dcm", stored, rescale=(1e-3, 40.0), domain="line_integral", detector=DET,
                         joints=CArmJoints(lao_rad=0.3, cranial_rad=0.0))
    out = tmp_path / "case"
    rc = main(["bag", "from-frames", str(good), str(bad), "--bag", str(out), "--timing", "rate"])
    err = capsys.readouterr().err
    assert rc == 1 and "cannot be line integrals" in err and "no bag written" in err
    assert not out.exists() and _no_scratch(tmp_path)


def test_a_plain_image_without_a_sidecar_is_refused(tmp_path, capsys):
    import cv2

    png = tmp_path / "plain.png"
    cv2.imwrite(str(png), np.full((64, 64), 30000, dtype=np.uint16))
    rc = main(["bag", "from-frames", str(png), "--bag", str(tmp_path / "case")])
    err = capsys.readouterr().err
    assert rc == 1 and "no projection geometry" in err and "plain.png.json" in err
    assert not (tmp_path / "case").exists() and _no_scratch(tmp_path)


def test_frames_without_times_are_stamped_at_the_rate(tmp_path, capsys):
    # a DICOM whose header has no times, and frames with sidecars (.npy, .png) as 'diffdrr-ros render' writes them
    dcm, _ = _xa(tmp_path / "a.dcm", _line_integrals(0), 10.0, -5.0, ContentDate=None, ContentTime=None)
    npy, png = tmp_path / "b.npy", tmp_path / "c.png"
    write_frame(npy, _line_integrals(1), domain="line_integral", detector=DET, pose_carm_deg_mm=(4, -20, 0, 0, 0, 0))
    write_frame(png, _line_integrals(2), domain="line_integral", detector=DET, pose_carm_deg_mm=(0, 45, 0, 0, 0, 0))
    files = [str(dcm), str(npy), str(png)]

    rc = main(["bag", "from-frames", *files, "--bag", str(tmp_path / "case"), "--rate", "4", "--start-time", "50"])
    printed = capsys.readouterr().out
    assert rc == 0 and "at 4 Hz from 50 s" in printed and "no DICOM times" in printed
    assert "AcquisitionDateTime (0008,002A)" in printed
    bag = _bag(tmp_path / "case")
    for topic in TOPICS:
        assert [_ns(m) for _, m in bag[topic]] == [50_000_000_000, 50_250_000_000, 50_500_000_000]
    lao = [joints_from_message(m, JointNames()).lao_rad for _, m in bag["/carm/joint_states"]]
    np.testing.assert_allclose(lao, np.radians([10.0, -20.0, 45.0]), atol=1e-12)  # the order given
    for (_, img), path in zip(bag["/fluoro/image"], files, strict=True):
        line = read_frame(path).line_integral.astype(np.float64)
        pixels = image_to_array(img).astype(np.float64)
        assert np.all(np.abs(-np.log(pixels / I0) - line) <= 0.5 / pixels + 1e-6)

    # --timing dicom refuses, naming what is missing
    rc = main(["bag", "from-frames", *files, "--bag", str(tmp_path / "dicom"), "--timing", "dicom"])
    assert rc == 1 and "ContentTime (0008,0033)" in capsys.readouterr().err and not (tmp_path / "dicom").exists()


def test_equal_header_times_fall_back_to_the_rate(tmp_path, capsys):
    same = {"ContentDate": "20240101", "ContentTime": "120000"}
    a, _ = _xa(tmp_path / "a.dcm", _line_integrals(0), 0.0, 0.0, **same)
    b, _ = _xa(tmp_path / "b.dcm", _line_integrals(1), 30.0, 0.0, **same)
    rc = main(["bag", "from-frames", str(a), str(b), "--bag", str(tmp_path / "case"), "--rate", "2"])
    assert rc == 0 and "have the same time" in capsys.readouterr().out
    stamps = [_ns(m) for _, m in _bag(tmp_path / "case")["/fluoro/image"]]
    assert stamps == [1000_000_000_000, 1000_500_000_000]


def test_float_line_integrals_in_sqlite3(tmp_path, capsys):
    cine = tmp_path / "cine.dcm"
    _cine(cine, [_line_integrals(k) for k in range(3)], AcquisitionDateTime="20240305101459", FrameTime="100")
    rc = main(["bag", "from-frames", str(cine), "--bag", str(tmp_path / "case"), "--encoding", "32FC1",
               "--storage", "sqlite3", "--frame-i0", str(CINE_I0)])
    printed = capsys.readouterr().out
    assert rc == 0 and "image.log_transform:=false" in printed and "FrameTime (0018,1063)" in printed
    assert (tmp_path / "case" / "case.db3").is_file()
    bag = _bag(tmp_path / "case")
    t0 = _utc_ns(2024, 3, 5, 10, 14, 59)
    assert [_ns(m) for _, m in bag["/fluoro/image"]] == [t0, t0 + 100_000_000, t0 + 200_000_000]
    for k, (_, img) in enumerate(bag["/fluoro/image"]):
        assert img.encoding == "32FC1"
        np.testing.assert_array_equal(image_to_array(img), read_frame(cine, frame_index=k, i0=CINE_I0).line_integral)


@pytest.mark.slow
def test_rendered_frames_replayed_through_the_node_register(tmp_path, capsys):
    """Two DRRs of the phantom, the CT 8.8 mm from where the joints put it: the node finds it from the bag alone."""
    import torch

    from diffdrr_ros.bag.replay import NODE_NAME, replay
    from diffdrr_ros.core.geometry.rotations import make_transform
    from diffdrr_ros.core.metrics import target_points
    from diffdrr_ros.core.volume.phantoms import make_phantom
    from diffdrr_ros.ros.conversions import pose_to_matrix

    offset = (6.0, -5.0, 4.0)  # mm, the CT centre from the isocentre (the node's prior puts it at the isocentre)
    files = []
    for name, (theta, phi) in (("a.dcm", (0.0, 25.0)), ("b.dcm", (10.0, -15.0))):
        files.append(str(tmp_path / name))
        assert main(["render", "--phantom", "head_small", "--pose", str(theta), str(phi), "0", *map(str, offset),
                     "--size", "64", "64", "--spacing", "3.125", "3.125", "--sdd", "1020", "--sid", "750",
                     "--device", "cpu", "--out", files[-1]]) == 0
    case = tmp_path / "case"
    assert main(["bag", "from-frames", *files, "--bag", str(case), "--timing", "rate"]) == 0
    capsys.readouterr()
    # the detector (64 x 64, SDD) comes from the bag's CameraInfo; the pitch and SID are the node's defaults
    params = {"use_camera_info": True, "ct_path": "phantom:head_small", "registration.pyramid": [4, 2, 1],
              "registration.init_search_first_frame": False, "gate.allow_unresolved_depth": True}
    report = replay(case, tmp_path / "run", params=params, every_frame=True, progress=False,
                    domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    assert report["node"]["started"] and report["summary"]["on_tf"] == 2, report
    assert "detector from CameraInfo: Detector(height=64, width=64" in (tmp_path / "run" / "node.log").read_text()

    vol = make_phantom("head_small")
    points = target_points(vol.center, vol.extent_mm)
    points_h = torch.cat([points, torch.ones(len(points), 1, dtype=torch.float64)], 1).T
    eye = torch.eye(3, dtype=torch.float64)
    truth = make_transform(eye, torch.tensor(offset, dtype=torch.float64) - vol.center.to(torch.float64))

    def mtre(t_iso_ct):
        return float((t_iso_ct @ points_h - truth @ points_h)[:3].norm(dim=0).mean())

    assert mtre(make_transform(eye, -vol.center.to(torch.float64))) > 8.0  # where the node started
    poses = [deserialize_message(bytes(d), message_class(t)) for _, t, _, d in
             read_records([tmp_path / "run" / "outputs"], [f"/{NODE_NAME}/ct_pose"])]
    assert len(poses) == 2
    for msg in poses:
        assert msg.header.frame_id == "carm_isocenter" and mtre(pose_to_matrix(msg.pose.pose)) < 1.0
