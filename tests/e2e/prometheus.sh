#!/usr/bin/env bash
# End to end with a real Prometheus: the exporter runs on its demo simulator, two Prometheus
# servers run the example configurations that deploy/prometheus/ ships (the relabel recipe, and
# HTTP service discovery on /sd) with the shipped alert rules, and the Prometheus HTTP API is
# queried for what a user would see. The shipped files are templated only for addresses
# (balena-exporter:9759 → the exporter's loopback address) and for the global intervals
# (60s → 2s, so that the test takes seconds, not minutes). Every process started here is
# stopped by PID on exit, also on failure. Loopback only.
#
# Usage: tests/e2e/prometheus.sh [path/to/balena-exporter]     (needs prometheus, curl, python3)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/debug/balena-exporter}
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
require prometheus curl python3

# 1. The exporter on its demo simulator, cache off so that changes show on the next scrape.
exporter_port=$(free_port 127.0.0.1)
BALENA_EXPORTER_API__CACHE_TTL=0s "$bin" --demo --web.listen-address="127.0.0.1:$exporter_port" >"$tmp/exporter.log" 2>&1 &
pids+=($!)
exporter="127.0.0.1:$exporter_port"
wait_ready "$exporter" exporter
sim=$(sed -n 's/.*simulator=\(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$tmp/exporter.log" | head -n1)
[ -n "$sim" ] || fail "simulator URL not in the exporter log"

# 2. Two Prometheus servers with the shipped configurations.
declare -A prom
for variant in static sd; do
  dir="$tmp/$variant"
  mkdir -p "$dir"
  cp -r "$root/deploy/prometheus/rules" "$dir/rules"
  src="$root/deploy/prometheus/prometheus.yml"
  [ "$variant" = sd ] && src="$root/deploy/prometheus/prometheus-sd.yml"
  sed -e "s/balena-exporter:9759/$exporter/g" "$src" | shorten_intervals >"$dir/prometheus.yml"
  port=$(free_port 127.0.0.1)
  prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" >"$tmp/prometheus-$variant.log" 2>&1 &
  pids+=($!)
  prom[$variant]="http://127.0.0.1:$port"
done

expected_targets() { # the targets each variant should scrape
  if [ "$1" = static ]; then echo "broken-token kiosks partner-all shop-screens"
  else curl -fsS "http://$exporter/sd" | json '" ".join(sorted(t for g in d for t in g["targets"]))'; fi
}
all_up() { # all_up VARIANT: every expected target scraped with up == 1, instance = target name
  local want got
  want=$(expected_targets "$1")
  got=$(query "${prom[$1]}" 'up{job="balena"} == 1' | json '" ".join(sorted(r["metric"]["instance"] for r in d))')
  [ "$got" = "$want" ]
}

for variant in static sd; do
  wait_for "Prometheus ($variant) ready" 30 curl -fsS "${prom[$variant]}/-/ready"
  wait_for "every target up in the $variant job" 60 all_up "$variant"
  echo "ok: $variant: up == 1 for $(expected_targets "$variant")"
  # instance is the target name and never the exporter's address.
  n=$(query "${prom[$variant]}" "up{job=\"balena\",instance=~\".*$exporter_port.*\"}" | json 'len(d)')
  [ "$n" = 0 ] || fail "$variant: an instance label carries the exporter address"
  # The exporter's own job is scraped on its own schedule: its first scrape may come later.
  self_up() { [ "$(query "${prom[$1]}" 'up{job="balena-exporter"}' | json 'd[0]["value"][1] if d else "none"')" = 1 ]; }
  wait_for "the exporter's own job up ($variant)" 30 self_up "$variant"
done

# 3. Numbers equal the simulator's ground truth.
truth=$(curl -fsS "$sim/_sim/fleets")
for fleet in acme/shop-screens acme/kiosks partner_org/cameras partner_org/gateways; do
  want=$(echo "$truth" | json "[f['devices'] for f in d if f['slug']=='$fleet'][0]")
  check_devices() { got=$(query "${prom[static]}" "balena_fleet_devices{fleet=\"$1\"}" | json 'd[0]["value"][1] if d else "none"'); [ "$got" = "$2" ]; }
  wait_for "balena_fleet_devices{fleet=$fleet} == $want" 30 check_devices "$fleet" "$want"
  online=$(echo "$truth" | json "[f['online'] for f in d if f['slug']=='$fleet'][0]")
  got=$(query "${prom[static]}" "balena_fleet_devices_online{fleet=\"$fleet\"}" | json 'd[0]["value"][1]')
  [ "$got" = "$online" ] || fail "balena_fleet_devices_online{fleet=$fleet}: $got, simulator says $online"
done
echo "ok: balena_fleet_devices and _online equal the simulator's counts"

# 4. A rejected token: probe_success 0, and the alert rule goes pending/firing for it.
got=$(query "${prom[static]}" 'probe_success{instance="broken-token"}' | json 'd[0]["value"][1]')
[ "$got" = 0 ] || fail "probe_success for broken-token is $got"
rules=$(curl -fsS "${prom[static]}/api/v1/rules" | json 'len([r for g in d["data"]["groups"] for r in g["rules"]])')
shipped=$(grep -cE '^      - alert: |^        record: ' "$root/deploy/prometheus/rules/balena-alerts.yml")
[ "$rules" = "$shipped" ] || fail "expected the $shipped shipped rules (alerts and recording rules) to be loaded, got $rules"
alert_active() {
  curl -fsS "${prom[static]}/api/v1/alerts" | json '[a["state"] for a in d["data"]["alerts"] if a["labels"]["alertname"]=="BalenaProbeFailing" and a["labels"]["instance"]=="broken-token"][0]' | grep -Eq 'pending|firing'
}
wait_for "BalenaProbeFailing pending for broken-token" 30 alert_active
echo "ok: probe_success 0 for broken-token, BalenaProbeFailing is $(curl -fsS "${prom[static]}/api/v1/alerts" | json '[a["state"] for a in d["data"]["alerts"] if a["labels"]["alertname"]=="BalenaProbeFailing"][0]')"

# 5. Devices go offline in the simulator; Prometheus sees it on the next scrapes.
curl -fsS -X POST "$sim/_sim/offline?fleet=acme/kiosks" >/dev/null
offline_seen() { got=$(query "${prom[static]}" 'balena_fleet_devices_online{fleet="acme/kiosks"}' | json 'd[0]["value"][1]'); [ "$got" = 0 ]; }
wait_for "balena_fleet_devices_online{fleet=acme/kiosks} == 0 after the change" 30 offline_seen
echo "ok: the change is visible in Prometheus"

echo "e2e passed in $(( $(date +%s) - started ))s"
