#!/usr/bin/env bash
# The checks and measurements that need a GPU, prepared as one run of the device tool (about 5-8 minutes):
#
#   run(command="bash scripts/gpu_session.sh", timeout_s=540)
#
# The lent machine has no ROS 2 and no package registry; its python3 holds a CUDA torch, numba and numba-cuda
# (/work/.library/device/KINDS.md), which is all the core needs (its imports are lazy). Results go to $OUT,
# which the tool brings back (6 files): env.txt, compile.txt, tests.txt, tracking.txt, tracking/summary.json and
# tracking/frames.csv. Each step has its own time limit and the next runs whatever the last one did.
set -uo pipefail
OUT=${OUT:-out/gpu_session}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}

{
    nvidia-smi || true
    $PY -c "import torch, numba; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'numba', numba.__version__)"
    $PY -c "from numba import cuda; print('numba-cuda available:', cuda.is_available())"
} > "$OUT/env.txt" 2>&1

# 1. The real CUDA compiler on the full kernels (as scripts/check_cuda_compile.py does without a GPU).
timeout 120 $PY scripts/check_cuda_compile.py --cc 9.0 > "$OUT/compile.txt" 2>&1

# 2. Correctness on the card: CUDA == CPU for images, gradients and the LM's pose Jacobian.
timeout 240 $PY -m pytest -q -p no:cacheprovider -k cuda test/core/drr/test_render.py test/core/drr/test_jacobian.py \
    > "$OUT/tests.txt" 2>&1

# 3. Issue 12's GPU targets: a tracking frame (LM + covariance), CPU and CUDA side by side, 128 and 512 px.
timeout 300 $PY bench/bench_gpu_tracking.py --devices cpu cuda --sizes 128 512 --frames 16 --out "$OUT/tracking" \
    > "$OUT/tracking.txt" 2>&1

tail -n 5 "$OUT/compile.txt" "$OUT/tests.txt" "$OUT/tracking.txt"
