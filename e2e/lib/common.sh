# Shared settings and helpers for the e2e scripts. Source it; it sets no traps and runs nothing.
# shellcheck shell=bash disable=SC2034 # a library: the scripts that source it use its settings
set -euo pipefail
shopt -s inherit_errexit

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$E2E_DIR/.." && pwd)
# shellcheck source=e2e/versions.env
source "$E2E_DIR/versions.env"

# Built binaries live outside the repository, keyed by version, so a fresh clone on the same machine reuses them.
CACHE_DIR=${PGPILOT_CACHE:-/var/cache/pgpilot}
# Runtime state of the local cluster. World-traversable (not under /root): non-root pods read volumes under it.
STATE_DIR=${PGPILOT_STATE:-/var/lib/pgpilot-e2e}
# Sockets that need a short path (shims); removed by cluster-down like the state.
RUNTIME_DIR=${PGPILOT_RUNTIME:-/run/pgpilot-e2e}
# Files the user and tests read: kubeconfig, kubectl/helm links, logs.
OUT_DIR="$REPO_DIR/target/e2e"
LOG_DIR="$OUT_DIR/logs"
KUBECONFIG_FILE="$OUT_DIR/kubeconfig"
TEMPLATES="$E2E_DIR/templates"

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

# Where each built component is (see build-components.sh).
K8S_BIN="$CACHE_DIR/bin/kubernetes-$K8S_VERSION"
ETCD_BIN="$CACHE_DIR/bin/etcd-$ETCD_VERSION"
CONTAINERD_BIN="$CACHE_DIR/bin/containerd-$CONTAINERD_VERSION"
RUNC_BIN="$CACHE_DIR/bin/runc-$RUNC_VERSION"
COREDNS_BIN="$CACHE_DIR/bin/coredns-$COREDNS_VERSION"
LOCAL_PATH_BIN="$CACHE_DIR/bin/local-path-provisioner-$LOCAL_PATH_VERSION"
TOXIPROXY_BIN="$CACHE_DIR/bin/toxiproxy-$TOXIPROXY_VERSION"
CNI_BIN_DIR=/usr/lib/cni

# The cluster's layout. Every address is this environment's own: loopback, the node bridges and the pods
# behind them. 10.244/16 and 10.96/16 collide with nothing on this machine (checked with `ip route`).
NODE_COUNT=3
POD_CIDR=10.244.0.0/16          # node i: bridge pgp-br<i>, pods in 10.244.i.0/24, host side 10.244.i.1
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
APISERVER_PORT=6443
ETCD_CLIENT_URL=http://127.0.0.1:2379
ETCD_PEER_URL=http://127.0.0.1:2380
# node-0's bridge address: what the apiserver advertises (the `kubernetes` Service's endpoint).
APISERVER_ADVERTISE_IP=10.244.0.1
# Our own cgroup subtree in every v1 hierarchy: control-plane/ and node-<i>/ below it.
CGROUP_PARENT=pgpilot
# Host-wide directories the kubelets (device plugins, container log links), containerd's CNI cache and the
# pod network namespaces use whatever we configure.
HOST_PATHS=(/var/lib/kubelet /var/log/containers /var/lib/cni /run/netns)
NFT_TABLE=pgpilot                # inet table holding our guard rules and the fault hooks' rules
# Every pod's apiserver traffic passes its node's Toxiproxy proxy (a plain relay until `e2e/fault
# slow-apiserver` adds a toxic), listening on the node's bridge address; Toxiproxy's API is on loopback.
APISERVER_PROXY_PORT=6444
TOXIPROXY_API=127.0.0.1:8474

node_name() { echo "node-$1"; }
node_ip() { echo "10.244.$1.1"; }
node_subnet() { echo "10.244.$1.0/24"; }
node_bridge() { echo "pgp-br$1"; }
node_dir() { echo "$STATE_DIR/nodes/node-$1"; }
apiserver_proxy() { echo "apiserver-node-$1"; }   # node i's proxy, by its name in Toxiproxy
kubelet_port() { echo $((10250 + 10 * $1)); }
kubelet_healthz_port() { echo $((10248 + 10 * $1)); }
containerd_socket() { echo "$(node_dir "$1")/containerd.sock"; }
# node_index NAME: node-2 -> 2.
node_index() {
  [[ $1 =~ ^node-([0-9]+)$ ]] && (( BASH_REMATCH[1] < NODE_COUNT )) || die "no such node: $1"
  echo "${BASH_REMATCH[1]}"
}

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S.%3N)" "${LOG_TAG:-e2e}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.5 s until it succeeds or time runs out.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}

# render TEMPLATE DEST: substitutes the ${VARS} named in TEMPLATE (and only those; every one must be set) and
# writes DEST only when its content changes; sets RENDER_CHANGED to true or false accordingly.
render() {
  local template=$1 dest=$2 var vars=()
  for var in $(grep -o '\${[A-Za-z_][A-Za-z_0-9]*}' "$template" | sort -u | tr -d '${}'); do
    [[ -v $var ]] || die "$template needs \$$var"
    vars+=("$var")
  done
  local content
  content=$( ((${#vars[@]} == 0)) || export "${vars[@]}"; envsubst "${vars[*]/#/\$}" <"$template")
  RENDER_CHANGED=false
  if [[ -f $dest ]] && [[ $(<"$dest") == "$content" ]]; then return 0; fi
  RENDER_CHANGED=true
  mkdir -p "$(dirname "$dest")"
  printf '%s\n' "$content" >"$dest.tmp" && mv "$dest.tmp" "$dest"
  log "wrote $dest"
}

# pod_netns IP: the name (under /run/netns) of the pod network namespace that holds IP.
pod_netns() {
  local ns
  for ns in $(ip netns list | awk '{print $1}'); do
    ip -n "$ns" -4 -o addr show dev eth0 2>/dev/null | grep -q " $1/" && { echo "$ns"; return; }
  done
  return 1
}

# kubectl against the local cluster as its admin.
k() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
