#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets) for a bounded time; fails on any crash, which
# cargo fuzz saves under fuzz/artifacts/<target>/ with the input that caused it.
#
#     tools/fuzz.sh [seconds per target=60]
#
# libFuzzer needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable compiler take
# them. With a nightly toolchain instead: cargo +nightly fuzz run <target>.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p target/fuzz
for target in verify delivery; do
    echo "== fuzzing $target for $seconds s"
    log="target/fuzz/$target.log"
    if ! RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/fuzz \
        cargo fuzz run -O "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzzing $target found a crash: see fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E "^Done" "$log"
done
