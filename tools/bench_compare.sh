#!/usr/bin/env bash
# Runs our criterion video benches and the PyTorch script on the same shapes, one after the other on the
# same machine, and prints videos/s and the ratio ours / PyTorch for each case.
#   tools/bench_compare.sh [ARCH] [PYTHON]     (ARCH: ViT-B-16 (default) or ViT-B-32)
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-ViT-B-16}
python=${2:-python3}
cargo bench --bench encoders -- "video/$arch/meanP/" 2>&1 | grep -E "^video|thrpt" || true
"$python" tools/bench_pytorch.py --filter "video/$arch/" --json target/pytorch_bench.json >/dev/null
"$python" - "$arch" <<'PY'
import json, pathlib, sys
arch = sys.argv[1]
torch = json.load(open("target/pytorch_bench.json"))["results"]
print(f"{'case':<34} {'ours videos/s':>14} {'PyTorch videos/s':>17} {'ratio':>6}")
for batch in (1, 4):
    est = pathlib.Path(f"target/criterion/video_{arch}/meanP/b{batch}/new/estimates.json")
    if not est.exists():
        continue
    ours = batch / (json.load(open(est))["mean"]["point_estimate"] / 1e9)
    for impl in ("hf-eager", "hf-sdpa", "openai"):
        for dtype in ("f32", "bf16"):
            ref = torch.get(f"video/{arch}/{impl}/{dtype}/b{batch}")
            if ref:
                print(f"{arch} b{batch} vs {impl} {dtype:<5} {ours:>14.3f} {ref['videos_per_s']:>17.3f} {ours / ref['videos_per_s']:>6.2f}")
PY
