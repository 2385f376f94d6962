#!/usr/bin/env bash
# `make images`: pgpilot's images for the local cluster, built with buildah and imported into every node.
#   localhost/pgpilot-operator:dev, localhost/pgpilot-sidecar:dev  root Dockerfile, host-built release binaries
#   docker.io/library/postgres:15                                   e2e/images/postgres (stock-image stand-in)
#   docker.io/library/postgres:15-r2                                e2e/images/postgres-rebuilt (a second tag of it)
#   docker.io/library/postgres:17                                   e2e/images/postgres on trixie (PG_MAJOR=17)
# Unchanged inputs give unchanged image IDs, and a node re-imports only an image whose ID changed.
LOG_TAG=images
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/images.sh"

OPERATOR_IMAGE=localhost/pgpilot-operator:dev
SIDECAR_IMAGE=localhost/pgpilot-sidecar:dev
POSTGRES_IMAGE=docker.io/library/postgres:15
POSTGRES_REBUILT_IMAGE=docker.io/library/postgres:15-r2
POSTGRES_17_IMAGE=docker.io/library/postgres:17

start=$SECONDS
for base in "$BASE_IMAGE" "$PG17_BASE_IMAGE"; do
  image_id "$base" >/dev/null || die "no $base: run 'make cluster' first"
done
mkdir -p "$LOG_DIR"

# The musl target cannot be installed here: glibc binaries, built against bookworm like the image base.
log "cargo build --release (operator, sidecar)"
# The build directory may be a shared cache (the Makefile's CARGO_TARGET_DIR); the Dockerfile takes the
# binaries from target/images/release inside the build context.
PREBUILT_DIR="$REPO_DIR/target/images/release"
cargo_dir=${CARGO_TARGET_DIR:-$REPO_DIR/target/images}
CARGO_TARGET_DIR="$cargo_dir" cargo build --release --quiet \
  -p pgpilot-operator -p pgpilot-sidecar --manifest-path "$REPO_DIR/Cargo.toml"
if [[ $cargo_dir/release != "$PREBUILT_DIR" ]]; then
  mkdir -p "$PREBUILT_DIR"
  for bin in pgpilot-operator pgpilot-sidecar; do
    cmp -s "$cargo_dir/release/$bin" "$PREBUILT_DIR/$bin" || cp "$cargo_dir/release/$bin" "$PREBUILT_DIR/$bin"
  done
fi
log "binaries built after $((SECONDS - start))s"

local_build=(--build-arg "BUILDER=$BASE_IMAGE" --build-arg "RUNTIME=$BASE_IMAGE" --build-arg PREBUILT=target/images/release)
build_image "$OPERATOR_IMAGE" "$REPO_DIR" "$REPO_DIR/Dockerfile" --target operator "${local_build[@]}"
build_image "$SIDECAR_IMAGE" "$REPO_DIR" "$REPO_DIR/Dockerfile" --target sidecar "${local_build[@]}"
build_image "$POSTGRES_IMAGE" "$E2E_DIR/images/postgres" "$E2E_DIR/images/postgres/Dockerfile" \
  --build-arg "BASE=$BASE_IMAGE" --build-arg PG_MAJOR=15
build_image "$POSTGRES_17_IMAGE" "$E2E_DIR/images/postgres" "$E2E_DIR/images/postgres/Dockerfile" \
  --build-arg "BASE=$PG17_BASE_IMAGE" --build-arg PG_MAJOR=17
build_image "$POSTGRES_REBUILT_IMAGE" "$E2E_DIR/images/postgres-rebuilt" "$E2E_DIR/images/postgres-rebuilt/Dockerfile" \
  --build-arg "BASE=$POSTGRES_IMAGE"
log "images built after $((SECONDS - start))s"

# Archives first, once: the nodes then import in parallel.
all_images=("$OPERATOR_IMAGE" "$SIDECAR_IMAGE" "$POSTGRES_IMAGE" "$POSTGRES_REBUILT_IMAGE" "$POSTGRES_17_IMAGE")
for image in "${all_images[@]}"; do image_archive "$image" >/dev/null; done
pids=()
for ((i = 0; i < NODE_COUNT; i++)); do
  ( for image in "${all_images[@]}"; do import_image "$i" "$image"; done ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || die "importing images failed"; done
log "images ready on $NODE_COUNT nodes in $((SECONDS - start))s"
