#!/usr/bin/env bash
# The local cluster itself, tested the way pgpilot uses it: a StatefulSet spread over the 3 nodes, pod and
# Service networking, DNS, volumes, RBAC, logs/exec, and the observable effect of every fault hook. Runs in
# its own namespace, undoes every fault it injected, prints one line per test and ends with "N passed, N failed".
# Arguments select tests by function name (e.g. `cluster-test.sh fault_kill dns`).
# shellcheck disable=SC2034 # variables named in the manifest template are read by render()
LOG_TAG=cluster-test
source "$(dirname "$0")/../lib/common.sh"
source "$E2E_DIR/lib/images.sh"

FAULT="$E2E_DIR/fault"
ONLY=("$@")
NAMESPACE="cluster-test-$(date +%s)"
IMAGE=$BASE_IMAGE
WORK=$(mktemp -d)
passed=0
failed=0

cleanup() {
  local i node
  for ((i = 0; i < NODE_COUNT; i++)); do
    node=$(node_name "$i")
    "$FAULT" heal "$node" >/dev/null 2>&1 || true # partition and slow-apiserver
    [[ $(cat "/sys/fs/cgroup/freezer/$CGROUP_PARENT/$node/freezer.state" 2>/dev/null) != FROZEN ]] ||
      "$FAULT" start "$node" >/dev/null 2>&1 || true
  done
  "$E2E_DIR/control-plane-up.sh" >/dev/null 2>&1 || true
  k delete namespace "$NAMESPACE" --wait=false >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# run NAME FUNCTION: runs one test in a subshell with errexit on; its output is shown only when it fails.
# Arguments to the script select tests: only those whose function name contains one of them run.
run() {
  local name=$1 rc start=$SECONDS
  selected "$2" || return 0
  set +e
  (set -eE; trap 'echo "failed: $BASH_COMMAND (line $LINENO)" >&2' ERR; "$2") >"$WORK/out" 2>&1
  rc=$?
  set -e
  if ((rc == 0)); then
    passed=$((passed + 1)); echo "ok - $name ($((SECONDS - start))s)"
  else
    failed=$((failed + 1)); echo "not ok - $name ($((SECONDS - start))s)"; tail -n 20 "$WORK/out" | sed 's/^/    /'
  fi
}
selected() {
  local pattern
  ((${#ONLY[@]})) || return 0
  for pattern in "${ONLY[@]}"; do [[ $1 == *"$pattern"* ]] && return 0; done
  return 1
}
fail() { echo "$*" >&2; exit 1; }
# eventually SECONDS COMMAND...: COMMAND succeeds within SECONDS (polled every 0.5 s).
eventually() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < deadline)) || return 1; sleep 0.5; done
}

kn() { k -n "$NAMESPACE" "$@"; }
pod_ip() { kn get pod "$1" -o jsonpath='{.status.podIP}'; }
pod_node() { kn get pod "$1" -o jsonpath='{.spec.nodeName}'; }
pod_ready() { [[ $(kn get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
pod_not_ready() { ! pod_ready "$1"; }
node_ready() { [[ $(k get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
node_not_ready() { ! node_ready "$1"; }
in_pod() { local pod=$1; shift; kn exec "$pod" -- "$@"; }
# fetch POD HOST PORT: what the web server at HOST:PORT answers, seen from POD (the last line: the pod name).
fetch() { in_pod "$1" timeout 2 bash -c "$(http_get "$2" "$3")"; }
http_get() { echo "exec 3<>/dev/tcp/$1/$2 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && tail -n 1 <&3"; }
cannot_fetch() { ! fetch "$@"; }
# fetch_in_netns POD HOST PORT: the same from inside POD's network namespace, entered from the host (works when
# the apiserver cannot reach the pod's kubelet).
fetch_in_netns() {
  local ns
  ns=$(pod_netns "$(pod_ip "$1")")
  ip netns exec "$ns" timeout 2 bash -c "$(http_get "$2" "$3")"
}
expect_eq() { [[ $1 == "$2" ]] || fail "$3: expected '$2', got '$1'"; }
# at_least / below SECONDS LIMIT WHAT: compares two decimal numbers.
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }' || fail "$3: took ${1}s, expected at least ${2}s"; }
below() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }' || fail "$3: took ${1}s, expected less than ${2}s"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# api_seconds POD: how long a new connection and one request to the apiserver through the `kubernetes`
# Service take from POD's network namespace (the way its containers reach it).
api_seconds() {
  ip netns exec "$(pod_netns "$(pod_ip "$1")")" curl -s -o /dev/null -w '%{time_total}' --max-time 30 \
    --cacert "$STATE_DIR/pki/ca.crt" "https://$KUBERNETES_SERVICE_IP/readyz"
}
toxics_of() { curl -sf "http://$TOXIPROXY_API/proxies/$(apiserver_proxy "$(node_index "$1")")/toxics" | jq length; }

test_statefulset_spreads() {
  local placement
  placement=$(kn get pods -l app=web -o jsonpath='{range .items[*]}{.spec.nodeName} {.status.podIP}{"\n"}{end}')
  echo "$placement"
  expect_eq "$(awk '{print $1}' <<<"$placement" | sort -u | wc -l)" 3 "distinct nodes"
  expect_eq "$(awk '{print $2}' <<<"$placement" | sort -u | wc -l)" 3 "distinct pod IPs"
  local pod
  for pod in web-0 web-1 web-2; do pod_ready "$pod" || fail "$pod is not Ready"; done
}

test_pod_to_pod_across_nodes() {
  expect_eq "$(fetch web-0 "$(pod_ip web-1)" 8080)" web-1 "web-0 -> web-1"
  expect_eq "$(fetch web-1 "$(pod_ip web-2)" 8080)" web-2 "web-1 -> web-2"
  expect_eq "$(fetch web-2 "$(pod_ip web-0)" 8080)" web-0 "web-2 -> web-0"
}

test_service_clusterip() {
  local ip answer
  ip=$(kn get service web -o jsonpath='{.spec.clusterIP}')
  answer=$(fetch web-0 "$ip" 80)
  [[ $answer =~ ^web-[012]$ ]] || fail "pod -> ClusterIP $ip answered '$answer'"
  answer=$(curl -s --max-time 2 "http://$ip/" | tail -n 1)
  [[ $answer =~ ^web-[012]$ ]] || fail "host -> ClusterIP $ip answered '$answer'"
  in_pod web-1 timeout 2 bash -c "exec 3<>/dev/tcp/$KUBERNETES_SERVICE_IP/443" || fail "pod cannot reach the kubernetes Service"
  # Hairpin: web-0 through a Service whose only endpoint is web-0.
  expect_eq "$(fetch web-0 "$(kn get service web-0 -o jsonpath='{.spec.clusterIP}')" 80)" web-0 "web-0 -> itself via Service"
}

test_dns() {
  local ip
  ip=$(kn get service web -o jsonpath='{.spec.clusterIP}')
  expect_eq "$(in_pod web-0 getent hosts "web.$NAMESPACE.svc" | awk '{print $1}')" "$ip" "web.$NAMESPACE.svc"
  expect_eq "$(in_pod web-0 getent hosts "web-2.web-pods.$NAMESPACE.svc.$CLUSTER_DOMAIN" | awk '{print $1}')" \
    "$(pod_ip web-2)" "headless name of web-2"
  expect_eq "$(in_pod web-2 getent hosts kubernetes.default | awk '{print $1}')" "$KUBERNETES_SERVICE_IP" "kubernetes.default"
  expect_eq "$(fetch web-1 web 80 | grep -c '^web-')" 1 "fetch by Service name"
}

test_pods_have_no_way_out() {
  local routes
  routes=$(in_pod web-0 awk 'NR > 1 { print $2 "/" $8 }' /proc/net/route | sort)
  echo "$routes"
  # Destination/Mask in hex, little-endian: 10.244.<i>.0/24, 10.244.0.0/16 and 10.96.0.0/16; no 00000000/00000000.
  ! grep -q '^00000000/' <<<"$routes" || fail "pod has a default route"
  expect_eq "$(wc -l <<<"$routes")" 3 "number of routes in the pod"
}

test_missing_image_is_not_pulled_from_outside() {
  kn run not-imported --image docker.io/library/busybox:1.36 --restart Never >/dev/null
  pull_failed() { kn get pod not-imported -o jsonpath='{.status.containerStatuses[0].state.waiting.message}' | grep -q .; }
  eventually 30 pull_failed || fail "the pull of an image that was not imported did not fail"
  local message
  message=$(kn get pod not-imported -o jsonpath='{.status.containerStatuses[0].state.waiting.message}')
  echo "$message"
  grep -q 'dial tcp 127.0.0.1:1: connect: connection refused' <<<"$message" || fail "the pull went elsewhere"
  kn delete pod not-imported --now >/dev/null
}

test_endpointslice_lists_ready_pods() {
  local slice pods
  slice=$(kn get endpointslices -l kubernetes.io/service-name=web \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}' | sort)
  pods=$(for pod in web-0 web-1 web-2; do pod_ready "$pod" && pod_ip "$pod" && echo; done | grep . | sort)
  expect_eq "$slice" "$pods" "ready endpoints vs Ready pods"
  expect_eq "$(wc -l <<<"$slice")" 3 "ready endpoints"
}

test_volume_survives_pod_deletion() {
  local marker="written-$RANDOM$RANDOM" old_uid
  expect_eq "$(in_pod web-1 id -u)" 999 "container user"
  in_pod web-1 bash -c "echo $marker > /data/marker"
  old_uid=$(kn get pod web-1 -o jsonpath='{.metadata.uid}')
  kn delete pod web-1 --wait=true
  eventually 90 pod_ready web-1 || fail "web-1 did not come back"
  [[ $(kn get pod web-1 -o jsonpath='{.metadata.uid}') != "$old_uid" ]] || fail "web-1 was not recreated"
  expect_eq "$(in_pod web-1 cat /data/marker)" "$marker" "file on the PVC after the pod was recreated"
}

test_pod_token_is_limited_by_rbac() {
  in_pod web-0 cat /var/run/secrets/kubernetes.io/serviceaccount/token >"$WORK/token"
  in_pod web-0 cat /var/run/secrets/kubernetes.io/serviceaccount/ca.crt >"$WORK/ca.crt"
  local as_pod=("$K8S_BIN/kubectl" --kubeconfig /dev/null --server "https://$KUBERNETES_SERVICE_IP"
    --certificate-authority "$WORK/ca.crt" --token "$(<"$WORK/token")" -n "$NAMESPACE")
  expect_eq "$("${as_pod[@]}" get configmap allowed -o jsonpath='{.data.answer}')" 42 "granted ConfigMap"
  local denied
  denied=$("${as_pod[@]}" get secret forbidden 2>&1) && fail "the pod's token read a Secret: $denied"
  grep -q Forbidden <<<"$denied" || fail "expected Forbidden, got: $denied"
}

test_logs_and_exec() {
  kn logs web-0 | grep -qx "serving on 8080 as web-0" || fail "kubectl logs: $(kn logs web-0)"
  expect_eq "$(in_pod web-2 cat /etc/hostname)" web-2 "kubectl exec"
}

test_kubelet_refuses_anonymous() {
  local node ip code
  node=$(pod_node web-0); ip=$(k get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "https://$ip:$(kubelet_port "$(node_index "$node")")/pods")
  expect_eq "$code" 401 "anonymous request to $node's kubelet"
}

test_fault_kill() {
  local before
  before=$(kn get pod web-0 -o jsonpath='{.status.containerStatuses[0].restartCount}')
  "$FAULT" kill "$NAMESPACE/web-0"
  restarted() { (($(kn get pod web-0 -o jsonpath='{.status.containerStatuses[0].restartCount}') > before)); }
  eventually 30 restarted || fail "restartCount stayed at $before"
  eventually 30 pod_ready web-0 || fail "web-0 not Ready after its restart"
}

test_fault_freeze() {
  "$FAULT" freeze "$NAMESPACE/web-1"
  eventually 20 pod_not_ready web-1 || fail "frozen web-1 stayed Ready"
  not_in_slice() { ! kn get endpointslices -l kubernetes.io/service-name=web \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.targetRef.name}{"\n"}{end}' | grep -qx web-1; }
  eventually 10 not_in_slice || fail "frozen web-1 is still a ready endpoint"
  "$FAULT" thaw "$NAMESPACE/web-1"
  eventually 20 pod_ready web-1 || fail "web-1 not Ready after thaw"
}

test_fault_cut() {
  local ip
  ip=$(pod_ip web-2)
  "$FAULT" cut "$NAMESPACE/web-2"
  cannot_fetch web-0 "$ip" 8080 || fail "web-0 still reaches cut web-2"
  cannot_fetch web-2 "$(pod_ip web-0)" 8080 || fail "cut web-2 still reaches web-0"
  "$FAULT" heal "$NAMESPACE/web-2"
  eventually 20 fetch web-0 "$ip" 8080 || fail "web-0 cannot reach web-2 after heal"
  eventually 20 pod_ready web-2 || fail "web-2 not Ready after heal"
}

test_fault_partition_node() {
  local node ip
  node=$(pod_node web-2); ip=$(pod_ip web-2)
  "$FAULT" partition "$node"
  cannot_fetch web-0 "$ip" 8080 || fail "web-0 still reaches web-2 on partitioned $node"
  ! fetch_in_netns web-2 "$KUBERNETES_SERVICE_IP" 443 || fail "web-2 still reaches the apiserver"
  ! fetch_in_netns web-2 "$(pod_ip web-0)" 8080 || fail "web-2 still reaches web-0"
  expect_eq "$(curl -s --max-time 2 "http://$ip:8080/" | tail -n 1)" web-2 "web-2 keeps serving on its node"
  ! kn logs web-2 --request-timeout 3s >/dev/null 2>&1 || fail "the apiserver still reaches $node's kubelet"
  eventually 60 node_not_ready "$node" || fail "$node stayed Ready while partitioned"
  "$FAULT" heal "$node"
  eventually 20 fetch web-0 "$ip" 8080 || fail "web-0 cannot reach web-2 after heal"
  eventually 60 node_ready "$node" || fail "$node not Ready after heal"
  eventually 20 pod_ready web-2 || fail "web-2 not Ready after heal"
}

test_fault_force_delete() {
  local node ip uid
  node=$(pod_node web-2); ip=$(pod_ip web-2); uid=$(kn get pod web-2 -o jsonpath='{.metadata.uid}')
  "$FAULT" partition "$node"
  "$FAULT" force-delete "$NAMESPACE/web-2"
  # Gone from the apiserver at once, though its kubelet could not confirm anything (the StatefulSet may
  # already have created its successor, under the same name).
  old_pod_gone() { [[ $(kn get pod web-2 -o jsonpath='{.metadata.uid}' 2>/dev/null) != "$uid" ]]; }
  eventually 3 old_pod_gone || fail "web-2 (uid $uid) still exists after force-delete"
  expect_eq "$(curl -s --max-time 2 "http://$ip:8080/" | tail -n 1)" web-2 "the force-deleted pod's container, still running on $node"
  "$FAULT" heal "$node"
  eventually 90 pod_ready web-2 || fail "no Ready web-2 after heal"
  old_container_gone() { ! curl -s --max-time 1 "http://$ip:8080/" >/dev/null || [[ $(pod_ip web-2) == "$ip" ]]; }
  eventually 30 old_container_gone || fail "the force-deleted pod's container still serves at $ip after heal"
}

test_fault_lease_recreate() {
  kn apply -f - >/dev/null <<EOF
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: lt-leader
  labels: {app.kubernetes.io/instance: lt}
  annotations: {pgpilot.io/state: kept-by-the-members}
  ownerReferences:
    - {apiVersion: v1, kind: ConfigMap, name: allowed, uid: $(kn get configmap allowed -o jsonpath='{.metadata.uid}')}
spec:
  holderIdentity: lt-0
  leaseDurationSeconds: 15
  leaseTransitions: 4
  acquireTime: "2026-01-01T00:00:00.000000Z"
  renewTime: "2026-01-01T00:00:10.000000Z"
EOF
  local uid lease
  uid=$(kn get lease lt-leader -o jsonpath='{.metadata.uid}')
  "$FAULT" lease-recreate "$NAMESPACE/lt"
  lease=$(kn get lease lt-leader -o json)
  [[ $(jq -r .metadata.uid <<<"$lease") != "$uid" ]] || fail "the Lease has its old uid: not recreated"
  expect_eq "$(jq -c .spec <<<"$lease")" '{"leaseDurationSeconds":15,"leaseTransitions":0}' "spec of the recreated Lease"
  expect_eq "$(jq -c '.metadata.annotations // {}' <<<"$lease")" '{}' "annotations of the recreated Lease"
  expect_eq "$(jq -r '.metadata.labels["app.kubernetes.io/instance"]' <<<"$lease")" lt "its label"
  expect_eq "$(jq -r '.metadata.ownerReferences[0].name' <<<"$lease")" allowed "its owner"
}

test_fault_slow_apiserver() {
  local slow fast seconds
  slow=$(pod_node web-1); fast=$(pod_node web-0)
  seconds=$(api_seconds web-1); echo "web-1 ($slow) before: ${seconds}s"
  below "$seconds" 1 "a request from web-1 before the fault"
  "$FAULT" slow-apiserver "$slow" 1500
  seconds=$(api_seconds web-1); echo "web-1 ($slow) slowed: ${seconds}s"
  at_least "$seconds" 1.5 "a request from web-1 on $slow with responses 1500 ms late"
  seconds=$(api_seconds web-0); echo "web-0 ($fast) meanwhile: ${seconds}s"
  below "$seconds" 1 "a request from web-0 on $fast"
  "$FAULT" slow-apiserver "$slow" 1500 | grep -q already || fail "the second slow-apiserver did not see the first"
  expect_eq "$(toxics_of "$slow")" 1 "toxics after slow-apiserver twice"
  "$FAULT" heal-apiserver "$slow"
  expect_eq "$(toxics_of "$slow")" 0 "toxics after heal-apiserver"
  seconds=$(api_seconds web-1); echo "web-1 ($slow) healed: ${seconds}s"
  below "$seconds" 1 "a request from web-1 after heal"
  "$FAULT" slow-apiserver "$slow" 1500 >/dev/null
  "$FAULT" heal "$slow" >/dev/null
  expect_eq "$(toxics_of "$slow")" 0 "toxics after heal <node>"
}

# The shape the HA scenarios need: on a connection a client already holds, a write sent while responses are
# late reaches the apiserver and commits at once; its reply comes only after the delay (past a client's
# timeout). An HTTP/1.1 keep-alive connection from web-1's network namespace, opened before the fault.
test_fault_slow_apiserver_held_connection() {
  local node pki="$STATE_DIR/pki" status sent elapsed body
  node=$(pod_node web-1)
  coproc TLS { exec ip netns exec "$(pod_netns "$(pod_ip web-1)")" openssl s_client -quiet -verify_return_error \
    -connect "$KUBERNETES_SERVICE_IP:443" -CAfile "$pki/ca.crt" -cert "$pki/admin.crt" -key "$pki/admin.key" 2>/dev/null; }
  printf 'GET /readyz HTTP/1.1\r\nHost: kubernetes\r\n\r\n' >&"${TLS[1]}"
  read -r -t 5 status <&"${TLS[0]}" || fail "no answer on the connection before the fault"
  expect_eq "${status%$'\r'}" "HTTP/1.1 200 OK" "the answer before the fault"
  while read -r -t 0.5 _ <&"${TLS[0]}"; do :; done
  "$FAULT" slow-apiserver "$node" 3000
  body='{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "committed"}}'
  sent=$(now_ms)
  printf 'POST /api/v1/namespaces/%s/configmaps HTTP/1.1\r\nHost: kubernetes\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$NAMESPACE" "${#body}" "$body" >&"${TLS[1]}"
  ! read -r -t 1.5 status <&"${TLS[0]}" || fail "the reply came within 1.5 s: '$status'"
  kn get configmap committed >/dev/null || fail "the write was not committed while its reply was held"
  read -r -t 5 status <&"${TLS[0]}" || fail "no reply 6.5 s after the write"
  elapsed=$(($(now_ms) - sent))
  echo "reply after ${elapsed} ms: $status"
  expect_eq "${status%$'\r'}" "HTTP/1.1 201 Created" "the late reply"
  ((elapsed >= 3000)) || fail "the reply came after $elapsed ms, before the 3000 ms delay"
  "$FAULT" heal-apiserver "$node"
  kill "$TLS_PID" 2>/dev/null || true
}

test_fault_stop_node() {
  local node
  node=$(pod_node web-1)
  "$FAULT" stop "$node"
  eventually 60 node_not_ready "$node" || fail "stopped $node stayed Ready"
  cannot_fetch web-0 "$(pod_ip web-1)" 8080 || fail "web-1 on stopped $node still answers"
  "$FAULT" start "$node"
  eventually 60 node_ready "$node" || fail "$node not Ready after start"
  eventually 60 pod_ready web-1 || fail "web-1 not Ready after its node started"
}

test_fault_apiserver() {
  readyz() { curl -sf --max-time 2 --cacert "$STATE_DIR/pki/ca.crt" "https://127.0.0.1:$APISERVER_PORT/readyz"; }
  "$FAULT" apiserver-stop
  ! readyz >/dev/null 2>&1 || fail "/readyz still answers with the apiserver stopped"
  "$FAULT" apiserver-start
  eventually 60 readyz || fail "/readyz did not recover"
  # What the suites after this one rely on: pods reach the apiserver through its Service at once, and a
  # Service created now is routed within seconds, not after kube-proxy's watch backoff.
  eventually 5 in_pod web-1 timeout 2 bash -c "exec 3<>/dev/tcp/$KUBERNETES_SERVICE_IP/443" ||
    fail "pod cannot reach the kubernetes Service after the restart"
  kn create service clusterip after-restart --tcp 80:8080 >/dev/null
  kn set selector service after-restart statefulset.kubernetes.io/pod-name=web-0 >/dev/null
  local ip
  ip=$(kn get service after-restart -o jsonpath='{.spec.clusterIP}')
  eventually 10 fetch web-1 "$ip" 80 || fail "a Service created after the restart is not routed within 10 s"
}

k create namespace "$NAMESPACE" >/dev/null
render "$E2E_DIR/tests/cluster-test.yaml" "$WORK/manifest.yaml" 2>/dev/null
kn apply -f "$WORK/manifest.yaml" >/dev/null
echo "# namespace $NAMESPACE"
start=$SECONDS
kn rollout status statefulset/web --timeout 180s >/dev/null || true
echo "# StatefulSet rolled out in $((SECONDS - start))s"

run "StatefulSet of 3: Running and Ready on 3 nodes, distinct IPs" test_statefulset_spreads
run "pod -> pod across nodes" test_pod_to_pod_across_nodes
run "pod and host -> Service ClusterIP (also a pod -> itself)" test_service_clusterip
run "Service and pod names resolve in a pod" test_dns
run "pods have no default route" test_pods_have_no_way_out
run "an image that was not imported is pulled from nowhere" test_missing_image_is_not_pulled_from_outside
run "EndpointSlice lists exactly the ready pods" test_endpointslice_lists_ready_pods
run "a file on a PVC survives deleting the pod (non-root)" test_volume_survives_pod_deletion
run "a pod's token is refused a Secret its Role does not grant" test_pod_token_is_limited_by_rbac
run "kubectl logs and exec" test_logs_and_exec
run "kubelets refuse anonymous requests" test_kubelet_refuses_anonymous
run "fault kill: the container restarts, restartCount grows" test_fault_kill
run "fault freeze/thaw: NotReady, then Ready" test_fault_freeze
run "fault cut/heal: a pod unreachable, then reachable" test_fault_cut
run "fault partition/heal: a node's pods cut off but running, then back" test_fault_partition_node
run "fault force-delete on a partitioned node: the pod object goes at once, its container only after heal" test_fault_force_delete
run "fault stop/start: the node goes NotReady, then Ready" test_fault_stop_node
run "fault lease-recreate: a fresh Lease, no holder, transitions 0, labels and owner kept" test_fault_lease_recreate
run "fault slow-apiserver/heal: only that node's pods wait, idempotent, heal restores" test_fault_slow_apiserver
run "fault slow-apiserver on a held connection: the write commits, its reply is late" test_fault_slow_apiserver_held_connection
run "fault apiserver-stop/start: /readyz fails, recovers, Services route at once" test_fault_apiserver

echo "$passed passed, $failed failed"
((failed == 0))
