#!/usr/bin/env bash
# Launches an Open MPI job on ferry's network test bed (scripts/testbed.sh up): mpirun runs in
# the control namespace, its daemons are started in the host namespaces by a plm_rsh_agent that
# runs `ip netns exec` (scripts/testbed/rsh-agent.sh), and the ranks talk TCP over the rails.
#
# Usage: scripts/testbed-mpirun.sh [mpirun args] PROGRAM [ARGS...]
#   e.g. scripts/testbed-mpirun.sh -np 4 ./a.out
# Defaults, each added only when the caller's arguments do not set it:
#   --hostfile <bed hostfile> (PREFIX-h0 .. PREFIX-h<N-1>, one slot each) --map-by node
#   --oversubscribe --bind-to none
#   --mca plm_rsh_agent scripts/testbed/rsh-agent.sh  --mca plm_rsh_no_tree_spawn 1
#   --mca routed direct  --mca oob_tcp_if_include mgmt  --mca pml ob1  --mca btl tcp,self
#   --mca btl_tcp_if_include $FERRY_TESTBED_RAILS (default fast,slow)
# Environment: FERRY_TESTBED_PREFIX, FERRY_TESTBED_DIR (as for testbed.sh),
# FERRY_TESTBED_TIMEOUT (seconds before the job is killed, default 600).
# Every process the job leaves in the bed's namespaces is ended on exit (they carry a per-run
# marker in their environment, so nothing else is touched). Where namespaces cannot be made,
# prints "skip: <reason>" and exits 0.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export FERRY_TESTBED_PREFIX=${FERRY_TESTBED_PREFIX:-ferry}
prefix=$FERRY_TESTBED_PREFIX
dir=${FERRY_TESTBED_DIR:-/tmp/${prefix}-testbed}
limit=${FERRY_TESTBED_TIMEOUT:-600}
rails=${FERRY_TESTBED_RAILS:-fast,slow}

if [ "$(id -u)" -ne 0 ]; then echo "skip: not root (the test bed's namespaces need root)"; exit 0; fi
if ! command -v ip >/dev/null || ! ip netns list >/dev/null 2>&1; then
    echo "skip: ip netns does not work here"; exit 0
fi
command -v mpirun >/dev/null || { echo "testbed-mpirun: mpirun not found (apt-get install openmpi-bin)" >&2; exit 2; }
[ $# -gt 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
if [ ! -f "$dir/state" ] || [ ! -e "/var/run/netns/${prefix}-ctl" ]; then
    echo "testbed-mpirun: the test bed '$prefix' is not up (scripts/testbed.sh up)" >&2
    exit 2
fi
[[ $limit =~ ^[0-9]+$ ]] || { echo "testbed-mpirun: FERRY_TESTBED_TIMEOUT must be whole seconds" >&2; exit 2; }

# Open MPI joins repeated --mca values with commas, so a default goes in only when the caller
# has not set the same parameter (or option).
user=("$@")
has_mca() { local i; for ((i = 0; i + 1 < ${#user[@]}; i++)); do
    case ${user[i]} in --mca | -mca | --gmca | -gmca) [ "${user[i + 1]}" = "$1" ] && return 0 ;; esac
done; return 1; }
has_opt() { local a o; for a in "${user[@]}"; do for o in "$@"; do [ "$a" = "$o" ] && return 0; done; done; return 1; }
args=()
mca() { has_mca "$1" || args+=(--mca "$1" "$2"); }
has_opt --hostfile -hostfile --machinefile -machinefile -H --host -host || args+=(--hostfile "$dir/hostfile")
has_opt --map-by -map-by --npernode -npernode --ppr -ppr || args+=(--map-by node)
has_opt --oversubscribe -oversubscribe --nooversubscribe -nooversubscribe || args+=(--oversubscribe)
has_opt --bind-to -bind-to || args+=(--bind-to none)
mca plm_rsh_agent "$here/testbed/rsh-agent.sh"
mca plm_rsh_no_tree_spawn 1
mca routed direct
mca oob_tcp_if_include mgmt
mca pml ob1
mca btl tcp,self
mca btl_tcp_if_include "$rails"

# Every process of this job carries the marker; on exit, those left in the bed are ended.
run_id="$$-$(date +%s%N)"
export FERRY_TESTBED_RUN=$run_id
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cleanup() {
    local ns pid left=()
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        [[ $ns == "$prefix"-* ]] || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "FERRY_TESTBED_RUN=$run_id"; then
                left+=("$pid")
            fi
        done
    done
    if [ ${#left[@]} -gt 0 ]; then
        echo "testbed-mpirun: ending ${#left[@]} processes the job left behind" >&2
        kill "${left[@]}" 2>/dev/null || true
        sleep 1
        kill -9 "${left[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rc=0
timeout --kill-after=10 "$limit" ip netns exec "${prefix}-ctl" unshare --uts -- \
    "$here/testbed/in-ns.sh" "${prefix}-ctl" mpirun "${args[@]}" "$@" || rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "testbed-mpirun: the job did not finish within $limit s (FERRY_TESTBED_TIMEOUT); killed" >&2
fi
exit "$rc"
