#!/usr/bin/env bash
# The conformance suite against the real balena API server (open-balena-api, see
# tests/conformance/README.md): installs it (idempotent), starts it on loopback from an empty
# database with short heartbeat timeouts, runs tests/conformance/conformance.py, stops it.
#
#   tests/conformance/run.sh [EXPORTER_BIN [SIMULATOR_BIN]]
#
# The scripts are in tests/conformance/real-balena-api; the open-balena-api source tarball is
# REAL_BALENA_API_TARBALL, by default ../shared/real-balena-api/open-balena-api-61a847a.tar.gz
# beside the repository (the GitHub workflow builds the same tarball from the pinned upstream
# commit). Without it, or when the API cannot be installed or started, the suite fails under
# CI=true and says it was skipped otherwise: never silently.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/debug/balena-exporter}
sim=${2:-$root/target/debug/examples/simulator}
scripts=$root/tests/conformance/real-balena-api
tarball=open-balena-api-61a847a.tar.gz
if [ -z "${REAL_BALENA_API_TARBALL:-}" ]; then
  if [ -f "$root/../shared/real-balena-api/$tarball" ]; then
    REAL_BALENA_API_TARBALL=$root/../shared/real-balena-api/$tarball
  fi
fi
export REAL_BALENA_API_TARBALL
dir=${REAL_BALENA_API_DIR:-$HOME/.cache/real-balena-api}

unavailable() {
  if [ "${CI:-}" = true ]; then
    echo "conformance: FAILED: the real balena API is not available: $*" >&2
    exit 1
  fi
  echo "conformance: SKIPPED (not CI): the real balena API is not available: $*" >&2
  exit 0
}
[ -f "${REAL_BALENA_API_TARBALL:-}" ] || unavailable "no $tarball in ../shared/real-balena-api beside the repository (or set REAL_BALENA_API_TARBALL)"
[ -x "$bin" ] || { echo "conformance: no exporter binary $bin (cargo build)" >&2; exit 1; }
[ -x "$sim" ] || { echo "conformance: no simulator binary $sim (cargo build --example simulator)" >&2; exit 1; }

"$scripts/install.sh" "$dir" || unavailable "install.sh failed"
trap '"$scripts/stop.sh" "$dir" >/dev/null 2>&1 || true' EXIT
# Short heartbeat timeouts, so that a device-key heartbeat is seen to expire within seconds.
REAL_BALENA_API_ENV="DEFAULT_SUPERVISOR_POLL_INTERVAL=4000 API_HEARTBEAT_STATE_TIMEOUT_SECONDS=5" \
  "$scripts/start.sh" "$dir" || unavailable "start.sh failed"
python3 "$root/tests/conformance/conformance.py" "$dir" "$bin" "$sim"
