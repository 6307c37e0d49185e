#!/usr/bin/env bash
# Runs the datatype benchmarks on the GPU machine's CPUs over binaries staged by stage.sh:
# correctness first (ferry vs this machine's MPI_Pack; ddt_exchange with and without the
# interposer), then `ferry-bench pack`, `ferry-bench pingpong-ddt` and the halo3d exchange at
# 2, 4 and 8 ranks (ferry-bench halo3d). Writes JSON and a log under $OUT (or ./device-out).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-device-out}; mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bin=${FERRY_DEVICE_BIN:-.device/bin}
status=0
{
    echo "== machine"; lscpu | grep -E 'Model name|^CPU\(s\)|Thread|NUMA node\(s\)'; mpirun --version | head -n 1
    echo "== ferry vs this machine's MPI_Pack on 20000 random types"
    mpirun -np 1 $bin/ferry-datatype-check --seeds 20000 || status=1
    echo "== ddt_exchange, plain and interposed, 4 ranks"
    mpirun --oversubscribe -np 4 $bin/ddt_exchange || status=1
    mpirun --oversubscribe -np 4 -x LD_PRELOAD=$PWD/$bin/libferry_mpi.so $bin/ddt_exchange || status=1
    echo "== pack"
    mpirun -np 1 --bind-to core $bin/ferry-bench pack --reps 15 --json "$out/pack.jsonl" || status=1
    echo "== pingpong-ddt"
    $bin/ferry-bench pingpong-ddt --iters 50 --reps 9 --json "$out/pingpong-ddt.jsonl" || status=1
    echo "== halo3d"
    $bin/ferry-bench halo3d --program $bin/halo3d --ranks 2,4,8 --launches 3 \
        --mpirun-args "--bind-to core --map-by core" --json "$out/halo3d.jsonl" || status=1
    echo "device bench status: $status"
} 2>&1 | tee "$out/bench.log"
exit $status
