#!/usr/bin/env bash
# ferry's all-reduce beside Open MPI's on the network test bed, in one script: brings up its own
# bed (4 hosts, fast 2 Gbit and slow 200 Mbit tbf rails), and at 2 and 4 ranks (one per host)
# runs, alternating, LAUNCHES times each:
#   ferry            ferry-bench allreduce (ferry-collectives over TcpComm on both rails, weights
#                    from the bed's rates, re-weighted from telemetry), FERRY_ARGS added;
#   openmpi_default  bench/c/allreduce_mpi.c, Open MPI's default TCP settings over both rails;
#   openmpi_tuned    the same with btl_tcp_bandwidth_<if> (and latency) per rail, Open MPI's
#                    best for heterogeneous rails (as scripts/bench-allreduce-openmpi.sh).
# Every program checks its results (int32 sum, element by element) before it reports.
# Then, at 2 ranks, a stream of STREAM_OPS all-reduces of 16 MiB during which the script re-shapes
# rails (testbed.sh rate; THROTTLES, by default host 0's fast rail to THROTTLE_RATE after
# THROTTLE_AFTER seconds), recording per-operation times and weights.
# Output (bench/results/allreduce-testbed-<date>.jsonl or $1): every raw record (with the launch
# number and the 1-minute load average around it), then one summary record per method, rank count
# and size ("summary": true; median time over launches, the minimum too); ferry's summaries carry
# vs_openmpi_tuned / vs_openmpi_default (Open MPI median time / ferry median time) and the same
# from minima (_min); then a "stream" summary with ops_to_recover. A PNG beside it (busbw).
# Usage: scripts/bench-allreduce.sh [OUT.jsonl]
# Environment: RANKS ("2 4"; empty for the stream alone), LAUNCHES (3), MAX_BYTES (256M), TARGET_SECONDS (0.3),
# MAX_SECONDS (per sweep, 150), STREAM_OPS (60, 0 to skip), THROTTLE_AFTER (3), THROTTLE_RATE
# (500mbit), THROTTLES (SECONDS:HOST:RAIL:RATE events during the stream, replacing the one
# above, e.g. "3:0:fast:500mbit 9:0:fast:2gbit 15:1:slow:50mbit"), FERRY_ARGS and FERRY_STREAM_ARGS (both "--links 3 --chunk-bytes 1MiB
# --reprobe-min-bytes 8MiB"), CARGO_TARGET_DIR (target), FAST_RATE and SLOW_RATE (the rails'
# tbf rates, 2gbit and 200mbit, in mbit or gbit; Open MPI's tuned weights follow them; at 4
# ranks keep 4 x (FAST + SLOW) under about 3 Gbit/s on a 2-core machine, e.g. 600mbit/60mbit).
# The machine is shared (2 cores): records carry the load average; repeat runs and compare.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in mpicc mpirun python3 cargo; do
    command -v "$tool" >/dev/null || { echo "bench-allreduce: $tool is missing (scripts/setup.sh)" >&2; exit 2; }
done
date_=$(date -u +%F)
out=${1:-bench/results/allreduce-testbed-$date_.jsonl}
ranks=${RANKS-2 4}
launches=${LAUNCHES:-3}
max_bytes=${MAX_BYTES:-256M}
target=${TARGET_SECONDS:-0.3}
budget=${MAX_SECONDS:-150}
stream_ops=${STREAM_OPS:-60}
throttle_after=${THROTTLE_AFTER:-3}
throttle_rate=${THROTTLE_RATE:-500mbit}
read -r -a ferry_args <<<"${FERRY_ARGS:---links 3 --chunk-bytes 1MiB --reprobe-min-bytes 8MiB}"
read -r -a stream_args <<<"${FERRY_STREAM_ARGS:---links 3 --chunk-bytes 1MiB --reprobe-min-bytes 8MiB}"
fast=${FAST_RATE:-2gbit} slow=${SLOW_RATE:-200mbit}
# A tc rate in Mbit/s (for Open MPI's btl_tcp_bandwidth_*).
mbit() {
    case ${1,,} in
        *gbit) echo $((${1%[gG]bit} * 1000)) ;;
        *mbit) echo "${1%[mM]bit}" ;;
        *) echo "bench-allreduce: rate $1 is not in mbit or gbit" >&2; exit 2 ;;
    esac
}
fast_mbit=$(mbit "$fast") slow_mbit=$(mbit "$slow")
export FERRY_TESTBED_PREFIX=${FERRY_TESTBED_PREFIX:-ferry-arb}
export FERRY_TESTBED_DIR=/tmp/${FERRY_TESTBED_PREFIX}-testbed
export FERRY_TESTBED_TIMEOUT=$((budget + 120))

up=$(bash scripts/testbed.sh up 4 --fast "$fast" --slow "$slow")
echo "$up"
if [[ $up == skip:* ]]; then exit 0; fi
trap 'bash scripts/testbed.sh down >/dev/null' EXIT

target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p ferry-bench
bench="$(cd "$target_dir" && pwd)/release/ferry-bench"
mkdir -p target/c "$(dirname "$out")"
ompi=target/c/allreduce_mpi
mpicc -O2 -Wall -Wextra -o "$ompi" bench/c/allreduce_mpi.c
tuned=(--mca btl_tcp_bandwidth_fast "$fast_mbit" --mca btl_tcp_bandwidth_slow "$slow_mbit"
    --mca btl_tcp_latency_fast 10 --mca btl_tcp_latency_slow 100)

raw=$(mktemp -d)
load() { cut -d' ' -f1 /proc/loadavg; }
# Runs one method once; appends its records, tagged, to $raw/all.jsonl.
run_one() { # method, ranks, launch
    local method=$1 np=$2 launch=$3 l0 f=$raw/one.jsonl
    l0=$(load)
    : >"$f"
    case $method in
        ferry)
            bash scripts/testbed-mpirun.sh -np "$np" "$bench" allreduce --max-bytes "$max_bytes" \
                --target-seconds "$target" --max-seconds "$budget" --label ferry "${ferry_args[@]}" \
                --json "$f" >"$raw/log" 2>&1 || { cat "$raw/log" >&2; return 1; } ;;
        openmpi_default | openmpi_tuned)
            local extra=()
            [ "$method" = openmpi_tuned ] && extra=("${tuned[@]}")
            bash scripts/testbed-mpirun.sh -np "$np" "${extra[@]}" "$ompi" --max-bytes "$max_bytes" \
                --target-seconds "$target" --max-seconds "$budget" --label "$method" \
                >"$raw/log" 2>&1 || { cat "$raw/log" >&2; return 1; }
            grep '^{' "$raw/log" >"$f" || true ;;
    esac
    python3 - "$f" "$method" "$launch" "$l0" "$(load)" "${extra[*]:-}" >>"$raw/all.jsonl" <<'PY'
import json, sys
f, method, launch, l0, l1, args = sys.argv[1:]
n = 0
for line in open(f):
    r = json.loads(line)
    assert r.get("errors", 0) == 0, f"{method}: wrong results at {r['bytes']} bytes"
    r.update(method=method, launch=int(launch), loadavg_start=float(l0), loadavg_end=float(l1))
    if method != "ferry":
        r["mpirun_args"] = args
    print(json.dumps(r))
    n += 1
assert n > 0, f"{method} printed no records"
PY
    echo "bench-allreduce: $np ranks, $method, launch $launch: $(wc -l <"$f") sizes (load $l0 -> $(load))"
}

: >"$raw/all.jsonl"
for np in $ranks; do
    for ((k = 1; k <= launches; k++)); do
        for method in ferry openmpi_tuned openmpi_default; do
            run_one "$method" "$np" "$k"
        done
    done
done

# The throttled stream: 2 ranks, rails re-shaped mid-stream by THROTTLES, a list of
# SECONDS:HOST:RAIL:RATE events (default: host 0's fast rail drops to THROTTLE_RATE after
# THROTTLE_AFTER seconds); every rail is set back to the bed's rate at the end.
if [ "$stream_ops" -gt 0 ]; then
    l0=$(load)
    read -r -a events <<<"${THROTTLES:-$throttle_after:0:fast:$throttle_rate}"
    (
        t0=0
        for ev in "${events[@]}"; do
            IFS=: read -r at host rail rate <<<"$ev"
            sleep "$(python3 -c "print(max(0.0, $at - $t0))")"
            t0=$at
            bash scripts/testbed.sh rate "$host" "$rail" "$rate" >/dev/null
        done
    ) &
    thr=$!
    bash scripts/testbed-mpirun.sh -np 2 "$bench" allreduce --stream "$stream_ops" --size 16MiB \
        --label ferry_stream "${stream_args[@]}" --json "$raw/stream.jsonl" >"$raw/log" 2>&1 ||
        { cat "$raw/log" >&2; exit 1; }
    wait "$thr"
    for h in 0 1; do
        bash scripts/testbed.sh rate "$h" fast "$fast" >/dev/null
        bash scripts/testbed.sh rate "$h" slow "$slow" >/dev/null
    done
    python3 - "$raw/stream.jsonl" "$l0" "$(load)" "${events[*]}" >>"$raw/all.jsonl" <<'PY'
import json, sys
f, l0, l1, events = sys.argv[1:]
throttles = [dict(zip(("after_s", "host", "rail", "rate"), e.split(":"))) for e in events.split()]
for line in open(f):
    r = json.loads(line)
    r.update(method="ferry_stream", loadavg_start=float(l0), loadavg_stream_end=float(l1),
             throttles=throttles)
    print(json.dumps(r))
PY
    grep -c '"ferry_stream"' "$raw/all.jsonl" | sed 's/^/bench-allreduce: stream operations recorded: /'
fi

python3 - "$raw/all.jsonl" "$out" <<'PY'
import json, statistics, sys
src, out = sys.argv[1:]
recs = [json.loads(l) for l in open(src)]
machine = next((r["machine"] for r in recs if r.get("method") == "ferry" and "machine" in r), None)
with open(out, "w") as o:
    for r in recs:
        if machine and "machine" not in r:
            r["machine"] = machine
        o.write(json.dumps(r) + "\n")
    summ = {}
    for r in recs:
        if r["method"] in ("ferry", "openmpi_tuned", "openmpi_default"):
            summ.setdefault((r["method"], r["ranks"], r["bytes"]), []).append(r)
    med = lambda rs: statistics.median(x["time_us"] for x in rs)
    lo = lambda rs: min(x["time_us"] for x in rs)
    rows = []
    for (m, p, b), rs in sorted(summ.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        t = med(rs)
        alg = b * 8 / (t * 1e3)
        fac = 2 * (p - 1) / p
        s = {"bench": "allreduce", "summary": True, "method": m, "ranks": p, "bytes": b,
             "launches": len(rs), "time_us": t, "time_us_min": lo(rs),
             "time_us_each": [x["time_us"] for x in rs], "algbw_gbps": alg, "busbw_gbps": alg * fac,
             "loadavg": [x.get("loadavg_start") for x in rs], "machine": machine}
        if m == "ferry":
            s["bound_rates"] = rs[0].get("bound_rates")
            bt = rs[0].get("bound_time_us")
            s["bound_time_us"] = bt
            s["fraction_of_bound"] = bt / t if bt else None
            s["fraction_of_bound_best"] = bt / lo(rs) if bt else None
            # Against what the rates carry as TCP payload (ferry-bench's PAYLOAD_SHARE).
            s["fraction_of_payload_bound"] = bt / t / (1448 / 1514) if bt else None
            for c in ("openmpi_tuned", "openmpi_default"):
                other = summ.get((c, p, b))
                s["vs_" + c.replace("openmpi_", "openmpi_")] = med(other) / t if other else None
                s["vs_" + c + "_min"] = lo(other) / lo(rs) if other else None
        rows.append(s)
        o.write(json.dumps(s) + "\n")
    stream = [r for r in recs if r["method"] == "ferry_stream"]
    if stream:
        stream.sort(key=lambda r: r["index"])
        total = lambda r: r["bound_rates"]["total_gbit"]
        # Every operation whose bound differs from the one before starts a new phase.
        changes = [r["index"] for k, r in enumerate(stream) if k > 0 and total(r) != total(stream[k - 1])]
        starts = [stream[0]["index"]] + changes
        ends = changes + [stream[-1]["index"] + 1]
        phases = []
        for a, b in zip(starts, ends):
            ph = [r for r in stream if a <= r["index"] < b]
            rec_at = next((r["index"] for r in ph if r["fraction_of_bound"] >= 0.9), None)
            late = [r["fraction_of_bound"] for r in ph if r["index"] >= a + 10]
            phases.append({"first_op": a, "ops": len(ph), "bound_gbit": total(ph[0]),
                           "first_op_at_90pct": rec_at,
                           "ops_to_recover": (rec_at - a + 1) if rec_at is not None else None,
                           "median_fraction": statistics.median(r["fraction_of_bound"] for r in ph),
                           "median_fraction_from_10_ops": statistics.median(late) if late else None,
                           "weights_first": ph[0]["rail_weights"], "weights_last": ph[-1]["rail_weights"]})
        s = {"bench": "allreduce", "summary": True, "method": "ferry_stream", "ranks": 2,
             "bytes": stream[0]["bytes"], "ops": len(stream), "throttles": stream[0].get("throttles"),
             "phases": phases, "machine": machine}
        # The first change, in the fields earlier summaries had.
        if len(phases) > 1:
            s.update(change_op=phases[1]["first_op"], bound_before_gbit=phases[0]["bound_gbit"],
                     bound_after_gbit=phases[1]["bound_gbit"],
                     first_op_at_90pct_after_change=phases[1]["first_op_at_90pct"],
                     ops_to_recover=phases[1]["ops_to_recover"])
        o.write(json.dumps(s) + "\n")
        print("\nthrottled stream: phases (first op, bound Gbit/s, ops until one at >= 90% of the bound, median fraction):")
        for ph in phases:
            print(f"  op {ph['first_op']:>3}: bound {ph['bound_gbit']:.3f}, {ph['ops']} ops, recovered after "
                  f"{ph['ops_to_recover']} ops, median {ph['median_fraction']:.2f} "
                  f"(from 10 ops in: {ph['median_fraction_from_10_ops']}), weights {ph['weights_first']} -> {ph['weights_last']}")
for p in sorted({r["ranks"] for r in rows}):
    print(f"\n{p} ranks: busbw Gbit/s (median time us over launches); ferry: fraction of bound, x Open MPI")
    print("%10s %22s %22s %22s %8s %8s %8s %8s" % ("bytes", "ferry", "openmpi_tuned", "openmpi_default", "bound", "payload", "xtuned", "xdefault"))
    for b in sorted({r["bytes"] for r in rows if r["ranks"] == p}):
        row = {r["method"]: r for r in rows if r["ranks"] == p and r["bytes"] == b}
        cell = lambda m: "%.3f (%.0f)" % (row[m]["busbw_gbps"], row[m]["time_us"]) if m in row else "-"
        f = row.get("ferry", {})
        num = lambda k: "%.2f" % f[k] if f.get(k) is not None else "-"
        print("%10d %22s %22s %22s %8s %8s %8s %8s" % (b, cell("ferry"), cell("openmpi_tuned"), cell("openmpi_default"),
              num("fraction_of_bound"), num("fraction_of_payload_bound"), num("vs_openmpi_tuned"), num("vs_openmpi_default")))
PY
rm -rf "$raw"
"$bench" plot-allreduce "$out" "${out%.jsonl}.png" || echo "bench-allreduce: no plot (font missing?)"
echo "bench-allreduce: wrote $out"
