#!/usr/bin/env bash
# Images the cluster itself needs, built locally: the Debian base (debootstrap, committed with buildah), the
# pinned pause image, CoreDNS and the local-path provisioner. Cached: an unchanged image is not rebuilt.
LOG_TAG=base-images
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/images.sh"
mkdir -p "$LOG_DIR"

# debian_base SUITE: localhost/debian:SUITE, a minbase debootstrap committed with buildah, unless it exists.
debian_base() {
  local suite=$1 image="localhost/debian:$1" start=$SECONDS rootfs
  image_id "$image" >/dev/null && return 0
  rootfs=$(mktemp -d /var/tmp/pgpilot-rootfs.XXXXXX)
  log "debootstrap $suite from $DEBIAN_MIRROR"
  if ! debootstrap --variant=minbase "$suite" "$rootfs" "$DEBIAN_MIRROR" >>"$LOG_DIR/images-build.log" 2>&1; then
    rm -rf "$rootfs"
    die "debootstrap $suite failed: see $LOG_DIR/images-build.log"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$rootfs.tar" .
  rm -rf "$rootfs"
  local container
  container=$(bh from scratch)
  bh add --quiet "$container" "$rootfs.tar" / >/dev/null
  rm -f "$rootfs.tar"
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd /bin/bash "$container"
  bh commit --quiet --rm "$container" "$image" >/dev/null
  log "committed $image in $((SECONDS - start))s"
}

# The cluster's base, and the one of the postgres:17 stand-in (`make images`).
debian_base "$DEBIAN_SUITE"
debian_base "$DEBIAN_SUITE_PG17"

# context_with FILE...: a fresh build context holding FILEs (binaries are not in the repository).
context_with() {
  local dir
  dir=$(mktemp -d /var/tmp/pgpilot-context.XXXXXX)
  cp "$@" "$dir/"
  echo "$dir"
}

ctx=$(context_with "$E2E_DIR/images/pause/pause.c")
gcc -static -O2 -o "$ctx/pause" "$ctx/pause.c"
build_image "$PAUSE_IMAGE" "$ctx" "$E2E_DIR/images/pause/Dockerfile"
rm -rf "$ctx"

ctx=$(context_with "$COREDNS_BIN/coredns")
build_image "$COREDNS_IMAGE" "$ctx" "$E2E_DIR/images/coredns/Dockerfile"
rm -rf "$ctx"

ctx=$(context_with "$LOCAL_PATH_BIN/local-path-provisioner")
build_image "$LOCAL_PATH_IMAGE" "$ctx" "$E2E_DIR/images/local-path/Dockerfile" --build-arg "BASE=$BASE_IMAGE"
rm -rf "$ctx"

# Archives once, here: the nodes import them in parallel.
for image in "${CLUSTER_IMAGES[@]}"; do image_archive "$image" >/dev/null; done
