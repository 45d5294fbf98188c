"""Command-line arguments shared by the ``diffdrr-ros`` sub-commands: the CT and the detector."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.geometry import Detector
from ..core.volume import PHANTOMS, Volume, ct_source, open_ct


def add_volume_args(p: argparse.ArgumentParser) -> None:
    """``--ct`` | ``--phantom``, ``--ct-spacing``, ``--ct-downsample``."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ct", type=Path, help="CT: DICOM directory, .nii/.nii.gz, or .npy (with --ct-spacing)")
    src.add_argument("--phantom", default=None, choices=sorted(PHANTOMS), help="built-in phantom (default: head)")
    p.add_argument("--ct-spacing", type=float, nargs=3, metavar=("SI", "SJ", "SK"), help="voxel size (mm) for .npy")
    p.add_argument("--ct-downsample", type=int, default=1, help="integer CT downsampling factor for speed")


def add_detector_args(p: argparse.ArgumentParser, size_required: bool = False) -> None:
    """``--size``, ``--spacing``, ``--sdd``, ``--sid``, ``--principal-point``, ``--device``."""
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None if size_required else [200, 200],
                   help="detector rows, columns (pixels)")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("DY", "DX"), default=None,
                   help="pixel pitch (mm); default: a 400 mm panel")
    p.add_argument("--sdd", type=float, default=1020.0, help="source-to-detector distance (mm)")
    p.add_argument("--sid", type=float, default=None, help="source-to-isocentre distance (mm); default SDD/2")
    p.add_argument("--principal-point", type=float, nargs=2, default=(0.0, 0.0), metavar=("X0", "Y0"),
                   help="principal point offset from the detector centre (mm)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def detector_from_args(args: argparse.Namespace, shape: tuple[int, int] | None = None) -> Detector:
    """The :class:`Detector` of :func:`add_detector_args` (``shape`` overrides ``--size``)."""
    h, w = shape or tuple(args.size)
    spacing = tuple(args.spacing) if args.spacing else (400.0 / max(h, w),) * 2
    return Detector(h, w, spacing_mm=spacing, sdd_mm=args.sdd, sid_mm=args.sid,
                    principal_point_mm=tuple(args.principal_point))


def volume_from_args(args: argparse.Namespace) -> Volume:
    """The CT of ``--ct`` / ``--phantom`` (default: the head phantom), ``--ct-spacing``, ``--ct-downsample``."""
    spacing = tuple(args.ct_spacing) if args.ct_spacing else None
    return open_ct(ct_source(args.ct, args.phantom), spacing_mm=spacing, downsample=args.ct_downsample)
