#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after the other,
# with cargo-fuzz on the nightly toolchain (fuzz/README.md). New inputs go to
# fuzz/work/TARGET (the committed seeds in fuzz/corpus/TARGET are only read),
# logs to fuzz/logs/TARGET.log, crashes to fuzz/artifacts/TARGET/. Prints one
# line per target: executions, seconds, corpus size and whether it crashed.
# Exit status 1 when any target found a crash.
#
#   fuzz/run.sh 600                  every target, 10 minutes each
#   fuzz/run.sh 600 bundle_reader    one target
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build
mkdir -p logs
failed=0
for target in "${targets[@]}"; do
    mkdir -p "work/$target" "artifacts/$target"
    log="logs/$target.log"
    status=0
    started=$(date +%s)
    cargo +nightly fuzz run "$target" "work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - started))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    corpus=$(find "work/$target" -type f | wc -l)
    if [ "$status" -eq 0 ]; then
        verdict="no crash"
    else
        verdict="CRASH (exit $status): see $log and artifacts/$target/; copy the input to regressions/$target/"
        failed=1
    fi
    # A crash ends the run early: say how long it really ran (wall time,
    # including cargo's check that the target is built).
    printf '%-14s %12s executions in %ss (budget %ss), corpus %s inputs, %s\n' \
        "$target" "${runs:-?}" "$elapsed" "$seconds" "$corpus" "$verdict"
done
exit "$failed"
