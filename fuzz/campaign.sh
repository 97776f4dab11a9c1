#!/usr/bin/env bash
# A recorded fuzzing campaign: each target in turn (one at a time, at the lowest priority) for SECONDS, in
# libFuzzer's fork mode so that a finding is recorded and the run goes on. Runs the built binaries directly
# (build them first: cargo +nightly fuzz build --sanitizer none --features video). Working corpora start from
# fuzz/corpus/<target> and live, with the logs and the findings (artifacts/<target>/), under WORK.
#
# Usage: fuzz/campaign.sh WORK SECONDS TARGET...
set -euo pipefail
work=$1 seconds=$2
shift 2
bin="${CARGO_TARGET_DIR:-$HOME/.cache/actionclip/fuzz-target}/x86_64-unknown-linux-gnu/release"
corpus="$(cd "$(dirname "$0")" && pwd)/corpus"
for target in "$@"; do
  mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
  cp -n "$corpus/$target"/* "$work/corpus/$target/"
  echo "$(date -u +%FT%TZ) $target start" >> "$work/campaign.log"
  nice -n 19 "$bin/$target" "$work/corpus/$target" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
    -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$target/" > "$work/$target.log" 2>&1 || true
  echo "$(date -u +%FT%TZ) $target end" >> "$work/campaign.log"
done
