#!/usr/bin/env bash
# Stages only what the gather work needs for the GPU machine (which has no Rust toolchain):
# ferry-bench, ferry-zerocopy's test binaries and its shared_table example, built in release
# with $CARGO_TARGET_DIR (default target/), under .device/ (git-ignored); the device tool
# carries .device/ and scripts/device/gather.sh runs there.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-target}
rm -rf .device && mkdir -p .device/bin .device/tests
cargo build --release -p ferry-bench
cargo build --release -p ferry-zerocopy --examples
cp "$target/release/ferry-bench" "$target/release/examples/shared_table" .device/bin/
cargo test --release -p ferry-zerocopy --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, shutil, sys, os
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] not in (["bin"], ["example"]):
        name = m["target"]["name"].replace("-", "_")
        if m["target"]["kind"] == ["lib"]:
            name += "_unit"
        shutil.copy(m["executable"], os.path.join(".device/tests", name))
        print("staged test", name)
'
strip --strip-debug .device/bin/* .device/tests/* 2>/dev/null || true
du -sh .device
# The run itself, carried with the binaries: scripts/device/stage-gather.sh writes it so the
# device command stays one line. Usage there: bash .device/run-gather.sh PHASE (tests | 4 | 32).
cat > .device/run-gather.sh <<'RUN'
set -uo pipefail
out=${OUT:-device-out}; mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
b=.device/bin; status=0
case "$1" in
tests)
    nvidia-smi --query-gpu=name,driver_version,pci.bus_id --format=csv,noheader
    nproc; free -g | head -2; echo "numa nodes: $(cat /sys/devices/system/node/online)"; ulimit -l
    for t in .device/tests/*; do
        log="$out/test-$(basename "$t").log"
        timeout 300 "$t" --test-threads=1 --nocapture >"$log" 2>&1 || { status=1; tail -n 30 "$log"; }
        echo "-- $t"; grep -E "^test |skipped|placement|GPU\(s\)|test result" "$log"
    done
    np=$(nvidia-smi -L | wc -l); [ "$np" -lt 2 ] && np=2
    echo "-- shared_table, $np ranks"
    timeout 120 mpirun --oversubscribe --bind-to none -np "$np" $b/shared_table || status=1
    ;;
*)
    gib=$1; shift
    timeout 280 python3 bench/gather_torch.py --table-gib "$gib" --dist uniform,powerlaw --reps 5 --naive-reps 2 "$@" --json "$out/torch-$gib.jsonl" || status=1
    timeout 300 $b/ferry-bench gather --table-gib "$gib" --dist uniform,powerlaw --reps 5 --torch-json "$out/torch-$gib.jsonl" "$@" ${GATHER_EXTRA:-} --json "$out/gather-$gib.jsonl" || status=1
    ;;
esac
echo "status $status"; exit $status
RUN
