# Shared by the end-to-end scripts: process cleanup, failure report, free ports, JSON and
# Prometheus API helpers. Source it after `set -euo pipefail`; it sets `tmp` and `pids`.
# shellcheck shell=bash

# shellcheck disable=SC2034  # read by the scripts that source this file
started=$(date +%s)
tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; for f in "$tmp"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done; exit 1; }
# free_port [ADDRESS...]: a TCP port free on every given loopback address (default 127.0.0.1).
free_port() {
  python3 - "${@:-127.0.0.1}" <<'PY'
import socket, sys
for _ in range(50):
    s = socket.socket(); s.bind((sys.argv[1], 0)); port = s.getsockname()[1]; s.close()
    try:
        for addr in sys.argv[2:]:
            t = socket.socket(); t.bind((addr, port)); t.close()
    except OSError:
        continue
    print(port); break
else:
    sys.exit("no common free port")
PY
}
# json FILTER: reads JSON on stdin, evaluates a Python expression over `d`.
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
query() { # query BASE PROMQL → JSON result list
  curl -fsS --get "$1/api/v1/query" --data-urlencode "query=$2" | json 'json.dumps(d["data"]["result"])'
}
wait_for() { # wait_for DESCRIPTION SECONDS COMMAND...
  local what=$1 limit=$2; shift 2
  local deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for: $what"
    sleep 1
  done
}
wait_ready() { # wait_ready ADDRESS WHAT: the exporter or Prometheus at ADDRESS answers /-/ready
  for _ in $(seq 1 100); do curl -fsS "http://$1/-/ready" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "$2 did not start"
}
# shorten_intervals: the shipped files' 60s intervals → 2s, so that a test takes seconds.
shorten_intervals() {
  sed -e 's/scrape_interval: 60s/scrape_interval: 2s/' \
      -e 's/scrape_timeout: 30s/scrape_timeout: 2s/' \
      -e 's/evaluation_interval: 60s/evaluation_interval: 2s/' \
      -e 's/refresh_interval: 5m/refresh_interval: 5s/'
}
# require COMMAND...: exits with a hint when one is missing.
require() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null || { echo "$c not found (apt-get install prometheus curl python3)" >&2; exit 1; }
  done
}
