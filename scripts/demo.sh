#!/usr/bin/env bash
# ferry's main demo: builds in release and runs a 4-rank ping-pong and bandwidth sweep through
# ferry-comm over MPI beside plain rsmpi, then derived-datatype exchanges through the MPI
# interposer libferry_mpi.so beside plain Open MPI. JSON goes to target/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/mpi-env.sh
source scripts/mpi-env.sh
cargo build --release --workspace --bins
mkdir -p target/demo
echo
echo "== a ring of 4 ranks through ferry-comm"
"${MPIRUN[@]}" -np 4 target/release/ring
echo
echo "== ping-pong, 2 pairs at once: ferry's MpiComm beside plain rsmpi"
"${MPIRUN[@]}" -np 4 target/release/ferry-bench p2p --max-bytes "${FERRY_DEMO_MAX_BYTES:-64MiB}" \
    --json target/demo/p2p.json
echo
echo "== a 26-neighbour 3D halo exchange of subarray types: plain Open MPI, then through libferry_mpi.so"
cargo build --release -p ferry-mpi
target/release/ferry-bench halo3d --n 32 --ranks 4 --launches 1 --json target/demo/halo3d.jsonl
echo
echo "== derived-type ping-pong: Open MPI alone, through ferry, and contiguous"
target/release/ferry-bench pingpong-ddt --iters 20 --reps 5 --mpirun-args "--bind-to none" --json target/demo/pingpong-ddt.json
