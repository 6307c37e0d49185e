#!/usr/bin/env bash
# Smoke test of ferry's network test bed, for CI (root, 2 cores, no GPU; well under 2 minutes):
# brings up a bed of 2 hosts under its own prefix, checks its description, checks that
# testbed-mpirun.sh really puts each rank in its own host namespace, runs the Open MPI all-reduce
# benchmark at small sizes (results checked by the program), probes both rails briefly, changes a
# rail's rate and takes a rail down and up, then brings the bed down and checks nothing is left.
# Where namespaces cannot be made (not root, no `ip netns`), prints "skip: <reason>" and exits 0.
# Exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export FERRY_TESTBED_PREFIX=ferry-chk$$
export FERRY_TESTBED_DIR=/tmp/${FERRY_TESTBED_PREFIX}-testbed
export FERRY_TESTBED_TIMEOUT=90
prefix=$FERRY_TESTBED_PREFIX
for tool in mpicc mpirun python3; do
    if ! command -v "$tool" >/dev/null; then
        apt-get update -qq && apt-get install -y -qq libopenmpi-dev openmpi-bin python3 iproute2 >/dev/null
        break
    fi
done

failed=0
ok() { echo "testbed-check: ok   $*"; }
bad() { echo "testbed-check: FAIL $*"; failed=$((failed + 1)); }
check() { # description, command...
    local what=$1; shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

up=$(bash scripts/testbed.sh up 2)
if [[ $up == skip:* ]]; then echo "$up"; exit 0; fi
echo "$up"
down() {
    bash scripts/testbed.sh down >/dev/null 2>&1 || true
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -q "^$prefix-"; then
        echo "testbed-check: FAIL namespaces left behind: $(ip netns list | grep "^$prefix-" | tr '\n' ' ')"
        exit 1
    fi
}
trap down EXIT
start=$(date +%s)
toml=$FERRY_TESTBED_DIR/testbed.toml

# 1. The description lists both hosts, each with a 2 Gbit and a 0.2 Gbit rail.
toml_ok() {
    python3 - "$toml" "$prefix" <<'PY'
import sys, tomllib
t = tomllib.load(open(sys.argv[1], "rb"))
names = [h["name"] for h in t["hosts"]]
assert names == [f"{sys.argv[2]}-h0", f"{sys.argv[2]}-h1"], names
for i, h in enumerate(t["hosts"]):
    rails = {r["name"]: r for r in h["rails"]}
    assert rails["fast"]["bandwidth_gbps"] == 2.0 and rails["slow"]["bandwidth_gbps"] == 0.2, rails
    assert rails["fast"]["address"] == f"10.201.1.{i + 1}" and rails["slow"]["address"] == f"10.201.2.{i + 1}"
    assert all(r["class"] == "ethernet" and r["up"] for r in h["rails"])
# The same bed as a ferry-collectives Topology (only the fields Topology::from_toml accepts).
topo = tomllib.load(open(sys.argv[1].replace("testbed.toml", "topology.toml"), "rb"))
assert [n["name"] for n in topo["node"]] == names
for n in topo["node"]:
    assert set(n) == {"name", "nic"}, n
    nics = {x["name"]: x for x in n["nic"]}
    assert nics["fast"]["gbit"] == 2.0 and nics["slow"]["gbit"] == 0.2 and nics["mgmt"]["role"] == "management"
    assert all(set(x) <= {"name", "class", "gbit", "address", "role"} for x in n["nic"])
PY
}
if python3 -c 'import tomllib' 2>/dev/null; then
    check "testbed.toml and topology.toml describe 2 hosts with their rails, addresses and rates" toml_ok
else
    check "testbed.toml names both hosts and both rates" \
        bash -c "grep -c '^name = \"$prefix-h' '$toml' | grep -qx 2 && grep -q 'bandwidth_gbps = 2.0' '$toml' && grep -q 'bandwidth_gbps = 0.2' '$toml'"
fi

# 2. Ranks run inside their namespaces: own host name, own rail addresses, none of the machine's
#    interfaces.
out=$(bash scripts/testbed-mpirun.sh -np 2 sh -c \
    'echo "rank=$OMPI_COMM_WORLD_RANK host=$(hostname) fast=$(ip -br -4 addr show dev fast | awk "{print \$3}") links=$(ip -br link | awk "{sub(/@.*/, \"\", \$1); print \$1}" | sort | tr "\n" ,)"' 2>&1) || true
echo "$out" | grep '^rank=' | sort
ranks_ok() {
    local r0 r1
    r0=$(echo "$out" | grep '^rank=0 ') && r1=$(echo "$out" | grep '^rank=1 ') || return 1
    [[ $r0 == *"host=$prefix-h0 fast=10.201.1.1/24 links=fast,lo,mgmt,slow,"* ]] &&
        [[ $r1 == *"host=$prefix-h1 fast=10.201.1.2/24 links=fast,lo,mgmt,slow,"* ]] &&
        [ "$(hostname)" != "$prefix-h0" ]
}
check "testbed-mpirun.sh runs rank 0 in $prefix-h0 and rank 1 in $prefix-h1" ranks_ok

# 3. Open MPI's all-reduce over the rails, 4 B to 1 MiB, every result checked by the program.
mkdir -p target/c
mpicc -O2 -Wall -o target/c/allreduce_mpi bench/c/allreduce_mpi.c
ar=$(bash scripts/testbed-mpirun.sh -np 2 target/c/allreduce_mpi --max-bytes 1M \
    --target-seconds 0.05 --max-iters 50 --max-seconds 40 --label check 2>&1) && ar_rc=0 || ar_rc=$?
echo "$ar" | grep '"bytes": 1048576' || true
check "MPI_Allreduce on 2 ranks over both rails: 19 sizes, no wrong element" \
    bash -c "[ $ar_rc -eq 0 ] && [ \$(grep -c '\"errors\": 0}' <<<'$ar') -eq 19 ]"

# 4. The shaping is real: each rail carries traffic, and no more than its tbf rate allows.
probe_ok() { # rail, lowest, highest Gbit/s
    local r g
    r=$(bash scripts/testbed.sh probe 0 1 "$1" 1) || return 1
    echo "$r"
    g=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["gbps"])' "$r")
    awk -v g="$g" -v lo="$2" -v hi="$3" 'BEGIN { exit !(g >= lo && g <= hi) }'
}
check "the fast rail carries 0.2 to 2.1 Gbit/s (tbf 2gbit)" probe_ok fast 0.2 2.1
check "the slow rail carries 0.02 to 0.21 Gbit/s (tbf 200mbit)" probe_ok slow 0.02 0.21

# 5. Run-time changes reach both ends and the description.
bash scripts/testbed.sh rate 1 slow 100mbit >/dev/null
check "rate: h1's slow rail is 100Mbit at both ends and 0.1 in testbed.toml" bash -c \
    "bash scripts/testbed.sh status | grep '^$prefix-h1 .* slow ' | grep -q '100Mbit *100Mbit' &&
     grep -A6 'address = \"10.201.2.2\"' '$toml' | grep -q 'bandwidth_gbps = 0.1'"
bash scripts/testbed.sh link 0 fast down >/dev/null
check "link down: h0's fast rail is DOWN and marked down in testbed.toml" bash -c \
    "ip -n $prefix-h0 -br link show dev fast | grep -q DOWN &&
     grep -A7 'address = \"10.201.1.1\"' '$toml' | grep -q 'up = false'"
bash scripts/testbed.sh link 0 fast up >/dev/null
check "link up: h0's fast rail is back" bash -c \
    "! ip -n $prefix-h0 -br link show dev fast | grep -q DOWN && grep -A7 'address = \"10.201.1.1\"' '$toml' | grep -q 'up = true'"
check "bad input is refused with an error: rate on a host the bed lacks" \
    bash -c "! bash scripts/testbed.sh rate 5 fast 1gbit 2>/dev/null"
check "bad input is refused with an error: a malformed rate" \
    bash -c "! bash scripts/testbed.sh rate 0 fast quick 2>/dev/null"

# 6. Down removes everything (checked again by the exit trap).
bash scripts/testbed.sh down >/dev/null
check "down leaves no namespace of the bed" bash -c "! ip netns list | grep -q '^$prefix-'"
echo "testbed-check: $(($(date +%s) - start)) s, $failed failed"
[ "$failed" -eq 0 ]
