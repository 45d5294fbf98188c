"""Compile the CUDA kernels to PTX on a machine without a GPU: do they type and lower?

numba's CUDA simulator (the test suite) runs the kernels as Python, so it cannot catch
what only the CUDA compiler rejects (types that differ between numba's CPU and CUDA
targets, unsupported functions). This runs the real compiler (NVVM) for a chosen compute
capability. Needs numba-cuda with its toolkit wheels (``pip install -r requirements/gpu.txt``),
no GPU and no driver.

    python scripts/check_cuda_compile.py [--cc 9.0]
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0",
                        help="compute capability: 8.0 (A100), 8.9 (RTX 6000 Ada), 9.0 (H100), ...")
    args = parser.parse_args()
    cc = tuple(int(x) for x in args.cc.split("."))

    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    from numba import types as nt

    # Device functions are compiled for "the current device"; with no driver there is none,
    # so name the compute capability instead (the only thing numba asks of the device there).
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)

    from diffdrr_ros.core.drr import cuda as cuda_kernels

    siddon_kernel, raymarch_kernel = cuda_kernels._kernels()
    i64, f64 = nt.int64, nt.float64
    rays, out, jac = nt.float64[:, ::1], nt.float64[::1], nt.float64[:, ::1]
    ok = True
    for vol_t in (nt.float32[::1], nt.float64[::1]):
        for name, kernel, sig in (
            ("siddon", siddon_kernel, (vol_t, i64, i64, i64, rays, rays, out, jac, nt.boolean)),
            ("trilinear", raymarch_kernel, (vol_t, i64, i64, i64, rays, rays, i64, f64, out, jac, nt.boolean)),
        ):
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            except Exception as err:  # report every failure, then fail
                print(f"FAIL {name} ({vol_t.dtype} volume, sm_{cc[0]}{cc[1]}): {type(err).__name__}: {err}")
                ok = False
                continue
            print(f"ok   {name} ({vol_t.dtype} volume, sm_{cc[0]}{cc[1]}): {len(ptx.splitlines())} PTX lines, "
                  f"{ptx.count('call.uni')} calls, {ptx.count('.local')} local-memory declarations")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
