#!/usr/bin/env bash
# Runs third-party MPI test programs under libferry_mpi.so and checks that they reach the same
# verdicts as without it: the BLACS, PBLAS and ScaLAPACK testers that Debian ships prebuilt for
# Open MPI (packages scalapack-mpi-test, libscalapack-openmpi2.2, scalapack-test-common,
# installed here with apt-get if missing). BLACS moves sub-matrices with MPI_Type_vector,
# MPI_Type_indexed and MPI_Type_create_struct types, so these programs commit thousands of
# derived types and send them with MPI_Send, MPI_Isend, MPI_Irecv and MPI_Sendrecv.
#
# Each tester runs three ways, 4 ranks each, in a directory holding its input files:
#   plain    Open MPI alone;
#   ferry    with the interposer preloaded, its defaults (types with mean blocks of 32 B and
#            more left to the library);
#   forced   with FERRY_LIBRARY_BLOCK_BYTES=1048576, so ferry's engine packs and unpacks every
#            derived type it can describe.
# A tester's verdict is the multiset of its summary lines ("N tests completed and passed
# residual checks", "INTEGER SDRV TESTS: ... 0 FAILED.") and its counts of PASSED and FAILED;
# the interposed runs must give plain's verdict (a failure plain shows too is the package's,
# reported, not ferry's). In forced mode the interposer's summary (FERRY_LOG=info, printed at
# exit) must show it handled operations, over the testers that finish normally (the BLACS
# tester ends in its own MPI_Abort test).
# Usage: scripts/third-party-mpi.sh [quick]   (quick: one tester of each library)
# Environment: TESTERS (a list to run instead, e.g. "BLACS/xFbtest xdlu"), FERRY_MPI_LIB (the interposer to test; default: built here in release mode,
# under CARGO_TARGET_DIR or target).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/mpi-env.sh
root=/usr/lib/x86_64-linux-gnu/scalapack/openmpi-tests
data=/usr/share/scalapack
if [ ! -x "$root/xCbtest" ] || [ ! -d "$data/BLACS" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q scalapack-mpi-test \
            libscalapack-openmpi2.2 scalapack-test-common >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                scalapack-mpi-test libscalapack-openmpi2.2 scalapack-test-common >/dev/null 2>&1; }
    fi
fi
if [ ! -x "$root/xCbtest" ] || [ ! -d "$data/BLACS" ]; then
    echo "skip: the ScaLAPACK testers for Open MPI are not installed and cannot be (apt-get install scalapack-mpi-test libscalapack-openmpi2.2 scalapack-test-common)"
    exit 0
fi
if [ -n "${FERRY_MPI_LIB:-}" ]; then
    lib=$(realpath "$FERRY_MPI_LIB")
else
    target_dir=${CARGO_TARGET_DIR:-target}
    cargo build --release -q -p ferry-mpi || exit 1
    lib="$(cd "$target_dir" && pwd)/release/libferry_mpi.so"
fi

if [ -n "${TESTERS:-}" ]; then
    read -r -a testers <<<"$TESTERS"
elif [ "${1:-}" = quick ]; then
    testers=(BLACS/xCbtest PBLAS/dpb3tst xdlu)
else
    testers=(BLACS/xCbtest BLACS/xFbtest)
    for p in s d c z; do for l in 1 2 3; do testers+=("PBLAS/${p}pb${l}tst"); done; done
    # Not xdsep: without ferry it fails one of its 108 tests (PDSYEVX, N=27) in about half of
    # the runs on this machine, so its verdict cannot be compared.
    testers+=(xslu xdlu xclu xzlu xdqr xzqr xdllt xzllt xdinv xzinv xdls xdbrd xdhrd xdtrd
        xdsvd xdnep xdgsep)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The verdict of one output: summary lines and PASSED/FAILED counts, timings left out. The
# BLACS testers' counts are left out too: their last test is MPI_Abort, and how many of the
# auxiliary tests' lines get out before the kill varies from run to run (their summary lines,
# printed before, do not).
verdict() { # output, tester
    grep -hE 'tests completed and|TESTS: +[0-9]|tests skipped|tests completed without' "$1" |
        sed 's/^ *//; s/  */ /g' | sort
    [[ $2 == BLACS/* ]] ||
        echo "PASSED $(grep -o 'PASSED' "$1" | wc -l) FAILED $(grep -o 'FAILED' "$1" | wc -l)"
}
handled() { # total of handled= over the summary lines of an output
    sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -o 'ferry interposer summary handled=[0-9]*' |
        awk -F= '{s += $2} END {print s + 0}'
}

fails=0 handled_total=0 finished=0
printf '%-16s %-7s %-12s %-12s %-14s\n' tester plain ferry forced "ferry handled"
for t in "${testers[@]}"; do
    name=${t##*/}
    dir=$work/$name
    mkdir -p "$dir"
    case $t in
        BLACS/*) cp "$data"/BLACS/*.dat "$dir"/ ;;
        PBLAS/*) cp "$data"/PBLAS/*.dat "$dir"/ ;;
        *) cp "$data"/*.dat "$dir"/ ;;
    esac
    for mode in plain ferry forced; do
        # Unbuffered Fortran output: the BLACS testers end in MPI_Abort, which would otherwise
        # drop whatever rank 0 had not flushed, differently from run to run.
        env=(-x GFORTRAN_UNBUFFERED_ALL=1)
        case $mode in
            ferry) env+=(-x LD_PRELOAD="$lib" -x FERRY_LOG=info) ;;
            forced) env+=(-x LD_PRELOAD="$lib" -x FERRY_LOG=info -x FERRY_LIBRARY_BLOCK_BYTES=1048576) ;;
        esac
        (cd "$dir" && timeout 300 mpirun --oversubscribe -np 4 "${env[@]}" "$root/$t" >"$mode.log" 2>&1)
        echo $? >"$dir/$mode.rc"
        verdict "$dir/$mode.log" "$t" >"$dir/$mode.verdict"
    done
    row=()
    for mode in plain ferry forced; do
        rc=$(cat "$dir/$mode.rc")
        if [ "$mode" = plain ]; then
            row+=("rc=$rc")
        # The BLACS testers' exit status is their own MPI_Abort test's, whichever rank's kill
        # lands first; the others must exit as plain did.
        elif cmp -s "$dir/plain.verdict" "$dir/$mode.verdict" &&
            { [[ $t == BLACS/* ]] || [ "$rc" = "$(cat "$dir/plain.rc")" ]; }; then
            row+=(same)
        else
            row+=(DIFFERS)
            fails=$((fails + 1))
            echo "--- $name, $mode: verdict differs from plain (rc $rc):" >&2
            diff "$dir/plain.verdict" "$dir/$mode.verdict" >&2
            tail -n 20 "$dir/$mode.log" >&2
        fi
    done
    h=$(handled "$dir/forced.log")
    if grep -q 'ferry interposer summary' "$dir/forced.log"; then
        finished=$((finished + 1))
        handled_total=$((handled_total + h))
    else
        h="- (no summary)"
    fi
    printf '%-16s %-7s %-12s %-12s %-14s\n' "$name" "${row[@]}" "$h"
done
echo "third-party-mpi: ${#testers[@]} testers, $fails interposed runs whose verdict differs from Open MPI alone; ferry handled $handled_total operations in forced mode over the $finished testers that report"
if [ "$finished" -gt 0 ] && [ "$handled_total" -eq 0 ]; then
    echo "third-party-mpi: FAIL: ferry handled nothing in forced mode" >&2
    fails=$((fails + 1))
fi
[ "$fails" -eq 0 ]
