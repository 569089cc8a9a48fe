#!/usr/bin/env bash
# Set up (scripts/setup.sh), write the random-init test checkpoint, run the whole test suite.
# The tests start what they need themselves: a local S3 server (moto) and `bentoml serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python scripts/make_test_checkpoint.py
exec .venv/bin/python -m pytest "$@"
