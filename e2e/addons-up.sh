#!/usr/bin/env bash
# What makes the nodes a usable cluster: kube-proxy (nftables mode) for Service ClusterIPs, CoreDNS for
# Service names, and the default StorageClass (local-path-provisioner). Idempotent: applies the rendered
# manifests (no-op when unchanged); kube-proxy-up.sh restarts kube-proxy only when its configuration changed.
# shellcheck disable=SC2034 # variables named in templates are read by render()
LOG_TAG=addons
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/images.sh"

ADDONS_DIR="$STATE_DIR/addons"

"$E2E_DIR/kube-proxy-up.sh"

NODE_PATH_MAP=$(for ((i = 0; i < NODE_COUNT; i++)); do
  printf '{"node": "%s", "paths": ["%s/volumes"]}\n' "$(node_name "$i")" "$(node_dir "$i")"
done | jq -sc .)
for addon in kubernetes-endpoints coredns local-path; do
  render "$TEMPLATES/$addon.yaml" "$ADDONS_DIR/$addon.yaml"
  k apply --server-side --field-manager pgpilot-e2e -f "$ADDONS_DIR/$addon.yaml" >/dev/null
done
wait_for "CoreDNS" 120 k -n kube-system rollout status deployment/coredns --timeout 2s
wait_for "local-path-provisioner" 120 k -n local-path-storage rollout status deployment/local-path-provisioner --timeout 2s
log "kube-proxy, CoreDNS and the local-path StorageClass are up"
