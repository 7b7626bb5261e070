#!/usr/bin/env bash
# Starts or stops a real Kubernetes control plane on loopback for weir's
# tests and local clusters: etcd, kube-apiserver (RBAC on, strict TLS) and
# kube-controller-manager, built by scripts/k8s-build.sh.
#
#   k8s-control-plane.sh start DIR [PORT]   certificates, data and logs under DIR;
#                                           prints the admin kubeconfig's path when /readyz answers
#   k8s-control-plane.sh stop DIR           stops what `start DIR` started (pid files), keeps DIR
#
# Ports: the API server listens on 127.0.0.1:PORT (default: a free one);
# etcd on two more free loopback ports. Several control planes can run side
# by side in different DIRs.
set -euo pipefail
# Go from the machine's default install when it is not on PATH (CI shells).
[[ -x /usr/local/go/bin/go ]] && export PATH="$PATH:/usr/local/go/bin"
here=$(cd "$(dirname "$0")" && pwd)
cmd=${1:-}; dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2; }

stop() {
  for p in kube-controller-manager kube-apiserver etcd; do
    f="$dir/$p.pid"
    [[ -f "$f" ]] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# X.509 v3 everywhere: kube-rs (rustls) refuses v1 certificates.
cert() { # name subject extfile-lines...
  local name=$1 subj=$2; shift 2
  printf '%s\n' "$@" > "$dir/pki/$name.ext"
  openssl genrsa -out "$dir/pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$dir/pki/$name.key" -subj "$subj" -out "$dir/pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/pki/$name.csr" -CA "$dir/pki/ca.crt" -CAkey "$dir/pki/ca.key" \
    -CAcreateserial -days 365 -extfile "$dir/pki/$name.ext" -out "$dir/pki/$name.crt" 2>/dev/null
}

kubeconfig() { # file user cert key
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: weir
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 < "$dir/pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 < "$3")
    client-key-data: $(base64 -w0 < "$4")
contexts:
- name: weir
  context: {cluster: weir, user: $2}
current-context: weir
KC
}

case "$cmd" in
stop) stop; exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop DIR [PORT]" >&2; exit 2 ;;
esac

bin=$("$here/k8s-build.sh" | tail -1)
mkdir -p "$dir/pki" "$dir/etcd" "$dir/logs"
dir=$(cd "$dir" && pwd)
stop
port=${3:-$(free_port)}
etcd_client=$(free_port); etcd_peer=$(free_port)

if [[ ! -f "$dir/pki/ca.crt" ]]; then
  openssl genrsa -out "$dir/pki/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$dir/pki/ca.key" -subj "/CN=weir-dev-ca" -days 365 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/pki/ca.crt" 2>/dev/null
  cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc"
  cert admin "/O=system:masters/CN=weir-admin" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
  cert controller-manager "/CN=system:kube-controller-manager" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$dir/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/pki/sa.key" -pubout -out "$dir/pki/sa.pub" 2>/dev/null
fi
kubeconfig "$dir/admin.kubeconfig" weir-admin "$dir/pki/admin.crt" "$dir/pki/admin.key"
kubeconfig "$dir/controller-manager.kubeconfig" controller-manager \
  "$dir/pki/controller-manager.crt" "$dir/pki/controller-manager.key"

setsid "$bin/etcd" --name weir --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "weir=http://127.0.0.1:$etcd_peer" --log-level warn \
  >"$dir/logs/etcd.log" 2>&1 < /dev/null &
echo $! > "$dir/etcd.pid"

setsid "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_client" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$port" \
  --endpoint-reconciler-type none --authorization-mode RBAC \
  --client-ca-file "$dir/pki/ca.crt" \
  --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
  --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key" \
  --service-account-issuer "https://127.0.0.1:$port" \
  --service-cluster-ip-range 10.96.0.0/16,fd00:96::/112 \
  >"$dir/logs/kube-apiserver.log" 2>&1 < /dev/null &
echo $! > "$dir/kube-apiserver.pid"

ready=
for _ in $(seq 300); do
  if "$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    ready=1; break
  fi
  kill -0 "$(cat "$dir/kube-apiserver.pid")" 2>/dev/null || break
  sleep 0.2
done
if [[ -z "$ready" ]]; then
  echo "k8s-control-plane: kube-apiserver did not become ready; last log lines:" >&2
  tail -5 "$dir/logs/kube-apiserver.log" >&2
  stop; exit 1
fi

setsid "$bin/kube-controller-manager" --kubeconfig "$dir/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
  --controllers serviceaccount-controller,serviceaccount-token-controller,namespace-controller,endpointslice-controller,garbage-collector-controller,root-ca-certificate-publisher-controller,node-lifecycle-controller \
  --leader-elect=false --use-service-account-credentials=true --secure-port 0 \
  --service-account-private-key-file "$dir/pki/sa.key" --root-ca-file "$dir/pki/ca.crt" \
  >"$dir/logs/kube-controller-manager.log" 2>&1 < /dev/null &
echo $! > "$dir/kube-controller-manager.pid"

# The policy CRDs weir reads: ClusterNetworkPolicy (network-policy-api v0.3.0),
# AdminNetworkPolicy/BaselineAdminNetworkPolicy (v0.1.7), each from the
# upstream module's own CRD YAML, and weir's own from deploy/crds.
kubectl=("$bin/kubectl" --kubeconfig "$dir/admin.kubeconfig")
crds=("$here/../deploy/crds/"*.yaml)
for v in v0.3.0 v0.1.7; do
  d=$(cd "$here/../deploy/dev/k8s" && go mod download -json "sigs.k8s.io/network-policy-api@$v" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  crds+=("$d"/config/crd/standard/policy.networking.k8s.io_*.yaml)
done
for f in "${crds[@]}"; do
  "${kubectl[@]}" apply --server-side -f "$f" >/dev/null
done
"${kubectl[@]}" wait --for condition=established --timeout 60s crd --all >/dev/null
echo "$dir/admin.kubeconfig"
