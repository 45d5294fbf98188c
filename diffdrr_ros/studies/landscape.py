"""The loss landscape around the true pose (the seed's Fig. 5), for ZNCC and L2.

One parameter at a time (1-D sweeps of each of the seed's six C-arm parameters) and two at
a time (2-D grids for ``--pairs``), the others held at the truth. Losses are negative
similarities: ``-ZNCC``, the raw L2 (``mse``, the seed's) and the L2 of z-scored images
(``l2``, which equals ``2 - 2 ZNCC`` and so has exactly ZNCC's landscape); lower is
better and the minimum should sit at offset 0. For every sweep it also reports the *capture range*: the
interval around 0 over which the loss decreases monotonically towards the truth (what a
pure descent method can recover from).

Writes ``landscape.json`` (all grids and values), ``sweeps_1d.csv``, ``landscape_1d.png``
and ``landscape_2d.png``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ..app.args import DRR_PHYSICS_FLAGS, add_drr_model_args, drr_model_fields
from ..core.geometry import carm_to_matrix, matrix_to_carm
from ..core.metrics import get_similarity
from ..core.registration import Registrar, RegistrationConfig
from . import common

PARAMS = ("theta", "phi", "gamma", "bx", "by", "bz")
UNITS = {"theta": "deg", "phi": "deg", "gamma": "deg", "bx": "mm", "by": "mm", "bz": "mm"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_problem_arguments(p)
    add_drr_model_args(p)  # the landscape of the poly DRR against itself with --drr-model poly
    p.add_argument("--range-deg", type=float, default=45.0, help="1-D/2-D sweep half-range for angles (deg)")
    p.add_argument("--range-mm", type=float, default=60.0, help="sweep half-range for translations (mm)")
    p.add_argument("--steps", type=int, default=61, help="points per 1-D sweep (odd keeps 0 on the grid)")
    p.add_argument("--steps-2d", type=int, default=31, help="points per axis of the 2-D grids")
    p.add_argument("--pairs", nargs="+", default=["theta:phi", "bx:by", "phi:bx"],
                   help="2-D pairs, e.g. theta:phi bx:bz")
    p.add_argument("--similarities", nargs="+", default=["zncc", "mse", "l2"],
                   help="similarities to map: zncc, mse (raw L2), l2 (z-scored L2, = 2 - 2 zncc), pncc, mncc, "
                        "gncc, mncc+gncc")


def _offsets(name: str, n: int, args: argparse.Namespace) -> np.ndarray:
    half = args.range_deg if UNITS[name] == "deg" else args.range_mm
    return np.linspace(-half, half, n)


def _poses(reg: Registrar, truth: torch.Tensor, deltas: np.ndarray) -> torch.Tensor:
    """Poses at the truth's C-arm parameters plus ``deltas`` (N, 6) in deg / mm."""
    a0, t0 = matrix_to_carm(truth, reg.center)
    d = torch.as_tensor(deltas, dtype=torch.float64)
    a = a0 + torch.deg2rad(d[:, :3])
    t = t0 + d[:, 3:]
    return carm_to_matrix(a, t, reg.center)


def _losses(reg: Registrar, fixed: torch.Tensor, poses: torch.Tensor, sims: list[str], chunk: int = 128) -> dict:
    out: dict[str, list[float]] = {s: [] for s in sims}
    with torch.no_grad():
        for s in range(0, poses.shape[0], chunk):
            drr = reg.render(poses[s : s + chunk])
            for name in sims:
                out[name].extend((-get_similarity(name)(drr, fixed)).tolist())
    return out


def capture_range(offsets: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """The interval around 0 over which ``loss`` decreases monotonically towards offset 0."""
    i0 = int(np.argmin(np.abs(offsets)))
    lo = i0
    while lo > 0 and loss[lo - 1] >= loss[lo]:
        lo -= 1
    hi = i0
    while hi < len(loss) - 1 and loss[hi + 1] >= loss[hi]:
        hi += 1
    return float(offsets[lo]), float(offsets[hi])


def run(args: argparse.Namespace) -> int:
    problem = common.problem_from_args(args)
    out = common.out_dir(args, "landscape")
    reg = Registrar(problem.volume, problem.detector, RegistrationConfig(pyramid=(1,), **drr_model_fields(args)),
                    device=args.device)
    truth = common.truth_pose(reg, problem)
    fixed = reg.render(truth[None])[0]
    sims = list(args.similarities)
    for s in sims:
        get_similarity(s)
    pairs = [tuple(p.split(":")) for p in args.pairs]
    for a, b in pairs:
        if a not in PARAMS or b not in PARAMS or a == b:
            raise ValueError(f"bad pair {a}:{b}; parameters are {PARAMS}")
    jobs = [("1d", (name,)) for name in PARAMS] + [("2d", pr) for pr in pairs]
    from tqdm import tqdm

    result: dict = {"study": "landscape", "problem": problem.name, "detector": list(problem.detector.shape),
                    "truth_carm_deg_mm": list(problem.truth_carm), "similarities": sims,
                    "drr": {k: getattr(reg.config, k) for k in ("drr_model", *DRR_PHYSICS_FLAGS)},
                    "sweeps_1d": {}, "grids_2d": {}, "machine": common.machine_info()}
    rows = []
    for kind, names in tqdm(jobs, desc="landscape", disable=args.no_progress):
        if kind == "1d":
            (name,) = names
            x = _offsets(name, args.steps, args)
            deltas = np.zeros((len(x), 6))
            deltas[:, PARAMS.index(name)] = x
            losses = _losses(reg, fixed, _poses(reg, truth, deltas), sims)
            entry = {"offsets": x.tolist(), "unit": UNITS[name], "loss": losses, "capture_range": {},
                     "argmin_offset": {}}
            for s in sims:
                arr = np.asarray(losses[s])
                entry["capture_range"][s] = capture_range(x, arr)
                entry["argmin_offset"][s] = float(x[int(np.argmin(arr))])
                rows.extend({"parameter": name, "unit": UNITS[name], "offset": float(v), "similarity": s,
                             "loss": float(loss)} for v, loss in zip(x, arr, strict=True))
            result["sweeps_1d"][name] = entry
        else:
            a, b = names
            xa, xb = _offsets(a, args.steps_2d, args), _offsets(b, args.steps_2d, args)
            ga, gb = np.meshgrid(xa, xb, indexing="ij")
            deltas = np.zeros((ga.size, 6))
            deltas[:, PARAMS.index(a)] = ga.ravel()
            deltas[:, PARAMS.index(b)] = gb.ravel()
            losses = _losses(reg, fixed, _poses(reg, truth, deltas), sims)
            result["grids_2d"][f"{a}:{b}"] = {
                "x": xa.tolist(), "y": xb.tolist(), "x_param": a, "y_param": b,
                "loss": {s: np.asarray(losses[s]).reshape(ga.shape).tolist() for s in sims},
            }
    common.write_json(out / "landscape.json", result)
    common.write_rows(out / "sweeps_1d.csv", rows)
    plot(result, out)
    for name, entry in result["sweeps_1d"].items():
        cr = ", ".join(f"{s} [{lo:+.0f}, {hi:+.0f}]" for s, (lo, hi) in entry["capture_range"].items())
        print(f"{name:>5} ({entry['unit']}): monotone capture range {cr}")
    print(f"landscape -> {out}")
    return 0


def plot(result: dict, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sims = result["similarities"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, name in zip(axes.ravel(), PARAMS, strict=True):
        e = result["sweeps_1d"][name]
        x = np.asarray(e["offsets"])
        for s in sims:
            y = np.asarray(e["loss"][s])
            span = y.max() - y.min()
            ax.plot(x, (y - y.min()) / (span if span > 0 else 1), label=_label(s),
                    ls="--" if s == "l2" else "-")
        ax.axvline(0, color="k", lw=0.6, ls=":")
        ax.set_xlabel(f"{name} offset ({e['unit']})")
        ax.set_ylabel("loss (min-max normalised)")
    axes[0, 0].legend()
    fig.suptitle(f"loss around the true pose, one parameter at a time ({result['problem']})")
    fig.tight_layout()
    fig.savefig(out / "landscape_1d.png", dpi=110)
    plt.close(fig)

    grids = result["grids_2d"]
    if not grids:
        return
    fig, axes = plt.subplots(len(sims), len(grids), figsize=(4.3 * len(grids), 3.8 * len(sims)), squeeze=False)
    for j, (key, g) in enumerate(grids.items()):
        for i, s in enumerate(sims):
            ax = axes[i, j]
            z = np.asarray(g["loss"][s]).T
            cs = ax.contourf(g["x"], g["y"], z, levels=30, cmap="viridis")
            ax.plot(0, 0, "r+", ms=10)
            ax.set_xlabel(f"{g['x_param']} ({UNITS[g['x_param']]})")
            ax.set_ylabel(f"{g['y_param']} ({UNITS[g['y_param']]})")
            ax.set_title(f"{_label(s)}: {key}")
            fig.colorbar(cs, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "landscape_2d.png", dpi=110)
    plt.close(fig)


def _label(sim: str) -> str:
    return {"l2": "L2 (z-scored)", "mse": "L2 (raw, MSE)"}.get(sim, f"-{sim.upper()}")


__all__ = ["PARAMS", "add_arguments", "capture_range", "run"]
