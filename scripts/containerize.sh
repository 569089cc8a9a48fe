#!/usr/bin/env bash
# Turn a built Bento into a CUDA-capable OCI image (needs a Docker engine; CI has none and does
# not run this). Run the image on a GPU host with the NVIDIA Container Toolkit:
#
#   ./scripts/containerize.sh sam2-segment:latest
#   docker run --gpus all -p 3000:3000 -e S3_BUCKET_NAME_STAGING=... -e AWS_ACCESS_KEY_ID=... \
#       -e AWS_SECRET_ACCESS_KEY=... sam2-segment:<version>
set -euo pipefail
cd "$(dirname "$0")/.."
bento_tag="${1:?usage: scripts/containerize.sh BENTO_TAG (printed by scripts/build_bento.sh)}"
exec .venv/bin/bentoml containerize "$bento_tag" --opt platform=linux/amd64 "${@:2}"
