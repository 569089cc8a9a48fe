#!/usr/bin/env bash
# Create .venv and install the service with its test tools, at the versions in requirements.lock.
# Safe to re-run; a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

lock() { grep -E "^($1)==" requirements.lock; }
# torch first: sam2's build needs it, and sam2 is built without isolation so that it builds
# against this torch. SAM2_BUILD_CUDA=0 skips sam2's optional CUDA post-processing extension
# (hole filling), which this service does not use.
"${PIP[@]}" install $(lock 'torch|torchvision')
"${PIP[@]}" install "setuptools>=68" wheel
SAM2_BUILD_CUDA=0 "${PIP[@]}" install --no-build-isolation $(lock sam2)
"${PIP[@]}" install -r requirements.lock
"${PIP[@]}" install --no-deps -e .
