#!/usr/bin/env bash
# Runs a command as a test-bed host: sets the host name of the current UTS namespace (the caller
# made it with `unshare --uts`) to the bed host's name, then runs the command.
# Usage: in-ns.sh NAME COMMAND [ARGS...]
set -euo pipefail
name=${1:?usage: in-ns.sh NAME COMMAND [ARGS...]}
shift
hostname "$name"
exec "$@"
