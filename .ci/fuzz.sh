#!/usr/bin/env bash
# CI: every fuzz target for 30 seconds on its committed corpus (fuzz/corpus/<target>, copied so the checkout
# stays clean). A finding (panic, abort, hang over 10 s, more than 2 GiB resident) fails the run and leaves
# the input under fuzz/artifacts/<target>/. Needs the nightly toolchain and FFmpeg's development libraries
# (the `video` target); cargo-fuzz is installed when missing. The build keeps its target folder under
# ~/.cache so later runs on this machine reuse it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH" CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/actionclip/fuzz-target}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# Panics, aborts, timeouts and RSS are caught by libFuzzer itself; no sanitizer keeps the executions fast.
FUZZ=(cargo +nightly fuzz)
"${FUZZ[@]}" build --sanitizer none --features video
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
for target in $("${FUZZ[@]}" list); do
  cp -r "corpus/$target" "$corpus/$target"
  echo "fuzz: $target"
  "${FUZZ[@]}" run --sanitizer none --features video "$target" "$corpus/$target" -- \
    -max_total_time=30 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -print_funcs=0
done
