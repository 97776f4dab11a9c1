#!/usr/bin/env bash
# CI for data-parallel training over MPI: builds the `mpi` feature (Open MPI's development files and
# libclang must be installed: `openmpi-bin libopenmpi-dev clang libclang-dev`, see .ci/setup) and runs
# tests/distributed_mpi.rs, which launches each scenario under `mpirun --allow-run-as-root --oversubscribe
# -np 2` itself. The library and the example are checked with the feature too.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" CARGO_TERM_COLOR=never
command -v mpirun >/dev/null || { echo "mpirun not found: install openmpi-bin libopenmpi-dev" >&2; exit 1; }
cargo check --features mpi --lib --examples
cargo test --features mpi --test distributed_mpi
