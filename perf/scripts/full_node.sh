#!/usr/bin/env bash
# A full node at 10, 110 and 250 pods (one node, namespace s, pods p0..pN-1
# serving TCP 80), once on weir and once as a kernel-routed node of the same
# shape (`weir.dev/dataplane: kernel`). Per run: `weir up` / `weir down` wall
# time, the dataplane process's RSS and locked UMEM, and ROUNDS bursts of
# `weir probe --from s/p0` (N concurrent connects, one attempt each, 1 s
# timeout): reached, burst wall time, the kernel's AF_XDP drops, time in
# dataplane per frame (p50/p99) and the worker's CPU time per received frame.
#
#   sudo perf/scripts/full_node.sh [PODS...]      (default: 10 110 250)
#
# Env: WEIR (default target/release/weir, else target/debug/weir), ROUNDS (5).
# Prints one markdown table row per run (the table in docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
WEIR=${WEIR:-target/release/weir}
[ -x "$WEIR" ] || WEIR=target/debug/weir
ROUNDS=${ROUNDS:-5}
PODS=("${@:-10 110 250}")
[ $# -eq 0 ] && PODS=(10 110 250)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

manifests() { # N kernel?
    local ann=""
    [ "$2" = kernel ] && ann=", annotations: {weir.dev/dataplane: kernel}"
    echo "apiVersion: v1"
    echo "kind: Node"
    echo "metadata: {name: node-1$ann}"
    echo "spec: {podCIDRs: [10.244.0.0/23, \"fd00:10:244::/64\"]}"
    printf -- "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: s}\n"
    for i in $(seq 0 $(($1 - 1))); do
        printf -- "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: s, labels: {pod: p%d}}\n" "$i" "$i"
        printf "spec:\n  nodeName: node-1\n  containers:\n  - name: c\n    ports:\n    - {containerPort: 80, protocol: TCP}\n"
    done
}

now() { date +%s.%N; }
ticks() { # CPU ticks (utime+stime) of the dataplane's worker threads
    local pid=$1 t=0
    for d in /proc/"$pid"/task/*; do
        if grep -q '^weir-worker' "$d/comm" 2>/dev/null; then
            t=$((t + $(awk '{print $14 + $15}' "$d/stat")))
        fi
    done
    echo $t
}

echo "| pods | node | up (s) | down (s) | dataplane RSS (MiB) | UMEM (MiB) | reached per burst | burst (s) | kernel AF_XDP drops | p50 / p99 in dataplane (µs) | worker CPU per rx frame (µs) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for n in "${PODS[@]}"; do
    for kind in weir kernel; do
        c="fn$$${kind:0:1}$n"
        manifests "$n" "$kind" > "$TMP/m.yaml"
        t0=$(now)
        "$WEIR" --cluster "$c" up -f "$TMP/m.yaml" > /dev/null
        up=$(echo "$(now) - $t0" | bc)
        rss=- umem=- pid=""
        if [ "$kind" = weir ]; then
            pid=$(cat /run/weir/"$c"/nodes/node-1/dataplane.pid)
            rx0=$("$WEIR" --cluster "$c" status -o json | jq '[.nodes[].status.dataplane.totals.rx_packets] | add')
            tk0=$(ticks "$pid")
        fi
        reached="" burst=0
        for r in $(seq 1 "$ROUNDS"); do
            t0=$(now)
            ok=$("$WEIR" --cluster "$c" probe --from s/p0 --port 80 --protocol TCP --attempts 1 -o json |
                jq '[.probes[] | select(.connected)] | length')
            burst=$(echo "$burst + $(now) - $t0" | bc)
            reached="$reached$ok/$n "
        done
        burst=$(echo "scale=2; $burst / $ROUNDS" | bc)
        kdrops=- lat=- cpu=-
        if [ "$kind" = weir ]; then
            st=$("$WEIR" --cluster "$c" status -o json)
            rx=$(echo "$st" | jq '[.nodes[].status.dataplane.totals.rx_packets] | add')
            tk=$(ticks "$pid")
            hz=$(getconf CLK_TCK)
            cpu=$(echo "scale=1; ($tk - $tk0) * 1000000 / $hz / ($rx - $rx0)" | bc)
            kdrops=$(echo "$st" | jq '[.nodes[].status.dataplane.totals.kernel_dropped] | add')
            lat=$(echo "$st" | jq -r '[.nodes[].status.dataplane.workers[0].latency_ns] | .[0] | "\(.p50/1000|floor) / \(.p99/1000|floor)"')
            umem=$(echo "$st" | jq '[.nodes[].status.dataplane.config.umem_bytes] | add / 1048576 | floor')
            rss=$(($(awk '/VmRSS/ {print $2}' /proc/"$pid"/status) / 1024))
        fi
        t0=$(now)
        "$WEIR" --cluster "$c" down > /dev/null
        down=$(echo "$(now) - $t0" | bc)
        printf "| %s | %s | %.1f | %.1f | %s | %s | %s| %s | %s | %s | %s |\n" \
            "$n" "$kind" "$up" "$down" "$rss" "$umem" "$reached" "$burst" "$kdrops" "$lat" "$cpu"
    done
done
