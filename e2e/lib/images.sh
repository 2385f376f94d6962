# Building images with buildah and importing them into the nodes' containerds. Source after common.sh.
# shellcheck shell=bash disable=SC2034 # a library: the scripts that source it use its settings
# buildah keeps its images in our cache directory; no daemon, no registry. A node re-imports an image only
# when the image's ID differs from the one it last imported.

BUILDAH_ROOT="$CACHE_DIR/buildah"
ARCHIVES="$CACHE_DIR/images"
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE="localhost/debian:$DEBIAN_SUITE"
PG17_BASE_IMAGE="localhost/debian:$DEBIAN_SUITE_PG17"
PAUSE_IMAGE=localhost/pause:pgpilot
COREDNS_IMAGE="localhost/coredns:$COREDNS_VERSION"
LOCAL_PATH_IMAGE="localhost/local-path-provisioner:$LOCAL_PATH_VERSION"
# What every node holds before its kubelet starts (base-images.sh builds them).
CLUSTER_IMAGES=("$PAUSE_IMAGE" "$COREDNS_IMAGE" "$LOCAL_PATH_IMAGE" "$BASE_IMAGE")

# Every buildah call runs in a mount namespace of its own: the overlay mounts it makes go away with it, so
# nothing stays mounted on the host between calls.
bh() {
  [[ -f $BUILDAH_ROOT/containers.conf ]] || render "$TEMPLATES/containers.conf" "$BUILDAH_ROOT/containers.conf"
  CONTAINERS_CONF="$BUILDAH_ROOT/containers.conf" unshare --mount --propagation private \
    buildah --root "$BUILDAH_ROOT/storage" --runroot "$BUILDAH_ROOT/run" --storage-driver overlay "$@"
}

image_id() { bh inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null; }

# build_image TAG CONTEXT DOCKERFILE [buildah bud options...]: a cached (--layers) build that never pulls: an
# unchanged input gives the same image ID, so nothing downstream is redone.
build_image() {
  local tag=$1 context=$2 dockerfile=$3; shift 3
  local before after start=$SECONDS
  before=$(image_id "$tag" || true)
  bh bud --layers --force-rm --pull=never --isolation chroot --network host -f "$dockerfile" -t "$tag" "$@" "$context" \
    >>"$LOG_DIR/images-build.log" 2>&1 || die "building $tag failed: see $LOG_DIR/images-build.log"
  after=$(image_id "$tag")
  if [[ $before == "$after" ]]; then log "$tag unchanged (${after:0:12})"
  else log "built $tag (${after:0:12}) in $((SECONDS - start))s"; fi
}

# image_archive TAG: prints the path of an OCI archive of TAG's current ID, writing it when missing.
image_archive() {
  local tag=$1 id file
  id=$(image_id "$tag") || die "no image $tag: build it first"
  file="$ARCHIVES/${tag//[\/:]/_}-${id:0:12}.tar"
  if [[ ! -f $file ]]; then
    mkdir -p "$ARCHIVES"
    rm -f "$ARCHIVES/${tag//[\/:]/_}"-*.tar
    bh push --quiet "$tag" "oci-archive:$file.tmp:$tag" >/dev/null && mv "$file.tmp" "$file"
  fi
  echo "$file"
}

# node_ctr NODE_INDEX ARGS...: ctr against the node's containerd, in the namespace the kubelet uses
# (without the deprecation warning about cgroup v1 that ctr prints on every call here).
node_ctr() {
  local i=$1; shift
  "$CONTAINERD_BIN/ctr" --address "$(containerd_socket "$i")" --namespace k8s.io "$@" \
    2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
}

# import_image NODE_INDEX TAG: makes the node's containerd hold TAG at its current ID.
import_image() {
  local i=$1 tag=$2 id stamp
  id=$(image_id "$tag") || die "no image $tag: build it first"
  stamp="$(node_dir "$i")/images/${tag//[\/:]/_}.id"
  if [[ -f $stamp && $(<"$stamp") == "$id" ]] && [[ -n $(node_ctr "$i" images ls -q "name==$tag") ]]; then
    return
  fi
  local start=$SECONDS
  node_ctr "$i" images import "$(image_archive "$tag")" >/dev/null
  mkdir -p "$(dirname "$stamp")"
  echo "$id" >"$stamp"
  log "imported $tag (${id:0:12}) into $(node_name "$i") in $((SECONDS - start))s"
}
