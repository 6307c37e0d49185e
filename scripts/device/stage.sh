#!/usr/bin/env bash
# Builds release binaries here and stages them under .device/ (git-ignored) for a run on the
# GPU machine, which has no Rust toolchain: the device tool carries .device/ and runs
# scripts/device/run.sh there. Test binaries are staged as .device/tests/<name>.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .device && mkdir -p .device/bin .device/tests
cargo build --release --workspace --bins
cargo build --release -p ferry-mpi
cp target/release/ferry-bench target/release/ferry-comm-conformance target/release/ring \
    target/release/ferry-datatype-check target/release/libferry_mpi.so .device/bin/
mpicc -O2 -o .device/bin/halo3d examples/halo3d.c
mpicc -O2 -o .device/bin/ddt_exchange comm/interpose/tests/c/ddt_exchange.c
[ -f target/release/gpu_info ] && cp target/release/gpu_info .device/bin/
# `cargo test --no-run` prints each test executable; keep the ferry-gpu ones.
cargo test --release -p ferry-gpu --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, shutil, sys, os
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        name = m["target"]["name"]
        shutil.copy(m["executable"], os.path.join(".device/tests", name))
        print("staged test", name)
'
strip --strip-debug .device/bin/* .device/tests/* 2>/dev/null || true
du -sh .device
