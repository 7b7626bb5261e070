#!/usr/bin/env bash
# weir's test command (the README's): installs what is missing, builds, and
# runs every test — unit, golden-byte, property, and the integration tests
# that build real network namespaces and send real traffic (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# House rules first: formatting and clippy (the workspace denies
# undocumented unsafe blocks and unsafe fns without a Safety section).
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
# Integration tests start the `weir` binary; build it first so they find it.
cargo build -p weir --bin weir -p weir-cni --bin weir-cni
# Two test threads: each integration test runs a dataplane of its own and
# this machine has two cores.
cargo test --workspace --no-fail-fast -- --test-threads=2
