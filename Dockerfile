# pgpilot's images: `--target operator` and `--target sidecar`, both running as a non-root user.
#
# With no build arguments this builds the binaries from source on public images (what users run):
#   docker build --target operator -t pgpilot-operator .
#   docker build --target sidecar  -t pgpilot-sidecar .
#
# The local e2e cluster has no registry (e2e/images.sh): it builds on a local Debian base and copies in
# binaries built on the host, from a directory of the build context:
#   buildah bud --pull=never --target operator --build-arg BUILDER=localhost/debian:bookworm \
#     --build-arg RUNTIME=localhost/debian:bookworm --build-arg PREBUILT=target/images/release .
ARG BUILDER=rust:1.95-bookworm
ARG RUNTIME=debian:bookworm-slim

FROM ${BUILDER} AS binaries
# Empty: compile here. Otherwise: the context directory holding pgpilot-operator and pgpilot-sidecar.
ARG PREBUILT=
WORKDIR /src
COPY . .
RUN set -eu; mkdir -p /out; \
    if [ -n "$PREBUILT" ]; then \
        cp "$PREBUILT/pgpilot-operator" "$PREBUILT/pgpilot-sidecar" /out/; \
    else \
        cargo build --release --locked -p pgpilot-operator -p pgpilot-sidecar; \
        cp target/release/pgpilot-operator target/release/pgpilot-sidecar /out/; \
    fi

FROM ${RUNTIME} AS operator
COPY --from=binaries /out/pgpilot-operator /usr/local/bin/pgpilot-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pgpilot-operator"]

# The sidecar image only carries the binary: an init container copies it into the PostgreSQL pod.
FROM ${RUNTIME} AS sidecar
COPY --from=binaries /out/pgpilot-sidecar /usr/local/bin/pgpilot-sidecar
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/pgpilot-sidecar"]
