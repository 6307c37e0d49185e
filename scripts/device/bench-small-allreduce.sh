#!/bin/bash
# Small all-reduce latency over loopback TCP on the GPU machine (it has no iproute2, so no
# namespace test bed): ferry-bench allreduce over TcpComm (busy-poll 1 ms and 50 us) vs Open
# MPI's TCP BTL (pml ob1, btl tcp,self, lo), 2 ranks bound to cores, 3 alternating rounds.
# Stage: ferry-bench (release, stripped) and bench/c/allreduce_mpi.c built with mpicc under
# .device-lead/bin (or set B and C); writes allreduce-loopback-latency.jsonl and lat2.log.
set -u
final=${OUT:-/tmp/lat2}; out=$(mktemp -d); mkdir -p "$final"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
B=${B:-$PWD/.device-lead/bin/ferry-bench}
C=${C:-$PWD/.device-lead/bin/allreduce_mpi}
MAXB=${MAXB:-65536}
{
echo "== machine"; lscpu | grep -E 'Model name|^CPU\(s\)'; uname -r; mpirun --version | head -1; date -u
for round in 1 2 3; do
  for bp in 1000 50; do
    mpirun -np 2 --bind-to core --map-by core -x FERRY_TCP_BUSY_POLL_US=$bp $B allreduce --rails 127.0.0.1,127.0.0.2 --max-bytes $MAXB --target-seconds 0.5 --links 3 --label bp$bp --json $out/ferry-bp$bp-r$round.jsonl >$out/ferry-bp$bp-r$round.log 2>&1 || { echo "ferry bp$bp failed"; tail -5 $out/ferry-bp$bp-r$round.log; }
  done
  mpirun -np 2 --bind-to core --map-by core --mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo $C --max-bytes $MAXB --target-seconds 0.5 --label openmpi_tcp > $out/ompi-r$round.log 2>&1
  grep '^{' $out/ompi-r$round.log > $out/ompi-r$round.jsonl
done
python3 - "$out" <<'PY'
import json, sys, glob, statistics, collections
out = sys.argv[1]
t = collections.defaultdict(list)
for f in glob.glob(out + "/*.jsonl"):
    m = f.split("/")[-1].split("-r")[0]
    for l in open(f):
        r = json.loads(l)
        t[(m, r["bytes"])].append((r["time_us"], r.get("median_op_us")))
sizes = sorted({b for _, b in t})
print("median over rounds of each round's mean (and of rank 0's median operation), us")
print("%8s %22s %22s %10s %8s %8s" % ("bytes", "ferry bp1000 mean/med", "ferry bp50 mean/med", "ompi mean", "x1000", "x50"))
for b in sizes:
    f1 = t[("ferry-bp1000", b)]; f5 = t[("ferry-bp50", b)]; o = t[("ompi", b)]
    m = lambda xs, k: statistics.median(x[k] for x in xs) if xs and xs[0][k] is not None else float("nan")
    print("%8d %12.1f / %7.1f %12.1f / %7.1f %10.1f %8.2f %8.2f" % (b, m(f1,0), m(f1,1), m(f5,0), m(f5,1), m(o,0), m(o,0)/m(f1,0), m(o,0)/m(f5,0)))
PY
python3 - "$out" > "$final/allreduce-loopback-latency.jsonl" <<'PY'
import json, sys, glob
out = sys.argv[1]
for f in sorted(glob.glob(out + "/*.jsonl")):
    name = f.split("/")[-1][:-6]
    for l in open(f):
        r = json.loads(l)
        r["run"] = name
        print(json.dumps(r))
PY
} 2>&1 | tee $final/lat2.log
