#!/usr/bin/env bash
# Passes ferry's tests: setup, `cargo test --workspace`, then the multi-process tests under
# mpirun at 2, 3 and 4 ranks. Prints a summary and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "test: setup failed"; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/mpi-env.sh
source scripts/mpi-env.sh

passed=0
failed=0
failures=()
log=$(mktemp)

record() { # name, status
    if [ "$2" -eq 0 ]; then passed=$((passed + 1)); echo "test: ok   $1"
    else failed=$((failed + 1)); failures+=("$1"); echo "test: FAIL $1"; fi
}

echo "test: building the workspace"
if ! cargo build --workspace --all-targets 2>&1 | tail -n 3; then
    echo "test: build failed"; exit 1
fi

echo "test: cargo test --workspace --no-fail-fast"
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
cargo_status=${PIPESTATUS[0]}
cargo_passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
cargo_failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')
passed=$((passed + cargo_passed))
failed=$((failed + cargo_failed))
if [ "$cargo_status" -ne 0 ] && [ "$cargo_failed" -eq 0 ]; then
    failed=$((failed + 1)); failures+=("cargo test (exit $cargo_status)")
fi
[ "$cargo_failed" -gt 0 ] && failures+=("cargo test: $cargo_failed failed")

echo "test: multi-process tests under mpirun"
run_mpi() { # name, ranks, command...
    local name=$1 np=$2; shift 2
    echo "test: mpirun -np $np $*"
    timeout 600 "${MPIRUN[@]}" -np "$np" "$@" 2>&1 | tail -n 40
    record "$name (mpirun -np $np)" "${PIPESTATUS[0]}"
}
for np in 2 3 4; do
    run_mpi "MpiComm conformance" "$np" target/debug/ferry-comm-conformance
    run_mpi "TcpComm conformance, 2 rails, MPI bootstrap" "$np" \
        target/debug/ferry-comm-conformance --backend tcp --rails 127.0.0.1,127.0.0.2
    run_mpi "collectives match sequential references" "$np" target/debug/ferry-collectives-check --thorough
done
run_mpi "collectives, hierarchical with 3 ranks per node" 4 target/debug/ferry-collectives-check --ranks-per-node 3
run_mpi "zero-copy table shared by two ranks (skips without a GPU)" 2 target/debug/examples/shared_table
run_mpi "ferry's pack/unpack equals MPI_Pack/MPI_Unpack on 20000 random types" 1 \
    target/debug/ferry-datatype-check --seeds 20000
for np in 2 3; do
    run_mpi "example typed_columns" "$np" target/debug/typed_columns
done
for np in 2 4; do
    run_mpi "example ring" "$np" target/debug/ring
    run_mpi "p2p benchmark checks its data" "$np" \
        target/debug/ferry-bench p2p --max-bytes 1MiB --iters 20 --reps 1
done

echo "test: C programs, without and with the interposer preloaded"
mkdir -p target/c
lib="$PWD/target/debug/libferry_mpi.so"
if mpicc -O2 -Wall -o target/c/ddt_exchange comm/interpose/tests/c/ddt_exchange.c \
    && mpicc -O2 -Wall -o target/c/halo3d examples/halo3d.c; then
    for np in 2 4; do
        run_mpi "ddt_exchange" "$np" target/c/ddt_exchange
        run_mpi "ddt_exchange under libferry_mpi.so" "$np" -x LD_PRELOAD="$lib" -x FERRY_LOG=info target/c/ddt_exchange
        # FERRY_LIBRARY_BLOCK_BYTES=1MiB: ferry packs every type itself, large blocks too.
        run_mpi "ddt_exchange under libferry_mpi.so, ferry packing every type" "$np" -x LD_PRELOAD="$lib" \
            -x FERRY_LIBRARY_BLOCK_BYTES=1048576 target/c/ddt_exchange
        run_mpi "halo3d" "$np" target/c/halo3d 12 2 2 3
        run_mpi "halo3d under libferry_mpi.so, ferry packing every type" "$np" -x LD_PRELOAD="$lib" \
            -x FERRY_LIBRARY_BLOCK_BYTES=1048576 target/c/halo3d 12 2 2 3
    done
    timeout 600 target/debug/ferry-bench pingpong-ddt --iters 2 --reps 1 --mpirun-args "--bind-to none" 2>&1 | tail -n 16
    record "pingpong-ddt: a Rust program's derived types through the interposer arrive intact" "${PIPESTATUS[0]}"
    timeout 600 target/debug/ferry-bench halo3d --program target/c/halo3d --n 10 --radius 2 --quantities 2 \
        --iters 2 --ranks 2 --launches 1 2>&1 | tail -n 3
    record "ferry-bench halo3d checks every ghost cell, plain and interposed" "${PIPESTATUS[0]}"
    # The interposer must really have packed (not silently passed everything through).
    FERRY_LOG=info timeout 120 "${MPIRUN[@]}" -np 2 -x LD_PRELOAD="$lib" -x FERRY_LOG target/c/ddt_exchange >"$log" 2>&1
    grep -Eq 'ferry interposer summary handled=[1-9]' "$log"
    record "the interposer handles derived types itself" $?
    FERRY_INTERPOSE=off FERRY_LOG=info timeout 120 "${MPIRUN[@]}" -np 2 -x LD_PRELOAD="$lib" -x FERRY_LOG -x FERRY_INTERPOSE target/c/ddt_exchange >"$log" 2>&1
    ! grep -q 'ferry interposer summary' "$log" && grep -q '0 failures' "$log"
    record "FERRY_INTERPOSE=off passes everything through" $?
else
    record "mpicc builds the C programs" 1
fi

echo "test: third-party MPI programs (BLACS, PBLAS, ScaLAPACK testers) under the interposer"
FERRY_MPI_LIB="$lib" timeout 1200 bash scripts/third-party-mpi.sh 2>&1 | tail -n 40
record "ScaLAPACK's testers reach Open MPI's verdicts under libferry_mpi.so" "${PIPESTATUS[0]}"

echo "test: FERRY_LOG=debug prints a span per operation"
FERRY_LOG=debug timeout 120 "${MPIRUN[@]}" -np 2 target/debug/ring >"$log" 2>&1
grep -q 'send{rank=0 peer=1 tag=0 bytes=8}' "$log" && grep -q 'recv{rank=1 peer=0 tag=0 bytes=8}' "$log"
record "FERRY_LOG turns on per-operation tracing" $?

FERRY_LOG=debug timeout 120 "${MPIRUN[@]}" -np 2 -x FERRY_LOG target/debug/ferry-collectives-check >"$log" 2>&1
grep -q 'collective{rank=1 op="allreduce" bytes=' "$log"
record "collectives open a tracing span per operation" $?

echo "test: network test bed (namespaces, tbf rails, Open MPI ranks inside them)"
timeout 300 bash scripts/testbed-check.sh 2>&1 | tail -n 20
record "test bed: ranks run in their namespaces, rails shaped, bed removed" "${PIPESTATUS[0]}"
PROFILE=dev timeout 300 bash scripts/testbed-allreduce-check.sh 2>&1 | tail -n 20
record "ferry-bench allreduce over TcpComm on the test bed, results checked" "${PIPESTATUS[0]}"

rm -f "$log"
echo
if [ "$failed" -gt 0 ]; then
    echo "test: failures:"
    printf '  %s\n' "${failures[@]}"
fi
echo "summary: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
