#!/usr/bin/env bash
# A small test LAN built from network namespaces (needs root: ip netns, veth, bridge).
#
#   scripts/testlan.sh up              create it
#   scripts/testlan.sh down            remove it (and end any process still running inside it)
#   scripts/testlan.sh exec HOST CMD   run CMD on HOST (a, b or c), e.g.
#                                      scripts/testlan.sh exec a .venv/bin/lanchat serve --interface lct-a
#                                      scripts/testlan.sh exec c .venv/bin/lanchat discover --interface lct-c
#   scripts/testlan.sh status          show the namespaces, interfaces and addresses
#
# Layout (every name starts with $LANCHAT_TESTLAN_PREFIX, default "lct"; several LANs can coexist):
#
#   namespace PREFIX-sw   the switch: bridge PREFIX-br, ports PREFIX-pa, PREFIX-pb, PREFIX-pc
#   namespace PREFIX-a    host a: PREFIX-a  10.72.0.1/24   (netns only)
#                                 PREFIX-a2 10.72.9.1/24   (netns only; a second subnet nobody else is on)
#   namespace PREFIX-b    host b: PREFIX-b  10.72.0.2/24   (netns only)
#   namespace PREFIX-c    host c: PREFIX-c  10.72.0.3/24   (netns only)
#
# Nothing is created in the machine's own network namespace: the bridge lives in the switch namespace, so
# no packet of this LAN can reach a real network. The interface names exist only inside the namespaces,
# which makes `--interface PREFIX-x` a safe choice: run by mistake outside, it matches nothing.
set -Eeuo pipefail

P="${LANCHAT_TESTLAN_PREFIX:-lct}"
if ! [[ "$P" =~ ^[a-z][a-z0-9]{1,10}$ ]]; then  # PREFIX-pa2 must fit in 15 characters (IFNAMSIZ)
    echo "testlan: LANCHAT_TESTLAN_PREFIX must be 2-11 lowercase letters/digits, starting with a letter" >&2
    exit 2
fi
SW="$P-sw"
HOSTS=(a b c)
declare -A ADDR=([a]=10.72.0.1 [b]=10.72.0.2 [c]=10.72.0.3)  # netns-only addresses (never on the host)
SECOND_A=10.72.9.1/24  # netns-only: host a's second subnet

up() {
    if ip netns list | grep -q "^$SW\b"; then
        echo "testlan: $SW exists already (run: $0 down)" >&2
        exit 1
    fi
    trap 'down >/dev/null 2>&1 || true' ERR  # half a LAN is worse than none
    ip netns add "$SW"
    ip -n "$SW" link set lo up
    ip -n "$SW" link add "$P-br" type bridge
    ip -n "$SW" link set "$P-br" up
    for h in "${HOSTS[@]}"; do
        ip netns add "$P-$h"
        ip -n "$P-$h" link set lo up
        # veth pair created inside the switch namespace, one end moved straight into the host's (netns)
        ip -n "$SW" link add "$P-p$h" type veth peer name "$P-$h" netns "$P-$h"
        ip -n "$SW" link set "$P-p$h" master "$P-br" up
        ip -n "$P-$h" addr add "${ADDR[$h]}/24" brd + dev "$P-$h"  # netns address
        ip -n "$P-$h" link set "$P-$h" up
    done
    # host a's second interface: its peer stays unbridged in the switch namespace (beacons there reach nobody)
    ip -n "$SW" link add "$P-pa2" type veth peer name "$P-a2" netns "$P-a"
    ip -n "$SW" link set "$P-pa2" up
    ip -n "$P-a" addr add "$SECOND_A" brd + dev "$P-a2"  # netns address
    ip -n "$P-a" link set "$P-a2" up
    trap - ERR
    echo "testlan: up ($SW, $P-a, $P-b, $P-c)"
}

down() {
    local ns pid
    for ns in "$P-a" "$P-b" "$P-c" "$SW"; do
        ip netns list | grep -q "^$ns\b" || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do  # only processes inside this LAN's namespaces
            kill "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
    echo "testlan: down ($P)"
}

status() {
    local ns
    for ns in "$SW" "$P-a" "$P-b" "$P-c"; do
        ip netns list | grep -q "^$ns\b" || { echo "$ns: absent"; continue; }
        echo "== $ns"
        ip -n "$ns" -br addr
    done
}

cmd="${1:-}"
shift || true
case "$cmd" in
    up) up ;;
    down) down ;;
    status) status ;;
    exec)
        host="${1:?usage: $0 exec HOST CMD...}"
        shift
        [[ " ${HOSTS[*]} " == *" $host "* ]] || { echo "testlan: HOST is a, b or c" >&2; exit 2; }
        exec ip netns exec "$P-$host" "$@"
        ;;
    *)
        sed -n '2,10p' "$0" >&2
        exit 2
        ;;
esac
