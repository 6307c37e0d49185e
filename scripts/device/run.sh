#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, over binaries staged by stage.sh:
# ferry-gpu's tests, gpu_info, the MPI conformance suite at 2 and 4 ranks, and the p2p
# benchmark. Writes logs and JSON under $OUT (or ./device-out when OUT is unset).
set -uo pipefail
out=${OUT:-device-out}; mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun=(mpirun --oversubscribe --bind-to none)
status=0
step() { echo; echo "== $*"; }
{
    step "machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nproc; mpirun --version | head -n 1
    step "ferry-gpu tests"
    for t in .device/tests/*; do
        echo "-- $t"; "$t" --test-threads=1 || status=1
    done
    step "gpu_info"
    [ -x .device/bin/gpu_info ] && { .device/bin/gpu_info || status=1; }
    for np in 2 4; do
        step "MpiComm conformance, $np ranks"
        timeout 300 "${mpirun[@]}" -np "$np" .device/bin/ferry-comm-conformance || status=1
    done
    if [ "${FERRY_DEVICE_P2P:-1}" = 1 ]; then
        step "p2p benchmark, 2 ranks"
        timeout 300 mpirun --bind-to core --map-by core -np 2 .device/bin/ferry-bench p2p --json "$out/p2p.json" || status=1
    fi
    echo; echo "device run status: $status"
} 2>&1 | tee "$out/device.log"
exit $status
