#!/usr/bin/env bash
# Set up a fresh Linux machine for edgedistil, from the package registries only:
# Debian's Chromium and npm (the web target runs its bundle in a real browser), qemu-user-static and debootstrap (the
# android target's emulated ARM64 bench, `bench --target android --emulator`), a Python 3.11 venv in .venv with
# edgedistil and its test tools, the pinned JS runtimes (npm ci into edgedistil's cache) and Optimum's own venv (about
# two minutes the first time, 1.3 GB: optimum-onnx pins transformers 4.57, edgedistil.runtimes.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm >/dev/null || need+=(nodejs npm)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update && $sudo apt-get install -y "${need[@]}"
fi
python3.11 -m venv .venv
.venv/bin/pip install --disable-pip-version-check -q -e ".[test]"
.venv/bin/python -m edgedistil.convert.web >/dev/null
echo "edgedistil is set up in .venv"
