#!/usr/bin/env bash
# Set up everything `make demo` and `make test` need, on a fresh Debian 12 / Python 3.11 machine
# (CI: root, clean clone, nothing pre-installed). Called by `make setup`.
#
# Idempotent: every step checks whether it is already done and skips itself, so re-running costs
# about a second. Steps:
#   1. system packages (apt): only the missing ones, only as root (or passwordless sudo);
#   2. .venv with Python 3.11, if missing;
#   3. pip: requirements.txt (+ -dev, + -build), then `pip install -e .`; skipped while the stamp
#      .venv/.stamp-pip records the same hash of the files that define the installation;
#   4. `rvg_ros` source finder (.pth) so the source tree and the generated interfaces form one
#      package from any working directory;
#   5. ROS interfaces: scripts/build_interfaces.sh (its own stamps).
#
# Environment: PYTHON (interpreter for a new venv, default python3.11), VENV (default .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PYTHON="${PYTHON:-python3.11}"

log() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 1. System packages.
#   libusb-1.0-0: open3d 0.20 links libusb-1.0.so.0 and fails to import without it.
#   cmake, g++, make: build the ROS interfaces (rosidl generates C/C++ type support).
#   python3.11(-venv, -dev): only if no usable Python 3.11 exists (Debian 12's default python3 is
#   3.11; -venv gives ensurepip, -dev the headers the interface build compiles against).
# ---------------------------------------------------------------------------------------------
is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

APT_PACKAGES=(libusb-1.0-0 cmake g++ make)
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  [ "$PYTHON" = python3.11 ] || die "PYTHON=$PYTHON not found"
  APT_PACKAGES+=(python3.11 python3.11-venv python3.11-dev)
  PYTHON=/usr/bin/python3.11
elif [ ! -x "$VENV/bin/python" ]; then
  # A system interpreter without ensurepip (python3.11-venv) cannot create the venv.
  "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1 || APT_PACKAGES+=(python3.11-venv)
fi
# The interface build compiles against Python.h of the venv's interpreter.
PY_FOR_HEADERS="$PYTHON"
[ -x "$VENV/bin/python" ] && PY_FOR_HEADERS="$VENV/bin/python"
if command -v "$PY_FOR_HEADERS" >/dev/null 2>&1 && ! "$PY_FOR_HEADERS" -c \
    "import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
    2>/dev/null; then
  APT_PACKAGES+=(python3.11-dev)
fi

MISSING=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${APT_PACKAGES[@]}"; do is_installed "$pkg" || MISSING+=("$pkg"); done
else
  log "no dpkg (not Debian?): assuming the system packages are there: ${APT_PACKAGES[*]}"
fi
if [ ${#MISSING[@]} -gt 0 ]; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      SUDO=(sudo -n)
    else
      die "missing system packages: ${MISSING[*]} - install them as root:
  apt-get update && apt-get install -y ${MISSING[*]}"
    fi
  fi
  log "apt-get install ${MISSING[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${MISSING[@]}"
else
  log "system packages present: ${APT_PACKAGES[*]}"
fi

# ---------------------------------------------------------------------------------------------
# 2. The virtual environment (Python 3.11: the ROS 2 Kilted wheels are cp311 only).
# ---------------------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
VENV_VERSION="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$VENV_VERSION" = "3.11" ] || die "$VENV has Python $VENV_VERSION; the ROS 2 wheels need 3.11.
  Remove it (make clean-venv) or point VENV elsewhere."

# Don't let a sourced ROS installation leak into the venv (its PYTHONPATH holds packages built
# for another Python; its prefixes would be picked up by the CMake build).
unset PYTHONPATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH COLCON_PREFIX_PATH

# ---------------------------------------------------------------------------------------------
# 3. Python packages. The stamp holds a hash of everything that defines the installation; any
#    change to these files re-runs pip (which then only installs what changed).
# ---------------------------------------------------------------------------------------------
# (pyproject.toml is left out on purpose: it mostly holds ruff/pytest settings.)
PIP_INPUTS=(requirements.txt requirements-dev.txt requirements-build.txt setup.py)
PIP_STAMP="$VENV/.stamp-pip"
pip_hash() { (cd "$ROOT" && cat "${PIP_INPUTS[@]}" && "$VENV/bin/python" --version) | sha256sum | cut -d' ' -f1; }
WANT_HASH="$(pip_hash)"
if [ -f "$PIP_STAMP" ] && [ "$(cat "$PIP_STAMP")" = "$WANT_HASH" ]; then
  log "python packages up to date"
else
  log "pip install (a fresh venv takes about 3-4 minutes; torch and open3d are large)"
  start=$SECONDS
  # --progress-bar off: readable CI logs. No -q: a failure shows which package broke.
  PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
  "${PIP[@]}" install --progress-bar off \
    -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" -r "$ROOT/requirements-build.txt"
  # --no-deps: requirements.txt is the single, pinned list of dependencies (setup.py has none).
  "${PIP[@]}" install --progress-bar off --no-deps -e "$ROOT"
  echo "$WANT_HASH" > "$PIP_STAMP"
  log "pip done in $((SECONDS - start)) s"
fi

# The versions of the installed ROS wheels: build_interfaces.sh rebuilds the interfaces when
# they change (generated code must match the rosidl/rclpy it runs with). The file is rewritten
# only when its content changes, so its mtime means "the ROS wheels changed".
ROS_VERSIONS="$("$VENV/bin/python" -c '
import importlib.metadata as m
names = {d.metadata["Name"] + "==" + d.version for d in m.distributions()}
print("\n".join(sorted(n for n in names if n.lower().startswith("ros-"))))')"
ROS_STAMP="$VENV/.stamp-ros-wheels"
if [ ! -f "$ROS_STAMP" ] || [ "$(cat "$ROS_STAMP")" != "$ROS_VERSIONS" ]; then
  printf '%s\n' "$ROS_VERSIONS" > "$ROS_STAMP"
fi

# ---------------------------------------------------------------------------------------------
# 4. Make `import rvg_ros` find the source tree first, from any directory.
#    The interfaces are generated into site-packages/rvg_ros/{msg,srv,action} (no __init__.py,
#    see build_interfaces.sh) and rvg_ros/__init__.py joins them via pkgutil.extend_path. But
#    setuptools' editable install resolves `rvg_ros` with a finder appended to the END of
#    sys.meta_path: Python's normal PathFinder runs first, sees site-packages/rvg_ros, and
#    returns it as a namespace package holding only msg/srv/action (`import rvg_ros.core`
#    fails). So we put a finder for the top-level name `rvg_ros` (only it) FIRST. Unlike adding
#    the repository root to sys.path (setuptools' "compat" mode), this doesn't make launch/,
#    config/, scripts/ ... importable as empty namespace packages, and rvg_ros.__file__ stays
#    the real path in the repository.
# ---------------------------------------------------------------------------------------------
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
FINDER="$SITE/_rvg_ros_source_finder.py"
FINDER_CONTENT="$(cat <<EOF
"""Written by rvg_ros/scripts/setup.sh: load the rvg_ros package from its source tree.

The generated interfaces (site-packages/rvg_ros/msg, srv, action) join it through
pkgutil.extend_path in rvg_ros/__init__.py. Remove with: rm _rvg_ros_source*.{py,pth}
"""

import sys
from importlib.machinery import PathFinder

SOURCE_ROOT = "$ROOT"


class RvgRosSourceFinder:
    """Meta path finder for the top-level name 'rvg_ros' only."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname != "rvg_ros":
            return None
        return PathFinder.find_spec(fullname, [SOURCE_ROOT])


if not any(getattr(f, "__name__", "") == "RvgRosSourceFinder" for f in sys.meta_path):
    sys.meta_path.insert(0, RvgRosSourceFinder)
EOF
)"
if [ ! -f "$FINDER" ] || [ "$(cat "$FINDER")" != "$FINDER_CONTENT" ]; then
  log "installing the rvg_ros source finder into $SITE"
  printf '%s\n' "$FINDER_CONTENT" > "$FINDER"
  echo "import _rvg_ros_source_finder" > "$SITE/_rvg_ros_source.pth"
fi

# ---------------------------------------------------------------------------------------------
# 5. ROS interfaces (rvg_ros msg/srv/action, and tf2_msgs when the venv has none).
# ---------------------------------------------------------------------------------------------
VENV="$VENV" bash "$ROOT/scripts/build_interfaces.sh"

log "ready: $VENV"
