# pgpilot: `make demo` brings up the local cluster and a 3-instance PostgresCluster; `make test` runs
# everything CI runs. Both install what they need (e2e/install-host.sh) and reuse cached builds.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(CURDIR)/target/e2e/bin:$(HOME)/.cargo/bin:/usr/local/go/bin:$(PATH)
export KUBECONFIG ?= $(CURDIR)/target/e2e/kubeconfig
# Cargo's build directory is a cache outside the clone, like the components' (a fresh clone reuses the
# compiled dependencies). Set CARGO_TARGET_DIR to build elsewhere.
export PGPILOT_CACHE ?= /var/cache/pgpilot
export CARGO_TARGET_DIR ?= $(PGPILOT_CACHE)/cargo-target
# A failing test's error without anyhow's backtrace: CI shows the head and the tail of the output, and
# the tail should be the failure's story (the dump's end and the error), not 80 lines of frames.
export RUST_LIB_BACKTRACE ?= 0

CARGO ?= cargo
CRD_FILE := charts/pgpilot/crds/postgresclusters.pgpilot.io.yaml

.PHONY: demo test host components cluster cluster-down images lint unit crd crd-check helm-lint e2e faults soak bench

## Set-up steps (idempotent, cached)
host:            ## Debian packages, Go-built components' prerequisites, PostgreSQL 15
	e2e/install-host.sh
components: host ## Kubernetes, etcd, containerd, runc, CoreDNS, helm ... from their Go modules (cached)
	e2e/build-components.sh
cluster: components ## control plane + 3 kubelet nodes on this machine; writes target/e2e/kubeconfig
	e2e/cluster-up.sh
cluster-down:    ## stop everything `make cluster` started and remove its state
	e2e/cluster-down.sh
images: cluster  ## build operator, sidecar and postgres:15/17 images with buildah; import into every node
	e2e/images.sh

## Checks
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
crd:             ## regenerate the CRD YAML from the Rust types
	$(CARGO) run -q -p pgpilot-crds --bin crdgen > $(CRD_FILE)
crd-check:       ## fail when the committed CRD YAML drifts from the Rust types
	$(CARGO) run -q -p pgpilot-crds --bin crdgen | diff -u $(CRD_FILE) - \
	  || { echo "CRD YAML drifted from the Rust types: run 'make crd' and commit"; exit 1; }
helm-lint: components
	helm lint charts/pgpilot
	helm template pgpilot charts/pgpilot > /dev/null
unit: host       ## unit tests and integration tests against real PostgreSQL
	$(CARGO) test --workspace
e2e: images      ## tests on the local cluster: the environment itself, the Lease protocol, the operator, HA scenarios
	e2e/tests/cluster-test.sh
	$(CARGO) test --workspace --exclude pgpilot-e2e -- --ignored --test-threads=1
	$(CARGO) test -p pgpilot-e2e --lib --test operator --test ha -- --ignored --test-threads=1
faults: images   ## the fault matrix with the split-brain / lost-write checker (FAULTS="<test name filters>")
	$(CARGO) test -p pgpilot-e2e --test faults -- --ignored --test-threads=1 $(FAULTS)

# The soak's seed defaults to the commit's (its first 12 hex digits as a number), so each commit gets its
# own schedule and a failure replays with the SEED it printed.
SEED ?= $(shell printf '%u' 0x$$(git rev-parse --short=12 HEAD 2>/dev/null || echo 1))
MINUTES ?= 10
MODE ?= sync
SKIP ?=
soak: images     ## the randomized nemesis: faults drawn from SEED against one cluster for MINUTES, checked after every heal (MODE=sync|async; SKIP=<fault>,… leaves faults out)
	PGPILOT_SOAK_SEED=$(SEED) PGPILOT_SOAK_MINUTES=$(MINUTES) PGPILOT_SOAK_MODE=$(MODE) PGPILOT_SOAK_SKIP=$(SKIP) \
	  $(CARGO) test -p pgpilot-e2e --test soak -- --ignored --nocapture

# The gate ends with a 10-minute soak in sync mode, its seed taken from the commit.
test: host lint crd-check unit helm-lint e2e faults soak

## The demo: a 3-instance cluster on the local Kubernetes
demo: images
	e2e/demo.sh

bench: images
	e2e/bench.sh
