#!/usr/bin/env bash
# Set up (scripts/setup.sh) and serve POST /segment on http://localhost:3000.
#
# Masks go to the bucket in S3_BUCKET_NAME_STAGING when it is set (real AWS, or any endpoint in
# S3_ENDPOINT_URL); otherwise a local S3 server is started on 127.0.0.1:LOCAL_S3_PORT (4566) and
# masks go there. Weights: SAM2_CHECKPOINT (a local file) if set, else SAM2_MODEL (default
# facebook/sam2.1-hiera-tiny) from Hugging Face. Offline, point SAM2_CHECKPOINT at a file; to
# try the service with random test weights: python scripts/make_test_checkpoint.py, then
# SAM2_CHECKPOINT=checkpoints/sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt.
#
# It listens on 127.0.0.1 only (PORT, default 3000). BENTOML_HOST=0.0.0.0 exposes it to the network:
# set SAM2_API_KEYS then, or anyone who reaches the port can use it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

host="${BENTOML_HOST:-127.0.0.1}"
case "$host" in
    127.* | localhost | ::1) ;;
    *) [ -n "${SAM2_API_KEYS:-}" ] || echo "warning: listening on $host without SAM2_API_KEYS: anyone who can" \
           "reach port ${PORT:-3000} can use the API" >&2 ;;
esac

if [ -z "${S3_BUCKET_NAME_STAGING:-}" ]; then
    env_file="$(mktemp)"
    .venv/bin/python scripts/local_s3.py --port "${LOCAL_S3_PORT:-4566}" > "$env_file" &
    local_s3=$!
    trap 'kill $local_s3 2>/dev/null; rm -f "$env_file"' EXIT
    for _ in $(seq 100); do
        [ "$(wc -l < "$env_file")" -ge 4 ] && break
        kill -0 "$local_s3" 2>/dev/null || exit 1 # it has said why (a port in use)
        sleep 0.2
    done
    if [ "$(wc -l < "$env_file")" -lt 4 ]; then
        echo "error: the local S3 server did not start within 20 s" >&2
        exit 1
    fi
    set -a; . "$env_file"; set +a
    echo "local S3 server: $S3_ENDPOINT_URL, bucket $S3_BUCKET_NAME_STAGING"
fi
.venv/bin/bentoml serve service.py --host "$host" --port "${PORT:-3000}"
