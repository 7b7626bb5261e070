#!/usr/bin/env bash
# Builds wireguard-go (golang.zx2c4.com/wireguard, the reference userspace
# WireGuard) from the Go module proxy: the independent peer of weir's
# WireGuard interop test (tests/tests/wireguard.rs). The kernel here has no
# WireGuard module; wireguard-go makes a TUN device and serves the UAPI
# socket (/var/run/wireguard/<if>.sock) that `wg` would use.
#
# Output: $WEIR_WG_BIN (default ~/.cache/weir/wireguard-go-$VERSION/bin),
# holding `wireguard-go`. A binary that exists is not rebuilt (seconds the
# first time).
set -euo pipefail
# Go from the machine's default install when it is not on PATH (CI shells).
[[ -x /usr/local/go/bin/go ]] && export PATH="$PATH:/usr/local/go/bin"

VERSION=v0.0.0-20260522210424-ecfc5a8d5446
BIN=${WEIR_WG_BIN:-$HOME/.cache/weir/wireguard-go-$VERSION/bin}
mkdir -p "$BIN"
if [[ ! -x "$BIN/wireguard-go" ]]; then
  if ! command -v go >/dev/null 2>&1; then
    echo "wireguard-go: Go is not installed (needs Go and the Go module proxy)" >&2
    exit 1
  fi
  echo "wireguard-go: building golang.zx2c4.com/wireguard@$VERSION (first time only)" >&2
  GOBIN="$BIN.tmp" go install -trimpath -ldflags "-s -w" "golang.zx2c4.com/wireguard@$VERSION"
  mv "$BIN.tmp/wireguard" "$BIN/wireguard-go"
  rmdir "$BIN.tmp"
fi
echo "$BIN"
