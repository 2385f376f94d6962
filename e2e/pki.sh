#!/usr/bin/env bash
# Certificates and kubeconfigs of the local cluster, made here with openssl: one CA signs the apiserver's
# serving certificate, every client certificate (admin, controllers, kube-proxy, kubelets, the apiserver's
# kubelet client) and the kubelets' serving certificates. Idempotent: existing files are kept.
# shellcheck disable=SC2034 # variables named in templates are read by render()
LOG_TAG=pki
source "$(dirname "$0")/lib/common.sh"

PKI="$STATE_DIR/pki"
mkdir -p "$PKI" "$OUT_DIR"
chmod 700 "$PKI"

new_key() { [[ -f $1 ]] || openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# A config with no default extensions, so a leaf carries only what `issue` adds.
OPENSSL_CNF="$PKI/openssl.cnf"
printf '[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n' >"$OPENSSL_CNF"

if [[ ! -f $PKI/ca.crt ]]; then
  new_key "$PKI/ca.key"
  openssl req -config "$OPENSSL_CNF" -new -x509 -key "$PKI/ca.key" -subj "/CN=pgpilot-e2e-ca" -days 3650 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$PKI/ca.crt"
  log "made the cluster CA"
fi

# issue NAME SUBJECT USAGE [SAN]: a key and a certificate signed by the CA; USAGE is clientAuth or serverAuth.
issue() {
  local name=$1 subject=$2 usage=$3 san=${4:-}
  [[ -f $PKI/$name.crt ]] && return
  new_key "$PKI/$name.key"
  local ext=(-addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature"
    -addext "extendedKeyUsage=$usage")
  [[ -z $san ]] || ext+=(-addext "subjectAltName=$san")
  openssl req -config "$OPENSSL_CNF" -new -x509 -key "$PKI/$name.key" -subj "$subject" -days 3650 \
    -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" "${ext[@]}" -out "$PKI/$name.crt"
  log "issued $name ($subject)"
}

apiserver_san="IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
apiserver_san+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
for ((i = 0; i < NODE_COUNT; i++)); do apiserver_san+=",IP:$(node_ip "$i")"; done
issue apiserver "/CN=kube-apiserver" serverAuth "$apiserver_san"
issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
issue admin "/O=system:masters/CN=pgpilot-admin" clientAuth
issue kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
issue kube-scheduler "/CN=system:kube-scheduler" clientAuth
issue kube-proxy "/CN=system:kube-proxy" clientAuth
for ((i = 0; i < NODE_COUNT; i++)); do
  node=$(node_name "$i")
  issue "$node" "/O=system:nodes/CN=system:node:$node" clientAuth
  issue "$node-serving" "/CN=$node" serverAuth "IP:$(node_ip "$i"),DNS:$node"
done

# Service-account tokens: the apiserver signs with the key, verifies with the public half.
new_key "$PKI/sa.key"
[[ -f $PKI/sa.pub ]] || openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"

# kubeconfig NAME SERVER DEST: a self-contained kubeconfig for the certificate NAME.
kubeconfig() {
  local USER_NAME=$1 SERVER=$2
  local CA_DATA CERT_DATA KEY_DATA
  CA_DATA=$(base64 -w0 "$PKI/ca.crt")
  CERT_DATA=$(base64 -w0 "$PKI/$1.crt")
  KEY_DATA=$(base64 -w0 "$PKI/$1.key")
  render "$TEMPLATES/kubeconfig.yaml" "$3"
  chmod 600 "$3"
}

local_server="https://127.0.0.1:$APISERVER_PORT"
kubeconfig admin "$local_server" "$KUBECONFIG_FILE"
for name in kube-controller-manager kube-scheduler kube-proxy; do
  kubeconfig "$name" "$local_server" "$PKI/$name.kubeconfig"
done
# Each kubelet reaches the apiserver through its own bridge address, so a node partition can cut exactly it.
for ((i = 0; i < NODE_COUNT; i++)); do
  kubeconfig "$(node_name "$i")" "https://$(node_ip "$i"):$APISERVER_PORT" "$PKI/$(node_name "$i").kubeconfig"
done
