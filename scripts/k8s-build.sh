#!/usr/bin/env bash
# Builds the real Kubernetes control plane weir runs against (kube-apiserver,
# kube-controller-manager, kubectl, etcd v3.7) from Go modules, with the
# project's own module in deploy/dev/k8s. Nothing is downloaded but Go modules.
#
# Output: $WEIR_K8S_BIN (default ~/.cache/weir/k8s-v1.37.2/bin). A binary that
# exists is not rebuilt, so a second run costs nothing; the Go build cache
# makes a rebuild after `rm` fast. First build on 2 cores: about 6-8 minutes
# (kube-apiserver ~4, kube-controller-manager ~1.5, kubectl and etcd < 1).
set -euo pipefail
# Go from the machine's default install when it is not on PATH (CI shells).
[[ -x /usr/local/go/bin/go ]] && export PATH="$PATH:/usr/local/go/bin"
cd "$(dirname "$0")/../deploy/dev/k8s"

K8S_VERSION=v1.37.2
BIN=${WEIR_K8S_BIN:-$HOME/.cache/weir/k8s-$K8S_VERSION/bin}
mkdir -p "$BIN"

if ! command -v go >/dev/null 2>&1; then
  echo "k8s-build: Go is not installed (needs Go >= 1.26 and the Go module proxy)" >&2
  exit 1
fi

# Without the version stamp, `kubectl version` and the API server's /version
# say v0.0.0-master, which clients refuse to parse.
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=37"

for cmd in etcd kubectl kube-controller-manager kube-apiserver; do
  if [[ -x "$BIN/$cmd" ]]; then
    continue
  fi
  echo "k8s-build: building $cmd $K8S_VERSION (first time only)" >&2
  start=$SECONDS
  go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "./cmd/$cmd"
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  echo "k8s-build: $cmd built in $((SECONDS - start)) s" >&2
done
echo "$BIN"
