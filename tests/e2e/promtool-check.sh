#!/usr/bin/env bash
# Lints the exporter's output with `promtool check metrics`: every target of the demo config
# with every module, plus /metrics. Starts the exporter with --demo on a free loopback port and
# stops it on exit, even on failure. Usage: tests/e2e/promtool-check.sh [path/to/balena-exporter]
set -euo pipefail

bin=${1:-target/debug/balena-exporter}
command -v promtool >/dev/null || { echo "promtool not found (apt-get install prometheus)" >&2; exit 1; }
log=$(mktemp)
"$bin" --demo --web.listen-address=127.0.0.1:0 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT

port=""
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*msg=listening address=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "exporter did not start:" >&2; cat "$log" >&2; exit 1; }
base="http://127.0.0.1:$port"

targets=$(curl -fsS "$base/config" | sed -n '/^targets:/,$p' | sed -n 's/^  \([A-Za-z0-9_.-]*\):$/\1/p')
modules=$(curl -fsS "$base/config" | sed -n '/^modules:/,/^targets:/p' | sed -n 's/^  \([A-Za-z0-9_.-]*\):$/\1/p')
if [ -z "$targets" ] || [ -z "$modules" ]; then
  echo "could not read targets/modules from /config" >&2
  exit 1
fi

failed=0
checked=0
for t in $targets; do
  for m in $modules; do
    out=$(curl -fsS "$base/probe?target=$t&module=$m")
    if ! problems=$(printf '%s\n' "$out" | promtool check metrics 2>&1); then
      echo "promtool: target=$t module=$m:" >&2
      echo "$problems" >&2
      failed=1
    fi
    checked=$((checked + 1))
  done
done
if ! problems=$(curl -fsS "$base/metrics" | promtool check metrics 2>&1); then
  echo "promtool: /metrics:" >&2
  echo "$problems" >&2
  failed=1
fi
echo "promtool check metrics: $checked probe outputs and /metrics checked, failures: $failed"
exit "$failed"
