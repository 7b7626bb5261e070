#!/usr/bin/env bash
# The README's demo command: installs what is missing, builds weir, and runs
# `weir demo` (two nodes, the paper's L7 scenario, a DNS rule, precedence, a
# live revocation, a rough side-by-side, then everything removed; see the
# README), on the real Kubernetes API server that setup.sh builds; its first
# line says which mode it runs in (`--mode files` runs it without the API
# server). Arguments go to `weir demo` (`--keep`, `--encap geneve`, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# weir-cni: the local cluster attaches its pods through it (found next to weir).
cargo build --release -p weir -p weir-cni --bins
exec ./target/release/weir demo "$@"
