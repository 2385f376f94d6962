#!/usr/bin/env bash
# `make bench`: pgpilot and Patroni side by side on the local cluster — failover, switchover, start-up,
# agent footprint and API writes — as the median of BENCH_REPS (default 5) repetitions. Not a test: it
# prints a table, writes target/bench/{results.json,table.md} and draws target/bench/failover.png.
# Arguments are passed to pgpilot-bench (e.g. --systems pgpilot,patroni-defaults --reps 3; --merge keeps the
# other results of target/bench/results.json); `--table-only` redraws the table and chart of the last run.
LOG_TAG=bench
source "$(dirname "$0")/lib/common.sh"
source "$E2E_DIR/lib/images.sh"

PATRONI_IMAGE="localhost/patroni:$PATRONI_VERSION"
OUT="$REPO_DIR/target/bench"
# The build directory may be a shared cache (the Makefile's CARGO_TARGET_DIR), so a fresh clone reuses the
# compiled dependencies.
BUILD=${CARGO_TARGET_DIR:-$REPO_DIR/target}
VENV="$CACHE_DIR/bench-venv"
mkdir -p "$OUT" "$LOG_DIR"
start=$SECONDS

# A virtualenv kept with the other caches: pip for Patroni's wheels, matplotlib for the chart (from PyPI).
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  log "installing matplotlib into $VENV"
  python3 -m venv "$VENV" || { apt-get install -y -q python3-venv >/dev/null && python3 -m venv "$VENV"; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'matplotlib>=3.8,<4'
fi

build_patroni_image() {
  # Patroni's image: the same PostgreSQL 15 image pgpilot's clusters run, plus Patroni from PyPI. The wheels
  # are fetched here with pip and built in from a staged context: the build itself reaches no index.
  image_id docker.io/library/postgres:15 >/dev/null || die "no postgres:15 image: run 'make images' first"
  STAGE="$CACHE_DIR/patroni-$PATRONI_VERSION"
  if [[ ! -f $STAGE/wheels/.complete ]]; then
    log "downloading Patroni $PATRONI_VERSION and its dependencies from PyPI"
    rm -rf "$STAGE/wheels"
    pip=("$VENV/bin/pip" --quiet --disable-pip-version-check)
    # Binary wheels for the image's Python (Debian bookworm: 3.11, x86_64 glibc), whatever the host's is. The
    # one dependency published as source only (ydiff, pure Python) is turned into a wheel first.
    "${pip[@]}" wheel --no-deps --wheel-dir "$STAGE/wheels" "ydiff>=1.2,<1.5,!=1.4.0,!=1.4.1"
    "${pip[@]}" download --dest "$STAGE/wheels" --find-links "$STAGE/wheels" --only-binary=:all: \
      --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_28_x86_64 "patroni[kubernetes]==$PATRONI_VERSION" "psycopg[binary]>=3.1,<4"
    touch "$STAGE/wheels/.complete"
  fi
  cp "$E2E_DIR/patroni/entrypoint.sh" "$STAGE/entrypoint.sh"
  build_image "$PATRONI_IMAGE" "$STAGE" "$E2E_DIR/patroni/Dockerfile" \
    --build-arg BASE=docker.io/library/postgres:15 --build-arg "PATRONI_VERSION=$PATRONI_VERSION"
  image_archive "$PATRONI_IMAGE" >/dev/null
  pids=()
  for ((i = 0; i < NODE_COUNT; i++)); do import_image "$i" "$PATRONI_IMAGE" & pids+=($!); done
  for pid in "${pids[@]}"; do wait "$pid" || die "importing $PATRONI_IMAGE failed"; done
}
[[ ${1:-} == --table-only ]] || build_patroni_image

log "building the benchmark (pgpilot-bench, pgpilot-probe)"
CARGO_TARGET_DIR="$BUILD" cargo build --quiet -p pgpilot-e2e --bins --manifest-path "$REPO_DIR/Cargo.toml"

cd "$REPO_DIR"
# What `cargo run` would set: the binaries find the chart, the CRD and the fault hook of this clone, even when
# the shared build directory holds a binary another clone compiled.
export CARGO_MANIFEST_DIR="$E2E_DIR"
if [[ ${1:-} != --table-only ]]; then
  log "running the benchmark (about 20 minutes per system with 5 repetitions)"
  KUBECONFIG="$KUBECONFIG_FILE" PATRONI_IMAGE="$PATRONI_IMAGE" "$BUILD/debug/pgpilot-bench" --out "$OUT" "$@"
else
  "$BUILD/debug/pgpilot-bench" --out "$OUT" --table-only
fi

# One chart: the failover and switchover medians of every system, with each repetition as a dot.
"$VENV/bin/python" - "$OUT/results.json" "$OUT/failover.png" <<'PY'
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

doc = json.load(open(sys.argv[1]))
keys = [("kill_primary_s", "container killed"), ("cut_primary_s", "pod network cut"),
        ("partition_primary_node_s", "node partitioned"), ("switchover_unavailable_s", "switchover")]
systems = doc["systems"]
width = 0.8 / max(len(systems), 1)
fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
for i, s in enumerate(systems):
    xs = [k + (i - (len(systems) - 1) / 2) * width for k in range(len(keys))]
    medians = [(s["metrics"].get(key) or {}).get("median") or 0 for key, _ in keys]
    bars = ax.bar(xs, medians, width, label=s["label"])
    for x, (key, _) in zip(xs, keys):
        values = (s["metrics"].get(key) or {}).get("values", [])
        ax.plot([x] * len(values), values, "k.", markersize=3)
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
ax.set_xticks(range(len(keys)), [label for _, label in keys])
ax.set_ylabel("seconds until writes are accepted again")
ax.set_title(f"Failover and switchover on the local cluster (median of {doc['reps']}; dots: repetitions)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2])
PY
log "chart: $OUT/failover.png; table: $OUT/table.md; done in $((SECONDS - start))s"
