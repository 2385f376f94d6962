#!/usr/bin/env bash
# `make demo`: the Helm chart on the local cluster with the local images, then examples/cluster-3.yaml; waits
# for 3 Ready PostgreSQL pods and shows `kubectl get pgc` and the pods.
LOG_TAG=demo
source "$(dirname "$0")/lib/common.sh"

CHART="$REPO_DIR/charts/pgpilot"
EXAMPLE="$REPO_DIR/examples/cluster-3.yaml"
NAMESPACE=pgpilot-demo
CLUSTER=$(awk '/^metadata:/ { m = 1 } m && /^  name:/ { print $2; exit }' "$EXAMPLE")

[[ -f $CHART/Chart.yaml ]] || die "the Helm chart is not there yet ($CHART/Chart.yaml): the demo installs pgpilot with it"
[[ -n $CLUSTER ]] || die "no cluster name in $EXAMPLE"
export KUBECONFIG=$KUBECONFIG_FILE

# The demo's operator manages the demo's namespace only: the tests install an operator per namespace on
# the same local cluster, and an operator for every namespace would reconcile their clusters too.
# The chart makes its Role and RoleBinding in the managed namespace, so that namespace must exist first
# (`--create-namespace` only makes the release's own).
k create namespace "$NAMESPACE" --dry-run=client -o yaml | k apply -f - >/dev/null
log "helm upgrade --install pgpilot (namespace pgpilot-system, managing $NAMESPACE)"
"$OUT_DIR/bin/helm" upgrade --install pgpilot "$CHART" --namespace pgpilot-system --create-namespace \
  --values "$E2E_DIR/demo-values.yaml" --set watchNamespace="$NAMESPACE" --wait --timeout 120s

k -n "$NAMESPACE" apply -f "$EXAMPLE"
log "waiting for 3 Ready members of $NAMESPACE/$CLUSTER"
ready_members() {
  [[ $(k -n "$NAMESPACE" get pods -l "pgpilot.io/cluster=$CLUSTER" --no-headers 2>/dev/null |
    awk '{ split($2, r, "/"); if (r[1] == r[2] && $3 == "Running") n++ } END { print n + 0 }') -eq 3 ]]
}
if ! (wait_for "3 Ready members" 300 ready_members); then
  k -n "$NAMESPACE" get pods -o wide
  k -n "$NAMESPACE" get events --sort-by .lastTimestamp | tail -n 20
  die "$CLUSTER did not get 3 Ready members"
fi
k -n "$NAMESPACE" get pgc
k -n "$NAMESPACE" get pods -o wide -L pgpilot.io/role
