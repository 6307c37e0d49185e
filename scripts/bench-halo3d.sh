#!/usr/bin/env bash
# TEMPI's 26-neighbour halo exchange (examples/halo3d.c: subarray types, radius 3, 8 quantities)
# on host buffers, through plain Open MPI and through libferry_mpi.so, at each rank count.
# Usage: scripts/bench-halo3d.sh [OUT.jsonl] [N] [RANKS...]   (defaults: target/halo3d.jsonl, 64, 2 4 8)
# Each JSON line has both runs' per-phase times and ratio = Open MPI time / ferry time.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/halo3d.jsonl}; n=${2:-64}; shift $(( $# > 2 ? 2 : $# )); ranks=${*:-2 4 8}
lib=${FERRY_LIB:-$PWD/target/release/libferry_mpi.so}
exe=${HALO3D:-target/c/halo3d-release}
if [ ! -x "$exe" ]; then mkdir -p "$(dirname "$exe")"; mpicc -O2 -o "$exe" examples/halo3d.c; fi
[ -f "$lib" ] || { echo "bench-halo3d: $lib not found (cargo build --release -p ferry-mpi)"; exit 1; }
# shellcheck source=scripts/mpi-env.sh
source scripts/mpi-env.sh
# HALO3D_BIND replaces the binding options, e.g. "--bind-to core --map-by core" on a big node.
if [ -n "${HALO3D_BIND:-}" ]; then read -r -a bind <<<"$HALO3D_BIND"; MPIRUN=(mpirun --oversubscribe "${bind[@]}"); fi
: > "$out"
for np in $ranks; do
    plain=$("${MPIRUN[@]}" -np "$np" "$exe" "$n" 3 8 20 | grep '^{')
    ferry=$("${MPIRUN[@]}" -np "$np" -x LD_PRELOAD="$lib" "$exe" "$n" 3 8 20 | grep '^{')
    python3 - "$plain" "$ferry" >>"$out" <<'PY'
import json, sys
p, f = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert p["wrong_cells"] == 0 and f["wrong_cells"] == 0, "a halo exchange delivered wrong cells"
ratio = p["total_ms"] / f["total_ms"]
print(json.dumps({"bench": "halo3d", "ranks": p["ranks"], "n": p["n"], "radius": p["radius"],
    "quantities": p["quantities"], "openmpi": p, "ferry": f, "ratio": ratio}))
phases = lambda r: "post %.3f / send %.3f / wait %.3f" % (r["post_ms"], r["send_ms"], r["wait_ms"])
print("halo3d %d ranks, N=%d: Open MPI %.3f ms (%s), ferry %.3f ms (%s), ratio %.2f"
      % (p["ranks"], p["n"], p["total_ms"], phases(p), f["total_ms"], phases(f), ratio), file=sys.stderr)
PY
done
