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
log "control plane up after $((SECONDS - start))s"
log "export KUBECONFIG=$KUBECONFIG_FILE"
