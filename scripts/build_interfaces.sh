#!/usr/bin/env bash
# Build the ROS 2 interfaces of rvg_ros (msg/ srv/ action/) with CMake + rosidl from the PyPI
# ROS 2 Kilted wheels, and install them into the venv. Called by scripts/setup.sh; run it again
# by hand after editing an interface definition (it rebuilds only what changed).
#
#   rvg_ros:   the repository's CMakeLists.txt with -DRVG_ROS_INTERFACES_ONLY=ON (the Python
#              sources come from `pip install -e .`, not from CMake).
#   tf2_msgs:  scripts/interfaces/tf2_msgs (TFMessage only), built ONLY when the venv cannot
#              `import tf2_msgs.msg` (the PyPI wheels have no tf2_msgs; a real ROS 2 has it).
#
# Each build is skipped while its stamp (.venv/.stamp-interfaces-NAME) is newer than all of its
# inputs. Build trees live in .venv/build/NAME, so removing .venv removes everything.
#
# What rosidl installs where (prefix = the venv):
#   lib/lib<pkg>__rosidl_*.so                       C/C++ type support (found through the
#                                                   LD_LIBRARY_PATH the ROS wheels' .pth sets)
#   lib/python3.11/site-packages/<pkg>/             msg/ srv/ action/ + the Python C extensions
#   lib/python3.11/site-packages/<pkg>-<v>-py3.11.egg-info   (removed for rvg_ros, see below)
#   include/<pkg>/, share/<pkg>/ (+ ament index)   headers, CMake config, .idl/.msg/.json
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PY="$VENV/bin/python"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { echo "[interfaces] $*"; }
die() { echo "[interfaces] ERROR: $*" >&2; exit 1; }

[ -x "$PY" ] || die "no venv at $VENV: run scripts/setup.sh (make setup) first"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# Only the venv: a sourced ROS installation must not leak into this build or the import checks.
unset PYTHONPATH CMAKE_PREFIX_PATH COLCON_PREFIX_PATH
export AMENT_PREFIX_PATH="$VENV"

# stamp_is_fresh STAMP INPUT... : true when STAMP exists and no input is newer than it.
stamp_is_fresh() {
  local stamp="$1"; shift
  [ -f "$stamp" ] || return 1
  [ -z "$(find "$@" -newer "$stamp" -print -quit 2>/dev/null)" ]
}

# build_package NAME SOURCE_DIR [CMAKE ARGS...]
build_package() {
  local name="$1" src="$2"; shift 2
  local build="$VENV/build/$name" start=$SECONDS
  log "building $name (cmake + rosidl, ~1 min on 2 cores)"
  # A fresh build dir each time: stale CMake caches from another venv/prefix cause odd failures
  # and the build is short.
  rm -rf "$build"
  mkdir -p "$VENV/build"
  cmake -S "$src" -B "$build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$VENV" \
    -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" \
    -DPython3_FIND_VIRTUALENV=ONLY \
    -DBUILD_TESTING=OFF \
    "$@" > "$build.configure.log" 2>&1 \
    || { cat "$build.configure.log"; die "configuring $name failed (log above)"; }
  cmake --build "$build" -j "$JOBS" > "$build.build.log" 2>&1 \
    || { tail -n 80 "$build.build.log"; die "building $name failed (log: $build.build.log)"; }
  cmake --install "$build" > "$build.install.log" 2>&1 \
    || { tail -n 40 "$build.install.log"; die "installing $name failed"; }
  log "$name built and installed in $((SECONDS - start)) s"
}

# ---------------------------------------------------------------------------------------------
# rvg_ros
# ---------------------------------------------------------------------------------------------
STAMP="$VENV/.stamp-interfaces-rvg_ros"
# Inputs: the definitions, the CMake files, this script, and the list of installed ROS wheel
# versions written by setup.sh (new ROS wheels => rebuild the generated code against them).
INPUTS=("$ROOT/msg" "$ROOT/srv" "$ROOT/action" "$ROOT/CMakeLists.txt" "$ROOT/package.xml"
        "$ROOT/cmake" "$ROOT/scripts/build_interfaces.sh")
[ -f "$VENV/.stamp-ros-wheels" ] && INPUTS+=("$VENV/.stamp-ros-wheels")
if stamp_is_fresh "$STAMP" "${INPUTS[@]}"; then
  log "rvg_ros interfaces up to date"
else
  build_package rvg_ros "$ROOT" -DRVG_ROS_INTERFACES_ONLY=ON

  # rosidl installs site-packages/rvg_ros/__init__.py (empty) and an egg-info for "rvg_ros".
  #  * The __init__.py would make site-packages/rvg_ros a regular package that shadows the source
  #    package; without it, it is a plain directory that rvg_ros/__init__.py adds to
  #    rvg_ros.__path__ (pkgutil.extend_path), so rvg_ros.msg/.srv/.action resolve there.
  #  * The egg-info would be a second "rvg_ros" distribution beside pip's editable dist-info,
  #    which confuses pip (uninstall/upgrade) and importlib.metadata.
  rm -f "$SITE/rvg_ros/__init__.py" "$SITE"/rvg_ros/__pycache__/__init__.*.pyc
  rm -rf "$SITE"/rvg_ros-*.egg-info

  # share/rvg_ros/{launch,config}: what ament_index's get_package_share_directory('rvg_ros')
  # gives in a colcon install. Here they are links to the repository, so they never go stale.
  for d in launch config; do
    rm -rf "${VENV:?}/share/rvg_ros/$d"
    ln -s "$ROOT/$d" "$VENV/share/rvg_ros/$d"
  done
  touch "$STAMP"
fi

# ---------------------------------------------------------------------------------------------
# tf2_msgs (only if missing)
# ---------------------------------------------------------------------------------------------
STAMP="$VENV/.stamp-interfaces-tf2_msgs"
TF2_SRC="$ROOT/scripts/interfaces/tf2_msgs"
INPUTS=("$TF2_SRC" "$ROOT/cmake" "$ROOT/scripts/build_interfaces.sh")
[ -f "$VENV/.stamp-ros-wheels" ] && INPUTS+=("$VENV/.stamp-ros-wheels")
if [ -f "$STAMP" ]; then
  # Built by us before: keep it current.
  if stamp_is_fresh "$STAMP" "${INPUTS[@]}"; then
    log "tf2_msgs up to date"
  else
    build_package tf2_msgs "$TF2_SRC"
    touch "$STAMP"
  fi
elif "$PY" -c "import tf2_msgs.msg" >/dev/null 2>&1; then
  log "tf2_msgs provided by the environment: not building it"
else
  build_package tf2_msgs "$TF2_SRC"
  touch "$STAMP"
fi

# ---------------------------------------------------------------------------------------------
# Check from outside the repository (so the working directory's rvg_ros can't mask a broken
# install) that the source package and the generated interfaces form one package.
# ---------------------------------------------------------------------------------------------
(cd / && "$PY" -c "
import rvg_ros, rvg_ros.core
from rvg_ros.msg import Reconstruction
from rvg_ros.srv import Capture, Reconstruct, Reset, LoadSession
from rvg_ros.action import Reconstruct
from tf2_msgs.msg import TFMessage
") || die "the interfaces are installed but do not import (see above)"
log "interfaces import OK"
