#!/usr/bin/env bash
# Usage: scripts/serve.sh   (settings come from the environment; -h prints this)
#
# Sets up .venv (scripts/setup.sh) and serves the API on http://127.0.0.1:PORT.
#
#   PORT             the service's port (default 3000).
#   LOCAL_S3_PORT    the local S3 server's port (default 4566; when that is taken, by LocalStack
#                    say, a free port, and it says which).
#   BENTOML_HOST     where to listen (default 127.0.0.1). 0.0.0.0 exposes the service to the network:
#                    set SAM2_API_KEYS then, or anyone who reaches the port can use it.
#
# A taken PORT, or a taken LOCAL_S3_PORT that you set, stops it at once with one line naming the port
# and the variable that moves it.
#
# Masks go to the bucket in S3_BUCKET_NAME_STAGING when it is set (real AWS, or any endpoint in
# S3_ENDPOINT_URL); otherwise a local S3 server (scripts/local_s3.py) is started on
# 127.0.0.1:LOCAL_S3_PORT and masks go there. Weights: SAM2_CHECKPOINT (a local file) if set, else
# SAM2_MODEL (default facebook/sam2.1-hiera-tiny) from Hugging Face. Offline, point SAM2_CHECKPOINT
# at a file; to try the service with random test weights: python scripts/make_test_checkpoint.py,
# then SAM2_CHECKPOINT=checkpoints/sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt. More sizes, picked per
# request with `model`: SAM2_MODELS=tiny,large (SAM2_CHECKPOINTS=large=/path.pt for a local file).
set -euo pipefail
case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    "") ;;
    *) echo "error: serve.sh takes no arguments (settings come from the environment; -h lists them)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
bash scripts/setup.sh

host="${BENTOML_HOST:-127.0.0.1}"
port="${PORT:-3000}"
case "$host" in
    127.* | localhost | ::1) ;;
    *) [ -n "${SAM2_API_KEYS:-}" ] || echo "warning: listening on $host without SAM2_API_KEYS: anyone who can" \
           "reach port $port can use the API" >&2 ;;
esac
port_taken() {
    .venv/bin/python -c 'import sys; from tests.support.localdev import port_taken
sys.exit(not port_taken(int(sys.argv[2]), sys.argv[1]))' "$1" "$2"
}
if port_taken "$host" "$port"; then
    echo "error: $host:$port is already in use; serve on another port with PORT (e.g. PORT=3001 scripts/serve.sh)" >&2
    exit 1
fi

if [ -z "${S3_BUCKET_NAME_STAGING:-}" ]; then
    s3_port="${LOCAL_S3_PORT:-4566}"
    if [ -z "${LOCAL_S3_PORT:-}" ] && port_taken 127.0.0.1 "$s3_port"; then
        s3_port="$(.venv/bin/python -c 'from tests.support.localdev import free_port; print(free_port())')"
        echo "127.0.0.1:4566 is taken (LocalStack's port?): the local S3 server takes $s3_port instead" \
             "(LOCAL_S3_PORT chooses)" >&2
    fi
    env_file="$(mktemp)"
    .venv/bin/python scripts/local_s3.py --port "$s3_port" > "$env_file" &
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
.venv/bin/bentoml serve service.py --host "$host" --port "$port"
