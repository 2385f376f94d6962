#!/usr/bin/env bash
# The control plane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler as host processes in
# the cgroup pgpilot/control-plane. Starts whatever is not running and waits until each one is healthy, so
# it is also how `e2e/fault apiserver-start` brings the apiserver back. Needs network-up.sh and pki.sh.
LOG_TAG=control-plane
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/daemons.sh"

PKI="$STATE_DIR/pki"
CP_DIR="$STATE_DIR/control-plane"
mkdir -p "$CP_DIR" "$LOG_DIR"
cp "$TEMPLATES/audit-policy.yaml" "$CP_DIR/audit-policy.yaml"

# healthy URL [CURL_OPTION]: the controllers serve /healthz on loopback with self-signed certificates (-k).
healthy() { curl -sf --max-time 2 --cacert "$PKI/ca.crt" "$@" >/dev/null; }

start_daemon etcd control-plane "$ETCD_BIN/etcd" \
  --name default --data-dir "$CP_DIR/etcd" \
  --listen-client-urls "$ETCD_CLIENT_URL" --advertise-client-urls "$ETCD_CLIENT_URL" \
  --listen-peer-urls "$ETCD_PEER_URL" --initial-advertise-peer-urls "$ETCD_PEER_URL" \
  --initial-cluster "default=$ETCD_PEER_URL" --listen-metrics-urls "" \
  --unsafe-no-fsync=true
wait_for "etcd" 60 curl -sf --max-time 2 "$ETCD_CLIENT_URL/health"

# Bound on every address so each kubelet can use its own bridge address (nftables answers only loopback and
# the bridges); advertises node-0's bridge address, which 1.37 requires to be non-loopback. The `kubernetes`
# Service's endpoint is static (templates/kubernetes-endpoints.yaml), not reconciled by the apiserver.
start_daemon kube-apiserver control-plane "$K8S_BIN/kube-apiserver" \
  --etcd-servers "$ETCD_CLIENT_URL" \
  --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" --advertise-address "$APISERVER_ADVERTISE_IP" \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" --cert-dir "$CP_DIR/apiserver" \
  --client-ca-file "$PKI/ca.crt" \
  --service-cluster-ip-range "$SERVICE_CIDR" --endpoint-reconciler-type none \
  --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction --allow-privileged=true \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
  --audit-policy-file "$CP_DIR/audit-policy.yaml" --audit-log-path "$LOG_DIR/audit.log" \
  --audit-log-format json --audit-log-maxsize 200 --audit-log-maxbackup 2 \
  --profiling=false
wait_for "kube-apiserver /readyz" 180 healthy "https://127.0.0.1:$APISERVER_PORT/readyz"

component_flags() {
  local kubeconfig="$PKI/$1.kubeconfig"
  echo --kubeconfig "$kubeconfig" --authentication-kubeconfig "$kubeconfig" \
    --authorization-kubeconfig "$kubeconfig" --bind-address 127.0.0.1 --cert-dir "$CP_DIR/$1" --leader-elect=false
}
# NotReady after 20 s without a kubelet heartbeat (default 50 s): node faults show up sooner in tests.
# shellcheck disable=SC2046 # component_flags is a list of words without spaces in them
start_daemon kube-controller-manager control-plane "$K8S_BIN/kube-controller-manager" \
  $(component_flags kube-controller-manager) --secure-port 10257 \
  --use-service-account-credentials=true --service-account-private-key-file "$PKI/sa.key" \
  --root-ca-file "$PKI/ca.crt" --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --node-monitor-grace-period 20s
# shellcheck disable=SC2046
start_daemon kube-scheduler control-plane "$K8S_BIN/kube-scheduler" \
  $(component_flags kube-scheduler) --secure-port 10259
wait_for "kube-controller-manager" 60 healthy https://127.0.0.1:10257/healthz -k
wait_for "kube-scheduler" 60 healthy https://127.0.0.1:10259/healthz -k
log "control plane ready: export KUBECONFIG=$KUBECONFIG_FILE"
