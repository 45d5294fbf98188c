"""Shared set-up of the registration studies: the problem, the random starts, the runs.

A *problem* is a CT (the built-in head phantom by default, or any CT file), a detector
and a ground-truth pose; the fixed image is the DRR at the truth (as in the seed and in
DiffDRR's experiments). Starts are the seed's Monte Carlo protocol: the C-arm parameters
of the truth perturbed uniformly by up to ``+-max_deg`` per angle and ``+-max_mm`` per
translation (:func:`diffdrr_ros.core.registration.perturb_pose`), from a seeded generator
so that every study (and the DiffDRR benchmark) sees the same starts.

Success everywhere: mTRE < 2 mm over the 27 fixed targets of
:func:`diffdrr_ros.core.metrics.target_points` (a 3x3x3 grid at 25/50/75 % of the CT
extent). The seed's own criterion is reported beside it: final full-resolution ZNCC above
0.999 (DiffDRR's "converged"), i.e. a negative-ZNCC loss below -0.999.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..app.args import add_drr_model_args, drr_model_fields
from ..core.geometry import Detector
from ..core.metrics import CameraAxisError, inplane_depth_error
from ..core.registration import Registrar, RegistrationConfig, RegistrationResult, View, perturb_pose
from ..core.volume import PHANTOMS, Volume, ct_source, open_ct

SUCCESS_MTRE_MM = 2.0
SEED_ZNCC = 0.999


@dataclass
class Problem:
    """A CT, a detector and the true pose (the fixed image is the DRR there)."""

    name: str
    volume: Volume
    detector: Detector
    truth_carm: tuple[float, ...]  # theta, phi, gamma (deg), bx, by, bz (mm)


def add_problem_arguments(p: argparse.ArgumentParser, *, size: int = 64) -> None:
    """The options every study shares: CT, detector, truth, starts, output, device."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ct", type=Path, default=None, help="CT: DICOM dir, .nii/.nii.gz or .npy (default: phantom)")
    src.add_argument("--phantom", default="head", choices=sorted(PHANTOMS), help="built-in phantom (default: head)")
    p.add_argument("--size", type=int, default=size, help=f"detector pixels per side (default {size})")
    p.add_argument("--spacing", type=float, default=None,
                   help="pixel pitch, mm (default: a 400 mm panel, i.e. 400/size)")
    p.add_argument("--sdd", type=float, default=1020.0, help="source-to-detector distance, mm")
    p.add_argument("--sid", type=float, default=750.0, help="source-to-isocentre distance, mm")
    p.add_argument("--truth", type=float, nargs=6, default=[0.0] * 6,
                   metavar=("THETA", "PHI", "GAMMA", "BX", "BY", "BZ"), help="true pose, degrees and mm")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--threads", type=int, default=None, help="torch/numba CPU threads (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    p.add_argument("--out", type=Path, default=None, help="output folder (default out/study-<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def problem_from_args(args: argparse.Namespace) -> Problem:
    set_threads(args.threads)
    vol = open_ct(ct_source(args.ct, args.phantom))
    name = Path(args.ct).name if args.ct is not None else f"phantom:{args.phantom}"
    spacing = args.spacing or 400.0 / args.size
    det = Detector(args.size, args.size, spacing_mm=(spacing, spacing), sdd_mm=args.sdd, sid_mm=args.sid)
    return Problem(name, vol, det, tuple(float(v) for v in args.truth))


def truth_pose(reg: Registrar, problem: Problem) -> Tensor:
    t = problem.truth_carm
    return reg.pose_from_carm([math.radians(v) for v in t[:3]], list(t[3:]))


def random_starts(
    reg: Registrar, truth: Tensor, n: int, *, max_deg: float = 45.0, max_mm: float = 60.0, seed: int = 0
) -> Tensor:
    """``n`` starts: the truth's C-arm parameters perturbed uniformly (the seed's protocol)."""
    g = torch.Generator().manual_seed(seed)
    return perturb_pose(truth.expand(n, 4, 4).cpu(), reg.center, math.radians(max_deg), max_mm, g)


def result_row(i: int, res: RegistrationResult, start_mtre: float, errors: CameraAxisError | None = None) -> dict:
    """One registration as a flat record (CSV/JSON); ``errors``: its target error in camera axes."""
    deg = [math.degrees(a) for a in res.angles_rad.tolist()]
    split = {} if errors is None else {"inplane_mm": round(float(errors.inplane_mm), 4),
                                       "depth_mm": round(float(errors.depth_mm), 4),
                                       "depth_bias_mm": round(float(errors.depth_bias_mm), 4)}
    return {
        "start": i,
        "start_mtre_mm": round(start_mtre, 4),
        "mtre_mm": round(float(res.mtre_mm), 4) if res.mtre_mm is not None else None,
        **split,
        "views": len(res.view_zncc) or 1,
        "success": bool(res.success),
        "seed_success": bool(res.zncc > SEED_ZNCC),
        "zncc": round(res.zncc, 6),
        "similarity": round(res.similarity, 6),
        "iterations": res.iterations,
        "time_s": round(res.wall_time_s, 4),
        "mrays": round(sum(st.get("rays", 0) for st in res.stages) / 1e6, 3),
        "accepted": res.accepted,
        "stop_reason": res.stop_reason,
        "theta_deg": deg[0], "phi_deg": deg[1], "gamma_deg": deg[2],
        "bx_mm": float(res.translation_mm[0]), "by_mm": float(res.translation_mm[1]),
        "bz_mm": float(res.translation_mm[2]),
    }


def summarize(rows: list[dict]) -> dict:
    """Success rates (mTRE and the seed's ZNCC criterion), time and mTRE distributions."""
    if not rows:
        return {"n": 0}
    t = np.array([r["time_s"] for r in rows])
    m = np.array([r["mtre_mm"] for r in rows], dtype=float)
    it = np.array([r["iterations"] for r in rows])
    ok = np.array([r["success"] for r in rows])
    return {
        "n": len(rows),
        "success_rate": float(ok.mean()),
        "seed_success_rate": float(np.mean([r["seed_success"] for r in rows])),
        "accepted_rate": float(np.mean([r["accepted"] for r in rows])),
        "time_median_s": float(np.median(t)),
        "time_mean_s": float(t.mean()),
        "time_p90_s": float(np.percentile(t, 90)),
        "iterations_median": float(np.median(it)),
        "mrays_median": float(np.median([r.get("mrays", 0.0) for r in rows])),
        "mtre_median_mm": float(np.median(m)),
        "mtre_success_median_mm": float(np.median(m[ok])) if ok.any() else None,
        "mtre_p90_mm": float(np.percentile(m, 90)),
        **({"inplane_median_mm": float(np.median([r["inplane_mm"] for r in rows])),
            "depth_median_mm": float(np.median([r["depth_mm"] for r in rows]))} if "depth_mm" in rows[0] else {}),
    }


def run_registrations(
    reg: Registrar,
    fixed: Tensor,
    starts: Tensor,
    truth: Tensor,
    *,
    progress: bool = True,
    desc: str = "registering",
    curves: list[list[float]] | None = None,
    mask: np.ndarray | None = None,
    views: Sequence[View] = (),
) -> list[dict]:
    """Register ``fixed`` (and ``views``) from every start; optional per-run curves of the loss per iteration.

    ``mask``, ``views``: as for :meth:`Registrar.register` (pixels that carry signal; more
    views of the same patient). Rows carry the error in plane and along the beam separately.
    """
    rows = []
    bar = progress_bar(range(starts.shape[0]), progress, desc)
    for i in bar:
        curve: list[float] = []
        cb = None
        if curves is not None:
            def cb(it: int, poses: Tensor, losses: Tensor, _c: list[float] = curve) -> None:
                _c.append(float(losses.min()))
        res = reg.register(fixed, starts[i], truth=truth, callback=cb, mask=mask, views=views)
        rows.append(result_row(i, res, float(reg.mtre(starts[i], truth)),
                               inplane_depth_error(res.pose, truth.to(res.pose), reg.targets)))
        if curves is not None:
            curves.append(res.history)
        if hasattr(bar, "set_postfix"):
            done = np.mean([r["success"] for r in rows])
            bar.set_postfix(success=f"{done:.0%}", t=f"{res.wall_time_s:.2f}s")
    return rows


def progress_bar(it: Iterable, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, dynamic_ncols=True)


def machine_info() -> dict:
    """Where the numbers came from (CPU, threads, load)."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": "cuda (" + torch.cuda.get_device_name(0) + ")" if torch.cuda.is_available() else "cpu",
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with contextlib.suppress(OSError):
        info["loadavg_1m_at_start"] = os.getloadavg()[0]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        path.write_text("")
        return
    keys = list(rows[0])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default))


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def config_dict(cfg: RegistrationConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


# ---------------------------------------------------------------------------------------
# Registration set-ups: our default, the seed's protocol, and --set overrides
# ---------------------------------------------------------------------------------------

#: The seed's protocol: one level at full resolution, no search, its C-arm parameters,
#: negative ZNCC, 250 iterations, no learning-rate schedule.
SEED_PRESET: dict = {
    "pyramid": (1,),
    "init_search": False,
    "parameterization": "carm",
    "similarity": "zncc",
    "max_iterations": 250,
    "patience": 25,
    "plateau_patience": 0,
    "level_lr_decay": 1.0,
}

PRESETS: dict[str, dict] = {"default": {}, "seed": SEED_PRESET}


def parse_overrides(items: list[str] | None) -> dict:
    """``["key=value", ...]`` -> dict; values are JSON when they parse (lists become tuples)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip().replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    return out


def make_config(preset: str = "default", overrides: dict | None = None) -> RegistrationConfig:
    """A :class:`RegistrationConfig` from a preset name and field overrides (validated)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    fields = {**PRESETS[preset], **(overrides or {})}
    known = set(RegistrationConfig.__dataclass_fields__)
    bad = sorted(set(fields) - known)
    if bad:
        raise ValueError(f"unknown RegistrationConfig field(s) {bad}")
    return RegistrationConfig(**fields)


def add_config_arguments(p: argparse.ArgumentParser, default_preset: str = "default") -> None:
    """``--preset``, ``--set KEY=VALUE``, the DRR model and its physics (``--drr-model poly --kvp ...``),
    ``--max-deg``, ``--max-mm``."""
    p.add_argument("--preset", default=default_preset, choices=sorted(PRESETS),
                   help="registration set-up: 'default' (this package's) or 'seed' (the paper's protocol)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a RegistrationConfig field, e.g. --set init_candidates=512 "
                        "--set pyramid=[4,2,1] (repeatable; wins over the DRR flags)")
    p.add_argument("--max-deg", type=float, default=45.0, help="start perturbation per angle (deg)")
    p.add_argument("--max-mm", type=float, default=60.0, help="start perturbation per translation (mm)")
    add_drr_model_args(p)


def config_overrides(args: argparse.Namespace) -> dict:
    """The :class:`RegistrationConfig` fields of :func:`add_config_arguments`: the DRR flags, then ``--set``."""
    overrides = parse_overrides(args.overrides)
    return {**drr_model_fields(args, overrides.get("drr_model")), **overrides}


def set_threads(n: int | None) -> None:
    """Torch and numba CPU threads (numba's parallel kernels suffer badly on a busy CPU)."""
    if not n:
        return
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a runtime dependency
        pass


def out_dir(args: argparse.Namespace, name: str) -> Path:
    out = Path(args.out) if args.out else Path("out") / f"study-{name}"
    out.mkdir(parents=True, exist_ok=True)
    return out
