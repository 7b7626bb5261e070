#!/usr/bin/env bash
# Builds Policy Assistant (ex-cyclonus, kubernetes-sigs/network-policy-api's
# cmd/policy-assistant) to compare its simulated probe with
# `weir policy check` on the same inputs (docs/policy-tools.md).
#
# Its module (sigs.k8s.io/network-policy-api/policy-assistant) is NOT on the
# Go module proxy (`go list -m -versions` → 404 Not Found), so the source
# comes from a checkout of the repository: $1, or a clone of
# https://github.com/kubernetes-sigs/network-policy-api at $PA_COMMIT. Its
# dependencies come from the Go module proxy.
#
# Output: $WEIR_PA_BIN (default ~/.cache/weir/policy-assistant-$PA_COMMIT/
# policy-assistant); an existing binary is not rebuilt. First build on 2
# cores: about 5 minutes (downloads and client-go).
set -euo pipefail
[[ -x /usr/local/go/bin/go ]] && export PATH="$PATH:/usr/local/go/bin"

PA_COMMIT=${PA_COMMIT:-0eec1b0}
DIR=$HOME/.cache/weir/policy-assistant-$PA_COMMIT
BIN=${WEIR_PA_BIN:-$DIR/policy-assistant}
if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$DIR"
SRC=${1:-$DIR/src}
if [[ ! -d "$SRC/cmd/policy-assistant" ]]; then
  git clone -q https://github.com/kubernetes-sigs/network-policy-api "$SRC"
  git -C "$SRC" checkout -q "$PA_COMMIT"
fi
cd "$SRC/cmd/policy-assistant"
GOFLAGS=-mod=mod go build -o "$BIN" ./cmd/policy-assistant
echo "$BIN"
