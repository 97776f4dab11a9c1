#!/usr/bin/env bash
# CI for data-parallel training over MPI: lints the `mpi` feature (Open MPI's development files and libclang
# must be installed: `openmpi-bin libopenmpi-dev clang libclang-dev`, see .ci/setup) and runs
# tests/distributed_mpi.rs, which launches each scenario under `mpirun --allow-run-as-root --oversubscribe
# -np 2` itself. The build keeps its target folder under ~/.cache so later runs on this machine reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/actionclip/mpi-target}"
command -v mpirun >/dev/null || { echo "mpirun not found: install openmpi-bin libopenmpi-dev" >&2; exit 1; }
cargo clippy --all-targets --features mpi,video -- -D warnings
cargo test --features mpi,video --test distributed_mpi
