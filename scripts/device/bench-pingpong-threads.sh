#!/usr/bin/env bash
# Runs on the GPU machine's CPU, over binaries staged by stage.sh (or any folder holding
# ferry-bench, libferry_mpi.so and ferry-datatype-check): the datatype engine's narrow-block
# kernels and its packing on several cores, each beside its baseline in the same call.
#  1. ferry vs this machine's MPI_Pack on 20000 random types;
#  2. `ferry-bench pack` on the 2D strided sweep (blocks 1 B to 512 B at stride 2x), plain
#     and with MPI_Pack/MPI_Unpack through libferry_mpi.so; with BASE set (a folder of an
#     earlier build's ferry-bench and libferry_mpi.so), the earlier build's plain run too;
#  3. `ferry-bench pingpong-ddt` (each beside the contiguous ping-pong and plain Open MPI):
#     one core per rank (--bind-to core, the old baseline; the earlier build too with BASE),
#     then 4 and 8 cores per rank (--map-by ppr:2:node:PE=n --bind-to core), where the
#     interposer packs on the rank's cores; then, log only: the 4-core case with
#     FERRY_PACK_THREADS=1 (the threads, not the binding), the 8-core case with workers that
#     sleep at once (FERRY_PACK_SPIN_US=0) and with a 64 KiB threshold (every case splits).
# Writes JSON lines and a log under $OUT (or ./device-out).
# Usage: BIN=.device/bin BASE=.device/base scripts/device/bench-pingpong-threads.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-device-out}; mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
bin=${BIN:-.device/bin}
base=${BASE:-}
status=0
step() { echo; echo "== $*"; }
pingpong() { # name, mpirun arguments, binary folder, then extra ferry-bench arguments
    local name=$1 args=$2 dir=$3; shift 3
    step "pingpong-ddt $name: mpirun $args ($dir)"
    timeout 240 "$dir/ferry-bench" pingpong-ddt --mpirun-args "$args --report-bindings" "$@" \
        || status=1
}
{
    step "machine"
    lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Core|Socket|NUMA node|L1d|L2|L3|Flags' \
        | sed -E 's/^(Flags:).*/\1 (avx2: '"$(grep -c avx2 /proc/cpuinfo)"' cpus)/'
    mpirun --version | head -n 1; ldd --version | head -n 1; date -u +%FT%TZ
    step "ferry vs this machine's MPI_Pack on 20000 random types"
    timeout 200 mpirun -np 1 "$bin/ferry-datatype-check" --seeds 20000 || status=1
    step "pack, 2D strided sweep, plain"
    timeout 120 mpirun -np 1 --bind-to core "$bin/ferry-bench" pack --filter "2D strided" \
        --reps 11 --json "$out/pack.jsonl" || status=1
    if [ -n "$base" ]; then
        step "pack, 2D strided sweep, plain, earlier build ($base)"
        timeout 120 mpirun -np 1 --bind-to core "$base/ferry-bench" pack --filter "2D strided" \
            --reps 11 --json "$out/pack-base.jsonl" || status=1
    fi
    step "pack, 2D strided sweep, through libferry_mpi.so"
    timeout 120 mpirun -np 1 --bind-to core -x LD_PRELOAD="$PWD/$bin/libferry_mpi.so" \
        "$bin/ferry-bench" pack --filter "2D strided" --reps 11 \
        --json "$out/pack-interposed.jsonl" || status=1
    export FERRY_LOG=info
    pingpong "1 core per rank" "--bind-to core --map-by core" "$bin" --json "$out/pingpong-core.jsonl"
    [ -n "$base" ] && pingpong "1 core per rank, earlier build" "--bind-to core --map-by core" \
        "$base" --json "$out/pingpong-core-base.jsonl"
    for pe in 4 8; do
        pingpong "$pe cores per rank" "--map-by ppr:2:node:PE=$pe --bind-to core" "$bin" \
            --json "$out/pingpong-pe$pe.jsonl"
    done
    FERRY_PACK_THREADS=1 pingpong "4 cores per rank, FERRY_PACK_THREADS=1" \
        "--map-by ppr:2:node:PE=4 --bind-to core" "$bin" --filter "vector 4 B"
    FERRY_PACK_SPIN_US=0 pingpong "8 cores per rank, FERRY_PACK_SPIN_US=0" \
        "--map-by ppr:2:node:PE=8 --bind-to core" "$bin" --filter "vector 4 B"
    FERRY_PACK_PARALLEL_BYTES=65536 pingpong "8 cores per rank, FERRY_PACK_PARALLEL_BYTES=65536" \
        "--map-by ppr:2:node:PE=8 --bind-to core" "$bin"
    echo; echo "device bench-pingpong-threads status: $status"
} 2>&1 | tee "$out/bench-pingpong-threads.log"
exit $status
