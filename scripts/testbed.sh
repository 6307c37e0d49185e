#!/usr/bin/env bash
# ferry's network test bed: N hosts as network namespaces, each with a fast and a slow rail and an
# unshaped management network, for measuring multi-rail transports and collectives on one machine.
#
# Usage:
#   scripts/testbed.sh up [N] [--fast RATE] [--slow RATE] [--burst SIZE]   (N defaults to 4)
#   scripts/testbed.sh down
#   scripts/testbed.sh status
#   scripts/testbed.sh rate HOST RAIL RATE      change a rail's tbf rate at run time (both ends)
#   scripts/testbed.sh link HOST RAIL up|down   take a rail down or bring it back
#   scripts/testbed.sh toml                     print the bed's description (the file below)
#   scripts/testbed.sh probe A B RAIL [SECONDS] one TCP stream from host A to host B over RAIL
#                                               (default 3 s); prints the receiver's JSON line
# HOST is an index (0), a short name (h0) or the namespace (ferry-h0); RAIL is fast or slow;
# RATE is a tc rate such as 2gbit, 500mbit, 200mbit.
#
# Layout (PREFIX defaults to "ferry"; everything the bed makes lives in namespaces named PREFIX-*,
# so nothing in the machine's own namespace is touched):
#   PREFIX-sw    the switch: bridges br-fast, br-slow, br-mgmt and the switch ends h<i>-fast, ...
#   PREFIX-h<i>  host i: interfaces fast (10.201.1.<i+1>/24), slow (10.201.2.<i+1>/24) and
#                mgmt (10.201.0.<i+1>/24); fast and slow are veth pairs into their bridge, shaped
#                with tbf on the egress of BOTH ends (burst >= 1 MB); mgmt is unshaped.
#   PREFIX-ctl   the control host (mpirun runs here): mgmt 10.201.0.254/24 only.
# The 10.201.0.0/16 addresses exist only inside these namespaces.
#
# Environment: FERRY_TESTBED_PREFIX (ferry), FERRY_TESTBED_DIR (/tmp/<prefix>-testbed),
# FERRY_TESTBED_FAST_RATE (2gbit), FERRY_TESTBED_SLOW_RATE (200mbit), FERRY_TESTBED_BURST (1mb),
# FERRY_TESTBED_LATENCY (tbf queue bound, 20ms). Flags override the environment.
#
# `up` writes DIR/testbed.toml (hosts; per host its rails with name, class, address,
# bandwidth_gbps), rewritten from the live qdiscs and links by `rate` and `link`, and the same
# bed as a ferry-collectives Topology in DIR/topology.toml (`Topology::from_toml`'s format). Where namespaces
# cannot be made (not root, no `ip netns`), every command prints "skip: <reason>" and exits 0.
set -euo pipefail

PREFIX=${FERRY_TESTBED_PREFIX:-ferry}
DIR=${FERRY_TESTBED_DIR:-/tmp/${PREFIX}-testbed}
FAST_RATE=${FERRY_TESTBED_FAST_RATE:-2gbit}
SLOW_RATE=${FERRY_TESTBED_SLOW_RATE:-200mbit}
BURST=${FERRY_TESTBED_BURST:-1mb}
LATENCY=${FERRY_TESTBED_LATENCY:-20ms}
RAILS=(fast slow)
MAX_HOSTS=64

die() { echo "testbed: $*" >&2; exit 2; }
say() { echo "testbed: $*"; }

# Prints why namespaces cannot be made here, or nothing when they can.
why_not() {
    if [ "$(id -u)" -ne 0 ]; then echo "not root (network namespaces need root)"; return; fi
    command -v ip >/dev/null || { echo "no ip command (apt-get install iproute2)"; return; }
    command -v tc >/dev/null || { echo "no tc command (apt-get install iproute2)"; return; }
    ip netns list >/dev/null 2>&1 || { echo "ip netns does not work here"; return; }
    local probe="${PREFIX}-probe$$"
    if ! ip netns add "$probe" 2>/dev/null; then echo "cannot create a network namespace"; return; fi
    local ok=1
    ip -n "$probe" link add name p0 type veth peer name p1 2>/dev/null || ok=0
    if [ "$ok" = 1 ] && ! tc -n "$probe" qdisc add dev p0 root tbf rate 1gbit burst 1mb latency 20ms 2>/dev/null; then
        ok=2
    fi
    ip netns del "$probe" 2>/dev/null || true
    [ "$ok" = 0 ] && { echo "cannot create veth pairs"; return; }
    [ "$ok" = 2 ] && { echo "cannot attach a tbf qdisc (sch_tbf missing)"; return; }
    return 0
}

ns_exists() { [ -e "/var/run/netns/$1" ]; }
sw() { echo "${PREFIX}-sw"; }
ctl() { echo "${PREFIX}-ctl"; }
host_ns() { echo "${PREFIX}-h$1"; }
rail_net() { case $1 in mgmt) echo 0 ;; fast) echo 1 ;; slow) echo 2 ;; *) die "unknown rail '$1' (fast or slow)" ;; esac; }
addr() { echo "10.201.$(rail_net "$2").$(($1 + 1))"; } # host index, rail

# The bed's hosts, from the state file written by `up`.
host_count() { [ -f "$DIR/state" ] && sed -n 's/^hosts=//p' "$DIR/state" || echo 0; }

# Accepts a tc rate (digits, optional fraction, unit bit/kbit/mbit/gbit, any case) or fails.
check_rate() {
    [[ $1 =~ ^[0-9]+(\.[0-9]+)?([kKmMgG]?[bB][iI][tT])$ ]] || die "bad rate '$1' (e.g. 2gbit, 200mbit)"
}
# Converts a tc rate as tc prints it (2Gbit, 200Mbit, 1500Kbit, 800bit) to Gbit/s.
rate_gbps() {
    awk -v r="$1" 'BEGIN {
        n = r; sub(/[A-Za-z]+$/, "", n); u = tolower(substr(r, length(n) + 1));
        f = (u == "gbit") ? 1 : (u == "mbit") ? 1e-3 : (u == "kbit") ? 1e-6 : (u == "bit") ? 1e-9 : -1;
        if (f < 0 || n == "") { print "nan"; exit 1 }
        v = sprintf("%.6g", n * f); if (v !~ /[.e]/) v = v ".0"; print v }'
}

# Resolves HOST (3, h3, PREFIX-h3) to an index of the bed.
host_index() {
    local h=$1 n
    h=${h#"${PREFIX}-"}; h=${h#h}
    [[ $h =~ ^[0-9]+$ ]] || die "bad host '$1' (an index, h<i> or ${PREFIX}-h<i>)"
    n=$(host_count)
    [ "$h" -lt "$n" ] || die "no host $1: the bed has $n hosts"
    echo "$h"
}

# The tbf rate on the egress of one interface, as tc prints it, or "none".
qdisc_rate() { # ns, dev
    tc -n "$1" qdisc show dev "$2" 2>/dev/null | awk '/tbf/ { for (i = 1; i <= NF; i++) if ($i == "rate") { print $(i + 1); exit } }' | grep . || echo none
}
link_state() { # ns, dev
    ip -n "$1" -br link show dev "$2" 2>/dev/null | awk '{print $2}' || echo missing
}

shape() { # ns, dev, rate, add|change
    tc -n "$1" qdisc "$4" dev "$2" root tbf rate "$3" burst "$BURST" latency "$LATENCY"
}

# Removes everything the bed made: only namespaces named PREFIX-sw, PREFIX-ctl and PREFIX-h<i>.
teardown() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        case $ns in
            "$(sw)" | "$(ctl)") ;;
            "${PREFIX}"-h*) [[ ${ns#"${PREFIX}"-h} =~ ^[0-9]+$ ]] || continue ;;
            *) continue ;;
        esac
        # A process still inside keeps no interface alive once the namespace is gone from
        # /var/run/netns, but the veths would linger: end them first (they are the bed's own).
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [ -n "$pids" ]; then
            say "ending processes left in $ns: $(echo $pids)"
            kill $pids 2>/dev/null || true
            sleep 0.5
            kill -9 $(ip netns pids "$ns" 2>/dev/null) 2>/dev/null || true
        fi
        ip netns del "$ns"
    done
    rm -f "$DIR/state" "$DIR/testbed.toml" "$DIR/topology.toml" "$DIR/hostfile"
    rmdir "$DIR" 2>/dev/null || true
}

write_toml() {
    local n i rail tmp r bw st
    n=$(host_count)
    tmp=$(mktemp "$DIR/testbed.toml.XXXXXX")
    {
        echo "# ferry network test bed, written by scripts/testbed.sh from the live namespaces."
        echo "# Rates are the tbf rates shaping each rail (the lower of its two ends); sysfs reports"
        echo "# 10 Gbit for every veth, so these are the rates to plan with."
        echo "[testbed]"
        echo "prefix = \"$PREFIX\""
        echo "switch_namespace = \"$(sw)\""
        echo "control_namespace = \"$(ctl)\""
        echo "control_address = \"10.201.0.254\""
        echo "burst = \"$BURST\""
        echo "hosts = $n"
        for ((i = 0; i < n; i++)); do
            echo
            echo "[[hosts]]"
            echo "name = \"$(host_ns "$i")\""
            echo "namespace = \"$(host_ns "$i")\""
            echo "management = \"$(addr "$i" mgmt)\""
            for rail in "${RAILS[@]}"; do
                r=$(qdisc_rate "$(host_ns "$i")" "$rail")
                bw=$(rate_gbps "$r" || true)
                local r2 bw2
                r2=$(qdisc_rate "$(sw)" "h$i-$rail")
                bw2=$(rate_gbps "$r2" || true)
                if [ "$bw2" != nan ] && { [ "$bw" = nan ] || awk -v a="$bw2" -v b="$bw" 'BEGIN{exit !(a < b)}'; }; then
                    bw=$bw2
                fi
                [ "$bw" = nan ] && bw=10 # unshaped veth
                st=$(link_state "$(host_ns "$i")" "$rail")
                echo
                echo "[[hosts.rails]]"
                echo "name = \"$rail\""
                echo "class = \"ethernet\""
                echo "interface = \"$rail\""
                echo "address = \"$(addr "$i" "$rail")\""
                echo "prefix_len = 24"
                echo "bandwidth_gbps = $bw"
                echo "up = $([ "$st" = DOWN ] && echo false || echo true)"
            done
        done
    } >"$tmp"
    mv "$tmp" "$DIR/testbed.toml"
    write_topology
}

# The same bed in the format of ferry-collectives' `Topology::from_toml` (collectives/src/
# topology.rs: `[[node]]` with `nic = [{ name, class, gbit, address, role }]`), so a job can load
# or patch its topology straight from the bed. Ranks are the job's business and are left out.
write_topology() {
    local n i rail tmp
    n=$(host_count)
    tmp=$(mktemp "$DIR/topology.toml.XXXXXX")
    {
        echo "# ferry test bed '$PREFIX' as a ferry-collectives Topology, written by scripts/testbed.sh."
        echo "name = \"$PREFIX-testbed\""
        for ((i = 0; i < n; i++)); do
            echo
            echo "[[node]]"
            echo "name = \"$(host_ns "$i")\""
            echo "nic = ["
            for rail in "${RAILS[@]}"; do
                local gbit
                gbit=$(awk -v want="10.201.$(rail_net "$rail").$((i + 1))" '
                    /^address = / { a = $3; gsub(/"/, "", a) } /^bandwidth_gbps = / && a == want { print $3; exit }' "$DIR/testbed.toml")
                echo "    { name = \"$rail\", class = \"ethernet\", gbit = $gbit, address = \"$(addr "$i" "$rail")\" },"
            done
            echo "    { name = \"mgmt\", class = \"ethernet\", address = \"$(addr "$i" mgmt)\", role = \"management\" },"
            echo "]"
        done
    } >"$tmp"
    mv "$tmp" "$DIR/topology.toml"
}

cmd_up() {
    local n=4
    while [ $# -gt 0 ]; do
        case $1 in
            --fast) FAST_RATE=${2:?--fast needs a rate}; shift 2 ;;
            --slow) SLOW_RATE=${2:?--slow needs a rate}; shift 2 ;;
            --burst) BURST=${2:?--burst needs a size}; shift 2 ;;
            [0-9]*) n=$1; shift ;;
            *) die "up: unknown argument '$1'" ;;
        esac
    done
    [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le "$MAX_HOSTS" ] || die "up: N must be 1..$MAX_HOSTS (got '$n')"
    check_rate "$FAST_RATE"; check_rate "$SLOW_RATE"
    local reason
    reason=$(why_not)
    if [ -n "$reason" ]; then echo "skip: $reason"; exit 0; fi

    if [ -f "$DIR/state" ]; then
        local have all=1 i
        have=$(host_count)
        for ns in "$(sw)" "$(ctl)"; do ns_exists "$ns" || all=0; done
        for ((i = 0; i < have; i++)); do ns_exists "$(host_ns "$i")" || all=0; done
        if [ "$all" = 1 ] && [ "$have" = "$n" ]; then
            say "already up with $n hosts ($DIR/testbed.toml); rates unchanged (use 'rate' to change them)"
            return 0
        elif [ "$all" = 1 ]; then
            die "already up with $have hosts; run 'scripts/testbed.sh down' before 'up $n'"
        fi
        say "a previous bed is half there; removing it"
        teardown
    fi
    for ns in $(ip netns list | awk '{print $1}'); do
        case $ns in "$(sw)" | "$(ctl)" | "${PREFIX}"-h*)
            die "namespace $ns exists but this bed has no state in $DIR; run 'scripts/testbed.sh down' first" ;;
        esac
    done

    mkdir -p "$DIR"
    # Whatever fails half way, leave nothing behind.
    trap 'echo "testbed: up failed; removing what was made" >&2; teardown' ERR

    local s i rail ns
    s=$(sw)
    ip netns add "$s"
    ip -n "$s" link set dev lo up
    for br in br-fast br-slow br-mgmt; do
        ip -n "$s" link add name "$br" type bridge stp_state 0 forward_delay 0
        ip -n "$s" link set dev "$br" up
    done
    ip netns add "$(ctl)"
    ip -n "$(ctl)" link set dev lo up
    ip -n "$s" link add name ctl-mgmt type veth peer name mgmt netns "$(ctl)"
    ip -n "$s" link set dev ctl-mgmt master br-mgmt up
    ip -n "$(ctl)" addr add 10.201.0.254/24 dev mgmt
    ip -n "$(ctl)" link set dev mgmt up

    for ((i = 0; i < n; i++)); do
        ns=$(host_ns "$i")
        ip netns add "$ns"
        ip -n "$ns" link set dev lo up
        for rail in mgmt "${RAILS[@]}"; do
            ip -n "$s" link add name "h$i-$rail" type veth peer name "$rail" netns "$ns"
            ip -n "$s" link set dev "h$i-$rail" master "br-$rail" up
            ip -n "$ns" addr add "$(addr "$i" "$rail")/24" dev "$rail"
            ip -n "$ns" link set dev "$rail" up
        done
        shape "$ns" fast "$FAST_RATE" add
        shape "$s" "h$i-fast" "$FAST_RATE" add
        shape "$ns" slow "$SLOW_RATE" add
        shape "$s" "h$i-slow" "$SLOW_RATE" add
    done
    printf 'hosts=%s\nprefix=%s\nfast=%s\nslow=%s\nburst=%s\n' "$n" "$PREFIX" "$FAST_RATE" "$SLOW_RATE" "$BURST" >"$DIR/state"
    for ((i = 0; i < n; i++)); do echo "$(host_ns "$i") slots=1"; done >"$DIR/hostfile"
    write_toml
    trap - ERR
    say "up: $n hosts, fast $FAST_RATE, slow $SLOW_RATE, burst $BURST; description in $DIR/testbed.toml"
}

cmd_down() {
    local reason
    reason=$(why_not)
    if [ -n "$reason" ]; then echo "skip: $reason"; exit 0; fi
    teardown
    say "down"
}

require_up() {
    local reason
    reason=$(why_not)
    if [ -n "$reason" ]; then echo "skip: $reason"; exit 0; fi
    [ -f "$DIR/state" ] && ns_exists "$(sw)" || die "the bed is not up (scripts/testbed.sh up)"
}

cmd_status() {
    require_up
    local n i rail ns
    n=$(host_count)
    say "$n hosts, prefix $PREFIX, description $DIR/testbed.toml; control $(ctl) at 10.201.0.254"
    printf '%-12s %-14s %-6s %-14s %-8s %-10s %-10s\n' host mgmt rail address state "host-tbf" "switch-tbf"
    for ((i = 0; i < n; i++)); do
        ns=$(host_ns "$i")
        for rail in "${RAILS[@]}"; do
            printf '%-12s %-14s %-6s %-14s %-8s %-10s %-10s\n' "$ns" "$(addr "$i" mgmt)" "$rail" \
                "$(addr "$i" "$rail")" "$(link_state "$ns" "$rail")" \
                "$(qdisc_rate "$ns" "$rail")" "$(qdisc_rate "$(sw)" "h$i-$rail")"
        done
    done
}

cmd_rate() {
    [ $# -eq 3 ] || die "usage: scripts/testbed.sh rate HOST RAIL RATE"
    require_up
    local i rail=$2 rate=$3
    i=$(host_index "$1")
    case $rail in fast | slow) ;; *) die "bad rail '$rail' (fast or slow)" ;; esac
    check_rate "$rate"
    shape "$(host_ns "$i")" "$rail" "$rate" change
    shape "$(sw)" "h$i-$rail" "$rate" change
    write_toml
    say "$(host_ns "$i") $rail now $(qdisc_rate "$(host_ns "$i")" "$rail") (both ends)"
}

cmd_link() {
    [ $# -eq 3 ] || die "usage: scripts/testbed.sh link HOST RAIL up|down"
    require_up
    local i rail=$2 state=$3
    i=$(host_index "$1")
    case $rail in fast | slow) ;; *) die "bad rail '$rail' (fast or slow)" ;; esac
    case $state in up | down) ;; *) die "bad state '$state' (up or down)" ;; esac
    ip -n "$(host_ns "$i")" link set dev "$rail" "$state"
    write_toml
    say "$(host_ns "$i") $rail $state"
}

cmd_probe() {
    [ $# -ge 3 ] && [ $# -le 4 ] || die "usage: scripts/testbed.sh probe HOST_A HOST_B RAIL [SECONDS]"
    require_up
    local a b rail=$3 secs=${4:-3} out err rc=0
    a=$(host_index "$1"); b=$(host_index "$2")
    [ "$a" != "$b" ] || die "probe: the two hosts must differ"
    case $rail in fast | slow | mgmt) ;; *) die "bad rail '$rail' (fast, slow or mgmt)" ;; esac
    [[ $secs =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "bad duration '$secs'"
    command -v python3 >/dev/null || { apt-get install -y python3 >/dev/null; }
    local probe
    probe="$(cd "$(dirname "$0")" && pwd)/testbed/probe.py"
    out=$(mktemp); err=$(mktemp)
    local limit
    limit=$(awk -v s="$secs" 'BEGIN { printf "%d", s + 30 }')
    timeout "$limit" ip netns exec "$(host_ns "$b")" python3 "$probe" recv --bind "$(addr "$b" "$rail")" \
        --timeout 20 >"$out" 2>"$err" &
    local rpid=$!
    timeout "$limit" ip netns exec "$(host_ns "$a")" python3 "$probe" send --to "$(addr "$b" "$rail")" \
        --bind "$(addr "$a" "$rail")" --seconds "$secs" --timeout 20 || rc=$?
    wait "$rpid" || rc=$?
    if [ "$rc" -ne 0 ]; then cat "$err" >&2; rm -f "$out" "$err"; die "probe failed (exit $rc)"; fi
    python3 - "$(cat "$out")" "$rail" "$(qdisc_rate "$(host_ns "$a")" "$rail")" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); r["rail"] = sys.argv[2]; r["tbf_rate"] = sys.argv[3]
print(json.dumps(r))
PY
    rm -f "$out" "$err"
}

main() {
    local cmd=${1:-}
    [ $# -gt 0 ] && shift
    # Changes to a bed are serialised (two `up`s at once would race); reads are not.
    case $cmd in
        up | down | rate | link)
            if command -v flock >/dev/null; then
                exec 9<"$0"
                flock -w 120 9 || die "another testbed.sh command has held the lock for 120 s"
            fi ;;
    esac
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down ;;
        status) cmd_status ;;
        rate) cmd_rate "$@" ;;
        link) cmd_link "$@" ;;
        probe) cmd_probe "$@" ;;
        toml) require_up; cat "$DIR/testbed.toml" ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; [ -z "$cmd" ] || [ "$cmd" = help ] || exit 2 ;;
    esac
}
main "$@"
