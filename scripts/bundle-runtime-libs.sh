#!/usr/bin/env bash
# Packs the Debian shared libraries that ember's binaries link (oneDNN, PCRE2, utf8proc, fmt, ...)
# into OUT.tar.xz, for running a build from this machine on one without those packages (the GPU
# machine; its own CUDA libraries are used there). There: tar -xJf OUT.tar.xz -C /opt/ember-libs && export LD_LIBRARY_PATH=/opt/ember-libs
set -euo pipefail
binary=${1:?usage: bundle-runtime-libs.sh BINARY OUT.tar.xz}
out=${2:?usage: bundle-runtime-libs.sh BINARY OUT.tar.xz}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ldd "$binary" | awk '/=> \// {print $3}' | grep -v -E '^/usr/local/cuda|/libc\.so|/libm\.so|/libstdc\+\+|/libgcc_s|/libpthread|/libdl|/librt' |
  while read -r lib; do cp -L "$lib" "$tmp/"; done
tar -cJf "$out" -C "$tmp" .
