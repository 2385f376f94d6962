#!/usr/bin/env bash
# node-up.sh INDEX: one Kubernetes node on this machine. It is a kubelet and a containerd of its own (own
# root, state, socket, ports), its pods on its own bridge and /24 (CNI bridge + host-local), all of it in
# the cgroup pgpilot/node-<i>: the daemons in daemons/, the pods under kubepods/ (the kubelet's cgroup root).
# Imports the cluster's own images. Idempotent; restarts a daemon whose rendered configuration changed.
# shellcheck disable=SC2034 # variables named in templates are read by render()
i=${1:?usage: node-up.sh INDEX}
LOG_TAG="node-$i"
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/daemons.sh"
source "$E2E_DIR/lib/images.sh"

NODE_NAME=$(node_name "$i")
NODE_DIR=$(node_dir "$i")
NODE_IP=$(node_ip "$i")
NODE_SUBNET=$(node_subnet "$i")
BRIDGE=$(node_bridge "$i")
CONTAINERD_SOCKET=$(containerd_socket "$i")
KUBELET_PORT=$(kubelet_port "$i")
KUBELET_HEALTHZ_PORT=$(kubelet_healthz_port "$i")
PKI="$STATE_DIR/pki"
REGISTRY_HOSTS_DIR="$NODE_DIR/registry-hosts"
SHIM_SOCKET_DIR="$RUNTIME_DIR/$NODE_NAME/s"
RUNC_ROOT="$RUNTIME_DIR/$NODE_NAME/runc"
mkdir -p "$NODE_DIR" "$LOG_DIR" "$SHIM_SOCKET_DIR"

render "$TEMPLATES/registry-hosts.toml" "$REGISTRY_HOSTS_DIR/_default/hosts.toml"
render "$TEMPLATES/cni.conflist" "$NODE_DIR/cni/10-pgpilot.conflist"
render "$TEMPLATES/containerd.toml" "$NODE_DIR/containerd.toml"
$RENDER_CHANGED && stop_daemon "containerd-$NODE_NAME"
start_daemon "containerd-$NODE_NAME" "$NODE_NAME/daemons" "$CONTAINERD_BIN/containerd" --config "$NODE_DIR/containerd.toml"
wait_for "containerd of $NODE_NAME" 60 node_ctr "$i" version

for image in "${CLUSTER_IMAGES[@]}"; do import_image "$i" "$image"; done

render "$TEMPLATES/kubelet.yaml" "$NODE_DIR/kubelet.yaml"
$RENDER_CHANGED && stop_daemon "kubelet-$NODE_NAME"
# The kubelet refuses to start unless its cgroup root (pgpilot/node-<i>) exists in every hierarchy: placing
# containerd in pgpilot/node-<i>/daemons made it.
start_daemon "kubelet-$NODE_NAME" "$NODE_NAME/daemons" "$K8S_BIN/kubelet" \
  --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$PKI/$NODE_NAME.kubeconfig" \
  --root-dir "$NODE_DIR/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
wait_for "kubelet of $NODE_NAME" 120 curl -sf --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
