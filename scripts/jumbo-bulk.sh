#!/usr/bin/env bash
# TCP bulk (iperf3, one stream) between two pods on one node at a given pod
# MTU, through weir (AF_XDP; multi-buffer above a 3822-byte MTU) and through
# the kernel (pod A -> veth -> router netns with ip_forward -> veth -> pod B,
# the same MTU), interleaved in the same run. docs/performance.md,
# "Multi-buffer". Needs root and iperf3.
#
#   scripts/jumbo-bulk.sh [WEIR_BIN] [ROUNDS] [SECS] [MTU...]
#   scripts/jumbo-bulk.sh target/release/weir 3 5 9000 1450
#
# Needs weir-cni beside WEIR_BIN (cargo build [--release] -p weir -p weir-cni).
# Placement: iperf3 (client and server) on core 0, weir's worker on core 1
# (--cores 1, adaptive polling). Prints one line per run and the median
# [min-max] of weir / kernel per MTU.
set -euo pipefail

WEIR=${1:-target/debug/weir}
ROUNDS=${2:-3}
SECS=${3:-5}
shift $(( $# < 3 ? $# : 3 )) || true
MTUS=("$@")
[ ${#MTUS[@]} -gt 0 ] || MTUS=(9000)

ID=jb$$
CL=jumbo$$
DIR=$(mktemp -d)
KA=$ID-ka KR=$ID-kr KB=$ID-kb

cleanup() {
    "$WEIR" --cluster "$CL" down >/dev/null 2>&1 || true
    for n in "$KA" "$KR" "$KB"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

cat >"$DIR/c.yaml" <<'EOF'
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.0.0/24, "fd00:10:244::/64"]}
---
apiVersion: v1
kind: Namespace
metadata: {name: j}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: j, labels: {pod: a}}
spec: {nodeName: node-1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: j, labels: {pod: b}}
spec: {nodeName: node-1, containers: [{name: c}]}
EOF

# The kernel path: a, router, b.
kernel_up() {
    local mtu=$1
    for n in "$KA" "$KR" "$KB"; do ip netns add "$n"; ip -n "$n" link set lo up; done
    ip -n "$KR" link add ra mtu "$mtu" type veth peer name eth0 mtu "$mtu" netns "$KA"
    ip -n "$KR" link add rb mtu "$mtu" type veth peer name eth0 mtu "$mtu" netns "$KB"
    ip -n "$KA" addr add 10.99.1.2/24 dev eth0
    ip -n "$KB" addr add 10.99.2.2/24 dev eth0
    ip -n "$KR" addr add 10.99.1.1/24 dev ra
    ip -n "$KR" addr add 10.99.2.1/24 dev rb
    for n in "$KA" "$KB"; do ip -n "$n" link set eth0 up; done
    ip -n "$KR" link set ra up
    ip -n "$KR" link set rb up
    ip -n "$KA" route add default via 10.99.1.1
    ip -n "$KB" route add default via 10.99.2.1
    ip netns exec "$KR" sysctl -qw net.ipv4.ip_forward=1
}
kernel_down() {
    for n in "$KA" "$KR" "$KB"; do ip netns del "$n" 2>/dev/null || true; done
}

# iperf3 from netns $1 to $3 (server in netns $2); prints Gb/s.
bulk() {
    local src=$1 dst=$2 addr=$3
    taskset -c 0 ip netns exec "$dst" iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
    local srv=$!
    local out=""
    for _ in $(seq 20); do
        sleep 0.2
        out=$(taskset -c 0 ip netns exec "$src" iperf3 -c "$addr" -t "$SECS" -J 2>/dev/null || true)
        if echo "$out" | grep -q '"sum_received"'; then break; fi
    done
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
    echo "$out" | python3 -c 'import json,sys
v=json.load(sys.stdin); print("%.3f %d" % (v["end"]["sum_received"]["bits_per_second"]/1e9, v["end"]["sum_sent"]["retransmits"]))'
}

summary() {
    python3 -c 'import sys,statistics as s
w=[float(x) for x in sys.argv[1].split()]; k=[float(x) for x in sys.argv[2].split()]
r=[a/b for a,b in zip(w,k)]
f=lambda v:"%.3f [%.3f-%.3f]"%(s.median(v),min(v),max(v))
print("MTU %s: weir %s Gb/s, kernel %s Gb/s, weir/kernel %s" % (sys.argv[3], f(w), f(k), f(r)))' "$1" "$2" "$3"
}

SUMS=()
for mtu in "${MTUS[@]}"; do
    "$WEIR" --cluster "$CL" up -f "$DIR/c.yaml" --mtu "$mtu" --underlay-mtu $((mtu + 50 > 1500 ? mtu + 50 : 1500)) \
        --cores 1 --metrics-addr off >/dev/null
    A=weir-$CL-j-a B=weir-$CL-j-b
    BIP=$(ip -n "$B" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
    kernel_up "$mtu"
    W="" K=""
    for r in $(seq "$ROUNDS"); do
        read -r g rt < <(bulk "$A" "$B" "$BIP")
        echo "MTU $mtu round $r weir   $g Gb/s (retransmits $rt)"
        W="$W $g"
        read -r g rt < <(bulk "$KA" "$KB" 10.99.2.2)
        echo "MTU $mtu round $r kernel $g Gb/s (retransmits $rt)"
        K="$K $g"
    done
    "$WEIR" --cluster "$CL" status -o json | python3 -c 'import json,sys
v=json.load(sys.stdin)
for w in v["nodes"][0]["status"]["dataplane"]["workers"]:
    print("  worker", w.get("id"), "rx", w["rx_packets"], "frames", w["rx_bytes"], "bytes; kernel", w.get("kernel"), "drops", w["drops"], "ledger", w["frames"])' || true
    SUMS+=("$(summary "$W" "$K" "$mtu")")
    kernel_down
    "$WEIR" --cluster "$CL" down >/dev/null
done
printf '%s\n' "${SUMS[@]}"
