#!/usr/bin/env bash
# Create .venv and install the service (the `server` extra) with its test tools (`dev`), at the versions
# in requirements.lock.
# Safe to re-run; a second run installs nothing new.
#
# A first run downloads PyTorch with NVIDIA's CUDA libraries, on a machine without a GPU too (the
# lock pins PyPI's torch, which depends on them): .venv ends up at about 6.4 GB, 4.5 GB of it
# GPU-only (nvidia-* 3.2 GB, triton 0.9 GB, torch's CUDA library 0.5 GB). It says which step it is
# on, as pip itself is kept quiet.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
step() { echo "setup: [$1/6] $2 ($((SECONDS - started)) s so far)" >&2; }

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

lock() { grep -E "^($1)==" requirements.lock; }
# torch first: sam2's build needs it, and sam2 is built without isolation so that it builds
# against this torch. SAM2_BUILD_CUDA=0 skips sam2's optional CUDA post-processing extension
# (hole filling), which this service does not use.
step 1 "torch and torchvision, with CUDA's libraries (the first time: about 5 GB, most of the wait)"
"${PIP[@]}" install $(lock 'torch|torchvision')
step 2 "setuptools and wheel, to build sam2"
"${PIP[@]}" install "setuptools>=68" wheel
step 3 "sam2, built against that torch"
SAM2_BUILD_CUDA=0 "${PIP[@]}" install --no-build-isolation $(lock sam2)
step 4 "everything else in requirements.lock"
"${PIP[@]}" install -r requirements.lock
step 5 "this project (sam2_api and the sam2-api command), editable, with its server and dev extras"
# --no-deps: step 4 installed every dependency of .[server,dev] at the lock's versions already.
"${PIP[@]}" install --no-deps -e ".[server,dev]"
# The compatibility tests drive third-party clients (Roboflow's inference-sdk, Label Studio's SDK) from
# a venv of their own, as their users run them: they pin numpy, Pillow and OpenCV below the service's.
step 6 "the third-party clients the compatibility tests drive, in .venv-clients (the first time: about 1 GB, 1 min)"
[ -x .venv-clients/bin/python ] || "$PYTHON" -m venv .venv-clients
.venv-clients/bin/python -m pip --disable-pip-version-check -q install -r tests/clients/requirements.lock
# /ui's click decoder in the browser: onnxruntime-web from the npm registry, pinned (no step number:
# without npm the page decodes clicks on the server, so setup goes on).
if [ -x scripts/vendor_onnxruntime_web.sh ]; then scripts/vendor_onnxruntime_web.sh || echo "setup: onnxruntime-web not vendored: /ui decodes clicks on the server" >&2; fi
echo "setup: .venv ready in $((SECONDS - started)) s" >&2
