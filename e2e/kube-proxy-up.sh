#!/usr/bin/env bash
# kube-proxy (nftables mode) for Service ClusterIPs: one for the machine (the nodes share the host's network
# namespace), kept with the control plane so Service routing stays up while a node is stopped. Starts it
# unless it runs, restarting it when its configuration changed or when called as `kube-proxy-up.sh restart`.
#
# `e2e/fault apiserver-start` restarts it: while a lone apiserver starts, kube-proxy's watches reconnect
# before RBAC is served, are refused "forbidden" and back off (45 s measured), so Services and endpoints
# changed in that time would stay unprogrammed. A fresh kube-proxy lists everything from the ready
# apiserver; the nftables rules it replaces stay in force until then.
LOG_TAG=kube-proxy
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/daemons.sh"

# shellcheck disable=SC2034 # read by render()
PKI="$STATE_DIR/pki"

render "$TEMPLATES/kube-proxy.yaml" "$STATE_DIR/addons/kube-proxy.yaml"
if $RENDER_CHANGED || [[ ${1:-} == restart ]]; then stop_daemon kube-proxy; fi
start_daemon kube-proxy control-plane "$K8S_BIN/kube-proxy" --config "$STATE_DIR/addons/kube-proxy.yaml"
wait_for "kube-proxy" 60 curl -sf --max-time 2 http://127.0.0.1:10256/healthz
