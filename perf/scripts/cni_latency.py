#!/usr/bin/env python3
"""CNI ADD and DEL latency: weir-cni beside the reference plugins
(bridge + host-local, containernetworking/plugins v1.10.0) in one run.

    sudo perf/scripts/cni_latency.py [CYCLES]        (default 200)

Brings up a one-node cluster (`weir up`, node-1 with 10.244.0.0/24 and
fd00:10:244::/64, one pod), then runs CYCLES ADD/DEL pairs of each plugin the
way a runtime does (the binary exec'd with CNI_* in its environment and the
plugin config on stdin) into the same pod netns, alternating weir and the
reference per cycle so both see the same machine load. The reference
bridge runs in a host netns of its own (the machine's network is untouched).
Every call must succeed. Prints p50/p99 per command and the weir/reference
ratios (a report, no thresholds), then tears everything down.

Env: WEIR (default target/release/weir, else target/debug/weir; weir-cni is
taken from the same directory), CNI_BIN (default: what scripts/cni-build.sh
prints).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def run(*argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def pct(xs, p):
    xs = sorted(xs)
    return xs[round((len(xs) - 1) * p)]


def call(argv, env, conf):
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, input=json.dumps(conf), capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{argv[-1]} {env['CNI_COMMAND']} {env['CNI_CONTAINERID']} failed: {p.stdout}{p.stderr}")
    return dt * 1e3


def main():
    cycles = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    weir = os.environ.get("WEIR", os.path.join(ROOT, "target/release/weir"))
    if not os.access(weir, os.X_OK):
        weir = os.path.join(ROOT, "target/debug/weir")
    weir_cni = os.path.join(os.path.dirname(weir), "weir-cni")
    for b in (weir, weir_cni):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} not built (cargo build -p weir --bin weir && cargo build -p weir-cni)")
    cni_bin = os.environ.get("CNI_BIN") or run(os.path.join(ROOT, "scripts/cni-build.sh")).stdout.split()[-1]

    name = f"cnilat{os.getpid() % 100000}"
    tmp = tempfile.mkdtemp(prefix="weir-cni-latency-")
    pod_ns, ref_ns = f"{name}-pod", f"{name}-refhost"
    manifests = os.path.join(tmp, "cluster.yaml")
    with open(manifests, "w") as f:
        f.write(
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n"
            'spec: {podCIDRs: [10.244.0.0/24, "fd00:10:244::/64"]}\n---\n'
            "apiVersion: v1\nkind: Pod\nmetadata: {name: srv, namespace: default}\n"
            "spec: {containers: [{name: c}]}\n"
        )
    plugins = os.path.join(tmp, "bin")
    os.mkdir(plugins)
    os.symlink(weir_cni, os.path.join(plugins, "weir-cni"))
    for p in ("bridge", "host-local"):
        os.symlink(os.path.join(cni_bin, p), os.path.join(plugins, p))
    try:
        run(weir, "--cluster", name, "up", "-f", manifests)
        conflist = json.loads(run(weir, "--cluster", name, "cni-config", "--node", "node-1").stdout)
        wconf = dict(conflist["plugins"][0], cniVersion="1.1.0", name=conflist["name"])
        rconf = {
            "cniVersion": "1.1.0", "name": "ref", "type": "bridge", "bridge": "cnibr0",
            "isGateway": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
                     "dataDir": os.path.join(tmp, "host-local")},
        }
        run("ip", "netns", "add", pod_ns)
        run("ip", "netns", "add", ref_ns)
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_PATH": plugins,
                "CNI_NETNS": f"/var/run/netns/{pod_ns}", "CNI_IFNAME": "eth0"}
        if "WEIR_STATE_DIR" in os.environ:
            base["WEIR_STATE_DIR"] = os.environ["WEIR_STATE_DIR"]
        times = {k: [] for k in ("weir ADD", "weir DEL", "ref ADD", "ref DEL")}
        for i in range(cycles):
            for who, argv, conf in (
                ("weir", [weir_cni], wconf),
                ("ref", ["ip", "netns", "exec", ref_ns, os.path.join(plugins, "bridge")], rconf),
            ):
                for cmd in ("ADD", "DEL"):
                    env = dict(base, CNI_COMMAND=cmd, CNI_CONTAINERID=f"{who}{i}",
                               CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=lat{i}")
                    times[f"{who} {cmd}"].append(call(argv, env, conf))
        # `ip netns exec` costs the reference a fork+exec+setns more than
        # weir-cni: measured alone and reported, not subtracted.
        nsexec = [call(["ip", "netns", "exec", ref_ns, "true"], dict(base, CNI_COMMAND="-", CNI_CONTAINERID="-"), {})
                  for _ in range(min(cycles, 50))]
        print(f"CNI latency, {cycles} ADD/DEL cycles each, ms (weir: {weir})")
        print()
        print("| | ADD p50 / p99 | DEL p50 / p99 |")
        print("|---|---|---|")
        for who, label in (("weir", "weir-cni"), ("ref", "bridge + host-local")):
            a, d = times[f"{who} ADD"], times[f"{who} DEL"]
            print(f"| {label} | {pct(a, .5):.0f} / {pct(a, .99):.0f} | {pct(d, .5):.0f} / {pct(d, .99):.0f} |")
        r = lambda c, p: pct(times[f"weir {c}"], p) / pct(times[f"ref {c}"], p)
        print(f"| ratio weir / reference | {r('ADD', .5):.1f} / {r('ADD', .99):.1f} | {r('DEL', .5):.1f} / {r('DEL', .99):.1f} |")
        print()
        print(f"(`ip netns exec true`, part of each reference call: p50 {pct(nsexec, .5):.1f} ms)")
    finally:
        subprocess.run(["ip", "netns", "del", pod_ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", ref_ns], capture_output=True)
        subprocess.run([weir, "--cluster", name, "down"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
