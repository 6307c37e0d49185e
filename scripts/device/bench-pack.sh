#!/usr/bin/env bash
# Runs `ferry-bench pack` on the GPU machine's CPU over binaries staged by stage.sh (no Rust
# toolchain there): first plain, with streaming stores timed both ways (--stream-ab), then
# with libferry_mpi.so preloaded, so each record also carries MPI_Pack/MPI_Unpack through the
# interposer (interposed_ratio). Correctness first: ferry vs this machine's MPI_Pack on 20000
# random types. Writes JSON lines and a log under $OUT (or ./device-out).
# Usage: scripts/device/bench-pack.sh [reps, default 15]
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-device-out}; mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bin=${FERRY_DEVICE_BIN:-.device/bin}
reps=${1:-15}
status=0
{
    echo "== machine"; lscpu | grep -E 'Model name|^CPU\(s\)|Thread|NUMA node\(s\)|L2|L3'
    mpirun --version | head -n 1; ldd --version | head -n 1; date -u +%FT%TZ
    echo "== ferry vs this machine's MPI_Pack on 20000 random types"
    mpirun -np 1 $bin/ferry-datatype-check --seeds 20000 || status=1
    echo "== pack, plain, streaming stores both ways"
    mpirun -np 1 --bind-to core $bin/ferry-bench pack --reps "$reps" --stream-ab \
        --json "$out/pack.jsonl" || status=1
    echo "== pack, with MPI_Pack/MPI_Unpack through libferry_mpi.so"
    mpirun -np 1 --bind-to core -x LD_PRELOAD=$PWD/$bin/libferry_mpi.so -x FERRY_LOG=info \
        $bin/ferry-bench pack --reps "$reps" --json "$out/pack-interposed.jsonl" || status=1
    echo "device bench-pack status: $status"
} 2>&1 | tee "$out/bench-pack.log"
exit $status
