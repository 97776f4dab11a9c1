#!/usr/bin/env bash
# Figures for the README's "Streams and long videos" and "Feature extraction" sections: windows/s and
# latency of examples/stream, clips/s of examples/extract_features with and without the model, for
# ViT-B/32 and ViT-B/16 with random weights (speed does not depend on the values). Inputs are made with
# FFmpeg's test source at UCF101's size (320x240, 25 fps, MPEG-4).
#   bash tools/measure_stream_extract.sh [work-dir]      (needs ffmpeg; builds the examples in release)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
cargo build --release --features video --example stream --example extract_features >/dev/null
bin=target/release/examples
# Ten labels: the class sentences are encoded once at start-up and do not change the per-window cost.
labels="archery,bowling,diving,fencing,juggling balls,punch,rowing,surfing,typing,yo yo"
lscpu | grep 'Model name' | sed 's/^ */cpu: /'
ff() { ffmpeg -v error -nostdin -y "$@"; }
# A 60 s video, and 24 clips of 7 s (UCF101's mean length) in 4 class folders.
[ -f "$work/long.avi" ] || ff -f lavfi -i testsrc2=size=320x240:rate=25 -t 60 -c:v mpeg4 -q:v 5 "$work/long.avi"
for c in 0 1 2 3; do
  mkdir -p "$work/clips/Class$c"
  for i in 0 1 2 3 4 5; do
    f="$work/clips/Class$c/v_Class${c}_g0${i}_c01.avi"
    [ -f "$f" ] || ff -f lavfi -i "testsrc2=size=320x240:rate=25" -t 7 -vf "hue=h=$((c * 90 + i * 10))" -c:v mpeg4 -q:v 5 "$f"
  done
done
for model in vit-b32 vit-b16; do
  echo "== $model: stream over a 60 s file, 2 s windows every 1 s, every window classified"
  "$bin/stream" --random-weights "$model" --labels "$labels" --input "$work/long.avi" --window 2s --stride 1s \
    --keep-all >/dev/null
  echo "== $model: live stream in real time (ffmpeg -re into a pipe), 2 s windows every 1 s"
  ff -re -i "$work/long.avi" -t 30 -c:v mpeg4 -q:v 5 -f mpegts pipe:1 \
    | "$bin/stream" --random-weights "$model" --labels "$labels" --input pipe:0 --window 2s --stride 1s >/dev/null
  echo "== $model: feature extraction of 24 clips (decoder alone, then decoder + model)"
  "$bin/extract_features" --random-weights "$model" --videos "$work/clips" --output "$work/f-$model" --decode-only
  rm -rf "$work/f-$model"
  "$bin/extract_features" --random-weights "$model" --videos "$work/clips" --output "$work/f-$model" 2>&1 \
    | grep -v '^\s*$' | tail -1
done
