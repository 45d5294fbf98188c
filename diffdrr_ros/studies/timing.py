"""DRR rendering time per image size and per patch size: the seed's Table 1, with this renderer.

The seed (a T4 GPU, Google Colab, averaged over 15 runs) rendered DRRs of 100 x 100 to
600 x 600 pixels whole, 600 x 600 to 1800 x 1800 in 150 x 150 patches, and 1024 x 1024 in
patches of 16 to 512 pixels. This study renders the same configurations with
:func:`diffdrr_ros.core.drr.render` and reports, per configuration:

* time per DRR (mean +- standard deviation like the seed, and the median), forward only
  by default (``--backward`` adds forward + backward to the pose);
* voxel samples per second (Siddon: voxel segments summed along the rays; trilinear:
  samples), i.e. how far the renderer is from a memory-bandwidth bound;
* peak memory over set-up, forward alone and forward + backward: each configuration runs in
  a fresh child process (``--in-process`` to disable) whose peak resident set is reset after
  loading the CT and the kernels (``/proc/self/clear_refs``), or
  ``torch.cuda.max_memory_allocated`` on CUDA. "Whole image" rows use the renderer's
  memory-budget tiling (``--memory-budget-mb``), so the forward working memory stays flat
  once tiling kicks in; what still grows is the image itself, and, for forward + backward,
  the per-ray Jacobians autograd keeps until the backward pass (64 bytes per ray).

Writes ``timing.json`` (every run, the machine, the load average, the seed's numbers),
``timing.csv`` and ``timing.png`` (our times and the seed's, against size and patch size).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: The seed's Table 1: (pixels per side, patch side or None, mean ms, std ms), T4 GPU.
SEED_TABLE1: list[tuple[int, int | None, float, float]] = [
    (100, None, 21.2, 2.86), (200, None, 70.1, 3.87), (300, None, 150.0, 0.94), (400, None, 265.0, 0.92),
    (500, None, 393.0, 55.3), (600, None, 600.0, 125.0),
    (600, 150, 320.0, 1.01), (900, 150, 601.0, 6.12), (1200, 150, 1140.0, 23.5), (1500, 150, 1700.0, 24.1),
    (1800, 150, 1490.0, 26.4),
    (1024, 16, 7450.0, 647.0), (1024, 32, 1970.0, 177.0), (1024, 64, 1080.0, 52.5), (1024, 128, 859.0, 218.0),
    (1024, 256, 881.0, 396.0), (1024, 512, 1230.0, 112.0),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..core.volume.phantoms import PHANTOMS

    src = p.add_mutually_exclusive_group()
    src.add_argument("--ct", type=Path, default=None, help="CT: DICOM dir, .nii/.nii.gz or .npy (default: phantom)")
    src.add_argument("--phantom", default="head", choices=sorted(PHANTOMS), help="built-in phantom (default: head)")
    p.add_argument("--method", default="siddon", choices=["siddon", "trilinear"], help="renderer (seed: Siddon)")
    p.add_argument("--samples", type=int, default=None, help="trilinear samples per ray (default: 1 per voxel)")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 300, 400, 500, 600],
                   help="whole-image sizes, pixels per side (seed: 100..600)")
    p.add_argument("--patched-sizes", type=int, nargs="+", default=[600, 900, 1200, 1500, 1800],
                   help="sizes rendered in --patch patches (seed: 600..1800)")
    p.add_argument("--patch", type=int, default=150, help="patch side for --patched-sizes (seed: 150)")
    p.add_argument("--patch-image", type=int, default=1024, help="image side of the patch sweep (seed: 1024)")
    p.add_argument("--patch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512],
                   help="patch sides of the sweep (seed: 16..512)")
    p.add_argument("--repeats", type=int, default=5, help="timed renders per configuration (seed: 15)")
    p.add_argument("--budget-s", type=float, default=60.0, help="stop repeating a configuration after this long")
    p.add_argument("--backward", action="store_true", help="also time forward + backward to the pose")
    p.add_argument("--memory-budget-mb", type=float, default=256.0, help="renderer tiling budget (whole images)")
    p.add_argument("--panel-mm", type=float, default=400.0, help="detector side in mm (pitch = panel / size)")
    p.add_argument("--sdd", type=float, default=1020.0, help="source-to-detector distance, mm")
    p.add_argument("--sid", type=float, default=None, help="source-to-isocentre distance, mm (default SDD/2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    p.add_argument("--threads", type=int, default=None, help="torch/numba CPU threads (default: all)")
    p.add_argument("--in-process", action="store_true", help="no child process per configuration")
    p.add_argument("--out", type=Path, default=None, help="output folder (default out/study-timing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def configurations(args: argparse.Namespace) -> list[dict]:
    """The rows of the table: whole images, patched images, the patch sweep."""
    rows = [{"group": "size", "size": s, "patch": None} for s in args.sizes]
    rows += [{"group": "size", "size": s, "patch": args.patch} for s in args.patched_sizes]
    rows += [{"group": "patch", "size": args.patch_image, "patch": p} for p in args.patch_sizes]
    return rows


def _seed_value(size: int, patch: int | None) -> tuple[float, float] | None:
    for s, p, mean, std in SEED_TABLE1:
        if s == size and p == patch:
            return mean, std
    return None


# --------------------------------------------------------------------------------------
# One configuration (in a child process unless --in-process)
# --------------------------------------------------------------------------------------


def status_kb(field: str) -> int | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM ...) in kB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Release freed memory and reset the peak-RSS mark (Linux >= 4.0); False if not possible."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _load_volume(opts: dict):
    from ..core.volume import ct_source, open_ct

    vol = open_ct(ct_source(opts.get("ct") or None, opts.get("phantom")))
    if vol.kind == "hu":
        vol = vol.to_attenuation()
    return vol


def voxel_samples(vol, det, pose, method: str, n_samples: int | None, chunk: int = 1 << 18) -> float:
    """Voxel samples of one DRR: Siddon segments, or trilinear samples, summed over rays."""
    import torch

    from ..core.drr import box_clip, grid_from_ct_transform, rays_in_grid, sample_counts
    from ..core.geometry import detector_points
    from ..core.geometry.rotations import invert_transform

    grid_from_ct = grid_from_ct_transform(vol.affine)
    t_ct_cam = invert_transform(pose.to(torch.float64).cpu())[None]
    src, pix = detector_points(det, dtype=torch.float64)
    pix = pix.reshape(-1, 3)
    size = torch.tensor(vol.shape, dtype=torch.float64)
    total = 0.0
    for i in range(0, pix.shape[0], chunk):
        s, t, _ = rays_in_grid(grid_from_ct, t_ct_cam, src, pix[i:i + chunk])
        d = t - s
        amin, amax = box_clip(s, d, size)
        span = (amax - amin).clamp_min(0)
        hit = span > 0
        if method == "siddon":
            total += float(((d.abs().sum(-1) * span).floor() + 1)[hit].sum())
        elif n_samples:
            total += float(hit.sum()) * n_samples
        else:
            total += float(sample_counts(d, amin, torch.maximum(amin, amax), 1.0)[hit].sum())
    return total


def warm_kernels(dtype, settings, device) -> None:
    """Compile or load the kernels on a tiny volume (so that memory and time exclude it)."""
    import dataclasses

    import torch

    from ..core.drr import render
    from ..core.geometry import Detector, carm_to_matrix
    from ..core.volume import Volume

    tiny = Volume.from_array(torch.rand(6, 5, 4, dtype=dtype), 10.0, kind="raw").to(device)
    det = Detector(3, 3, spacing_mm=(20.0, 20.0), sdd_mm=1000.0)
    pose = carm_to_matrix(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                          tiny.center).requires_grad_()
    warm = dataclasses.replace(settings, patch_size=None)
    render(tiny, pose, det, warm).sum().backward()


def measure(opts: dict) -> dict:
    """Render one configuration ``repeats`` times; times, throughput and peak memory."""
    import torch

    from ..core.drr import RenderSettings, plan_patches, render, resolve_backend, resolve_device
    from ..core.drr.render import bytes_per_ray
    from ..core.geometry import Detector, carm_to_matrix
    from . import common

    common.set_threads(opts.get("threads"))
    device = resolve_device(opts.get("device", "cpu"))
    vol = _load_volume(opts).to(device)
    size, patch = opts["size"], opts["patch"]
    pitch = opts["panel_mm"] / size
    det = Detector(size, size, spacing_mm=(pitch, pitch), sdd_mm=opts["sdd"], sid_mm=opts.get("sid"))
    pose = carm_to_matrix(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), vol.center)
    settings = RenderSettings(method=opts["method"], n_samples=opts.get("samples"),
                              memory_budget_mb=opts["memory_budget_mb"],
                              patch_size=(patch, patch) if patch else None)
    if patch:
        n_tiles = math.ceil(size / patch) ** 2
    else:
        backend = resolve_backend(settings.backend, device)
        n_est = settings.n_samples or math.ceil(max(vol.shape) / settings.step_voxels)
        per_ray = bytes_per_ray(settings.method, backend, tuple(vol.shape), n_est)
        n_tiles = len(plan_patches(size, size, int(settings.memory_budget_mb * 2**20 / per_ray)))
    samples = voxel_samples(vol, det, pose, opts["method"], opts.get("samples"))
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def fwd() -> None:
        with torch.no_grad():
            render(vol, pose, det, settings)
        sync()

    def fwd_bwd() -> None:
        p = pose.clone().requires_grad_()
        render(vol, p, det, settings).sum().backward()
        sync()

    warm_kernels(vol.data.dtype, settings, device)  # load compiled kernels outside the measurement
    reset_ok = reset_peak_rss()
    base_kb = status_kb("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    fwd()  # first call: the volume's layout copy (kept for the next calls)
    first_s = time.perf_counter() - t0
    out: dict = {"n_rays": size * size, "n_tiles": n_tiles, "voxel_samples": samples, "first_call_s": first_s}
    jobs = [("fwd", fwd)] + ([("fwd_bwd", fwd_bwd)] if opts.get("backward") else [])
    for name, fn in jobs:
        if name == "fwd_bwd":  # peak of forward + backward on its own (it keeps per-ray Jacobians)
            fn()
            reset_ok = reset_peak_rss()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            fn()
        ts = []
        started = time.perf_counter()
        for _ in range(opts["repeats"]):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() - started > opts["budget_s"]:
                break
        out[f"{name}_ms"] = ts
        out[f"{name}_mean_ms"] = statistics.fmean(ts)
        out[f"{name}_std_ms"] = statistics.stdev(ts) if len(ts) > 1 else 0.0
        out[f"{name}_median_ms"] = statistics.median(ts)
        out[f"{name}_msamples_per_s"] = samples / statistics.median(ts) / 1e3
        if cuda:
            out[f"{name}_peak_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        else:
            peak = status_kb("VmHWM") if reset_ok else None
            out[f"{name}_peak_mb"] = (peak - base_kb) / 1024 if peak and base_kb else None
    out["peak_mb"] = out["fwd_peak_mb"]
    out["peak_kind"] = ("cuda max_memory_allocated over set-up" if cuda else
                        "VmHWM - VmRSS after set-up (kernels loaded, CT in memory)" if reset_ok else None)
    return out


def _measure_in_child(opts: dict) -> dict:
    cmd = [sys.executable, "-m", "diffdrr_ros.studies.timing", json.dumps(opts)]
    root = str(Path(__file__).resolve().parents[2])  # the package importable even when not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"timing worker failed ({proc.returncode}): {tail}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from . import common

    out_dir = common.out_dir(args, "timing")
    base = {
        "ct": str(args.ct) if args.ct else None, "phantom": args.phantom, "method": args.method,
        "samples": args.samples, "repeats": args.repeats, "budget_s": args.budget_s, "backward": args.backward,
        "memory_budget_mb": args.memory_budget_mb, "panel_mm": args.panel_mm, "sdd": args.sdd, "sid": args.sid,
        "device": args.device, "threads": args.threads,
    }
    configs = configurations(args)
    info = common.machine_info()
    load_start = _loadavg()
    rows = []
    bar = common.progress_bar(configs, not args.no_progress, "timing")
    for cfg in bar:
        opts = {**base, "size": cfg["size"], "patch": cfg["patch"]}
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{cfg['size']}x{cfg['size']}, patch {cfg['patch'] or 'auto'}")
        res = measure(opts) if args.in_process else _measure_in_child(opts)
        seed = _seed_value(cfg["size"], cfg["patch"])
        rows.append({**cfg, **res, "seed_mean_ms": seed[0] if seed else None,
                     "seed_std_ms": seed[1] if seed else None, "loadavg_1m": _loadavg()})
    payload = {
        "study": "timing",
        "volume": base["ct"] or f"phantom:{args.phantom}",
        "settings": base,
        "machine": info,
        "loadavg_1m": {"start": load_start, "end": _loadavg()},
        "seed": {"device": "NVIDIA T4 (Google Colab)", "runs": 15, "table1": SEED_TABLE1},
        "rows": rows,
    }
    common.write_json(out_dir / "timing.json", payload)
    flat = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]
    common.write_rows(out_dir / "timing.csv", flat)
    name = Path(args.ct).name if args.ct else f"phantom:{args.phantom}"
    plot(rows, out_dir / "timing.png", title=f"{name}, {args.method}, {info.get('device', 'cpu')}, "
                                             f"{info.get('cpu_count')} CPU threads available")
    print(table(rows))
    print(f"timing -> {out_dir}")
    return 0


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def table(rows: list[dict]) -> str:
    """Markdown table, our numbers beside the seed's."""
    has_bwd = any("fwd_bwd_median_ms" in r for r in rows)
    head = "| DRR size | patch | ours ms (mean +- std) | ours median ms |"
    head += " fwd+bwd median ms |" if has_bwd else ""
    head += " Msamples/s | peak MB fwd |" + (" peak MB fwd+bwd |" if has_bwd else "") + " seed ms (T4) |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        patch = f"{r['patch']}x{r['patch']}" if r["patch"] else "-"
        seed = f"{r['seed_mean_ms']:.1f} +- {r['seed_std_ms']:.2f}" if r.get("seed_mean_ms") else "-"
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else "-"
        line = (f"| {r['size']}x{r['size']} | {patch} | {r['fwd_mean_ms']:.1f} +- {r['fwd_std_ms']:.1f} | "
                f"{r['fwd_median_ms']:.1f} |")
        if has_bwd:
            line += f" {r['fwd_bwd_median_ms']:.1f} |" if "fwd_bwd_median_ms" in r else " - |"
        line += f" {r['fwd_msamples_per_s']:.0f} | {peak} |"
        if has_bwd:
            pb = r.get("fwd_bwd_peak_mb")
            line += f" {pb:.0f} |" if pb is not None else " - |"
        line += f" {seed} |"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for patched, marker in ((False, "o"), (True, "s")):
        sel = [r for r in rows if r["group"] == "size" and bool(r["patch"]) == patched]
        if not sel:
            continue
        label = "patches" if patched else "whole image"
        if patched:
            label = f"{sel[0]['patch']}x{sel[0]['patch']} patches"
        ax.errorbar([r["size"] for r in sel], [r["fwd_mean_ms"] for r in sel],
                    yerr=[r["fwd_std_ms"] for r in sel], marker=marker, capsize=3, label=f"ours, {label}")
        seed = [r for r in sel if r.get("seed_mean_ms")]
        if seed:
            ax.errorbar([r["size"] for r in seed], [r["seed_mean_ms"] for r in seed],
                        yerr=[r["seed_std_ms"] for r in seed], marker=marker, ls="--", mfc="none", capsize=3,
                        color="grey" if not patched else "black", label=f"seed (T4), {label}")
    ax.set_xlabel("DRR size (pixels per side)")
    ax.set_ylabel("time per DRR (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("time vs image size")
    ax = axes[1]
    sel = [r for r in rows if r["group"] == "patch"]
    if sel:
        ax.errorbar([r["patch"] for r in sel], [r["fwd_mean_ms"] for r in sel], yerr=[r["fwd_std_ms"] for r in sel],
                    marker="o", capsize=3, label=f"ours, {sel[0]['size']}x{sel[0]['size']}")
        seed = [r for r in sel if r.get("seed_mean_ms")]
        if seed:
            ax.errorbar([r["patch"] for r in seed], [r["seed_mean_ms"] for r in seed],
                        yerr=[r["seed_std_ms"] for r in seed], marker="o", ls="--", mfc="none", capsize=3,
                        color="black", label="seed (T4)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("patch side (pixels)")
        ax.set_ylabel("time per DRR (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"time vs patch size at {sel[0]['size']}x{sel[0]['size']}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # child process of run(): one configuration, JSON on stdout
    print(json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
