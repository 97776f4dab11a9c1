#!/usr/bin/env bash
# Renders a batch report (`report.html` of examples/visualize) in headless Chromium at 1280x900, saves a
# screenshot and fails when the page is wider than the window or the content of any table cell, heading or
# paragraph is wider than its box (clipped, or spilling into the next column).
#
#   tools/check_report_width.sh                    # make a report with long names, then check it
#   tools/check_report_width.sh viz_out/report.html
#
# Without an argument it writes a dataset of frame folders (FFmpeg's test pattern) whose class folders and
# clip names are long, plus a corrupt clip that fails with a long error, and runs
# `cargo run --example visualize -- --demo --videos-dir DATA` on it (a random tiny model: the layout is
# what is checked, not the predictions). Needs chromium, ffmpeg and python3 on PATH (Debian: `apt-get install
# chromium ffmpeg`). Outputs go to OUT (default target/report-width): report.png (the screenshot) and
# metrics.txt. WIDTH and HEIGHT change the window.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/report-width}
WIDTH=${WIDTH:-1280}
HEIGHT=${HEIGHT:-900}
CHROMIUM=${CHROMIUM:-chromium}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ $# -ge 1 ]; then
  report=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
else
  data="$OUT/data"
  rm -rf "$data" "$OUT/viz"
  classes=(
    PlayingTheElectricGuitarWhileStandingOnOneLegInTheRainAtNight
    Pneumonoultramicroscopicsilicovolcanoconiosis_Lecture_Recorded_Without_Any_Spaces
    ApplyEyeMakeup
    Archery
  )
  for c in "${classes[@]}"; do
    for g in 01 02; do
      clip="$data/$c/v_${c}_g${g}_c01_recorded_with_a_handheld_camera_in_portrait_mode"
      mkdir -p "$clip"
      ffmpeg -loglevel error -f lavfi -i "testsrc=size=96x72:rate=8" -frames:v 16 "$clip/img_%05d.jpg"
    done
  done
  printf 'not a video' >"$data/Archery/v_Archery_g03_c01_this_file_is_corrupt_and_its_error_message_is_long.avi"
  cargo run --quiet --example visualize -- --demo --videos-dir "$data" --per-class 3 --output "$OUT/viz" \
    >"$OUT/visualize.log" 2>&1 || { cat "$OUT/visualize.log"; exit 1; }
  report="$OUT/viz/report.html"
fi
[ -f "$report" ] || { echo "no report at $report" >&2; exit 1; }

# A copy beside the report (so its media load) that writes the measurements into the title once loaded.
probe="$(dirname "$report")/.width_probe.html"
trap 'rm -f "$probe"' EXIT
python3 - "$report" "$probe" <<'EOF'
import sys
html = open(sys.argv[1], encoding="utf-8").read()
script = """<script>
window.addEventListener('load', () => {
  const root = document.documentElement;
  const cells = Array.from(document.querySelectorAll('th, td, h1, p'));
  const over = cells.filter(c => c.scrollWidth > c.clientWidth + 1);
  const table = document.querySelector('table');
  document.title = 'WIDTH scroll=' + root.scrollWidth + ' client=' + root.clientWidth +
    ' table=' + (table ? Math.round(table.getBoundingClientRect().width) : 0) +
    ' overflowing=' + over.length +
    (over.length ? ' first=' + over[0].tagName + ':' + over[0].textContent.trim().slice(0, 60) : '');
});
</script>"""
i = html.rfind("</body>")
if i < 0:
    sys.exit("no </body> in " + sys.argv[1])
open(sys.argv[2], "w", encoding="utf-8").write(html[:i] + script + html[i:])
EOF

flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
  --disable-component-update --disable-sync --hide-scrollbars --window-size="$WIDTH,$HEIGHT")
profile=$(mktemp -d)
trap 'rm -f "$probe"; rm -rf "$profile"' EXIT
"$CHROMIUM" "${flags[@]}" --user-data-dir="$profile" --virtual-time-budget=5000 --dump-dom "file://$probe" \
  2>/dev/null >"$OUT/probe.dom"
"$CHROMIUM" "${flags[@]}" --user-data-dir="$profile" --virtual-time-budget=5000 \
  --screenshot="$OUT/report.png" "file://$report" >/dev/null 2>&1
metrics=$(sed -n 's:.*<title>\(WIDTH [^<]*\)</title>.*:\1:p' "$OUT/probe.dom" | head -n 1)
[ -n "$metrics" ] || { echo "chromium gave no measurements (see $OUT/probe.dom)" >&2; exit 1; }
echo "$metrics" | tee "$OUT/metrics.txt"
echo "report: $report; screenshot: $OUT/report.png"
scroll=$(echo "$metrics" | sed -n 's/.*scroll=\([0-9]*\).*/\1/p')
client=$(echo "$metrics" | sed -n 's/.*client=\([0-9]*\).*/\1/p')
overflowing=$(echo "$metrics" | sed -n 's/.*overflowing=\([0-9]*\).*/\1/p')
if [ "$scroll" -gt "$client" ] || [ "$overflowing" -gt 0 ]; then
  echo "FAIL: the report overflows a ${WIDTH}px window" >&2
  exit 1
fi
echo "OK: fits ${WIDTH}px"
