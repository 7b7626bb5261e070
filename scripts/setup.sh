#!/usr/bin/env bash
# Installs everything weir's build and tests need on a new machine.
# Idempotent: each step checks first, so a second run costs seconds.
set -euo pipefail
# Go from the machine's default install when it is not on PATH (CI shells).
[[ -x /usr/local/go/bin/go ]] && export PATH="$PATH:/usr/local/go/bin"

APT_PKGS=(m4 clang llvm libelf-dev zlib1g-dev libpcap-dev pkg-config make gcc curl
          iproute2 ethtool iputils-ping iperf3 tcpdump netcat-openbsd procps
          wrk apache2-utils haproxy openvswitch-switch nftables jq bc openssl
          nghttp2-client nghttp2-server)
# (nghttp, nghttpd and haproxy: also tests/tests/l7_h2_stream.rs, HTTP/2
# per-stream refusal against real servers.)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The XDP program is Rust built for bpfel-unknown-none with build-std: needs rust-src.
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  echo "setup: rustup component add rust-src"
  rustup component add rust-src
fi
for c in clippy rustfmt; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

# bpf-linker linked against rustc's own LLVM (see shared PLATFORM notes).
if ! command -v bpf-linker >/dev/null 2>&1; then
  echo "setup: cargo install bpf-linker (about a minute)"
  sysroot=$(rustc --print sysroot)
  llvm=$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -1)
  d=$(mktemp -d)
  ln -s "$llvm" "$d/libLLVM.so"
  LIBRARY_PATH=$d cargo install bpf-linker --version 0.13.0 --locked \
    --no-default-features --features llvm-22
  rm -rf "$d"
fi
# Overlay interop tests (tests/tests/overlay.rs, interop.rs): tshark dissects
# weir's Geneve/VXLAN-GBP, Scapy builds tunnel frames independently of weir.
if ! command -v tshark >/dev/null 2>&1; then
  echo "setup: installing tshark"
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends tshark >/dev/null
fi
if ! python3 -c 'import scapy' >/dev/null 2>&1; then
  echo "setup: pip install scapy"
  python3 -m pip install -q scapy
fi
# HTTP/2 and gRPC test (tests/tests/l7_h2.rs): an h2c server on the `h2`
# library (scripts/h2c_server.py) and a gRPC pair on grpcio (scripts/grpc_pair.py).
if ! python3 -c 'import h2, grpc' >/dev/null 2>&1; then
  echo "setup: pip install h2 grpcio"
  python3 -m pip install -q h2 grpcio
fi
# Metrics test (tests/tests/metrics.rs): the Prometheus Python client's own
# OpenMetrics parser reads weir's /metrics page.
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  echo "setup: pip install prometheus-client"
  python3 -m pip install -q prometheus-client
fi
# -o yaml test (tests/tests/metrics.rs) reads weir's YAML with PyYAML.
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "setup: pip install pyyaml"
  python3 -m pip install -q pyyaml
fi
# DNS rules / FQDN egress test (tests/tests/dns.rs): a real dnsmasq in a
# pod's netns, dig as the client.
if ! command -v dnsmasq >/dev/null 2>&1 || ! command -v dig >/dev/null 2>&1; then
  echo "setup: installing dnsmasq, dnsutils"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends dnsmasq-base dnsutils >/dev/null
fi
# Node.js: its HTTP parser (llhttp) is a reference of the HTTP differential
# test (model/tests/http_differential.rs).
if ! command -v node >/dev/null 2>&1; then
  echo "setup: installing nodejs"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs >/dev/null
fi
# containerd (ctr, runc): the real runtime weir-cni is tested under
# (`ctr run --cni`, tests/tests/cni.rs), with a daemon of the test's own.
if ! command -v ctr >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  echo "setup: installing containerd"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends containerd >/dev/null
fi
# Headless Chromium for the web page's test (tests/tests/web.rs); taskset
# (util-linux) pins the load in tests/tests/cores.rs.
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# The real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kubectl, etcd) for the agent's tests, from Go modules; cached under
# ~/.cache/weir, so only a new machine pays for the first build (minutes).
if ! command -v go >/dev/null 2>&1; then
  echo "setup: Go is missing: the Kubernetes agent tests need Go >= 1.26 and the Go module proxy" >&2
  exit 1
fi
bash "$(dirname "$0")/k8s-build.sh" >/dev/null
# cnitool and the reference CNI plugins (weir-cni's tests), also from Go modules.
bash "$(dirname "$0")/cni-build.sh" >/dev/null
# wireguard-go, the WireGuard interop peer (dataplane/tests/wireguard_interop.rs).
bash "$(dirname "$0")/wireguard-go.sh" >/dev/null
# Fuzz smoke (scripts/fuzz-smoke.sh): cargo-fuzz needs a nightly toolchain.
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "setup: rustup toolchain install nightly (fuzzing)"
  rustup toolchain install nightly --profile minimal
fi
rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src' \
  || rustup component add rust-src --toolchain nightly
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: cargo install cargo-fuzz (a few minutes)"
  cargo install cargo-fuzz --locked
fi
echo "setup: ok"
