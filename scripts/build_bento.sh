#!/usr/bin/env bash
# Build the Bento with the given weights from the BentoML model store inside it.
#
#   tag=$(.venv/bin/python scripts/import_model.py --model facebook/sam2.1-hiera-tiny)
#   ./scripts/build_bento.sh "$tag"          # prints the Bento's tag
#
# Then: bentoml serve <bento tag>, scripts/containerize.sh <bento tag>, or bentoml deploy.
set -euo pipefail
cd "$(dirname "$0")/.."
model_tag="${1:?usage: scripts/build_bento.sh MODEL_TAG (printed by scripts/import_model.py)}"

rm -rf build/wheels
mkdir -p build/wheels
SAM2_BUILD_CUDA=0 .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation \
    -w build/wheels "$(grep -E '^sam2==' requirements.lock)" >&2
scripts/vendor_onnxruntime_web.sh  # /ui's onnxruntime-web, into the package data the wheel carries
.venv/bin/python -m pip wheel -q --no-deps -w build/wheels . >&2
# The Bento's service reads this file (sam2_api.config.PACKAGED_ENV_FILE); it exists only for the build.
trap 'rm -f bento/packaged.env' EXIT
echo "SAM2_BENTO_MODEL=$model_tag" > bento/packaged.env
.venv/bin/bentoml build --output tag . | sed -n 's/^__tag__://p'
