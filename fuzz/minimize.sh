#!/usr/bin/env bash
# Replaces fuzz/corpus/<target> by a minimized copy of a campaign's working corpus (see campaign.sh): the
# smallest set of its inputs under 20 KB that reaches every code edge they reach (libFuzzer's -merge=1, as
# `cargo fuzz cmin` runs it, with -use_counters=0 so that edges rather than hit counts decide). The size cap
# keeps the committed corpus small; the few larger inputs add little coverage.
#
# Usage: fuzz/minimize.sh WORK TARGET...
set -euo pipefail
work=$1
shift
bin="${CARGO_TARGET_DIR:-$HOME/.cache/actionclip/fuzz-target}/x86_64-unknown-linux-gnu/release"
corpus="$(cd "$(dirname "$0")" && pwd)/corpus"
for target in "$@"; do
  small=$(mktemp -d)
  find "$work/corpus/$target" -type f -size -20k -exec cp {} "$small/" \;
  rm -rf "${corpus:?}/$target"
  mkdir -p "$corpus/$target"
  nice -n 19 "$bin/$target" -merge=1 -use_counters=0 -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$small/" \
    "$corpus/$target" "$small" \
    2>&1 | grep MERGE-OUTER: | tail -n 1
  rm -rf "$small"
  echo "$target: $(find "$corpus/$target" -type f | wc -l) files, $(cat "$corpus/$target"/* | wc -c) bytes"
done
