#!/usr/bin/env bash
# The fused CUDA path on a GPU, against PyTorch in the same run on the same card.
#
#   tools/gpu_bench.sh build   On a build machine (no GPU needed): builds the kernel tests (the unit tests
#                              of src/kernels/cuda, and tests/cuda_kernels.rs for the model on the GPU)
#                              and the GPU bench (benches/gpu.rs) with the CUDA 13.0
#                              toolchain (../shared/scripts/cuda-toolchain.sh, or $CUDA_TOOLCHAIN) and packs
#                              them into .gpu/ with ../shared/scripts/device-pack.sh.
#   tools/gpu_bench.sh run     On the GPU machine, from the repository root with .gpu/ beside it: runs the
#                              kernel tests, our bench and tools/gpu_bench.py, then prints ours vs PyTorch.
#                              Logs and JSON land in $OUT (or target/gpu-bench). KERNEL_FILTER, BENCH_FILTER
#                              and PYTORCH_FILTER narrow the tests, our cases and PyTorch's cases.
# With the device tool: `tools/gpu_bench.sh build`, then run `bash tools/gpu_bench.sh run` there with
# carry [".gpu"] (.gpu/ is ignored by git through .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
pack=.gpu

build() {
  eval "$("${CUDA_TOOLCHAIN:-../shared/scripts/cuda-toolchain.sh}")"
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
  local stage
  stage=$(mktemp -d)
  executable() {  # the path of the test or bench executable cargo reports for "$@"
    cargo "$@" --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])'
  }
  cp "$(executable test --release --features cuda --lib)" "$stage/unit_tests"
  cp "$(executable test --release --features cuda --test cuda_kernels)" "$stage/cuda_kernels"
  cp "$(executable bench --features cuda --bench gpu)" "$stage/gpu_bench"
  rm -rf "$pack"
  for bin in unit_tests cuda_kernels gpu_bench; do ../shared/scripts/device-pack.sh "$stage/$bin" "$pack" >/dev/null; done
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  ls -la "$pack"
}

run() {
  export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
  local out=${OUT:-target/gpu-bench}
  mkdir -p "$out"
  for f in "$pack"/*.gz; do gunzip -kf "$f"; chmod +x "${f%.gz}"; done
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"
  echo "== kernel tests"
  {
    timeout "${KERNEL_TIMEOUT:-180}" "$pack/unit_tests" --test-threads 1 --nocapture "${KERNEL_FILTER:-kernels::cuda}"
    ACTIONCLIP_FIXTURES=$PWD/tests/fixtures timeout "${KERNEL_TIMEOUT:-180}" "$pack/cuda_kernels" --test-threads 1 --nocapture ${KERNEL_FILTER:-}
  } 2>&1 | tee "$out/kernels.log" | grep -E "^test |test result|panicked|FAILED" || true
  echo "== ours"
  (while sleep 0.2; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done) > "$out/memory_ours.txt" &
  local sampler=$!
  CRITERION_HOME=$out/criterion timeout "${BENCH_TIMEOUT:-240}" "$pack/gpu_bench" --bench ${BENCH_FILTER:-} 2>&1 | tee "$out/ours.log" | grep -E "^gpu/|thrpt" || true
  kill "$sampler"
  if [ -n "${PROFILE:-}" ]; then
    local case=${PROFILE_CASE:-gpu/infer/ViT-B-16/bf16/b16}
    echo "== kernel times of ours, $case (ncu, kernels ${PROFILE_SKIP:-1500}.. for ${PROFILE_COUNT:-300})"
    local ncu
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    timeout "${PROFILE_TIMEOUT:-150}" "$ncu" --clock-control none --launch-skip "${PROFILE_SKIP:-1500}" \
      --launch-count "${PROFILE_COUNT:-300}" --metrics gpu__time_duration.sum --csv \
      "$pack/gpu_bench" --bench --profile-time 3 "$case" > "$out/ncu.csv" 2> "$out/ncu.err" || true
    python3 - "$out/ncu.csv" <<'PY'
import collections, csv, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
if not rows:
    sys.exit("no ncu rows (see ncu.err)")
head = rows[0]
name, value = head.index("Kernel Name"), head.index("Metric Value")
total = collections.Counter()
count = collections.Counter()
for r in rows[1:]:
    try:
        ns = float(r[value].replace(",", ""))
    except ValueError:
        continue
    total[r[name][:90]] += ns
    count[r[name][:90]] += 1
all_ns = sum(total.values())
for k, ns in total.most_common(25):
    print(f"{ns / all_ns:6.1%} {ns / 1e3:10.1f} us {count[k]:5d}x  {k}")
print(f"total {all_ns / 1e6:.2f} ms over {sum(count.values())} kernels")
PY
  fi
  echo "== PyTorch"
  timeout "${PYTORCH_TIMEOUT:-180}" python3 tools/gpu_bench.py --filter "${PYTORCH_FILTER:-}" --json "$out/pytorch.json" | tee "$out/pytorch.log" || true
  echo "== ours / PyTorch (videos/s)"
  python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
torch = json.load(open(out / "pytorch.json"))
print(f"{torch['device']}, PyTorch {torch['torch']}")
memory = [int(l) for l in open(out / "memory_ours.txt") if l.strip().isdigit()]
if memory:
    print(f"ours: peak device memory in use during the bench {max(memory) / 1024:.1f} GiB (nvidia-smi, CUDA context included)")
print(f"{'case':<32} {'ours':>9} {'PyTorch':>9} {'ratio':>6}")
for case, ref in torch["results"].items():
    _, mode, arch, dtype, batch = case.split("/")
    est = out / "criterion" / f"gpu_{mode}_{arch}" / dtype / batch / "new" / "estimates.json"
    if not est.exists():
        print(f"{case:<32} {'-':>9} {ref['videos_per_s']:>9.1f}")
        continue
    ours = int(batch[1:]) / (json.load(open(est))["mean"]["point_estimate"] / 1e9)
    print(f"{case:<32} {ours:>9.1f} {ref['videos_per_s']:>9.1f} {ours / ref['videos_per_s']:>6.2f}  (PyTorch peak {ref['peak_gib']:.1f} GiB)")
PY
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: tools/gpu_bench.sh build|run" >&2; exit 2 ;;
esac
