#!/usr/bin/env bash
# Fuzzes the serve protocol layer (tests/fuzz/request_fuzz.cpp) for SECONDS on every core, then
# prints what the run did: executions, coverage (cov = edges, ft = features), corpus size and the
# crashes, timeouts and out-of-memory inputs found (saved in BUILD/tests/fuzz/artifacts/).
#   scripts/fuzz.sh [seconds=600] [build-dir=build]
# Uses libFuzzer's fork mode (one worker process per core sharing one corpus; it replaced -jobs)
# and keeps going after a crash so one run reports them all. Exit status 1 when it found any.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
build=${2:-build}
if [ ! -f "$build/CMakeCache.txt" ]; then
  echo "fuzz.sh: $build is not a configured build folder; run: cmake -S . -B $build -G Ninja" >&2
  exit 2
fi
cmake --build "$build" --target request_fuzzer
dir=$build/tests/fuzz
if [ ! -x "$dir/request_fuzz" ]; then
  echo "fuzz.sh: $dir/request_fuzz was not built (clang++ with libFuzzer missing? see the cmake output)" >&2
  exit 2
fi
mkdir -p "$dir/artifacts" "$dir/corpus"
jobs=$(nproc)
log=$dir/fuzz-$(date +%Y%m%d-%H%M%S).log
before=$(find "$dir/artifacts" -type f | wc -l)
echo "fuzz.sh: $seconds s on $jobs processes; log: $log"
"$dir/request_fuzz" -fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
  -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 -dict=tests/fuzz/request.dict \
  -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$log" 2>&1 || true
# Fork mode's status line: "#<execs>: cov: N ft: N corp: N exec/s N oom/timeout/crash: a/b/c time: Ns ..."
last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 || true)
if [ -z "$last" ]; then
  echo "fuzz.sh: no status line in $log; its end:" >&2
  tail -20 "$log" >&2
  exit 2
fi
echo "$last" | awk '{
  printf "execs %s, cov %s, ft %s, corpus %s inputs, %s exec/s, oom/timeout/crash %s, time %s\n",
         substr($1, 2, length($1) - 2), $3, $5, $7, $9, $11, $13 }'
found=$(find "$dir/artifacts" -type f | wc -l)
if ((found > before)); then
  echo "fuzz.sh: $((found - before)) new failing inputs:"
  find "$dir/artifacts" -type f -newer "$log" -o -type f -cnewer "$log" | sort -u
  echo "reproduce one with: $dir/request_fuzz <file>"
  exit 1
fi
echo "fuzz.sh: no crashes, timeouts or OOMs"
