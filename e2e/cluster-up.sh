#!/usr/bin/env bash
# `make cluster`: the whole local Kubernetes on this machine, step by step; every step is idempotent, so on a
# healthy cluster this is a quick check. Ends with 3 Ready nodes and prints the KUBECONFIG to use.
LOG_TAG=cluster
source "$(dirname "$0")/lib/common.sh"

start=$SECONDS
[[ -x $K8S_BIN/kube-apiserver ]] || die "components are not built: run 'make components'"
"$E2E_DIR/network-up.sh"
"$E2E_DIR/pki.sh"
"$E2E_DIR/control-plane-up.sh"
"$E2E_DIR/base-images.sh"

pids=()
for ((i = 0; i < NODE_COUNT; i++)); do "$E2E_DIR/node-up.sh" "$i" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid" || die "a node failed to start: see $LOG_DIR"; done

all_nodes_ready() { [[ $(k get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l) -eq $NODE_COUNT ]]; }
wait_for "$NODE_COUNT Ready nodes" 180 all_nodes_ready
log "$NODE_COUNT nodes Ready after $((SECONDS - start))s"
"$E2E_DIR/addons-up.sh"

log "cluster ready in $((SECONDS - start))s"
echo "export KUBECONFIG=$KUBECONFIG_FILE"
