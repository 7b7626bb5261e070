#!/usr/bin/env bash
# The README's demo command: installs what is missing, builds weir, and runs
# `weir demo` (up the built-in cluster, probe it, show status, take it down),
# on the real Kubernetes API server that setup.sh builds; its first line says
# which mode it runs in (`--mode files` runs it without the API server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p weir --bin weir
exec ./target/release/weir demo "$@"
