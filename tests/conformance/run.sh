#!/usr/bin/env bash
# The conformance suite against the real balena API server (open-balena-api, see
# tests/conformance/README.md): installs it (idempotent), starts it on loopback from an empty
# database with short heartbeat timeouts, runs tests/conformance/conformance.py, stops it.
#
#   tests/conformance/run.sh [EXPORTER_BIN [SIMULATOR_BIN]]
#
# The scripts and the open-balena-api source come from REAL_BALENA_API_SCRIPTS (default:
# ../shared/real-balena-api beside the repository; the GitHub workflow builds the same tarball
# from the pinned upstream commit). Without them, or when the API cannot be installed or
# started, the suite fails under CI=true and says it was skipped otherwise: never silently.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/debug/balena-exporter}
sim=${2:-$root/target/debug/examples/simulator}
scripts=${REAL_BALENA_API_SCRIPTS:-$root/../shared/real-balena-api}
dir=${REAL_BALENA_API_DIR:-$HOME/.cache/real-balena-api}

unavailable() {
  if [ "${CI:-}" = true ]; then
    echo "conformance: FAILED: the real balena API is not available: $*" >&2
    exit 1
  fi
  echo "conformance: SKIPPED (not CI): the real balena API is not available: $*" >&2
  exit 0
}
[ -x "$scripts/install.sh" ] || unavailable "no $scripts/install.sh (set REAL_BALENA_API_SCRIPTS)"
[ -x "$bin" ] || { echo "conformance: no exporter binary $bin (cargo build)" >&2; exit 1; }
[ -x "$sim" ] || { echo "conformance: no simulator binary $sim (cargo build --example simulator)" >&2; exit 1; }

"$scripts/install.sh" "$dir" || unavailable "install.sh failed"
trap '"$scripts/stop.sh" "$dir" >/dev/null 2>&1 || true' EXIT
# Short heartbeat timeouts, so that a device-key heartbeat is seen to expire within seconds.
REAL_BALENA_API_ENV="DEFAULT_SUPERVISOR_POLL_INTERVAL=4000 API_HEARTBEAT_STATE_TIMEOUT_SECONDS=5" \
  "$scripts/start.sh" "$dir" || unavailable "start.sh failed"
REAL_BALENA_API_SCRIPTS=$scripts python3 "$root/tests/conformance/conformance.py" "$dir" "$bin" "$sim"
