#!/usr/bin/env bash
# `make host`: what this machine needs for the local cluster and the tests — the Debian packages listed in
# versions.env (CNI plugins, nftables, buildah, debootstrap, libseccomp for runc, PostgreSQL 15, ...) — and a
# check of what cannot come from Debian (Go for the components, Rust for pgpilot). Fast when all is present.
LOG_TAG=host
source "$(dirname "$0")/lib/common.sh"

# shellcheck disable=SC2206 # HOST_PACKAGES is a space-separated list
wanted=($HOST_PACKAGES)
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

id postgres >/dev/null 2>&1 || die "no 'postgres' user: the postgresql-15 package should have made it"
command -v go >/dev/null || die "Go is missing: install Go >= 1.26 (e.g. /usr/local/go/bin) to build the components"
go_version=$(go env GOVERSION)
[[ $(printf '%s\n' go1.26 "$go_version" | sort -V | head -n1) == go1.26 ]] || die "Go $go_version is too old: need >= 1.26"
command -v cargo >/dev/null || die "Rust (cargo) is missing"
[[ -d /sys/fs/cgroup/freezer ]] || die "no cgroup v1 freezer hierarchy: the fault hooks and kubelets here expect cgroup v1"
log "host ready (${#wanted[@]} Debian packages, $go_version, $(cargo --version))"
