#!/bin/bash
# Runs the CUDA tests, compute-sanitizer, the 4B benchmark and the transformers baseline on a GPU
# machine that lacks the Debian libraries: build here, then copy ember and the cuda_*_test binaries
# into $EMBER_BIN_DIR (default .dev/gpu) and pack the shared libraries with
#   scripts/bundle-runtime-libs.sh build/ember .dev/runtime-libs.tar.xz
# usage there: bash scripts/gpu-run.sh [parts...]
#   parts: tests sanitize model bench bench16 hf compare serve (serve: bench/serve_load, 4B, cuda)
# The test binaries carry this checkout's absolute paths (tests/data, the npm tokenizer): link them.
mkdir -p /work /opt/ember-libs && ln -sfn "$PWD" /work/main
tar -xJf .dev/runtime-libs.tar.xz -C /opt/ember-libs
export LD_LIBRARY_PATH=/opt/ember-libs:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
export PYTHONUNBUFFERED=1
B=${EMBER_BIN_DIR:-.dev/gpu}; O=${OUT:-/tmp/out}; M=/tmp/m4b; mkdir -p $O
parts=${*:-tests sanitize model bench hf compare}
for p in $parts; do
  echo "=== $p $(date +%T)"
  case $p in
    tests)
      nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
      for t in cuda_attention_test cuda_backend_test cuda_model_test; do timeout 200 $B/$t --gtest_brief=1 2>&1 | tail -25; echo "$t rc ${PIPESTATUS[0]}"; done ;;
    sanitize)
      S=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
      timeout 150 $S --tool memcheck --error-exitcode 9 $B/cuda_backend_test --gtest_brief=1 --gtest_filter=-*Peak* 2>&1 | tail -6; echo "sanitizer backend rc ${PIPESTATUS[0]}"
      timeout 150 $S --tool memcheck --error-exitcode 9 $B/cuda_attention_test --gtest_brief=1 --gtest_filter=-*32768*:*4096*:*Long* 2>&1 | tail -6; echo "sanitizer attention rc ${PIPESTATUS[0]}" ;;
    model) [ -d $M ] || /usr/bin/time -f "make-model %e s" $B/ember make-model --preset qwen3-embedding-4b --out $M 2>&1 | tail -2; sync ;;
    bench) timeout 240 $B/ember bench --device cuda --model $M --json $O/ember_bench.json 2>&1 | tee $O/ember_bench.txt ;;
    bench16) timeout 240 $B/ember bench --device cuda --dtype float16 --model $M --json $O/ember_bench_f16.json 2>&1 | tee $O/ember_bench_f16.txt ;;
    serve)
      # A full 16,384-token batch holds 1,024 queries: the query workload saturates from about 2,048 clients.
      for w in "docs 1,4,16,64,256" "mixed 1,4,16,64,256" "query 1,16,256,1024,2048"; do
        set -- $w
        timeout 200 $B/serve_load --ember $B/ember --model $M --device cuda --workload $1 --concurrency $2 \
          --seconds 6 --json $O/serve_load_$1.json 2>&1 | tee $O/serve_load_$1.txt
      done ;;
    hf) timeout 240 python3 bench/hf_baseline.py --model $M --out $O/hf_bench.json 2>&1 | grep -v Warning | tee $O/hf_bench.txt ;;
    compare)
      python3 bench/compare.py $O/ember_bench.json $O/hf_bench.json | tee $O/ratios.txt
      python3 tests/golden/hf_compare.py write-texts /tmp/texts.jsonl
      $B/ember embed --device cuda --model $M --input /tmp/texts.jsonl --output /tmp/ember.jsonl
      python3 tests/golden/hf_compare.py compare --model $M --texts /tmp/texts.jsonl --ember /tmp/ember.jsonl 2>&1 | grep -v Warning | tee $O/hf_compare.txt ;;
  esac
done
echo "=== done $(date +%T)"
