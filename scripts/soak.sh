#!/usr/bin/env bash
# Soak (issue 15): mixed traffic through one weir node for SOAK_SECONDS
# (default 1800 = 30 min; `SOAK_SECONDS=120 scripts/soak.sh` is the short
# mode) with a policy change every second (a NetworkPolicy on x/b applied,
# then deleted) and a pod created or deleted every 5 s (SOAK_CHURN_SECONDS),
# while pod a keeps
# probing every pod (TCP and UDP, `weir probe`) and a TCP stream a → c runs
# through the whole soak. Every 10 s it samples the dataplane's RSS.
#
# Pass (exit 0) when: the stream a → c never broke (it is allowed by every
# policy of the soak); the dataplane's RSS grew by less than SOAK_RSS_MIB
# (default 32) from the baseline to the last sample (the baseline: the first
# sample after warm-up, 60 s or a quarter of short runs, at which the node's
# flow-log buffer of 20 000 records is full, or half-way through the run if
# it never fills), and by less than SOAK_TAIL_MIB (default 4) over
# the last third of the run (a leak keeps growing; a bounded table being
# touched, or the allocator settling, does not); every worker's UMEM frame ledger balances
# (held = unaccounted = 0, free + fill + tx = total) once traffic stops; and
# the only drop reasons counted are policy's (`policy-denied`) and those of
# frames to deleted pods (`no-route`, `unknown-port`); and one pod server
# process is left per pod (none leaked by the churn). Needs root, python3;
# builds with `cargo build -p weir` first. Writes its log to
# /tmp/weir-soak-<pid>/ (rss.log; maps.log: the dataplane's largest
# mappings by resident size at each sample, to see what grew).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0
SECS=${SOAK_SECONDS:-1800}
RSS_MIB=${SOAK_RSS_MIB:-32}
CHURN=${SOAK_CHURN_SECONDS:-5}
TAIL_MIB=${SOAK_TAIL_MIB:-4}
WEIR=${WEIR_BIN:-$PWD/target/debug/weir}
[ -x "$WEIR" ] || cargo build -q -p weir
export WEIR_CLUSTER="soak$$" WEIR_METRICS_ADDR=off
DIR=/tmp/weir-soak-$$
STATE=${WEIR_STATE_DIR:-/run/weir}/$WEIR_CLUSTER
mkdir -p "$DIR"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$WEIR" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

pod() { # name
  printf -- '---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: x, labels: {pod: %s}}\nspec:\n  nodeName: node-1\n  containers:\n  - name: c\n    ports:\n    - {containerPort: 80, protocol: TCP}\n    - {containerPort: 81, protocol: UDP}\n' "$1" "$1"
}
{
  printf 'apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDRs: [10.244.0.0/24, "fd00:10:244::/64"]}\n'
  printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n'
  for p in a b c; do pod $p; done
} >"$DIR/cluster.yaml"
cat >"$DIR/policy.yaml" <<'EOF'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80, protocol: TCP}]}]
EOF
pod churn >"$DIR/churn.yaml"

"$WEIR" up -f "$DIR/cluster.yaml" >"$DIR/up.log" 2>&1
netns() { python3 -c "import json,sys; c=json.load(open('$STATE/cluster.json')); print([p['netns'] for p in c['pods'] if p['name']==sys.argv[1]][0])" "$1"; }
ip4() { python3 -c "import json,sys; c=json.load(open('$STATE/cluster.json')); print([p['ipv4'] for p in c['pods'] if p['name']==sys.argv[1]][0])" "$1"; }
NA=$(netns a) NC=$(netns c) C4=$(ip4 c)

# The long stream a → c: an echo server in c, a client in a writing a line
# every 100 ms and checking each echo; it exits 1 at the first failure.
ip netns exec "$NC" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7100)); s.listen(1)
c, _ = s.accept()
while True:
    d = c.recv(4096)
    if not d: break
    c.sendall(d)
' &
pids+=($!)
sleep 0.5
ip netns exec "$NA" python3 -c '
import socket, sys, time
s = socket.create_connection(("'"$C4"'", 7100), timeout=5)
s.settimeout(10)
n, end = 0, time.time() + '"$SECS"'
while time.time() < end:
    msg = b"tick %d\n" % n
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        d = s.recv(len(msg) - len(got))
        if not d: print("stream closed at tick", n); sys.exit(1)
        got += d
    if got != msg: print("stream corrupted at tick", n); sys.exit(1)
    n += 1
    time.sleep(0.1)
print("stream: %d ticks echoed" % n)
' >"$DIR/stream.log" 2>&1 &
stream=$!
pids+=($stream)

# Probes from a, as fast as they run.
(
  while :; do
    "$WEIR" probe --from x/a --port 80 --protocol TCP --timeout-ms 300 --attempts 1 -o json >/dev/null 2>&1 || true
    "$WEIR" probe --from x/a --port 81 --protocol UDP --timeout-ms 300 --attempts 1 -o json >/dev/null 2>&1 || true
  done
) &
pids+=($!)

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$(cat "$STATE/nodes/node-1/dataplane.pid")/status"; }
# Where the RSS is: the dataplane's largest mappings by resident KiB
# (`[heap]`, the UMEM, thread arenas, ...), one line per sample in maps.log.
maps() {
  python3 - "/proc/$(cat "$STATE/nodes/node-1/dataplane.pid")/smaps" <<'PY'
import re, sys
maps, cur = [], None
for line in open(sys.argv[1]):
    m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$", line)
    if m:
        cur = [m.group(1), (int(m.group(2), 16) - int(m.group(1), 16)) // 1024, m.group(3).split("/")[-1] or "anon", 0]
        maps.append(cur)
    elif line.startswith("Rss:"):
        cur[3] = int(line.split()[1])
print(" ".join("%s:%s:%d/%dK" % (m[0][-8:], m[2], m[3], m[1]) for m in sorted(maps, key=lambda m: -m[3])[:8]))
PY
}
warm=$((SECS / 4 < 60 ? SECS / 4 : 60))
FLOW_KEEP=20000 # control/src/flows.rs KEEP
# Flow events the node's workers logged (each one a record in the buffer).
flow_events() {
  "$WEIR" status -o json 2>/dev/null | python3 -c '
import json, sys
try:
    v = json.load(sys.stdin)
    print([n for n in v["nodes"] if n["node"] == "node-1"][0]["status"]["dataplane"]["conntrack"]["flow_events"])
except Exception:
    print(0)'
}
start=$(date +%s) changes=0 churns=0 rss0="" rss_tail="" pod_up=0 last_churn=-$CHURN last_rss=-10
while [ $(( $(date +%s) - start )) -lt "$SECS" ]; do
  t=$(( $(date +%s) - start ))
  if [ $((changes % 2)) -eq 0 ]; then
    "$WEIR" apply -f "$DIR/policy.yaml" >/dev/null
  else
    "$WEIR" delete -f "$DIR/policy.yaml" >/dev/null
  fi
  changes=$((changes + 1))
  if [ $((t - last_churn)) -ge "$CHURN" ]; then
    last_churn=$t
    if [ $pod_up -eq 0 ]; then "$WEIR" apply -f "$DIR/churn.yaml" >/dev/null; pod_up=1
    else "$WEIR" delete -f "$DIR/churn.yaml" >/dev/null; pod_up=0; fi
    churns=$((churns + 1))
  fi
  if [ $((t - last_rss)) -ge 10 ]; then
    last_rss=$t
    r=$(rss)
    echo "t=${t}s rss=${r}KiB policy-changes=$changes pod-churns=$churns" | tee -a "$DIR/rss.log"
    echo "t=${t}s $(maps)" >>"$DIR/maps.log"
    # The baseline: after warm-up and once the node's flow-log buffer
    # (control/src/flows.rs, the last 20 000 records, which grows the
    # dataplane's heap while it fills) is full; a run too short to fill it
    # takes the first sample after warm-up.
    ev=$(flow_events)
    echo "t=${t}s flow-events=$ev" >>"$DIR/maps.log"
    if [ -z "$rss0" ] && [ "$t" -ge "$warm" ] && { [ "$ev" -ge "$FLOW_KEEP" ] || [ "$t" -ge $((SECS / 2)) ]; }; then
      rss0=$r; echo "baseline at t=${t}s (flow events $ev)" | tee -a "$DIR/rss.log"
    fi
    if [ -z "$rss_tail" ] && [ "$t" -ge $((SECS * 2 / 3)) ]; then rss_tail=$r; fi
  fi
  # One change a second, or as fast as `weir apply` returns (it waits
  # until the dataplane runs the new generation).
  [ $(( $(date +%s) - start - t )) -ge 1 ] || sleep 1
done
fail=0
if ! wait "$stream"; then echo "FAIL: the a → c stream broke: $(cat "$DIR/stream.log")"; fail=1; fi
cat "$DIR/stream.log"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()
sleep 2
r=$(rss)
rss0=${rss0:-$r}
rss_tail=${rss_tail:-$r}
echo "rss: ${rss0} KiB at the baseline, ${rss_tail} KiB at 2/3 of the run, ${r} KiB at the end"
if [ $((r - rss0)) -gt $((RSS_MIB * 1024)) ]; then echo "FAIL: RSS grew by more than ${RSS_MIB} MiB"; fail=1; fi
# A leak keeps growing; a bounded structure being touched or the allocator
# settling does not. The last third must stay within SOAK_TAIL_MIB.
if [ $((r - rss_tail)) -gt $((TAIL_MIB * 1024)) ]; then echo "FAIL: RSS grew by more than ${TAIL_MIB} MiB over the last third"; fail=1; fi
echo "largest mappings (resident/size), first and last sample:"
sed -n '1p;$p' "$DIR/maps.log"
"$WEIR" status -o json >"$DIR/status.json"
python3 - "$DIR/status.json" <<'EOF' || fail=1
import json, sys
v = json.load(open(sys.argv[1]))
dp = [n for n in v["nodes"] if n["node"] == "node-1"][0]["status"]["dataplane"]
ok = True
drops = {}
for w in dp["workers"]:
    f = w["frames"]
    if f["held"] or f["unaccounted"] or f["free"] + f["fill"] + f["tx"] != f["total"]:
        print("FAIL: frame ledger of worker", w.get("core"), f); ok = False
    for k, n in w["drops"].items():
        drops[k] = drops.get(k, 0) + n
print("drops:", {k: n for k, n in drops.items() if n})
bad = {k: n for k, n in drops.items() if n and k not in ("policy-denied", "no-route", "unknown-port")}
if bad:
    print("FAIL: drops other than policy's:", bad); ok = False
print("conntrack:", {k: dp["conntrack"][k] for k in ("entries", "inserts", "evictions", "revoked", "flushed")})
sys.exit(0 if ok else 1)
EOF
# Pod churn starts and stops a server process per pod (control/src/pod_server.rs):
# exactly one per pod (and the world host) must be left, none leaked.
python3 - "$STATE" "$WEIR_CLUSTER" <<'EOF' || fail=1
import json, os, sys
state, cluster = sys.argv[1], sys.argv[2]
c = json.load(open(os.path.join(state, "cluster.json")))
want = len(c["pods"]) + (1 if c.get("world") else 0)
procs = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        args = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
    except OSError:
        continue
    if b"pod-server" in args and any(a == b"--cluster" and b == cluster.encode() for a, b in zip(args, args[1:])):
        procs.append(pid)
print("pod server processes:", len(procs), "for", want, "pods")
if len(procs) != want:
    print("FAIL: pod server processes leaked or missing"); sys.exit(1)
EOF
echo "soak: ${SECS}s, $changes policy changes, $churns pod churns: $([ $fail -eq 0 ] && echo PASS || echo FAIL) (log: $DIR)"
exit $fail
