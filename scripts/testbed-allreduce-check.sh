#!/usr/bin/env bash
# CI check of `ferry-bench allreduce` over TcpComm on the network test bed (root, 2 cores; well
# under a minute once built): brings up a bed of 2 hosts under its own prefix, and checks that
# the all-reduce (4 B to 1 MiB), all-gather and reduce-scatter run over both rails with every
# result checked by the program, that a short stream records every operation with its weights,
# and that bad input is refused with an error instead of a hang; then brings the bed down.
# Where namespaces cannot be made (not root, no `ip netns`), prints "skip: <reason>" and exits 0.
# Environment: CARGO_TARGET_DIR (target), PROFILE (release; "dev" for the debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
export FERRY_TESTBED_PREFIX=ferry-arc$$
export FERRY_TESTBED_DIR=/tmp/${FERRY_TESTBED_PREFIX}-testbed
export FERRY_TESTBED_TIMEOUT=60
prefix=$FERRY_TESTBED_PREFIX
profile=${PROFILE:-release}
for tool in mpirun python3 cargo; do
    command -v "$tool" >/dev/null || { echo "testbed-allreduce-check: $tool is missing" >&2; exit 2; }
done

up=$(bash scripts/testbed.sh up 2)
if [[ $up == skip:* ]]; then echo "$up"; exit 0; fi
echo "$up"
down() {
    bash scripts/testbed.sh down >/dev/null 2>&1 || true
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -q "^$prefix-"; then
        echo "testbed-allreduce-check: FAIL namespaces left behind"
        exit 1
    fi
}
trap down EXIT

cargo build -q --profile "$profile" -p ferry-bench
dir=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
bench="$(cd "$dir" && pwd)/ferry-bench"
out=$(mktemp -d)
failed=0
ok() { echo "testbed-allreduce-check: ok   $*"; }
bad() { echo "testbed-allreduce-check: FAIL $*"; failed=$((failed + 1)); }
start=$(date +%s)

# Runs ferry-bench allreduce on both hosts; $1 names the JSON file, the rest are its options.
ar() {
    local json=$out/$1; shift
    bash scripts/testbed-mpirun.sh -np 2 "$bench" allreduce --target-seconds 0.01 --max-iters 5 \
        --max-seconds 30 --json "$json" "$@" >"$json.log" 2>&1
}
# Checks a JSON file: N records, each with the fields the issue asks for, rails on both NICs.
records_ok() { # file, count, mode
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
f, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
recs = [json.loads(l) for l in open(f)]
assert len(recs) == n, f"{len(recs)} records, want {n}"
for r in recs:
    assert r["errors"] == 0 and r["ranks"] == 2 and r["mode"] == mode, r
    for k in ("bytes", "time_us", "algbw_gbps", "busbw_gbps", "fraction_of_bound", "bound_rates", "machine"):
        assert r.get(k) is not None, (k, r)
    assert r["bound_rates"]["total_gbit"] == 2.2, r["bound_rates"]
    assert sorted(r["rails"]) == ["10.201.1.1", "10.201.2.1"], r["rails"]
    assert abs(sum(r["rail_weights"]) - 1) < 1e-9
PY
}

if ar sweep.jsonl --max-bytes 1MiB && records_ok "$out/sweep.jsonl" 19 sweep; then
    ok "all-reduce 4 B to 1 MiB over both rails: 19 sizes, every result checked"
else bad "all-reduce sweep"; cat "$out/sweep.jsonl.log"; fi
if ar ag.jsonl --op allgather --min-bytes 8 --max-bytes 64KiB && records_ok "$out/ag.jsonl" 14 sweep; then
    ok "all-gather 8 B to 64 KiB: 14 sizes checked"
else bad "all-gather sweep"; cat "$out/ag.jsonl.log"; fi
if ar rs.jsonl --op reduce-scatter --min-bytes 8 --max-bytes 64KiB && records_ok "$out/rs.jsonl" 14 sweep; then
    ok "reduce-scatter 8 B to 64 KiB: 14 sizes checked"
else bad "reduce-scatter sweep"; cat "$out/rs.jsonl.log"; fi
if ar stream.jsonl --stream 6 --size 1MiB && records_ok "$out/stream.jsonl" 6 stream; then
    ok "a stream of 6 all-reduces of 1 MiB, each recorded with its weights"
else bad "stream"; cat "$out/stream.jsonl.log"; fi
if ! ar bad.jsonl --op alltoall && grep -q "unknown --op" "$out/bad.jsonl.log"; then
    ok "an unknown collective is refused with an error"
else bad "bad --op was not refused"; fi
if ! ar bad2.jsonl --topology /nonexistent.toml && grep -q "no bed description" "$out/bad2.jsonl.log"; then
    ok "a missing bed description is an error, not a hang"
else bad "missing topology was not refused"; fi
rm -rf "$out"
echo "testbed-allreduce-check: $(($(date +%s) - start)) s, $failed failed"
[ "$failed" -eq 0 ]
