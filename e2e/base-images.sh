#!/usr/bin/env bash
# Images the cluster itself needs, built locally: the Debian base (debootstrap, committed with buildah), the
# pinned pause image, CoreDNS and the local-path provisioner. Cached: an unchanged image is not rebuilt.
LOG_TAG=base-images
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/images.sh"
mkdir -p "$LOG_DIR"

if ! image_id "$BASE_IMAGE" >/dev/null; then
  start=$SECONDS
  rootfs=$(mktemp -d /var/tmp/pgpilot-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT
  log "debootstrap $DEBIAN_SUITE from $DEBIAN_MIRROR"
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >>"$LOG_DIR/images-build.log" 2>&1 \
    || die "debootstrap failed: see $LOG_DIR/images-build.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$rootfs.tar" .
  container=$(bh from scratch)
  bh add --quiet "$container" "$rootfs.tar" / >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd /bin/bash "$container"
  bh commit --quiet --rm "$container" "$BASE_IMAGE" >/dev/null
  log "committed $BASE_IMAGE in $((SECONDS - start))s"
fi

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
