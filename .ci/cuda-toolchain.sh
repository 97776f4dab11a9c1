#!/usr/bin/env bash
# Prints the environment that builds the `cuda` feature on a machine without a GPU or a system CUDA:
# nvcc 13.0, the CUDA headers and the libraries candle links (cuBLAS, cuRAND, NVRTC, the runtime) from
# the Python package index, in a virtual environment under $CUDA_TOOLCHAIN_DIR (default
# ~/.cache/cuda-13.0), plus an empty libcuda stub for the linker (the driver provides the real one).
# The versions match the GPU machines' driver (CUDA 13.0): newer PTX would not load there.
#   eval "$(bash .ci/cuda-toolchain.sh)"      (idempotent; ~2 GB once)
set -euo pipefail
root=${CUDA_TOOLCHAIN_DIR:-$HOME/.cache/cuda-13.0}
[ -x "$root/venv/bin/python" ] || python3 -m venv "$root/venv" >&2
if ! ls "$root"/venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then
  "$root/venv/bin/pip" install -q "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-runtime==13.0.96" \
    "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-nvrtc==13.0.88" "nvidia-cublas==13.0.*" \
    "nvidia-curand==10.4.0.*" >&2
fi
cuda=$(ls -d "$root"/venv/lib/python3*/site-packages/nvidia/cu13)
stubs=$root/stubs
mkdir -p "$stubs"
if [ ! -f "$stubs/libcuda.so" ]; then
  : > "$stubs/empty.c"
  cc -shared -o "$stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$stubs/empty.c"
fi
for lib in cublas cublasLt cudart; do ln -sf "$cuda/lib/lib$lib.so.13" "$stubs/lib$lib.so"; done
ln -sf "$cuda/lib/libcurand.so.10" "$stubs/libcurand.so"
ln -sf "$cuda/lib/libnvrtc.so.13" "$stubs/libnvrtc.so"
echo "export PATH=\"$cuda/bin:\$PATH\" CUDA_ROOT=\"$cuda\" CUDA_PATH=\"$cuda\" CUDA_HOME=\"$cuda\""
echo "export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}"
echo "export LIBRARY_PATH=\"$stubs:$cuda/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}\""
echo "export RUSTFLAGS=\"\${RUSTFLAGS:-} -C link-arg=-Wl,--unresolved-symbols=ignore-in-object-files\""
