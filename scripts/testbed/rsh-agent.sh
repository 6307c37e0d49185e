#!/usr/bin/env bash
# Open MPI's plm_rsh_agent for ferry's test bed: mpirun calls it the way it calls ssh,
# `rsh-agent.sh [ssh options] HOST COMMAND...`, to start its daemon (orted) on HOST. HOST is a
# test-bed namespace (PREFIX-h<i>); the command runs inside that network namespace, in a UTS
# namespace of its own whose host name is HOST, through `sh -c` as ssh would run it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=${FERRY_TESTBED_PREFIX:-ferry}
# Skip ssh-style options (Open MPI passes none to an agent it does not know, but be safe).
while [ $# -gt 0 ] && [[ $1 == -* ]]; do shift; done
[ $# -ge 2 ] || { echo "rsh-agent: usage: rsh-agent.sh HOST COMMAND..." >&2; exit 255; }
host=$1
shift
if ! [[ $host =~ ^${prefix}-h[0-9]+$ ]]; then
    echo "rsh-agent: '$host' is not a host of the test bed '$prefix' (expected ${prefix}-h<i>)" >&2
    exit 255
fi
if [ ! -e "/var/run/netns/$host" ]; then
    echo "rsh-agent: namespace $host does not exist (is the bed up? scripts/testbed.sh status)" >&2
    exit 255
fi
exec ip netns exec "$host" unshare --uts -- "$here/in-ns.sh" "$host" sh -c "$*"
