#!/usr/bin/env bash
# Builds every pinned component of the local cluster from its Go module into $CACHE_DIR/bin/<name>-<version>/.
# Idempotent: a component whose directory exists is skipped. Links kubectl and helm into target/e2e/bin.
LOG_TAG=build
source "$(dirname "$0")/lib/common.sh"

BIN="$CACHE_DIR/bin"
mkdir -p "$BIN" "$OUT_DIR/bin"

# build NAME VERSION COMMAND...: runs COMMAND with $out set to a fresh directory, then publishes it atomically.
build() {
  local name=$1 version=$2; shift 2
  local dest="$BIN/$name-$version"
  if [[ -d $dest ]]; then log "$name $version: cached"; return; fi
  local start=$SECONDS
  out="$dest.tmp"; rm -rf "$out"; mkdir -p "$out"
  log "$name $version: building"
  "$@"
  mv "$out" "$dest"
  log "$name $version: built in $((SECONDS - start))s"
}

k8s_ldflags() {
  local v=${K8S_VERSION#v} flags="-s -w"
  local major=${v%%.*} minor; minor=${v#*.}; minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_k8s() {
  cd "$E2E_DIR/components/k8s"
  CGO_ENABLED=0 go build -mod=readonly -p 2 -trimpath -ldflags "$(k8s_ldflags)" -o "$out/" \
    $(sed -n 's/^\t\(k8s.io\/kubernetes\/cmd\/.*\)$/\1/p' go.mod)
}

build_etcd() {
  cd "$E2E_DIR/components/etcd"
  CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
}

# go_install PACKAGE@VERSION [go flags...]: modules without replace directives install directly.
go_install() {
  local pkg=$1; shift
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "$@" "$pkg"
}

build_containerd() {
  local tags="no_btrfs no_devmapper no_zfs"
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    CGO_ENABLED=0 go_install "github.com/containerd/containerd/v2/cmd/$cmd@$CONTAINERD_VERSION" -tags "$tags"
  done
}

# Debian's runc 1.1.5 fails with containerd 2.4 here; runc needs cgo and libseccomp.
build_runc() { CGO_ENABLED=1 go_install "github.com/opencontainers/runc@$RUNC_VERSION" -tags seccomp; }
build_coredns() { CGO_ENABLED=0 go_install "github.com/coredns/coredns@$COREDNS_VERSION"; }
build_crictl() { CGO_ENABLED=0 go_install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"; }
build_helm() { CGO_ENABLED=0 go_install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; }
build_local_path() { CGO_ENABLED=0 go_install "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"; }
# Its commands are named server and cli: installed under the names of upstream's releases, with the version
# upstream's release build sets (else they report "git").
build_toxiproxy() {
  local cmd
  for cmd in server cli; do
    CGO_ENABLED=0 GOBIN="$out" go install -trimpath \
      -ldflags "-s -w -X github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION" \
      "github.com/Shopify/toxiproxy/v2/cmd/$cmd@$TOXIPROXY_VERSION"
    mv "$out/$cmd" "$out/toxiproxy-$cmd"
  done
}

total=$SECONDS
build kubernetes "$K8S_VERSION" build_k8s
build etcd "$ETCD_VERSION" build_etcd
build containerd "$CONTAINERD_VERSION" build_containerd
build runc "$RUNC_VERSION" build_runc
build coredns "$COREDNS_VERSION" build_coredns
build crictl "$CRICTL_VERSION" build_crictl
build helm "$HELM_VERSION" build_helm
build local-path-provisioner "$LOCAL_PATH_VERSION" build_local_path
build toxiproxy "$TOXIPROXY_VERSION" build_toxiproxy

ln -sfn "$BIN/kubernetes-$K8S_VERSION/kubectl" "$OUT_DIR/bin/kubectl"
ln -sfn "$BIN/helm-$HELM_VERSION/helm" "$OUT_DIR/bin/helm"
log "all components ready in $((SECONDS - total))s under $BIN"
