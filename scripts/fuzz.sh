#!/usr/bin/env bash
# Builds the libFuzzer targets (clang-14, ASan + UBSan + libFuzzer) and runs each for SECONDS (default 30),
# one after the other; exits 1 if any target hit a crash, leak, timeout, out-of-memory or sanitizer report.
#   scripts/fuzz.sh [SECONDS]
# Environment: BUILD_DIR (default build-fuzz), SHARED_DIR (default ../shared), FUZZ_TARGETS (space-separated
# subset), FUZZ_JOBS (parallel jobs per target, default 1), FUZZ_CORPUS_DIR (where the working corpus grows;
# default $BUILD_DIR/corpus — the committed seeds in fuzz/corpus are never written to), FUZZ_BUILD_JOBS
# (default nproc). Crash reproducers and per-target logs: $BUILD_DIR/fuzz-logs.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${1:-30}
build=${BUILD_DIR:-build-fuzz}
shared=${SHARED_DIR:-${PERCEIVER_SHARED_DIR:-../shared}}
jobs=${FUZZ_JOBS:-1}
work=${FUZZ_CORPUS_DIR:-$build/corpus}
case $build in /*) ;; *) build=$root/$build ;; esac
case $work in /*) ;; *) work=$root/$work ;; esac
targets=${FUZZ_TARGETS:-"fuzz_safetensors fuzz_torch_zip fuzz_pickle fuzz_config fuzz_preprocessor_config fuzz_npy fuzz_jpeg fuzz_png fuzz_webp"}

generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
if [ ! -f "$build/CMakeCache.txt" ]; then
  CC=${CC:-clang-14} CXX=${CXX:-clang++-14} cmake -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPERCEIVER_FUZZ=ON -DPERCEIVER_BUILD_TESTS=OFF -DPERCEIVER_BUILD_BENCH=OFF -DPERCEIVER_HUB=OFF \
    -DPERCEIVER_ONEDNN=OFF -DPERCEIVER_BUILD_PYTHON=OFF -DPERCEIVER_BUILD_SHARED=OFF \
    -DPERCEIVER_SHARED_DIR="$shared" >/dev/null
fi
# shellcheck disable=SC2086
cmake --build "$build" -j"${FUZZ_BUILD_JOBS:-$(nproc)}" --target $targets

# Seeds: the committed ones, plus small files from the shared golden vectors when they are there.
seed_from_shared() {  # target, files...
  local dir=$work/$1
  shift
  for f in "$@"; do
    if [ -f "$f" ] && [ "$(stat -c %s "$f")" -le 65536 ]; then cp -f "$f" "$dir/shared-$(echo "$f" | tr / _)"; fi
  done
}
for t in $targets; do
  mkdir -p "$work/$t"
  if [ -d "fuzz/corpus/$t" ]; then cp -f fuzz/corpus/"$t"/* "$work/$t/" 2>/dev/null || true; fi
done
if [ -d "$shared/vectors" ]; then
  v=$shared/vectors
  seed_from_shared fuzz_config "$v"/*/config.json "$shared"/models/*/config.json
  seed_from_shared fuzz_preprocessor_config "$v"/preprocess/preprocessor_config.json \
    "$shared"/models/*/preprocessor_config.json
  seed_from_shared fuzz_npy "$v"/conv-tiny/logits.npy "$v"/conv-tiny/decoder_query.npy \
    "$v"/conv-tiny/decoder_cross_attn_probs.npy
  seed_from_shared fuzz_jpeg "$v"/preprocess/*.jpg
fi

logs=$build/fuzz-logs
mkdir -p "$logs"
parallel=()
if [ "$jobs" -gt 1 ]; then parallel=(-jobs="$jobs" -workers="$jobs"); fi
failed=()
for t in $targets; do
  echo "=== $t: ${seconds}s"
  extra=("${parallel[@]}")
  if [ -f "fuzz/dicts/$t.dict" ]; then extra+=(-dict="$root/fuzz/dicts/$t.dict"); fi
  # -malloc_limit_mb: inputs are <= 256 KiB and decoded images <= 2 Mpixel, so a single allocation over 256 MiB
  # means a parser allocated what a small input merely claims: a bug.
  # Crash reproducers are written to $logs (crash-*, oom-*, timeout-*, leak-*).
  if ! (cd "$logs" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$build/bin/$t" "${extra[@]}" -max_total_time="$seconds" -rss_limit_mb=2048 \
        -malloc_limit_mb=256 -timeout=20 -max_len=262144 -print_final_stats=1 "$work/$t" \
        >"$t.log" 2>&1); then
    echo "FAILED: $t (log: $logs/$t.log)"
    grep -E "ERROR|SUMMARY|Test unit written|runtime error" "$logs/$t.log" | head -20 || true
    failed+=("$t")
  else
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$logs/$t.log" || true
    grep -E "(DONE|pulse|NEW|REDUCE).*cov: " "$logs/$t.log" | tail -1 || true
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: ok (${seconds}s per target)"
