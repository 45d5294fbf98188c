"""``diffdrr-ros bag from-frames``: stored X-ray frames (DICOM as hospitals store them, or frames with
sidecars) -> a rosbag2 bag the registration node replays.

Every frame of every file becomes three messages with the same header stamp (the frame time):

* ``/fluoro/image`` (sensor_msgs/Image): ``mono16`` detector intensities
  ``I = round(I0 exp(-L))`` of the frame's line integrals ``L`` (read as :func:`read_frame` reads
  them: the DICOM header or sidecar says what the file holds), clipped to 0..65535; that is what
  the node registers with its defaults (``image.log_transform: true``; ``image.i0: 0`` takes the
  frame maximum, ``image.i0: I0`` recovers ``L`` exactly). ``32FC1`` carries ``L`` itself (for
  ``image.log_transform: false``).
* ``/carm/joint_states`` (sensor_msgs/JointState): the header's PositionerPrimaryAngle (LAO +) and
  PositionerSecondaryAngle (cranial +) with the frame's increments, the detector rotation (0 for
  DICOM, the sidecar's otherwise), in rad, and the SDD in m, under the node's default joint names.
* ``/fluoro/camera_info`` (sensor_msgs/CameraInfo): size and ``K`` of the frame's detector
  (:meth:`Detector.intrinsic_matrix`: ``f = SDD / pitch`` in pixels, the principal point), ``P = [K | 0]``,
  no distortion; what the node reads with ``use_camera_info: true``.

Camera info and joints are logged 0.2 and 0.1 ms before their image, so a player delivers them first.

Frame times (``timing``): ``dicom`` takes each file's AcquisitionDateTime (0008,002A), else its
AcquisitionDate / AcquisitionTime, else ContentDate / ContentTime (TimezoneOffsetFromUTC when
present, else UTC), plus for frame ``k`` of a cine the sum of FrameTimeVector (0018,1065) or
``k`` FrameTime (0018,1063) or ``k / CineRate``; the frames are put in time order. ``rate``
stamps the frames in the order given at ``rate_hz`` from ``start_s``. ``auto`` (the default)
is ``dicom`` when every frame has a time and no two are equal, else ``rate`` (and says why).

The bag is written under a temporary name beside ``out`` and renamed when complete; on any
error it is removed, so no half-written bag is left at ``out``.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .common import DEFAULT_STORAGE, STORAGES, BagError, normalize_topic

__all__ = [
    "DEFAULT_I0",
    "ENCODINGS",
    "TIMINGS",
    "FrameSpec",
    "format_summary",
    "frame_times",
    "frames_to_bag",
    "intensities_from_line_integrals",
]

ENCODINGS = ("mono16", "32FC1")
TIMINGS = ("auto", "dicom", "rate")
#: Intensity of an unattenuated ray in the mono16 frames: near full scale (fine quantisation) with
#: room above it for slightly negative line integrals (noise around I0) before 65535 clips.
DEFAULT_I0 = 60000.0
FULL_SCALE = 65535
DEFAULT_TOPICS = {"image": "/fluoro/image", "joints": "/carm/joint_states", "camera_info": "/fluoro/camera_info"}
DEFAULT_FRAME_ID = "carm_detector_optical"  # the node's frames.detector
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
_BEFORE_IMAGE_NS = {"camera_info": 200_000, "joints": 100_000}


@dataclass
class FrameSpec:
    """One frame to convert: its file, its index in the file, and its time from the header (if any)."""

    path: Path
    index: int
    n_frames: int
    time_ns: int | None = None
    time_source: str = ""
    missing_time: str = ""  # why there is no time (names the tag)
    stamp_ns: int = 0  # the stamp it gets in the bag

    @property
    def label(self) -> str:
        return str(self.path) if self.n_frames == 1 else f"{self.path} frame {self.index}"


# --------------------------------------------------------------------------- frame times


def _tag(keyword: str) -> str:
    from ..core.xray_files import tag_label

    return tag_label(keyword)


def _value(ds, keyword: str) -> str:
    v = ds.get(keyword)
    return "" if v is None else str(v).strip()


def _ns(when: _dt.datetime) -> int:
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _timezone(ds) -> _dt.timezone:
    text = _value(ds, "TimezoneOffsetFromUTC")
    if len(text) == 5 and text[0] in "+-" and text[1:].isdigit():
        minutes = int(text[1:3]) * 60 + int(text[3:5])
        return _dt.timezone(_dt.timedelta(minutes=minutes if text[0] == "+" else -minutes))
    return _dt.UTC


def _start_time(ds) -> tuple[_dt.datetime | None, str]:
    """When the file's (first) frame was taken, and the tags that said it; ``(None, "")`` when no tag does."""
    from pydicom.valuerep import DA, DT, TM

    text = _value(ds, "AcquisitionDateTime")
    if text:
        when = DT(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=_timezone(ds))
        return when, _tag("AcquisitionDateTime")
    for time_kw, date_kws in (("AcquisitionTime", ("AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate")),
                              ("ContentTime", ("ContentDate", "AcquisitionDate", "SeriesDate", "StudyDate"))):
        tm = _value(ds, time_kw)
        if not tm:
            continue
        date_kw = next((k for k in date_kws if _value(ds, k)), None)
        day = DA(_value(ds, date_kw)) if date_kw else _dt.date(1970, 1, 1)
        when = _dt.datetime.combine(day, TM(tm), tzinfo=_timezone(ds))
        return when, f"{_tag(date_kw) if date_kw else 'no date (1970-01-01)'} + {_tag(time_kw)}"
    return None, ""


def _numbers(ds, keyword: str) -> list[float]:
    v = ds.get(keyword)
    if v is None or v == "":
        return []
    return [float(x) for x in v] if hasattr(v, "__len__") and not isinstance(v, str) else [float(v)]


def _frame_offsets_ns(ds, n_frames: int, label: str) -> tuple[list[int] | None, str]:
    """Offsets of a cine's frames from its first frame (ns), and the tag; ``(None, why)`` when no tag gives them."""
    if n_frames == 1:
        return [0], ""
    vector = _numbers(ds, "FrameTimeVector")
    if vector:
        if len(vector) != n_frames:
            raise BagError(f"{label}: {_tag('FrameTimeVector')} has {len(vector)} values for {n_frames} frames")
        return [round(v * 1e6) for v in np.cumsum([0.0, *vector[1:]])], _tag("FrameTimeVector")
    frame_time = _numbers(ds, "FrameTime")
    if frame_time and frame_time[0] > 0:
        return [round(k * frame_time[0] * 1e6) for k in range(n_frames)], _tag("FrameTime")
    cine_rate = _numbers(ds, "CineRate")
    if cine_rate and cine_rate[0] > 0:
        return [round(k * 1e9 / cine_rate[0]) for k in range(n_frames)], _tag("CineRate")
    return None, f"{label}: a cine of {n_frames} frames without {_tag('FrameTime')} or {_tag('FrameTimeVector')}"


def _dicom_specs(path: Path, ds) -> list[FrameSpec]:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    start, source = _start_time(ds)
    if start is None:
        why = (f"{path}: the DICOM header has no {_tag('AcquisitionDateTime')}, {_tag('AcquisitionTime')} or "
               f"{_tag('ContentTime')}")
        return [FrameSpec(path, k, n, missing_time=why) for k in range(n)]
    offsets, offset_source = _frame_offsets_ns(ds, n, str(path))
    if offsets is None:
        return [FrameSpec(path, k, n, missing_time=offset_source) for k in range(n)]
    t0 = _ns(start)
    source = source + (f" + {offset_source}" if offset_source else "")
    return [FrameSpec(path, k, n, time_ns=t0 + off, time_source=source) for k, off in enumerate(offsets)]


def frame_specs(paths: Sequence[str | Path]) -> list[FrameSpec]:
    """Every frame of ``paths`` in the order given (a cine's frames in turn), with its header time.

    Only headers are read here (no pixel data). Raises :class:`BagError` for a file that does not
    exist or a DICOM file that cannot be read.
    """
    import pydicom

    from ..core.xray_files import is_dicom_path

    specs: list[FrameSpec] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise BagError(f"frame file does not exist: {path}")
        if path.suffix.lower() != ".npy" and is_dicom_path(path):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:
                raise BagError(f"cannot read DICOM file {path}: {type(exc).__name__}: {exc}") from None
            try:
                specs += _dicom_specs(path, ds)
            except ValueError as exc:  # a malformed date / time value
                raise BagError(f"{path}: {exc}") from None
        else:
            specs.append(FrameSpec(path, 0, 1, missing_time=f"{path}: not a DICOM file (no acquisition time)"))
    if not specs:
        raise BagError("no frame files given")
    return specs


def frame_times(specs: list[FrameSpec], timing: str = "auto", rate_hz: float = 1.0,
                start_s: float = 1000.0) -> tuple[list[FrameSpec], str]:
    """Stamp ``specs`` (see the module doc); returns them in bag order and a line saying where the times came from."""
    if timing not in TIMINGS:
        raise BagError(f"unknown timing {timing!r}; choose from {', '.join(TIMINGS)}")
    why_not = next((s.missing_time for s in specs if s.time_ns is None), "")
    if not why_not:
        by_time = sorted(specs, key=lambda s: s.time_ns)
        same = next(((a, b) for a, b in itertools.pairwise(by_time) if a.time_ns == b.time_ns), None)
        if same is not None:
            why_not = f"{same[0].label} and {same[1].label} have the same time ({same[0].time_source})"
    if timing == "dicom" and why_not:
        raise BagError(f"--timing dicom: {why_not}")
    if timing == "dicom" or (timing == "auto" and not why_not):
        ordered = sorted(specs, key=lambda s: s.time_ns)
        for s in ordered:
            s.stamp_ns = int(s.time_ns)
        sources = sorted({s.time_source for s in ordered})
        moved = " (put in time order)" if ordered != specs else ""
        return ordered, f"frame times from the DICOM headers: {'; '.join(sources)}{moved}"
    if not rate_hz > 0:
        raise BagError(f"--rate must be positive, got {rate_hz}")
    start_ns = round(start_s * 1e9)
    if start_ns < _BEFORE_IMAGE_NS["camera_info"]:
        raise BagError(f"--start-time must be at least {_BEFORE_IMAGE_NS['camera_info'] / 1e9:g} s")
    for k, s in enumerate(specs):
        s.stamp_ns = start_ns + round(k * 1e9 / rate_hz)
    reason = "--timing rate" if timing == "rate" else f"no DICOM times: {why_not}"
    return list(specs), f"frame times at {rate_hz:g} Hz from {start_s:g} s in the order given ({reason})"


# --------------------------------------------------------------------------- messages


def intensities_from_line_integrals(line_integral: np.ndarray, i0: float) -> tuple[np.ndarray, int]:
    """``round(i0 exp(-L))`` as uint16 (clipped to 0..65535), and how many pixels were clipped above."""
    values = float(i0) * np.exp(-np.asarray(line_integral, dtype=np.float64))
    clipped = int(np.count_nonzero(values > FULL_SCALE + 0.5))
    return np.clip(np.rint(values), 0, FULL_SCALE).astype(np.uint16), clipped


def _camera_info(det, stamp, frame_id: str):
    from sensor_msgs.msg import CameraInfo

    k = [float(v) for v in det.intrinsic_matrix().reshape(-1).tolist()]
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(det.height), int(det.width)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = k
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0]
    return msg


def _joint_state(joints, sdd_mm: float, names, stamp):
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.stamp = stamp
    msg.name = [names.lao, names.cranial, names.detector_rotation, names.sdd]
    msg.position = [float(joints.lao_rad), float(joints.cranial_rad), float(joints.detector_rotation_rad),
                    float(sdd_mm) / 1000.0]
    return msg


def _missing_angle(geo) -> str | None:
    for value, keyword in ((geo.lao_deg, "PositionerPrimaryAngle"), (geo.cranial_deg, "PositionerSecondaryAngle")):
        if value is None:
            return (f"{geo.label}: the DICOM header lacks {_tag(keyword)} (a frame's C-arm angles come from its "
                    "header, or its sidecar's pose_carm_deg_mm)")
    return None


@dataclass
class _Stats:
    detectors: dict[tuple, int] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    angles_deg: list[tuple[float, float, float]] = field(default_factory=list)


def _read(spec: FrameSpec, *, frame_domain, frame_i0, spacing_mm, sdd_mm, sid_mm):
    """``(line integrals, detector, joints, description)`` of one frame; reader errors as :class:`BagError`."""
    from ..core.xray_files import FrameDomainError, MissingTagError, PixelDataError, SidecarError, read_frame

    try:
        frame = read_frame(spec.path, domain=frame_domain, i0=frame_i0, frame_index=spec.index)
        geo = frame.geometry
        if geo is None:
            raise BagError(f"{spec.path}: no projection geometry: not an X-ray DICOM file and no sidecar "
                           f"{spec.path.name}.json with the detector and pose (as 'diffdrr-ros render' writes)")
        det = geo.detector(spacing_mm=spacing_mm, sdd_mm=sdd_mm, sid_mm=sid_mm)
        missing = _missing_angle(geo)
        if missing:
            raise MissingTagError(missing)
        joints = geo.joints()
    except (MissingTagError, FrameDomainError, PixelDataError, SidecarError) as exc:
        raise BagError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise BagError(f"{spec.label}: {exc}") from None
    return frame.line_integral, det, joints, frame.description


def _messages(specs: list[FrameSpec], stats: _Stats, *, encoding: str, i0: float, topics: dict[str, str],
              frame_id: str, names, read_kw: dict[str, Any]) -> Iterator[tuple[str, str, int, Any]]:
    from builtin_interfaces.msg import Time

    from ..ros.conversions import array_to_image

    for spec in specs:
        line_integral, det, joints, description = _read(spec, **read_kw)
        stamp = Time(sec=spec.stamp_ns // 1_000_000_000, nanosec=spec.stamp_ns % 1_000_000_000)
        if encoding == "mono16":
            pixels, clipped = intensities_from_line_integrals(line_integral, i0)
            if clipped:
                stats.clipped[spec.label] = clipped
        else:
            pixels = np.ascontiguousarray(line_integral, dtype=np.float32)
        key = (det.height, det.width, *(round(float(v), 6) for v in det.spacing_mm), round(float(det.sdd_mm), 4),
               round(float(det.sid), 4), *(round(float(v), 6) for v in det.principal_point_mm))
        stats.detectors[key] = stats.detectors.get(key, 0) + 1
        stats.descriptions.setdefault(description, spec.label)
        stats.angles_deg.append((math.degrees(joints.lao_rad), math.degrees(joints.cranial_rad),
                                 math.degrees(joints.detector_rotation_rad)))
        yield (topics["camera_info"], "sensor_msgs/msg/CameraInfo", spec.stamp_ns - _BEFORE_IMAGE_NS["camera_info"],
               _camera_info(det, stamp, frame_id))
        yield (topics["joints"], "sensor_msgs/msg/JointState", spec.stamp_ns - _BEFORE_IMAGE_NS["joints"],
               _joint_state(joints, float(det.sdd_mm), names, stamp))
        yield topics["image"], "sensor_msgs/msg/Image", spec.stamp_ns, array_to_image(pixels, encoding, stamp, frame_id)


# --------------------------------------------------------------------------- the command


def frames_to_bag(
    files: Sequence[str | Path],
    out: str | Path,
    *,
    storage: str = DEFAULT_STORAGE,
    encoding: str = "mono16",
    i0: float = DEFAULT_I0,
    timing: str = "auto",
    rate_hz: float = 1.0,
    start_s: float = 1000.0,
    frame_domain: str | None = None,
    frame_i0: float | None = None,
    spacing_mm: tuple[float, float] | None = None,
    sdd_mm: float | None = None,
    sid_mm: float | None = None,
    topics: dict[str, str] | None = None,
    frame_id: str = DEFAULT_FRAME_ID,
    joint_names: Any = None,
) -> dict[str, Any]:
    """Write the frames of ``files`` into a new bag at ``out`` (see the module doc); returns a summary dict.

    Args:
        encoding: ``mono16`` (intensities ``i0 exp(-L)``) or ``32FC1`` (line integrals).
        i0: the unattenuated intensity of the mono16 frames.
        timing, rate_hz, start_s: where the stamps come from (``auto``, ``dicom``, ``rate``).
        frame_domain, frame_i0: how to read the files (as ``register``'s ``--frame-domain`` / ``--i0``).
        spacing_mm, sdd_mm, sid_mm: override (or supply) the header's values for every file.
        topics: ``{"image", "joints", "camera_info"}`` topic names (the node's defaults).
        joint_names: a :class:`~diffdrr_ros.ros.conversions.JointNames` (the node's defaults).

    Raises:
        BagError: a file that cannot be read, lacks a needed tag (named), or cannot be stamped;
            ``out`` exists. Nothing is left at ``out`` then.
    """
    from ..ros.conversions import JointNames
    from .writer import record_messages

    if storage not in STORAGES:
        raise BagError(f"unknown storage {storage!r}; choose from {', '.join(STORAGES)}")
    if encoding not in ENCODINGS:
        raise BagError(f"unsupported encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    if encoding == "mono16" and not 0 < i0 <= FULL_SCALE:
        raise BagError(f"--i0 must lie in (0, {FULL_SCALE}] for mono16 frames, got {i0:g}")
    out = Path(out)
    if out.exists():
        raise BagError(f"{out} exists already; rosbag2 bags are directories and are not overwritten")
    topics = {k: normalize_topic(v) for k, v in {**DEFAULT_TOPICS, **(topics or {})}.items()}
    names = JointNames() if joint_names is None else joint_names
    specs, timing_note = frame_times(frame_specs(files), timing, rate_hz, start_s)
    # Every header's geometry is checked before the bag is created (the pixels are read while writing).
    _check_headers(specs, spacing_mm=spacing_mm, sdd_mm=sdd_mm, sid_mm=sid_mm)

    out.parent.mkdir(parents=True, exist_ok=True)
    # Written in a scratch directory beside ``out`` (the storage file named after ``out``), moved when done.
    scratch = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    partial = scratch / out.name
    stats = _Stats()
    read_kw = {"frame_domain": frame_domain, "frame_i0": frame_i0, "spacing_mm": spacing_mm, "sdd_mm": sdd_mm,
               "sid_mm": sid_mm}
    try:
        counts = record_messages(partial, _messages(specs, stats, encoding=encoding, i0=i0, topics=topics,
                                                    frame_id=frame_id, names=names, read_kw=read_kw), storage)
        partial.rename(out)
    except BaseException as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if isinstance(exc, BagError):
            raise BagError(f"{exc} (no bag written: the partial bag was removed)") from None
        raise
    scratch.rmdir()
    first, last = specs[0].stamp_ns, specs[-1].stamp_ns
    return {
        "path": str(out), "storage": storage, "encoding": encoding, "i0": i0 if encoding == "mono16" else None,
        "frames": len(specs), "files": len({s.path for s in specs}), "counts": counts, "topics": topics,
        "first_stamp_s": first / 1e9, "last_stamp_s": last / 1e9, "duration_s": (last - first) / 1e9,
        "timing": timing_note, "detectors": stats.detectors, "clipped": stats.clipped,
        "read_as": stats.descriptions, "angles_deg": stats.angles_deg, "frame_id": frame_id,
        "node_params": _node_params(stats, encoding, i0, topics, names),
    }


def _check_headers(specs: list[FrameSpec], **detector_kw) -> None:
    """Fail before writing when a DICOM header lacks a needed tag, or another file has no sidecar
    (what a sidecar holds is checked as the frame is read)."""
    import pydicom

    from ..core.xray_files import MissingTagError, is_dicom_path, read_xray_geometry, sidecar_path

    headers: dict[Path, Any] = {}
    for spec in specs:
        if spec.path.suffix.lower() == ".npy" or not is_dicom_path(spec.path):
            if not sidecar_path(spec.path).is_file():
                raise BagError(f"{spec.path}: no projection geometry: not a DICOM file and no sidecar "
                               f"{sidecar_path(spec.path).name} with the detector and pose (as 'diffdrr-ros render' "
                               "writes)")
            continue
        ds = headers.get(spec.path)
        if ds is None:
            ds = headers[spec.path] = pydicom.dcmread(spec.path, stop_before_pixels=True)
        try:
            geo = read_xray_geometry(ds, frame_index=spec.index, label=str(spec.path))
            geo.detector(**detector_kw)
            missing = _missing_angle(geo)
            if missing:
                raise MissingTagError(missing)
        except MissingTagError as exc:
            raise BagError(str(exc)) from None
        except ValueError as exc:
            raise BagError(f"{spec.label}: {exc}") from None


def _node_params(stats: _Stats, encoding: str, i0: float, topics: dict[str, str], names) -> dict[str, Any]:
    """The node parameters that make it read this bag as written (``-p name:=value``)."""
    params: dict[str, Any] = {"use_camera_info": True}
    if len(stats.detectors) == 1:
        (key,) = stats.detectors
        params["detector.pixel_spacing_mm"] = [key[2], key[3]]
        params["detector.sid_mm"] = key[5]
    params["image.log_transform"] = encoding == "mono16"
    if encoding == "mono16":
        params["image.i0"] = float(i0)
    for key, param in (("image", "topics.image"), ("joints", "topics.joint_states"),
                       ("camera_info", "topics.camera_info")):
        if topics[key] != DEFAULT_TOPICS[key]:
            params[param] = topics[key]
    return params


def format_summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal: frames, topics, duration, detector, and the node parameters to replay it."""
    enc = result["encoding"]
    what = f"mono16 intensities I0 exp(-L), I0 = {result['i0']:g}" if enc == "mono16" else "32FC1 line integrals L"
    lines = [f"wrote {result['path']} ({result['storage']}): {result['frames']} frames from {result['files']} "
             f"file(s), {result['duration_s']:.3f} s ({result['first_stamp_s']:.6f} .. {result['last_stamp_s']:.6f})",
             f"  {result['timing']}"]
    lines += [f"  {topic}: {result['counts'].get(topic, 0)} x {kind}" for topic, kind in (
        (result["topics"]["image"], f"sensor_msgs/Image ({what}, frame_id {result['frame_id']})"),
        (result["topics"]["joints"], "sensor_msgs/JointState (rad; SDD in m)"),
        (result["topics"]["camera_info"], "sensor_msgs/CameraInfo (K from SDD / pixel pitch)"))]
    for key, n in result["detectors"].items():
        h, w, dy, dx, sdd, sid, x0, y0 = key
        lines.append(f"  detector {h}x{w} px, pitch {dy:g} x {dx:g} mm, SDD {sdd:g} mm, SID {sid:g} mm, "
                     f"principal point {x0:g} {y0:g} mm: {n} frame(s)")
    for desc, label in result["read_as"].items():
        lines.append(f"  read as {desc} (e.g. {label})")
    for label, n in result["clipped"].items():
        lines.append(f"  warning: {label}: {n} pixel(s) above 65535 clipped (line integrals < "
                     f"{-math.log(FULL_SCALE / result['i0']):.3f}); lower --i0")
    if len(result["detectors"]) > 1:
        lines.append("  warning: the frames have different detectors; the node takes the pixel pitch and SID from "
                     "its parameters (detector.pixel_spacing_mm, detector.sid_mm), one value for the whole bag")
    params = " ".join(f"-p {k}:={_yaml(v)}" for k, v in result["node_params"].items())
    lines.append(f"  replay: diffdrr-ros replay {result['path']} --out RUN_DIR {params}")
    return "\n".join(lines)


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(f"{v:g}" for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
