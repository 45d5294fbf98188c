"""``diffdrr-ros``: command-line entry to the core (render, register, environment info).

Sub-commands (each has ``--help``):

* ``render``   - one DRR of a CT or built-in phantom at a C-arm pose, to .npy / .png / .tif / XA .dcm (with a
  ``<file>.json`` sidecar saying what the file holds).
* ``register`` - register one X-ray frame to a CT; prints pose, similarity, time (and mTRE). Frames are read as
  their sidecar / DICOM header says (images without one hold intensities, .npy line integrals); an X-ray
  DICOM's header gives the detector and the C-arm angles unless flags override them.
* ``info``     - the environment: ROS distro, rmw, torch, device.
* ``demo``     - the README's main job.

Poses on the command line are the seed's C-arm parameters in degrees and millimetres:
``THETA PHI GAMMA BX BY BZ`` (cranial, LAO, detector rotation, translation of the CT centre
from the isocentre); see :mod:`diffdrr_ros.core.geometry`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..core.geometry import carm_to_matrix
from ..core.volume import PHANTOMS, VolumeLoadError
from ..core.xray_files import XRayFrame, read_frame, read_stored_image, tag_label, write_frame
from .args import (
    DRR_PHYSICS_FLAGS,
    add_detector_args,
    add_drr_model_args,
    add_frame_args,
    add_volume_args,
    describe_drr,
    detector_for_frame,
    detector_from_args,
    drr_model_fields,
    frame_domain_from_args,
    volume_from_args,
)
from .environment import environment_report


def _pose_args(values: list[float]) -> tuple[list[float], list[float]]:
    return [math.radians(v) for v in values[:3]], list(values[3:])


def load_xray(path: Path) -> np.ndarray:
    """The stored pixel values of a frame file (.npy, .png/.tif/..., DICOM), grey 2-D, no domain conversion."""
    return read_stored_image(path)


def _read_frame(args: argparse.Namespace, path: Path) -> XRayFrame:
    return read_frame(path, domain=frame_domain_from_args(args), i0=args.i0,
                      scaled_range=tuple(args.scaled_range) if args.scaled_range else None,
                      frame_index=args.frame_index)


def cmd_render(args: argparse.Namespace) -> int:
    from ..core.drr import RenderSettings, render, resolve_device, to_intensity

    vol = volume_from_args(args)
    if not args.raw:
        vol = vol.to_attenuation() if vol.kind == "hu" else vol
    det = detector_from_args(args)
    device = resolve_device(args.device)
    angles, trans = _pose_args(args.pose)
    pose = carm_to_matrix(torch.tensor(angles, dtype=torch.float64), torch.tensor(trans, dtype=torch.float64),
                          vol.center)
    settings = RenderSettings(method=args.method, n_samples=args.samples,
                              patch_size=tuple(args.patch) if args.patch else None)
    with torch.no_grad():
        img = render(vol.to(device), pose.to(device), det, settings)
    if args.intensity:
        img = to_intensity(img)
    written = write_frame(args.out, img.cpu().numpy(), domain="intensity" if args.intensity else "line_integral",
                          detector=det, pose_carm_deg_mm=args.pose,
                          volume_values="raw" if args.raw else "attenuation")
    what = "intensities exp(-L)" if args.intensity else "line integrals L"
    print(f"wrote {' and '.join(map(str, written))}  ({det.height}x{det.width} {what}, min {float(img.min()):.6g}, "
          f"max {float(img.max()):.6g}, {'raw voxel values' if args.raw else 'attenuation'} x mm, device {device})")
    return 0


def _angles_of(frame: XRayFrame) -> list[float] | None:
    """``(theta, phi, gamma)`` in degrees that the frame's header / sidecar states, or ``None``."""
    geo = frame.geometry
    if geo is None or not geo.has_angles:
        return None
    return [geo.cranial_deg, geo.lao_deg, geo.detector_rotation_deg]


def cmd_register(args: argparse.Namespace) -> int:
    from ..core.geometry import CArmJoints, matrix_to_carm
    from ..core.metrics import inplane_depth_error
    from ..core.registration import Registrar, RegistrationConfig, pose_covariance, prepare_fixed, view_from_joints

    drr = drr_model_fields(args)  # a bad combination of flags fails before anything is loaded
    vol = volume_from_args(args)
    frame = _read_frame(args, args.xray)
    print(f"frame {args.xray}: {frame.description}")
    fixed = prepare_fixed(frame.line_integral, invert=args.invert)
    det, detector_notes = detector_for_frame(args, frame)
    notes = list(detector_notes)
    stated = _angles_of(frame)
    if args.init is None:
        if stated is None:
            raise ValueError(f"--init is required: {args.xray} states no C-arm angles (a DICOM header's "
                             f"{tag_label('PositionerPrimaryAngle')} and {tag_label('PositionerSecondaryAngle')})")
        args.init = [*stated, 0.0, 0.0, 0.0]
        print(f"init: the C-arm angles of {args.xray} (theta cranial, phi LAO, gamma; deg) "
              f"{[round(a, 3) for a in stated]}, the CT centre at the isocentre")
    elif stated is not None and any(abs(a - b) > 1e-6 for a, b in zip(args.init[:3], stated, strict=True)):
        notes.append(f"--init angles {args.init[:3]} override the angles of {args.xray}, "
                     f"{[round(a, 3) for a in stated]}")
    if args.xray_angles and stated is not None:
        notes.append(f"--xray-angles {args.xray_angles} override the angles of {args.xray}")
    for note in notes:
        print(f"note: {note}")
    if frame.geometry is not None:
        source = f"{args.xray} and the flags" if detector_notes else str(args.xray)
        print(f"detector from {source}: {det.height}x{det.width} px, pitch {det.spacing_mm[0]:g} x "
              f"{det.spacing_mm[1]:g} mm, SDD {det.sdd_mm:g} mm, SID {det.sid:g} mm")

    def carm(theta_phi_gamma_deg: list[float]) -> CArmJoints:
        theta, phi, gamma = (math.radians(float(v)) for v in theta_phi_gamma_deg)
        return CArmJoints(lao_rad=phi, cranial_rad=theta, detector_rotation_rad=gamma)

    ref = carm(args.xray_angles or stated or args.init[:3])
    views = [view_from_joints(prepare_fixed(_read_frame(args, Path(path)).line_integral, invert=args.invert),
                              carm(angles), ref)
             for path, *angles in (args.view or [])]
    cfg = RegistrationConfig(optimizer=args.optimizer, similarity=args.similarity, compare=args.compare,
                             max_iterations=args.max_iterations, init_search=args.init_search,
                             **({"pyramid": tuple(args.pyramid)} if args.pyramid else {}), **drr)
    print(describe_drr(cfg))
    reg = Registrar(vol, det, cfg, device=args.device)
    init = reg.pose_from_carm(*_pose_args(args.init))
    truth = reg.pose_from_carm(*_pose_args(args.truth)) if args.truth else None
    result = reg.register(fixed, init, truth=truth, views=views)
    angles, trans = matrix_to_carm(result.pose, reg.center)
    deg = [round(math.degrees(a), 3) for a in angles.tolist()]
    print(f"pose (theta, phi, gamma deg; bx, by, bz mm): {deg} {[round(t, 3) for t in trans.tolist()]}")
    print(f"similarity {cfg.similarity}={result.similarity:.5f}  zncc={result.zncc:.5f}  "
          f"iterations={result.iterations}  time={result.wall_time_s:.2f}s  device={reg.device}")
    if views:
        print(f"{len(views) + 1} views, ZNCC per view: {' '.join(f'{z:.5f}' for z in result.view_zncc)}")
    if result.mtre_mm is not None:
        err = inplane_depth_error(result.pose, truth, reg.targets)
        print(f"mTRE {result.mtre_mm:.3f} mm  ({'success' if result.success else 'failure'} at < 2 mm); in plane "
              f"{float(err.inplane_mm):.3f} mm, along the beam {float(err.depth_mm):.3f} mm")
    if args.covariance:
        cov = pose_covariance(reg, fixed, result.pose, compare=cfg.compare, views=views,
                              scale_uncertainty=args.scale_uncertainty)
        sig = cov.target_sigma_mm(reg.targets)
        print(f"predicted 1-sigma target error: x {float(sig[0]):.3f}, y {float(sig[1]):.3f}, along the beam "
              f"{float(sig[2]):.3f} mm")
    print(f"verdict: {result.verdict}")
    if args.json:
        payload = result.to_dict()
        payload["pose_carm_deg_mm"] = deg + trans.tolist()
        payload["drr"] = {"drr_model": cfg.drr_model, **{k: getattr(cfg, k) for k in DRR_PHYSICS_FLAGS}}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if result.accepted else 2


def cmd_info(args: argparse.Namespace) -> int:
    for k, v in environment_report().items():
        print(f"{k:>16}: {v}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, n_frames=args.frames, phantom=args.phantom or "head", device=args.device,
                    planes=args.planes)


def cmd_sim(args: argparse.Namespace) -> int:
    """Write the simulated C-arm's topics to a rosbag2 bag, offline (no ROS graph needed)."""
    from ..bag import record_messages
    from ..core.sim import Trajectory, XRayStyle
    from ..ros.carm_simulator import Simulator, simulate_messages

    det = detector_from_args(args)
    sim = Simulator(volume_from_args(args), det, Trajectory(kind=args.trajectory, seed=args.seed),
                    XRayStyle(i0=args.i0, bits=args.bits, invert=args.invert), seed=args.seed)
    counts = record_messages(args.bag, simulate_messages(sim, args.frames, frame_rate_hz=args.rate),
                             storage=args.storage)
    print(f"wrote {args.bag} ({args.storage}): " + ", ".join(f"{t} x{n}" for t, n in sorted(counts.items())))
    return 0


def _node_overrides(items: list[str]) -> dict[str, object]:
    """``name:=value`` (as ``ros2 run ... -p``) -> ``{name: value}``, values read as YAML (numbers, lists, bools)."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ValueError(f"-p expects name:=value, got {item!r}")
        out[name] = yaml.safe_load(value) if value else ""
    return out


def cmd_replay(args: argparse.Namespace) -> int:
    """A recorded case through the node, recorded, scored (``bag/replay.py``)."""
    from ..bag.replay import format_report, replay

    report = replay(args.bag, args.out, params=_node_overrides(args.param or []), params_file=args.params,
                    every_frame=args.every_frame, rate=args.rate, ground_truth_topic=args.ground_truth_topic,
                    frame_timeout_s=args.frame_timeout, domain_id=args.domain_id, progress=not args.no_progress)
    print(format_report(report))
    if not report["node"]["started"]:
        return 2
    print(f"wrote {args.out}/replay.json, frames.csv, node.log, outputs/ (the node's outputs, a bag)")
    return 0


def cmd_replay_compare(args: argparse.Namespace) -> int:
    from ..bag.replay import compare

    code, text = compare(args.run_a, args.run_b, max_regression=args.max_regression,
                         max_mtre_increase_mm=args.max_mtre_increase)
    print(text)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffdrr-ros", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("render", help="render one DRR to .npy/.png/.tif/.dcm (+ a .json sidecar)")
    add_volume_args(p)
    add_detector_args(p)
    p.add_argument("--pose", type=float, nargs=6, default=[0, 0, 0, 0, 0, 0],
                   metavar=("THETA", "PHI", "GAMMA", "BX", "BY", "BZ"), help="C-arm pose, degrees and mm")
    p.add_argument("--method", choices=["siddon", "trilinear"], default="siddon")
    p.add_argument("--samples", type=int, default=None, help="trilinear samples per ray")
    p.add_argument("--patch", type=int, nargs=2, default=None, metavar=("PH", "PW"), help="patch size (pixels)")
    p.add_argument("--raw", action="store_true", help="integrate raw voxel values (no HU -> attenuation mapping)")
    p.add_argument("--intensity", action="store_true", help="write exp(-line integral) instead of the integral")
    p.add_argument("--out", type=Path, default=Path("drr.png"),
                   help=".npy (float values), .png / .tif (16-bit, min-max scaled) or .dcm (XA DICOM); each gets a "
                        "<out>.json sidecar with the domain, scaling, pose and detector")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("register", help="register one X-ray frame to a CT")
    add_volume_args(p)
    add_detector_args(p)
    p.add_argument("--xray", type=Path, required=True,
                   help="frame: .npy, .png/.tif, or DICOM (XA / RF / DX: its header gives the detector and angles)")
    p.add_argument("--view", nargs=4, action="append", metavar=("FILE", "THETA", "PHI", "GAMMA"),
                   help="another frame of the same, still patient and its C-arm angles (deg: cranial, LAO, detector "
                        "rotation); repeat for more: one pose is registered to all (depth from several views)")
    p.add_argument("--xray-angles", type=float, nargs=3, default=None, metavar=("THETA", "PHI", "GAMMA"),
                   help="the C-arm angles of --xray (deg), for --view (default: the angles of --init)")
    p.add_argument("--covariance", action="store_true", help="print the predicted 1-sigma target error per axis")
    p.add_argument("--scale-uncertainty", type=float, default=0.003,
                   help="relative magnification uncertainty in the covariance (default 0.003)")
    p.add_argument("--init", type=float, nargs=6, default=None, metavar=("THETA", "PHI", "GAMMA", "BX", "BY", "BZ"),
                   help="start pose (deg, mm); default: the C-arm angles of the frame's DICOM header / sidecar with "
                        "the CT centre at the isocentre")
    p.add_argument("--truth", type=float, nargs=6, default=None, help="ground-truth pose, to report the mTRE")
    p.add_argument("--optimizer", choices=["adam", "gd", "gdm", "gddm"], default="adam")
    p.add_argument("--similarity", default="gncc",
                   help="zncc, l2, pncc, mncc, gncc, mncc+gncc (default gncc: with --compare intensity it is robust "
                        "to scatter and beam hardening, see docs/results.md)")
    p.add_argument("--compare", default="intensity", choices=["intensity", "line_integral"],
                   help="domain of the similarity (default intensity; line_integral is the seed's)")
    p.add_argument("--pyramid", type=int, nargs="+", default=None,
                   help="detector downsampling factors, coarse to fine (default: the core's, 2 1)")
    p.add_argument("--max-iterations", type=int, default=150, help="per pyramid level")
    p.add_argument("--init-search", action=argparse.BooleanOptionalAction, default=True,
                   help="batch search around --init first (capture range +-45 deg / +-60 mm; default on)")
    add_drr_model_args(p)
    add_frame_args(p)
    p.add_argument("--json", type=Path, default=None, help="write the result as JSON")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("info", help="print ROS distro, rmw, torch and device")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="the README's main job (see diffdrr_ros/app/demo.py)")
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--frames", type=int, default=16, help="simulated frames (1 per second)")
    p.add_argument("--phantom", default=None, choices=sorted(PHANTOMS), help="built-in phantom (default: head)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--planes", type=int, choices=(1, 2), default=2,
                   help="2: a biplane C-arm (plane B 90 deg from plane A, pairs by stamp: depth known from every "
                        "pair); 1: a single plane sweeping +-40 deg (frames whose depth is unresolved are held back)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sim", help="write a bag of the simulated C-arm (frames, joints, ground truth)")
    add_volume_args(p)
    add_detector_args(p)
    p.set_defaults(size=[128, 128], spacing=[3.125, 3.125], sid=750.0)
    p.add_argument("--bag", type=Path, required=True, help="output bag directory")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--rate", type=float, default=2.0, help="frames per second")
    p.add_argument("--trajectory", choices=["sweep", "random"], default="sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--i0", type=float, default=3000.0, help="counts of an unattenuated pixel")
    p.add_argument("--bits", type=int, choices=[12, 16], default=12)
    p.add_argument("--invert", action="store_true")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("replay", help="replay a recorded case through the registration node and score it "
                                      "('replay compare RUN_A RUN_B' compares two runs)")
    p.add_argument("bag", type=Path, help="the case: the node's inputs (images, joints), and the ground truth "
                                          "when known")
    p.add_argument("--out", type=Path, required=True, help="run directory: replay.json, frames.csv, node.log, outputs/")
    p.add_argument("--params", type=Path, default=None, help="node parameter file (default config/registration.yaml)")
    p.add_argument("-p", dest="param", action="append", metavar="NAME:=VALUE", help="node parameter (repeatable)")
    p.add_argument("--every-frame", action="store_true",
                   help="play each image once the node has finished the one before: reproducible on any machine")
    p.add_argument("--rate", type=float, default=1.0, help="real-time playback speed factor")
    p.add_argument("--ground-truth-topic", default="/carm_sim/ground_truth")
    p.add_argument("--frame-timeout", type=float, default=120.0, help="seconds to wait for the node per frame")
    p.add_argument("--domain-id", type=int, default=None, help="ROS domain of the run (default: one of 101-200)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_replay)
    p = sub.add_parser("replay-compare", help=argparse.SUPPRESS)  # reached as "replay compare"
    p.add_argument("run_a", type=Path, help="the reference run directory")
    p.add_argument("run_b", type=Path, help="the run to check")
    p.add_argument("--max-regression", type=float, default=0.0,
                   help="fraction of the frames B may have fewer on TF than A (default 0)")
    p.add_argument("--max-mtre-increase", type=float, default=0.5,
                   help="mm the median mTRE (on TF, and of all registered poses) may grow")
    p.set_defaults(func=cmd_replay_compare)

    from ..bag import add_bag_parser

    add_bag_parser(sub)

    from ..studies import add_study_parser

    add_study_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["replay", "compare"]:
        argv = ["replay-compare", *argv[2:]]
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (VolumeLoadError, OSError, ValueError, RuntimeError) as exc:
        print(f"diffdrr-ros {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
