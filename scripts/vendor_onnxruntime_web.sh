#!/usr/bin/env bash
# Vendor onnxruntime-web into the /ui package data (src/sam2_api/api/ui/vendor/), from the npm registry at
# the version and integrity pinned in scripts/onnxruntime-web/package-lock.json: /ui's Web Worker decodes
# clicks with it, and the page loads nothing from a CDN. Three files (about 15 MB, most of it the
# WebAssembly binary) are not committed to git; scripts/setup.sh runs this, `bentoml build` then packs them.
# Without npm, or offline, /ui falls back to server clicks (one POST /segment per click), as before.
# Safe to re-run: files already there at the pinned version are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

VENDOR=src/sam2_api/api/ui/vendor
LOCK=scripts/onnxruntime-web
VERSION=$(python3 -c "import json; print(json.load(open('$LOCK/package.json'))['dependencies']['onnxruntime-web'])")
FILES=(ort.wasm.min.js ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm)

have_all() { for f in "${FILES[@]}"; do [ -s "$VENDOR/$f" ] || return 1; done; }
if [ -f "$VENDOR/VERSION" ] && [ "$(cat "$VENDOR/VERSION")" = "$VERSION" ] && have_all; then
  echo "vendor: onnxruntime-web $VERSION already in $VENDOR" >&2
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "vendor: npm not found: /ui will decode clicks on the server (install Node.js and npm, then re-run $0)" >&2
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$LOCK/package.json" "$LOCK/package-lock.json" "$work/"
# npm ci: exactly the lock's versions, each checked against its integrity hash; no install scripts run.
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
mkdir -p "$VENDOR"
for f in "${FILES[@]}"; do cp "$work/node_modules/onnxruntime-web/dist/$f" "$VENDOR/$f"; done
cp "$work/node_modules/onnxruntime-web/LICENSE" "$VENDOR/LICENSE" 2>/dev/null || true
echo "$VERSION" > "$VENDOR/VERSION"
echo "vendor: onnxruntime-web $VERSION copied into $VENDOR ($(du -sh "$VENDOR" | cut -f1))" >&2
