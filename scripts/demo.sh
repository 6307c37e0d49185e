#!/usr/bin/env bash
# ferry's main demo: builds in release and runs a 4-rank ping-pong and bandwidth sweep through
# ferry-comm over MPI, beside plain rsmpi, then prints where the JSON went.
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
