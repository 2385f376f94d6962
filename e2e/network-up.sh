#!/usr/bin/env bash
# The cluster's network on the host: one Linux bridge per node holding the node's address (10.244.<i>.1/24),
# a route sending the Service range to node-0's bridge (kube-proxy's rules take it from there; nothing can
# leave through the default route), forwarding between the bridges, and our nftables table. Idempotent.
# shellcheck disable=SC2034 # variables named in templates are read by render()
LOG_TAG=network
source "$(dirname "$0")/lib/common.sh"

mkdir -p "$STATE_DIR"

# What cluster-down must undo beyond our own names: host directories the kubelets, containerds and CNI create
# (recorded only when absent now) and the nftables tables that exist before we start (iptables-nft ones the
# kubelets add are removed again).
for path in "${HOST_PATHS[@]}"; do
  [[ -e $path ]] || grep -qxF "$path" "$STATE_DIR/host-paths.created" 2>/dev/null || echo "$path" >>"$STATE_DIR/host-paths.created"
done
[[ -f $STATE_DIR/nft-tables.before ]] || nft list tables >"$STATE_DIR/nft-tables.before"

# set_sysctl KEY VALUE: the first value we ever changed is saved so cluster-down can restore it.
set_sysctl() {
  local key=$1 value=$2 saved="$STATE_DIR/sysctl.orig"
  [[ $(sysctl -n "$key") == "$value" ]] && return
  grep -q "^$key=" "$saved" 2>/dev/null || echo "$key=$(sysctl -n "$key")" >>"$saved"
  sysctl -qw "$key=$value"
  log "sysctl $key=$value"
}
[[ -d /proc/sys/net/bridge ]] || modprobe br_netfilter 2>/dev/null || die "kernel module br_netfilter is missing"
set_sysctl net.ipv4.ip_forward 1
# Bridged pod-to-pod traffic must pass conntrack, or replies from a Service's pod on the same node skip un-DNAT.
set_sysctl net.bridge.bridge-nf-call-iptables 1

bridges=() same_node=()
for ((i = 0; i < NODE_COUNT; i++)); do
  br=$(node_bridge "$i")
  bridges+=("\"$br\"")
  same_node+=("$(node_subnet "$i") . $(node_subnet "$i")")
  if ! ip link show "$br" >/dev/null 2>&1; then
    ip link add "$br" type bridge
    log "created bridge $br"
  fi
  ip addr show dev "$br" | grep -q "inet $(node_ip "$i")/" || ip addr add "$(node_ip "$i")/24" dev "$br"
  ip link set "$br" up
done
ip route replace "$SERVICE_CIDR" dev "$(node_bridge 0)" src "$APISERVER_ADVERTISE_IP"

BRIDGES=$(IFS=,; echo "${bridges[*]}")
SAME_NODE=$(IFS=,; echo "${same_node[*]}")
render "$TEMPLATES/nftables.nft" "$STATE_DIR/nftables.nft"
if $RENDER_CHANGED || ! nft list table inet "$NFT_TABLE" >/dev/null 2>&1; then
  nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  nft -f "$STATE_DIR/nftables.nft"
  log "loaded nftables table inet $NFT_TABLE"
fi
