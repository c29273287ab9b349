#!/usr/bin/env bash
# Fuzzes sumi's parsers with libFuzzer under AddressSanitizer + UndefinedBehaviorSanitizer
# (docs/fuzzing.md):
#
#   bash scripts/fuzz.sh [seconds-per-harness] [harness...]
#
# Configures and builds ./build-fuzz with clang (-DSUMI_FUZZ=ON: the harnesses and the parser
# libraries they link, nothing else), then runs each harness (default: all of them) for the
# given time (default 60 s). Each grows a working corpus in build-fuzz/corpus/<harness>,
# seeded from tests/fuzz/corpus/<harness>. A crash, sanitizer report, leak, timeout or
# out-of-memory stops that harness; its input is saved under build-fuzz/findings/<harness>/
# and listed at the end with the command that reproduces it. Exit status 1 when anything
# was found. Needs clang++ (Debian: clang) with its libFuzzer runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
[ $# -gt 0 ] && shift
all=(safetensors pickle torch_checkpoint npz recipe dataset_config prompt)
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=("${all[@]}")
case "$seconds" in
  '' | *[!0-9]*) echo "fuzz.sh: seconds-per-harness must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac
command -v "${SUMI_FUZZ_CXX:-clang++}" >/dev/null ||
  { echo "fuzz.sh: ${SUMI_FUZZ_CXX:-clang++} not found (Debian: apt-get install clang)" >&2; exit 2; }

cmake -S . -B build-fuzz -G Ninja -DSUMI_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER="${SUMI_FUZZ_CXX:-clang++}" -DCMAKE_C_COMPILER="${SUMI_FUZZ_CC:-clang}" >/dev/null
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
cmake --build build-fuzz --target "${targets[@]}" --parallel "$(nproc)"

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
mkdir -p build-fuzz/logs
found=()
for h in "${harnesses[@]}"; do
  work="build-fuzz/corpus/$h"
  out="build-fuzz/findings/$h"
  log="build-fuzz/logs/$h.log"
  mkdir -p "$work" "$out"
  before=$(ls "$out")
  echo "fuzz.sh: $h for ${seconds}s (log: $log)"
  rc=0
  "build-fuzz/bin/fuzz_$h" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -artifact_prefix="$out/" -print_final_stats=1 "$work" "tests/fuzz/corpus/$h" >"$log" 2>&1 || rc=$?
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" | sed "s/^/  /" || true
  for f in $(ls "$out"); do
    if ! grep -qxF "$f" <<<"$before"; then
      found+=("$h: $out/$f  (reproduce: build-fuzz/bin/fuzz_$h $out/$f)")
    fi
  done
  if [ "$rc" -ne 0 ]; then
    grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|terminate called|Assertion' "$log" |
      sed "s/^/  $h: /" || echo "  $h: libFuzzer exited with status $rc (see $log)"
  fi
done

if [ ${#found[@]} -gt 0 ]; then
  echo "fuzz.sh: ${#found[@]} finding(s):"
  printf '  %s\n' "${found[@]}"
  exit 1
fi
echo "fuzz.sh: no findings (${#harnesses[@]} harness(es), ${seconds}s each)"
