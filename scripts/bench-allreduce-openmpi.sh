#!/usr/bin/env bash
# Open MPI's MPI_Allreduce on ferry's network test bed: the baseline that ferry's all-reduce is
# compared with. Brings up its own bed (4 hosts, fast 2 Gbit and slow 200 Mbit rails), compiles
# bench/c/allreduce_mpi.c, and sweeps 4 B to 256 MiB at 2 and 4 ranks (one per host) in these
# Open MPI configurations over both rails:
#   default  Open MPI's default TCP settings (equal weights: veths all report 10 Gbit/s);
#   tuned    bandwidth-weighted striping, --mca btl_tcp_bandwidth_<if> per rail in Mbit/s (Open
#            MPI's best for heterogeneous rails), plus btl_tcp_latency_<if> so that eager
#            (small) messages take the fast rail;
#   tuned_links2  tuned with btl_tcp_links 2 (two TCP connections per rail pair);
#   tuned_ring    tuned with the ring all-reduce forced (coll_tuned_allreduce_algorithm 4).
# Writes one JSON line per size and configuration, each with a `machine` object (CPU, cores,
# kernel, Open MPI version, date, bed rates), to bench/results/allreduce-openmpi-testbed-<date>.jsonl
# (or $1), and prints a summary. Every result is checked by the program before it is reported.
# Usage: scripts/bench-allreduce-openmpi.sh [OUT.jsonl]
# Environment: RANKS ("2 4"), CONFIGS ("default tuned tuned_links2 tuned_ring"), MAX_BYTES (256M),
# TARGET_SECONDS (0.5 of timed operations per size), MAX_SECONDS (per sweep, 300),
# FAST_RATE (2gbit), SLOW_RATE (200mbit), NICE (priority of the job; unset: as the caller's).
# Records carry the 1-minute load average before and after their sweep: on a shared machine,
# small-message latency is mostly scheduling delay when the load is high.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in mpicc mpirun python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "bench-allreduce-openmpi: installing what is missing ($tool)"
        apt-get update -qq && apt-get install -y -qq libopenmpi-dev openmpi-bin python3 iproute2 >/dev/null
        break
    fi
done
date_=$(date -u +%F)
out=${1:-bench/results/allreduce-openmpi-testbed-$date_.jsonl}
ranks=${RANKS:-2 4}
configs=${CONFIGS:-default tuned tuned_links2 tuned_ring}
max_bytes=${MAX_BYTES:-256M}
target=${TARGET_SECONDS:-0.5}
budget=${MAX_SECONDS:-300}
fast=${FAST_RATE:-2gbit}
# NICE (e.g. -5) runs the job at that priority, against other work on a shared machine.
nice=""
if [ -n "${NICE:-}" ]; then [[ $NICE =~ ^-?[0-9]+$ ]] || { echo "NICE must be an integer" >&2; exit 2; }; nice="nice -n $NICE"; fi
slow=${SLOW_RATE:-200mbit}
# A bed of its own, so that a bed someone else is using (or has throttled) is left alone.
export FERRY_TESTBED_PREFIX=${FERRY_TESTBED_PREFIX:-ferry-oa}
export FERRY_TESTBED_DIR=/tmp/${FERRY_TESTBED_PREFIX}-testbed

up=$(bash scripts/testbed.sh up 4 --fast "$fast" --slow "$slow")
echo "$up"
if [[ $up == skip:* ]]; then exit 0; fi
trap 'bash scripts/testbed.sh down >/dev/null' EXIT
bash scripts/testbed.sh status

exe=target/c/allreduce_mpi
mkdir -p target/c "$(dirname "$out")"
mpicc -O2 -Wall -Wextra -o "$exe" bench/c/allreduce_mpi.c

# Rates in Mbit/s for Open MPI's per-interface bandwidth parameters.
mbit() { awk -v r="$1" 'BEGIN { n = r; sub(/[A-Za-z]+$/, "", n); u = tolower(substr(r, length(n) + 1));
    printf "%d\n", n * ((u == "gbit") ? 1000 : (u == "mbit") ? 1 : (u == "kbit") ? 0.001 : 1e-6) }'; }
tuned=(--mca btl_tcp_bandwidth_fast "$(mbit "$fast")" --mca btl_tcp_bandwidth_slow "$(mbit "$slow")"
    --mca btl_tcp_latency_fast 10 --mca btl_tcp_latency_slow 100)
config_args() {
    case $1 in
        default) ;;
        tuned) echo "${tuned[@]}" ;;
        tuned_links2) echo "${tuned[@]} --mca btl_tcp_links 2" ;;
        tuned_ring) echo "${tuned[@]} --mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4" ;;
        *) echo "bench-allreduce-openmpi: unknown configuration '$1'" >&2; return 2 ;;
    esac
}

raw=$(mktemp)
: >"$out"
for np in $ranks; do
    for cfg in $configs; do
        read -r -a extra <<<"$(config_args "$cfg")"
        echo "bench-allreduce-openmpi: $np ranks, $cfg: ${extra[*]:-(no extra arguments)}"
        start=$(date +%s)
        load_start=$(cut -d' ' -f1 /proc/loadavg)
        FERRY_TESTBED_TIMEOUT=$((budget + 120)) $nice bash scripts/testbed-mpirun.sh -np "$np" "${extra[@]}" \
            "$exe" --max-bytes "$max_bytes" --target-seconds "$target" --max-seconds "$budget" \
            --label "$cfg" >"$raw"
        python3 - "$raw" "$cfg" "${extra[*]:-}" "$FERRY_TESTBED_DIR/testbed.toml" "$fast" "$slow" \
            "$(($(date +%s) - start))" "$load_start" "$(cut -d' ' -f1 /proc/loadavg)" "${NICE:-0}" >>"$out" <<'PY'
import json, os, platform, re, subprocess, sys, time
raw, cfg, args, toml, fast, slow, secs, load0, load1, nice = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None)
cores = sum(1 for l in open("/proc/cpuinfo") if l.startswith("processor"))
ompi = re.search(r"v?(\d+\.\d+\.\d+)", subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout)
machine = {"cpu": cpu, "cores": cores, "kernel": platform.release(), "openmpi": ompi.group(1) if ompi else None,
           "date": time.strftime("%Y-%m-%d", time.gmtime()),
           "testbed": {"hosts": 4, "fast_rate": fast, "slow_rate": slow, "burst": "1mb",
                       "description": open(toml).read()}}
n = 0
for line in open(raw):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    assert r["errors"] == 0, f"wrong results at {r['bytes']} bytes"
    r["config"] = cfg
    r["mpirun_args"] = args
    r["sweep_seconds"] = int(secs)
    # The machine is shared: the 1-minute load average around the sweep says how busy it was.
    r["loadavg_start"] = float(load0)
    r["loadavg_end"] = float(load1)
    r["nice"] = int(nice)
    r["machine"] = machine
    print(json.dumps(r))
    n += 1
assert n > 0, "the benchmark printed no records"
PY
        echo "bench-allreduce-openmpi: $np ranks, $cfg done in $(($(date +%s) - start)) s"
    done
done
rm -f "$raw"

python3 - "$out" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
configs = list(dict.fromkeys(r["config"] for r in recs))
for p in sorted({r["ranks"] for r in recs}):
    print(f"\nOpen MPI MPI_Allreduce on the test bed, {p} ranks: busbw in Gbit/s (time per op in us)")
    print("%10s" % "bytes" + "".join("%24s" % c for c in configs))
    for b in sorted({r["bytes"] for r in recs if r["ranks"] == p}):
        row = {r["config"]: r for r in recs if r["ranks"] == p and r["bytes"] == b}
        cells = ["%24s" % ("%.3f (%.0f)" % (row[c]["busbw_gbps"], row[c]["time_us"]) if c in row else "-") for c in configs]
        print("%10d" % b + "".join(cells))
print("\nissue 6 quotes, 2 ranks: 0.199 Gbit/s with default weights, 0.81 with tuned weights")
PY
echo "bench-allreduce-openmpi: wrote $out"
