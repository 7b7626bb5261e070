#!/bin/bash
# How long a control request waits on the dataplane while it writes its
# conntrack checkpoint at 1M entries (docs/performance.md, "The checkpoint
# on its own thread"). Needs root and a release build of weir-perf.
#
#   sudo scripts/checkpoint-stall.sh PATH/TO/weir LABEL
#
# Runs `weir-perf flows` at 1 048 576 flows with that weir (one 60 s
# window); once the table holds 1M entries, times 300 calls of `weir flows`
# for an empty page (the dataplane still drains its workers' flow queues
# under its lock first), 20 ms apart. Prints p50/p90/p99/max in ms; the
# times are in target/checkpoint-stall-LABEL.times.
set -euo pipefail
B=$1
L=$2
cd "$(dirname "$0")/.."
OUT=target/checkpoint-stall-$L
target/release/weir-perf flows --reps 1 --flows 1048576 --window-ms 60000 \
    --variant "$L=$B" --no-kernel --no-ovs --out "$OUT" > "$OUT.log" 2>&1 &
PP=$!
NAME=
until [ -n "$NAME" ]; do
    sleep 0.5
    kill -0 $PP 2> /dev/null || { echo "weir-perf exited: see $OUT.log" >&2; exit 1; }
    NAME=$(ls /run/weir 2> /dev/null | grep "^pfl${PP}w" | head -1 || true)
done
entries() {
    "$B" --cluster "$NAME" status -o json 2> /dev/null | python3 -c \
        'import json,sys; print(json.load(sys.stdin)["nodes"][0]["status"]["dataplane"]["conntrack"].get("entries",0))' \
        2> /dev/null || echo 0
}
until [ "$(entries)" -ge 1000000 ]; do
    kill -0 $PP 2> /dev/null || { echo "weir-perf exited: see $OUT.log" >&2; exit 1; }
    sleep 2
done
sleep 5 # the warm-up's new-flow records drain
: > "$OUT.times"
fails=0
for _ in $(seq 1 300); do
    s=$(date +%s%N)
    "$B" --cluster "$NAME" flows --since 999999999999 -o json > /dev/null 2>&1 || fails=$((fails + 1))
    e=$(date +%s%N)
    echo $(((e - s) / 1000000)) >> "$OUT.times"
    sleep 0.02
done
wait $PP || true
echo "failed calls: $fails"
sort -n "$OUT.times" | awk '{a[NR]=$1} END {print "n",NR,"p50",a[int(NR*0.5)],"p90",a[int(NR*0.9)],"p99",a[int(NR*0.99)],"max",a[NR]}'
