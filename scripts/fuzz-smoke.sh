#!/usr/bin/env bash
# Short fuzz run of every cargo-fuzz target (libFuzzer). Usage: fuzz-smoke.sh [RUNS]
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-50000}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
for dir in sss-proto/fuzz sss-routing/fuzz; do
  [ -d "$dir" ] || continue
  for target in $(cd "$dir" && cargo fuzz list); do
    # stream_ops runs whole operation programs (~2k executions/s): cap its time lower.
    max_time=120
    [ "$target" = stream_ops ] && max_time=30
    echo "-- fuzz $dir $target ($runs runs, at most ${max_time}s)"
    (cd "$dir" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -runs="$runs" -max_total_time="$max_time")
  done
done
