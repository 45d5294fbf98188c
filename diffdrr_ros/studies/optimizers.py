"""GD, GDM, GDDM and Adam from the same random starts (the seed's Table 2 and Fig. 7).

Each optimiser registers the DRR at the truth from the same ``--n`` starts, under one or
more set-ups (``--presets``): ``seed`` (the paper's protocol: one full-resolution level,
its C-arm parameters, -ZNCC, 250 iterations, no schedule) and ``default`` (this package's
pipeline: coarse search, pyramid, plateau schedule). Step sizes are each optimiser's
defaults (:data:`diffdrr_ros.core.registration.optimizers.DEFAULT_STEP_SIZES`), separate for rotation
and translation as in the seed. Reported per optimiser: success rate (mTRE < 2 mm), the
seed's criterion (ZNCC > 0.999), iterations and wall time per registration.

Writes ``runs.csv``, ``summary.json``, ``optimizers.png`` (success and time bars) and
``convergence.png`` (loss per iteration from one start, the seed's Fig. 7).
"""

from __future__ import annotations

import argparse

import numpy as np

from ..core.registration import Registrar
from ..core.registration.optimizers import OPTIMIZERS
from . import common

SEED_TABLE2 = {"gd": None, "gdm": 0.668, "gddm": 0.756, "adam": 0.857}


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_problem_arguments(p)
    common.add_config_arguments(p)
    p.add_argument("--n", type=int, default=50, help="random starts per optimiser (the seed: 300)")
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    p.add_argument("--presets", nargs="+", default=["seed", "default"], choices=sorted(common.PRESETS),
                   help="set-ups to compare the optimisers under (--preset is ignored here)")


def run(args: argparse.Namespace) -> int:
    problem = common.problem_from_args(args)
    out = common.out_dir(args, "optimizers")
    overrides = common.config_overrides(args)  # --set and the DRR flags
    info = common.machine_info()
    all_rows: list[dict] = []
    summaries: dict[str, dict] = {}
    curves: dict[str, list[float]] = {}
    for preset in args.presets:
        for name in args.optimizers:
            cfg = common.make_config(preset, {**overrides, "optimizer": name})
            reg = Registrar(problem.volume, problem.detector, cfg, device=args.device)
            truth = common.truth_pose(reg, problem)
            fixed = reg.render(truth[None])[0]
            starts = common.random_starts(reg, truth, args.n, max_deg=args.max_deg, max_mm=args.max_mm,
                                          seed=args.seed)
            reg.register(fixed, starts[0], truth=truth)  # JIT warm-up, untimed
            hist: list[list[float]] = []
            rows = common.run_registrations(reg, fixed, starts, truth, progress=not args.no_progress,
                                            desc=f"{preset}/{name}", curves=hist)
            for r in rows:
                r.update(preset=preset, optimizer=name)
            all_rows.extend(rows)
            key = f"{preset}/{name}"
            summaries[key] = common.summarize(rows)
            curves[key] = hist[0] if hist else []
            s = summaries[key]
            print(f"{key:>14}: success {s['success_rate']:.1%}  seed criterion {s['seed_success_rate']:.1%}  "
                  f"median {s['iterations_median']:.0f} it, {s['time_median_s']:.3f} s")
    common.write_rows(out / "runs.csv", all_rows)
    common.write_json(out / "summary.json", {
        "study": "optimizers", "problem": problem.name, "detector": list(problem.detector.shape),
        "starts": {"n": args.n, "max_deg": args.max_deg, "max_mm": args.max_mm, "seed": args.seed},
        "overrides": overrides, "machine": info, "summary": summaries,
        "seed_table2_success": SEED_TABLE2, "curves_start0": curves,
    })
    plot(summaries, curves, out, problem.name)
    print(f"optimizers -> {out}")
    return 0


def plot(summaries: dict[str, dict], curves: dict[str, list[float]], out, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(summaries)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    x = np.arange(len(keys))
    ax[0].bar(x - 0.2, [summaries[k]["success_rate"] for k in keys], 0.4, label="mTRE < 2 mm")
    ax[0].bar(x + 0.2, [summaries[k]["seed_success_rate"] for k in keys], 0.4, label="ZNCC > 0.999")
    for i, k in enumerate(keys):
        ref = SEED_TABLE2.get(k.split("/")[-1])
        if ref is not None:
            ax[0].plot([i - 0.4, i + 0.4], [ref, ref], "k--", lw=1)
    ax[0].set_xticks(x, keys, rotation=30, ha="right")
    ax[0].set_ylabel("success rate (dashed: the seed's Table 2)")
    ax[0].set_ylim(0, 1.05)
    ax[0].legend()
    ax[1].bar(x, [summaries[k]["time_median_s"] for k in keys], color="tab:green")
    ax[1].set_xticks(x, keys, rotation=30, ha="right")
    ax[1].set_ylabel("median wall time per registration (s)")
    fig.suptitle(f"optimisers from the same starts ({title})")
    fig.tight_layout()
    fig.savefig(out / "optimizers.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, c in curves.items():
        if c:
            ax.plot(-np.asarray(c), label=k, lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("similarity (ZNCC for the seed preset)")
    ax.set_title("convergence from start 0 (the seed's Fig. 7)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=110)
    plt.close(fig)
