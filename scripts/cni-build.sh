#!/usr/bin/env bash
# Builds the CNI tools weir's tests use, from the project's own Go module in
# deploy/dev/cni: cnitool (github.com/containernetworking/cni v1.3.1) and the
# reference plugins bridge and host-local (github.com/containernetworking/
# plugins v1.10.0), the independent peer weir-cni's results are compared with.
#
# Output: $WEIR_CNI_BIN (default ~/.cache/weir/cni-v1.3.1-v1.10.0/bin). A binary
# that exists is not rebuilt. First build on 2 cores: well under a minute.
set -euo pipefail
# Go from the machine's default install when it is not on PATH (CI shells).
[[ -x /usr/local/go/bin/go ]] && export PATH="$PATH:/usr/local/go/bin"
cd "$(dirname "$0")/../deploy/dev/cni"

VERSION=v1.3.1-v1.10.0
BIN=${WEIR_CNI_BIN:-$HOME/.cache/weir/cni-$VERSION/bin}
mkdir -p "$BIN"

if ! command -v go >/dev/null 2>&1; then
  echo "cni-build: Go is not installed (needs Go >= 1.26 and the Go module proxy)" >&2
  exit 1
fi

build() {
  local name=$1 pkg=$2
  if [[ -x "$BIN/$name" ]]; then
    return
  fi
  echo "cni-build: building $name (first time only)" >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN/$name.tmp" "$pkg"
  mv "$BIN/$name.tmp" "$BIN/$name"
}
build cnitool github.com/containernetworking/cni/cnitool
build bridge github.com/containernetworking/plugins/plugins/main/bridge
build host-local github.com/containernetworking/plugins/plugins/ipam/host-local
echo "$BIN"
