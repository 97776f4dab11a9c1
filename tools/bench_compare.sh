#!/usr/bin/env bash
# Runs our criterion benches and the PyTorch script on the same shapes, one after the other on the same
# machine, and prints items/s (videos, sentences or labels) and the ratio ours / PyTorch for every pair.
#   tools/bench_compare.sh [FILTER] [PYTHON]
# FILTER is a criterion filter over `benches/encoders.rs` and `benches/train.rs` (default
# `video/ViT-B-16/meanP`; others: `video/ViT-B-32/meanP`, `train/`, `text/encode`, `zero_shot/ViT-B-32`);
# the PyTorch cases run are those of the same kind (and architecture).
# TORCH_FILTER narrows the PyTorch cases (for example `video/ViT-B-16/hf-eager/f32`).
# ROUNDS=N (default 1) alternates the two N times and ends with the median of each figure and of the
# per-round ratios: on a shared machine both sides drift by 10% or more between minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
filter=${1:-video/ViT-B-16/meanP}
python=${2:-python3}
kind=${filter%%/*}
case $kind in
  video | zero_shot) rest=${filter#*/}; torch_filter="$kind/${rest%%/*}/" ;;
  *) torch_filter="$kind/" ;;
esac
torch_filter=${TORCH_FILTER:-$torch_filter}
benches="--bench encoders"
[[ $kind == train ]] && benches="--bench train"
rounds=${ROUNDS:-1}
pairs=$(mktemp)
for ((round = 1; round <= rounds; round++)); do
  ((rounds > 1)) && echo "== round $round of $rounds"
  stamp=$(mktemp)
  # shellcheck disable=SC2086
  cargo bench $benches -- "$filter" 2>&1 | grep -E "^[a-z_]+/|thrpt" || true
  "$python" tools/bench_pytorch.py --filter "$torch_filter" --json target/pytorch_bench.json >/dev/null
  "$python" - "$stamp" "$pairs" <<'PY'
import json, os, pathlib, sys

since = os.path.getmtime(sys.argv[1])
torch = json.load(open("target/pytorch_bench.json"))["results"]
IMPLS = ("hf-eager", "hf-sdpa", "openai")


def pytorch_cases(full_id):
    """The PyTorch cases a criterion bench (by its full id) pairs with."""
    parts = full_id.split("/")
    base = parts[2].split("-")[0] if len(parts) > 2 else ""  # `meanP-int8` -> `meanP`
    if parts[0] == "video" and base == "meanP":
        return [f"video/{parts[1]}/{impl}/f32/{parts[3]}" for impl in IMPLS]
    if parts[0] == "text" and parts[1] == "encode":
        return [f"text/{impl}/f32/encode/{parts[2]}" for impl in IMPLS]
    if parts[0] == "zero_shot":
        return [f"zero_shot/{parts[1]}/openai/f32/{base}/{parts[3]}"]
    if parts[0] == "train":
        return [f"train/{parts[1]}/openai/f32/{parts[2]}"]
    return []


print(f"{'ours':<34} {'items/s':>9}   {'PyTorch':<40} {'items/s':>9} {'ratio':>6}")
with open(sys.argv[2], "a") as pairs:
    for bench_file in sorted(pathlib.Path("target/criterion").glob("**/new/benchmark.json")):
        est = bench_file.parent / "estimates.json"
        if not est.exists() or est.stat().st_mtime < since:
            continue
        bench = json.load(open(bench_file))
        items = (bench.get("throughput") or {}).get("Elements", 1)
        ours = items / (json.load(open(est))["mean"]["point_estimate"] / 1e9)
        for case in pytorch_cases(bench["full_id"]):
            if case in torch:
                ref = torch[case]["per_s"]
                print(f"{bench['full_id']:<34} {ours:>9.3f}   {case:<40} {ref:>9.3f} {ours / ref:>6.2f}")
                pairs.write(json.dumps([bench["full_id"], ours, case, ref]) + "\n")
PY
  rm -f "$stamp"
done
if ((rounds > 1)); then
  echo "== median of $rounds rounds (ratio: the median of the per-round ratios)"
  "$python" - "$pairs" <<'PY'
import json, statistics, sys

rows = {}
for line in open(sys.argv[1]):
    ours_id, ours, case, ref = json.loads(line)
    rows.setdefault((ours_id, case), []).append((ours, ref))
print(f"{'ours':<34} {'items/s':>9}   {'PyTorch':<40} {'items/s':>9} {'ratio':>6}  per round")
for (ours_id, case), runs in rows.items():
    ratios = [o / r for o, r in runs]
    ours = statistics.median(o for o, _ in runs)
    ref = statistics.median(r for _, r in runs)
    print(f"{ours_id:<34} {ours:>9.3f}   {case:<40} {ref:>9.3f} {statistics.median(ratios):>6.2f}  {' '.join(f'{x:.2f}' for x in ratios)}")
PY
fi
rm -f "$pairs"
