"""Command-line arguments shared by the ``diffdrr-ros`` sub-commands: the CT, the detector, the frame files,
the DRR's physics."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.geometry import Detector
from ..core.registration.config import DRR_MODELS, RegistrationConfig
from ..core.volume import PHANTOMS, Volume, ct_source, load_volume, open_ct
from ..core.xray_files import FRAME_DOMAINS, XRayFrame

DEFAULT_SDD_MM = 1020.0
DEFAULT_PANEL_MM = 400.0


def add_volume_args(p: argparse.ArgumentParser) -> None:
    """``--ct`` | ``--phantom``, ``--ct-spacing``, ``--ct-downsample``, ``--ct-series-uid``, ``--allow-gantry-tilt``."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ct", type=Path, help="CT: DICOM directory, .nii/.nii.gz, or .npy (with --ct-spacing)")
    src.add_argument("--phantom", default=None, choices=sorted(PHANTOMS), help="built-in phantom (default: head)")
    p.add_argument("--ct-spacing", type=float, nargs=3, metavar=("SI", "SJ", "SK"), help="voxel size (mm) for .npy")
    p.add_argument("--ct-downsample", type=int, default=1, help="integer CT downsampling factor for speed")
    p.add_argument("--ct-series-uid", default=None,
                   help="SeriesInstanceUID of the CT in a DICOM directory holding several series")
    p.add_argument("--allow-gantry-tilt", action="store_true",
                   help="load a gantry-tilted DICOM series on a sheared grid (refused otherwise)")


def add_detector_args(p: argparse.ArgumentParser, size_required: bool = False) -> None:
    """``--size``, ``--spacing``, ``--sdd``, ``--sid``, ``--principal-point``, ``--device``."""
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None if size_required else [200, 200],
                   help="detector rows, columns (pixels)")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("DY", "DX"), default=None,
                   help="pixel pitch (mm, rows then columns); default: the frame's header / sidecar, else a "
                        f"{DEFAULT_PANEL_MM:g} mm panel")
    p.add_argument("--sdd", type=float, default=None,
                   help="source-to-detector distance (mm); default: the frame's header / sidecar, else "
                        f"{DEFAULT_SDD_MM:g}")
    p.add_argument("--sid", type=float, default=None,
                   help="source-to-isocentre distance (mm); default: the frame's header / sidecar, else SDD/2")
    p.add_argument("--principal-point", type=float, nargs=2, default=None, metavar=("X0", "Y0"),
                   help="principal point offset from the detector centre (mm); default 0 0 (or the sidecar's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def detector_from_args(args: argparse.Namespace, shape: tuple[int, int] | None = None) -> Detector:
    """The :class:`Detector` of :func:`add_detector_args` (``shape`` overrides ``--size``)."""
    h, w = shape or tuple(args.size)
    spacing = tuple(args.spacing) if args.spacing else (DEFAULT_PANEL_MM / max(h, w),) * 2
    return Detector(h, w, spacing_mm=spacing, sdd_mm=DEFAULT_SDD_MM if args.sdd is None else args.sdd,
                    sid_mm=args.sid, principal_point_mm=tuple(args.principal_point or (0.0, 0.0)))


def detector_for_frame(args: argparse.Namespace, frame: XRayFrame) -> tuple[Detector, list[str]]:
    """The detector of a frame: its DICOM header or sidecar, each given flag overriding its value.

    Returns the detector and one note per flag that overrode what the file says. A frame that
    states no geometry (a plain image, an old .npy) gets :func:`detector_from_args`.

    Raises:
        MissingTagError: a DICOM header lacks a needed tag that no flag supplies.
    """
    shape = tuple(frame.line_integral.shape)
    geo = frame.geometry
    if geo is None:
        return detector_from_args(args, shape), []
    flags = {"spacing": ("--spacing", tuple(args.spacing) if args.spacing else None, geo.spacing_mm),
             "sdd": ("--sdd", args.sdd, geo.sdd_mm), "sid": ("--sid", args.sid, geo.sid_mm)}
    notes = [f"{flag} {given} overrides {geo.sources.get(name, name)} = {stated} of {geo.label}"
             for name, (flag, given, stated) in flags.items()
             if given is not None and stated is not None and given != stated]
    det = geo.detector(spacing_mm=flags["spacing"][1], sdd_mm=args.sdd, sid_mm=args.sid,
                       principal_point_mm=tuple(args.principal_point) if args.principal_point else None)
    return det, notes


def add_frame_args(p: argparse.ArgumentParser) -> None:
    """How to read the X-ray frame files: ``--frame-domain``, ``--log-transform``, ``--i0``, ``--scaled-range``..."""
    p.add_argument("--frame-domain", choices=FRAME_DOMAINS, default=None,
                   help="what the frame files hold (default: what their sidecar / DICOM header says; otherwise "
                        "images (PNG/TIFF) hold intensities and .npy line integrals); must agree with the file")
    p.add_argument("--log-transform", action="store_true",
                   help="the frames hold raw intensities: use -log(I/I0) (same as --frame-domain intensity)")
    p.add_argument("--i0", type=float, default=None,
                   help="intensity of an unattenuated ray, for intensity frames (default: the sidecar's, else the "
                        "frame's maximum)")
    p.add_argument("--scaled-range", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="a frame without a sidecar is min-max scaled: its minimum and maximum stand for these "
                        "values (the min and max an older 'diffdrr-ros render' printed)")
    p.add_argument("--frame-index", type=int, default=0, help="the frame of a multi-frame (cine) DICOM file")
    p.add_argument("--invert", action="store_true", help="negate the frame (after reading it as line integrals)")


def frame_domain_from_args(args: argparse.Namespace) -> str | None:
    """The domain the flags say the frames hold (``None``: let the files say)."""
    if args.log_transform and args.frame_domain == "line_integral":
        raise ValueError("--log-transform (intensities) contradicts --frame-domain line_integral")
    return "intensity" if args.log_transform else args.frame_domain


def volume_from_args(args: argparse.Namespace) -> Volume:
    """The CT of ``--ct`` / ``--phantom`` (default: the head phantom), ``--ct-spacing``, ``--ct-downsample``,
    ``--ct-series-uid``, ``--allow-gantry-tilt``."""
    spacing = tuple(args.ct_spacing) if args.ct_spacing else None
    series_uid = getattr(args, "ct_series_uid", None)  # parsers without these flags (bag score) work too
    allow_tilt = bool(getattr(args, "allow_gantry_tilt", False))
    if args.ct is not None and (series_uid or allow_tilt):
        vol = load_volume(args.ct, spacing=spacing, series_uid=series_uid, allow_gantry_tilt=allow_tilt)
        return vol.downsample(args.ct_downsample) if args.ct_downsample > 1 else vol
    return open_ct(ct_source(args.ct, args.phantom), spacing_mm=spacing, downsample=args.ct_downsample)


#: The polychromatic DRR's physics: RegistrationConfig field -> flag (apply to ``--drr-model poly`` only).
DRR_PHYSICS_FLAGS: dict[str, str] = {
    "kvp": "--kvp", "filtration_mm_al": "--filtration-mm-al", "energy_bins": "--energy-bins",
    "scatter_to_primary": "--scatter-to-primary", "scatter_sigma_fraction": "--scatter-sigma-fraction",
    "heel_gain": "--heel-gain",
}


def add_drr_model_args(p: argparse.ArgumentParser) -> None:
    """``--drr-model mono|poly`` and the polychromatic DRR's physics (``--kvp``, ``--filtration-mm-al``,
    ``--energy-bins``, ``--scatter-to-primary``, ``--scatter-sigma-fraction``, ``--heel-gain``); defaults:
    :class:`RegistrationConfig`'s."""
    d = RegistrationConfig()
    g = p.add_argument_group("DRR physics", "the DRR the registration renders (core/drr/poly.py)")
    g.add_argument("--drr-model", choices=DRR_MODELS, default=None,
                   help=f"mono: line integrals of one attenuation volume (the seed's); poly: the CT (in HU) decomposed "
                        f"into soft tissue and bone, rendered through a tube spectrum with the physics below "
                        f"(default {d.drr_model})")
    g.add_argument("--kvp", type=float, default=None, help=f"poly: tube peak voltage, kVp (default {d.kvp:g}; <= 150)")
    g.add_argument("--filtration-mm-al", type=float, default=None,
                   help=f"poly: tube filtration, mm Al (default {d.filtration_mm_al:g})")
    g.add_argument("--energy-bins", type=int, default=None, help=f"poly: spectrum bins (default {d.energy_bins})")
    g.add_argument("--scatter-to-primary", type=float, default=None,
                   help=f"poly: scatter estimate, scatter / primary (default {d.scatter_to_primary:g}: off)")
    g.add_argument("--scatter-sigma-fraction", type=float, default=None,
                   help=f"poly: scatter kernel sigma, fraction of the detector's larger side "
                        f"(default {d.scatter_sigma_fraction:g})")
    g.add_argument("--heel-gain", type=float, default=None,
                   help=f"poly: heel effect, peak-to-peak gain change down the rows (default {d.heel_gain:g}: off)")


def drr_model_fields(args: argparse.Namespace, drr_model: str | None = None) -> dict:
    """The :class:`RegistrationConfig` fields that :func:`add_drr_model_args`' flags give (only those given).

    ``drr_model`` is the model the config ends up with when something else sets it (a study's
    ``--set drr_model=...``); a physics flag with a model other than poly is refused (``ValueError``)
    rather than silently ignored.
    """
    fields = {k: getattr(args, k) for k in ("drr_model", *DRR_PHYSICS_FLAGS) if getattr(args, k, None) is not None}
    model = drr_model or fields.get("drr_model", RegistrationConfig.drr_model)
    given = [flag for k, flag in DRR_PHYSICS_FLAGS.items() if k in fields]
    if given and model != "poly":
        raise ValueError(f"{', '.join(given)} set(s) the polychromatic DRR's physics: add --drr-model poly "
                         f"(the DRR model is {model!r})")
    return fields


def describe_drr(cfg: RegistrationConfig) -> str:
    """One line: the DRR model of ``cfg`` and, for poly, its physics."""
    if cfg.drr_model != "poly":
        return f"DRR {cfg.drr_model} (monoenergetic)"
    return (f"DRR poly: {cfg.kvp:g} kVp, {cfg.filtration_mm_al:g} mm Al, {cfg.energy_bins} bins, scatter/primary "
            f"{cfg.scatter_to_primary:g} (sigma {cfg.scatter_sigma_fraction:g}), heel {cfg.heel_gain:g}")
