#!/usr/bin/env bash
# Runs fuzz targets for a bounded time each, from their checked-in seeds.
#
#   fuzz/run.sh [SECONDS [TARGET...]]     default: 15 s, every target
#
# On the stable toolchain: cargo-fuzz's libFuzzer with coverage, without a
# sanitizer (`-s none`; AddressSanitizer needs nightly, and the crate
# forbids unsafe code). New inputs the fuzzer finds go to
# target/fuzz-corpus/TARGET, not into the seeds; a crash stops the run with
# its input in fuzz/artifacts/TARGET/ (see FUZZING.md for what to do next).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-15}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for file in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$file" .rs)")
    done
fi

cargo fuzz build -s none
for target in "${targets[@]}"; do
    scratch="target/fuzz-corpus/$target"
    mkdir -p "$scratch"
    log="target/fuzz-corpus/$target.log"
    echo "== $target (${secs} s)"
    if ! cargo fuzz run -s none "$target" "$scratch" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed: see $log and fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done )' "$log" || true
done
