#!/usr/bin/env bash
# The cluster's network on the host: one Linux bridge per node holding the node's address (10.244.<i>.1/24),
# a route sending the Service range to node-0's bridge (kube-proxy's rules take it from there; nothing can
# leave through the default route), forwarding between the bridges, our nftables table, and the Toxiproxy
# proxies every pod reaches the apiserver through. Idempotent.
# shellcheck disable=SC2034 # variables named in templates are read by render()
LOG_TAG=network
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/daemons.sh"

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

bridges=() same_node=() steering=()
for ((i = 0; i < NODE_COUNT; i++)); do
  br=$(node_bridge "$i")
  bridges+=("\"$br\"")
  same_node+=("$(node_subnet "$i") . $(node_subnet "$i")")
  to="dnat ip to $(node_ip "$i"):$APISERVER_PROXY_PORT"
  steering+=("		ip saddr $(node_subnet "$i") ip daddr $KUBERNETES_SERVICE_IP tcp dport 443 $to"
    "		ip saddr $(node_subnet "$i") fib daddr type local tcp dport $APISERVER_PORT $to")
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
APISERVER_STEERING=$(printf '%s\n' "${steering[@]}")
render "$TEMPLATES/nftables.nft" "$STATE_DIR/nftables.nft"
if $RENDER_CHANGED || ! nft list table inet "$NFT_TABLE" >/dev/null 2>&1; then
  nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  nft -f "$STATE_DIR/nftables.nft"
  log "loaded nftables table inet $NFT_TABLE"
fi

# The proxies in front of the apiserver, one per node (see templates/nftables.nft): Toxiproxy, restarted when
# their configuration changed. Each relays to the apiserver at its node's own address, so the apiserver sees
# a node's pods' requests come from that node, and a partitioned node's proxy is cut off with its kubelet.
proxies=$(for ((i = 0; i < NODE_COUNT; i++)); do
  printf '{"name": "%s", "listen": "%s:%s", "upstream": "%s:%s", "enabled": true}\n' "$(apiserver_proxy "$i")" \
    "$(node_ip "$i")" "$APISERVER_PROXY_PORT" "$(node_ip "$i")" "$APISERVER_PORT"
done | jq -s .)
if [[ ! -f $STATE_DIR/toxiproxy.json || $(<"$STATE_DIR/toxiproxy.json") != "$proxies" ]]; then
  printf '%s\n' "$proxies" >"$STATE_DIR/toxiproxy.json"
  stop_daemon toxiproxy
fi
LOG_LEVEL=info start_daemon toxiproxy control-plane "$TOXIPROXY_BIN/toxiproxy-server" \
  -host "${TOXIPROXY_API%:*}" -port "${TOXIPROXY_API##*:}" -config "$STATE_DIR/toxiproxy.json"
proxies_up() {
  [[ $(curl -sf --max-time 2 "http://$TOXIPROXY_API/proxies" | jq '[.[] | select(.enabled)] | length') == "$NODE_COUNT" ]]
}
wait_for "Toxiproxy and its $NODE_COUNT proxies" 30 proxies_up

# A connection a pod opened before the steering rules existed bypasses its node's proxy for as long as it
# lives (conntrack keeps a connection's first NAT decision; its reply comes from the apiserver's port, not the
# proxy's). Reset such connections on the pod's side: the client reconnects, through the proxy.
conntrack -L -p tcp --state ESTABLISHED --orig-src "$POD_CIDR" --reply-port-src "$APISERVER_PORT" 2>/dev/null |
  sed -n 's/^.* src=\([0-9.]*\) dst=\([0-9.]*\) sport=\([0-9]*\) dport=\([0-9]*\) src=.*/\1 \2 \3 \4/p' |
  while read -r src dst sport dport; do
    ns=$(pod_netns "$src") || continue # a host address: a kubelet's or a proxy's own connection
    ip netns exec "$ns" ss -K -t -4 dst "$dst" dport = ":$dport" sport = ":$sport" >/dev/null
    log "reset $src:$sport -> $dst:$dport (opened before its traffic went through the proxy)"
  done
