#!/usr/bin/env bash
# Configures (once) and builds ember into build/. The CUDA backend is included when nvcc is found.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build build --parallel "$(nproc)"
