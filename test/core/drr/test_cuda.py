"""The CUDA kernels: the same per-ray code as the CPU kernels, checked in numba's CUDA simulator.

On a machine with a GPU, ``test_render.py::test_cuda_matches_cpu`` compares real CUDA
images and gradients with the CPU ones; here (CI, no GPU) the simulator runs the kernels'
Python source thread by thread, which checks the launch code, the indexing and the
autograd wrapper. What only the CUDA compiler can reject is checked by
``scripts/check_cuda_compile.py`` (PTX without a GPU; needs requirements/gpu.txt).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffdrr_ros.core.drr import cuda as cuda_kernels
from diffdrr_ros.core.drr import resolve_backend

HERE = Path(__file__).parent


def test_cuda_kernels_equal_cpu_kernels_in_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "_cuda_simulator_check.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CUDA kernels equal the CPU kernels" in proc.stdout
    assert "siddon jacobian: max |CUDA - CPU| = 0" in proc.stdout  # same float64 operations: bit for bit


def test_auto_backend_never_picks_cuda_kernels_for_cpu_tensors():
    assert not cuda_kernels.ready(torch.device("cpu"))
    assert resolve_backend("auto", torch.device("cpu")) == "numba"
    assert resolve_backend("auto", torch.device("cpu"), volume_needs_grad=True) == "torch"


def test_cuda_backend_refuses_cpu_tensors_without_the_simulator():
    vol = torch.ones(2, 2, 2)
    src = torch.tensor([[-1.0, 1.0, 1.0]], dtype=torch.float64)
    tgt = torch.tensor([[3.0, 1.0, 1.0]], dtype=torch.float64)
    # No GPU here: "not available"; with a GPU: "need CUDA tensors".
    with pytest.raises((RuntimeError, ValueError), match="CUDA"):
        cuda_kernels.trace_rays("siddon", vol, src, tgt, False)
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_backend("cuda", torch.device("cpu"))
