#!/usr/bin/env bash
# End to end for scaling out (docs/scaling.md): two exporter replicas (R = 2) and two Prometheus
# servers (P = 2, an HA pair) running the very same shipped deploy/prometheus/prometheus-sharded.yml.
# The replicas listen on two loopback addresses, 127.0.1.10 and 127.0.1.11, standing in for the
# StatefulSet pods balena-exporter-0/-1: the file is templated only for those addresses and for
# the intervals. Both replicas use one simulator (the first replica's demo simulator).
#
# Asserts: every target is probed by exactly one replica, the one Prometheus' hashmod (md5 of the
# target name) names, by both Prometheus servers; and all the scrapes of a target by both
# servers cost the API one fetch (the sum of balena_probe_api_requests over both servers).
# Every process is stopped by PID on exit. Loopback only.
#
# Usage: tests/e2e/prometheus-sharded.sh [path/to/balena-exporter]   (needs prometheus, curl, python3)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/debug/balena-exporter}
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
require prometheus curl python3

# 1. Two replicas; a long cache TTL so that the fetch count below does not depend on timing.
port=$(free_port 127.0.1.10 127.0.1.11)
replica=(127.0.1.10:"$port" 127.0.1.11:"$port")
export BALENA_EXPORTER_API__CACHE_TTL=5m
# The replicas answer only Prometheus' probes: no first probes of the demo's own.
"$bin" --demo --demo.first-probes=false --web.listen-address="${replica[0]}" >"$tmp/exporter-0.log" 2>&1 &
pids+=($!)
wait_ready "${replica[0]}" "replica 0"
sim=$(sed -n 's/.*simulator=\(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$tmp/exporter-0.log" | head -n1)
[ -n "$sim" ] || fail "simulator URL not in the exporter log"
BALENA_EXPORTER_API__URL=$sim "$bin" --demo --demo.first-probes=false --web.listen-address="${replica[1]}" >"$tmp/exporter-1.log" 2>&1 &
pids+=($!)
wait_ready "${replica[1]}" "replica 1"

# 2. Two Prometheus servers, one shipped file.
src="$root/deploy/prometheus/prometheus-sharded.yml"
grep -q 'modulus: 2 ' "$src" || fail "the shipped example is expected to shard over 2 replicas"
proms=()
for p in a b; do
  dir="$tmp/prometheus-$p"
  mkdir -p "$dir"
  cp -r "$root/deploy/prometheus/rules" "$dir/rules"
  sed -e "s/balena-exporter-\([0-9]\|\${1}\)\.balena-exporter-headless\.monitoring\.svc:9759/127.0.1.1\1:$port/g" "$src" \
    | shorten_intervals >"$dir/prometheus.yml"
  grep -v '^ *#' "$dir/prometheus.yml" | grep -q 'headless' && fail "an address in the shipped file was not templated"
  pport=$(free_port 127.0.0.1)
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$pport" >"$tmp/prometheus-$p.log" 2>&1 &
  pids+=($!)
  proms+=("http://127.0.0.1:$pport")
done

targets="broken-token kiosks partner-all shop-screens"
scraped_enough() { # every target scraped (up == 1) at least 3 times by this server
  local got
  got=$(query "$1" 'count_over_time(up{job="balena"}[5m]) >= 3 and up{job="balena"} == 1' \
    | json '" ".join(sorted(r["metric"]["instance"] for r in d))')
  [ "$got" = "$targets" ]
}
for p in "${proms[@]}"; do
  wait_for "Prometheus $p ready" 30 curl -fsS "$p/-/ready"
  wait_for "every target scraped 3 times by $p" 60 scraped_enough "$p"
  up_self=$(query "$p" 'count(up{job="balena-exporter"} == 1)' | json 'd[0]["value"][1]')
  [ "$up_self" = 2 ] || fail "$p: both replicas' own metrics should be up, got $up_self"
done
echo "ok: both Prometheus servers scrape every target through the sharded config"

# 3. Stop Prometheus (no probe in flight), then read what each replica served.
for p in "${proms[@]}"; do
  sums=$(query "$p" 'sum by (instance) (sum_over_time(balena_probe_api_requests{job="balena"}[5m]))' \
    | json '" ".join(r["metric"]["instance"]+"="+r["value"][1] for r in d)')
  echo "$sums" >>"$tmp/api-requests"
done
kill "${pids[@]:2}" 2>/dev/null || true
wait "${pids[@]:2}" 2>/dev/null || true
for i in 0 1; do
  curl -fsS "http://${replica[$i]}/metrics" >"$tmp/metrics-$i.txt"
done
python3 - "$tmp" "$targets" <<'PY' || fail "sharding assertions"
import hashlib, re, sys
tmp, targets = sys.argv[1], sys.argv[2].split()
probes = [{}, {}]
for i in (0, 1):
    for line in open(f"{tmp}/metrics-{i}.txt"):
        m = re.match(r'balena_exporter_probes_total\{(.*)\} (\S+)$', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            probes[i][labels["target"]] = probes[i].get(labels["target"], 0) + float(m.group(2))
for t in targets:
    # Prometheus' hashmod: the last 8 bytes of md5(value), big-endian, modulo `modulus`.
    owner = int.from_bytes(hashlib.md5(t.encode()).digest()[8:], "big") % 2
    served = [probes[i].get(t, 0) for i in (0, 1)]
    assert served[1 - owner] == 0, f"{t}: replica {1 - owner} served {served[1 - owner]} probes, owner is {owner}"
    assert served[owner] >= 6, f"{t}: the owner served {served[owner]} probes; 2 servers x 3 scrapes expected"
    print(f"ok: {t}: replica {owner} served all {int(served[owner])} probes from both Prometheus servers")
assert all(probes[i] for i in (0, 1)), "a replica served nothing: the shard split is degenerate"
# One upstream fetch per successful target, whatever the number of scrapes of both servers:
# a fleet or an org probe is 3 requests (fleet row or org's fleets, a device page and the
# empty page that ends the listing).
total = {}
for line in open(f"{tmp}/api-requests"):
    for item in line.split():
        name, value = item.split("=")
        total[name] = total.get(name, 0) + float(value)
for t in ("shop-screens", "kiosks", "partner-all"):
    assert total.get(t) == 3, f"{t}: {total.get(t)} upstream requests over all scrapes, expected 3 (one fetch)"
    print(f"ok: {t}: every scrape by both servers cost the API 3 requests in all (one fetch)")
PY
echo "e2e (sharded) passed in $(( $(date +%s) - started ))s"
