#!/usr/bin/env bash
# `make cluster-down`: stops everything `make cluster` started and removes what it made — processes, pods'
# network namespaces and mounts, bridges, nftables tables, cgroups, sysctls, state. Safe to run twice.
LOG_TAG=cluster-down
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/daemons.sh"

start=$SECONDS
freezer="/sys/fs/cgroup/freezer/$CGROUP_PARENT"
# A frozen process (stopped node, frozen pod) cannot exit: thaw everything of ours first.
if [[ -d $freezer ]]; then
  find "$freezer" -name freezer.state | while read -r f; do echo THAWED >"$f"; done
fi

# Nodes: kubelets first (they would restart pods), then every pod through CRI so CNI releases its network,
# then containerd.
for ((i = 0; i < NODE_COUNT; i++)); do stop_daemon "kubelet-$(node_name "$i")"; done
for ((i = 0; i < NODE_COUNT; i++)); do
  node=$(node_name "$i")
  if daemon_pid "containerd-$node" >/dev/null; then
    "$CACHE_DIR/bin/crictl-$CRICTL_VERSION/crictl" --runtime-endpoint "unix://$(containerd_socket "$i")" \
      --timeout 30s rmp --all --force >/dev/null 2>&1 || log "warning: removing $node's pods failed"
  fi
  stop_daemon "containerd-$node"
done

stop_daemon kube-proxy
stop_daemon toxiproxy
"$K8S_BIN/kube-proxy" --cleanup --proxy-mode nftables >/dev/null 2>&1 || true
for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_daemon "$name" 30; done

# Whatever still runs in our cgroups (a shim whose containerd was killed) is ours to kill.
if [[ -d /sys/fs/cgroup/pids/$CGROUP_PARENT ]]; then
  pids=$(find "/sys/fs/cgroup/pids/$CGROUP_PARENT" -name cgroup.procs -exec cat {} + | tr '\n' ' ')
  if [[ -n ${pids// /} ]]; then
    log "killing leftover processes: $pids"
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $pids 2>/dev/null || true
    sleep 1
  fi
fi

# Mounts under our directories, deepest first; then pod network namespaces CNI could not release.
awk '{print $2}' /proc/self/mounts | { grep -E "^($STATE_DIR|$RUNTIME_DIR)(/|$)" || true; } | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m"
  log "unmounted $m"
done
for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
  ip netns delete "$ns" && log "deleted leftover network namespace $ns"
done

for ((i = 0; i < NODE_COUNT; i++)); do
  br=$(node_bridge "$i")
  ! ip link show "$br" >/dev/null 2>&1 || { ip link delete "$br"; log "deleted bridge $br"; }
done
if nft delete table inet "$NFT_TABLE" 2>/dev/null; then log "deleted nftables table inet $NFT_TABLE"; fi
if [[ -f $STATE_DIR/nft-tables.before ]]; then
  nft list tables | grep -vxF -f "$STATE_DIR/nft-tables.before" | while read -r _ family name; do
    nft delete table "$family" "$name" && log "deleted nftables table $family $name (made by a kubelet)"
  done
fi

cgroup_remove ""

if [[ -f $STATE_DIR/sysctl.orig ]]; then
  while IFS='=' read -r key value; do sysctl -qw "$key=$value" && log "restored sysctl $key=$value"; done \
    <"$STATE_DIR/sysctl.orig"
fi
if [[ -f $STATE_DIR/host-paths.created ]]; then
  while read -r path; do rm -rf "$path" && log "removed $path"; done <"$STATE_DIR/host-paths.created"
fi
rm -rf "$STATE_DIR" "$RUNTIME_DIR" "$KUBECONFIG_FILE"
log "cluster down in $((SECONDS - start))s"
