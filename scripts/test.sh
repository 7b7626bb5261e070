#!/usr/bin/env bash
# weir's test command (the README's), in tiers:
#   0. house rules: formatting and clippy (the workspace denies undocumented
#      unsafe blocks and unsafe fns without a Safety section);
#   1. tests that need no root: unit, golden-byte, pass-table, property and
#      doc tests, then a short fuzz smoke of every fuzz target (fuzz/);
#   2. as root: the integration tests that build real network namespaces
#      and send real traffic.
# Without root, setup (it installs packages) and tier 2 are skipped, each
# with a message; tiers 0 and 1 still run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=0
[[ $(id -u) -eq 0 ]] && root=1
if ((root)); then
  bash scripts/setup.sh
else
  echo "test.sh: not root: skipping scripts/setup.sh (it installs packages);" \
       "the build needs what it installs (see README)"
fi
export PATH="$HOME/.cargo/bin:$PATH"

echo "== tier 0: fmt, clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets

# Integration test targets (<crate dir>/tests/<name>.rs) that need no root.
# Every other one runs in tier 2 (the loop below finds them all).
NO_ROOT=(
  dataplane/tests/pass_table.rs dataplane/tests/pass_policy.rs
  dataplane/tests/pass_dns.rs dataplane/tests/pass_frag.rs
  dataplane/tests/pass_l7.rs dataplane/tests/pass_tunnel.rs
  dataplane/tests/pass_wireguard.rs
  dataplane/tests/l7_http.rs dataplane/tests/l7_dns.rs
  policy/tests/dns.rs policy/tests/errors.rs policy/tests/explain_http.rs
  policy/tests/explain_self.rs policy/tests/http.rs policy/tests/reference.rs
  policy/tests/semantics.rs policy/tests/strict.rs
  topo/tests/manifest.rs model/tests/http_differential.rs
)
# The package a crate directory builds.
package_of() { grep -m1 '^name *=' "$1/Cargo.toml" | sed 's/.*"\(.*\)".*/\1/'; }
# A failing run is recorded and the next one still runs; the script fails
# at the end.
failed=()
run() { "$@" || failed+=("$*"); }
# `cargo test` over the given test files, one run per package.
run_targets() {
  local dirs
  dirs=$(printf '%s\n' "$@" | cut -d/ -f1 | sort -u)
  for d in $dirs; do
    local args=()
    for f in "$@"; do
      [[ $f == "$d"/* ]] && args+=(--test "$(basename "$f" .rs)")
    done
    run cargo test --no-fail-fast -p "$(package_of "$d")" "${args[@]}" -- --test-threads=2
  done
}

echo "== tier 1: tests that need no root"
run cargo test --workspace --no-fail-fast --lib --bins -- --test-threads=2
run cargo test --workspace --no-fail-fast --doc
run_targets "${NO_ROOT[@]}"
run bash scripts/fuzz-smoke.sh

report() {
  if ((${#failed[@]})); then
    printf 'test.sh: FAILED: %s\n' "${failed[@]}"
    exit 1
  fi
  echo "test.sh: all passed"
}

if ((!root)); then
  echo "test.sh: not root: skipping tier 2 (integration tests with network" \
       "namespaces, XDP and AF_XDP; they need root)"
  report
  exit 0
fi

echo "== tier 2: integration tests (root)"
# Integration tests start the `weir` binary; build it first so they find it.
cargo build -p weir --bin weir -p weir-cni --bin weir-cni
root_targets=()
for f in */tests/*.rs; do
  [[ " ${NO_ROOT[*]} " == *" $f "* ]] || root_targets+=("$f")
done
# Two test threads: each integration test runs a dataplane of its own and
# this machine has two cores.
run_targets "${root_targets[@]}"
report
