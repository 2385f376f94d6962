# Shared settings and helpers for the e2e scripts. Source it; it sets no traps and runs nothing.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$E2E_DIR/.." && pwd)
# shellcheck source=../versions.env
source "$E2E_DIR/versions.env"

# Built binaries live outside the repository, keyed by version, so a fresh clone on the same machine reuses them.
CACHE_DIR=${PGPILOT_CACHE:-/var/cache/pgpilot}
# Runtime state of the local cluster. World-traversable (not under /root): non-root pods read volumes under it.
STATE_DIR=${PGPILOT_STATE:-/var/lib/pgpilot-e2e}
# Files the user and tests read: kubeconfig, kubectl/helm links, logs.
OUT_DIR="$REPO_DIR/target/e2e"

export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S.%3N)" "${LOG_TAG:-e2e}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.5 s until it succeeds or time runs out.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}
