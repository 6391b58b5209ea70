#!/usr/bin/env bash
# The shipped alerts end to end: the exporter on its demo, a real Prometheus with the mixin's
# rules (every `for` shortened through the mixin's `_config`, so that the run takes a minute)
# scraping it through /sd, a real Alertmanager (Debian's prometheus-alertmanager) and a webhook
# receiver here. Each demo story's alert must arrive once, with its severity and runbook_url,
# and no other alert may arrive. Every process is stopped by PID on exit. Loopback only.
#
# Usage: tests/e2e/alertmanager.sh [path/to/balena-exporter]   (needs prometheus,
# prometheus-alertmanager, jsonnet, curl, python3)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/debug/balena-exporter}
# shellcheck source=tests/e2e/lib.sh
source "$root/tests/e2e/lib.sh"
require prometheus prometheus-alertmanager jsonnet curl python3

# What the demo's stories must raise, each once: alertname and the label that names where.
expected="BalenaDevicesNotOnTargetRelease fleet=acme/shop-screens
BalenaDevicesNotOnTargetRelease fleet=partner_org/cameras
BalenaDevicesOnEndOfLifeOs fleet=partner_org/routers
BalenaFleetHardwareMetricsDisabled fleet=partner_org/routers
BalenaFleetLatestBuildFailed fleet=acme/warehouse-sensors
BalenaFleetOsUpdateFailed fleet=partner_org/routers
BalenaFleetServiceNotRunning fleet=acme/kiosks
BalenaFleetUpdatesFailed fleet=partner_org/cameras
BalenaFleetUpdatesStuck fleet=partner_org/cameras
BalenaProbeAvailabilityBurnFast instance=broken-token
BalenaProbeAvailabilityBurnFast instance=no-such-fleet
BalenaProbeAvailabilityBurnSlow instance=broken-token
BalenaProbeAvailabilityBurnSlow instance=no-such-fleet
BalenaProbeFailing instance=broken-token
BalenaProbeFailing instance=no-such-fleet
BalenaSupervisorUpdatePendingTooLong fleet=partner_org/routers"

# 1. The exporter on its demo.
exporter_port=$(free_port 127.0.0.1)
"$bin" --demo --web.listen-address="127.0.0.1:$exporter_port" >"$tmp/exporter.log" 2>&1 &
pids+=($!)
exporter="127.0.0.1:$exporter_port"
wait_ready "$exporter" exporter

# 2. The webhook receiver: every notification's alerts, one JSON line each.
hook_port=$(free_port 127.0.0.1)
python3 - "$hook_port" "$tmp/received.jsonl" <<'PY' >"$tmp/webhook.log" 2>&1 &
import http.server, json, sys
port, out = int(sys.argv[1]), sys.argv[2]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(out, "a") as f:
            for a in body["alerts"]:
                f.write(json.dumps({"status": a["status"], "labels": a["labels"], "annotations": a["annotations"]}) + "\n")
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Hook).serve_forever()
PY
pids+=($!)
touch "$tmp/received.jsonl"

# 3. Alertmanager: one notification per alert (grouped by everything that names it).
am_port=$(free_port 127.0.0.1)
cluster_port=$(free_port 127.0.0.1)
cat >"$tmp/alertmanager.yml" <<YAML
route:
  receiver: hook
  group_by: ['...']
  group_wait: 1s
  group_interval: 1h
  repeat_interval: 24h
receivers:
  - name: hook
    webhook_configs:
      - url: http://127.0.0.1:$hook_port/
YAML
prometheus-alertmanager --config.file="$tmp/alertmanager.yml" --storage.path="$tmp/am" \
  --web.listen-address="127.0.0.1:$am_port" --cluster.listen-address="127.0.0.1:$cluster_port" \
  >"$tmp/alertmanager.log" 2>&1 &
pids+=($!)

# 4. Prometheus: the shipped /sd configuration, the mixin's rules with every `for` at 4s but
# BalenaExporterDown's (5m: it covers the moments before the exporter's own first scrape, which
# absent() would otherwise report).
mkdir -p "$tmp/prometheus/rules"
jsonnet -J "$root/mixin" -S -e '
  local m = (import "mixin.libsonnet") + { _config+:: { fors: std.mapWithKey(function(k, v) if k == "BalenaExporterDown" then v else "4s", super.fors) } };
  std.manifestYamlDoc({ groups: m.prometheusRules.groups + m.prometheusAlerts.groups })' \
  >"$tmp/prometheus/rules/balena-alerts.yml"
{
  sed -e "s/balena-exporter:9759/$exporter/g" "$root/deploy/prometheus/prometheus-sd.yml" | shorten_intervals
  printf 'alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ["127.0.0.1:%s"]\n' "$am_port"
} >"$tmp/prometheus/prometheus.yml"
prom_port=$(free_port 127.0.0.1)
prometheus --config.file="$tmp/prometheus/prometheus.yml" --storage.tsdb.path="$tmp/prometheus/data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
wait_for "Prometheus ready" 30 curl -fsS "http://127.0.0.1:$prom_port/-/ready"
wait_for "Alertmanager ready" 30 curl -fsS "http://127.0.0.1:$am_port/-/ready"

received() { # the firing alerts received, "alertname where" sorted and unique
  python3 - "$tmp/received.jsonl" <<'PY'
import json, sys
seen = set()
for line in open(sys.argv[1]):
    a = json.loads(line)
    if a["status"] != "firing":
        continue
    l = a["labels"]
    where = f"fleet={l['fleet']}" if "fleet" in l else f"instance={l.get('instance', '')}"
    seen.add(f"{l['alertname']} {where}")
print("\n".join(sorted(seen)))
PY
}
deadline=$(( $(date +%s) + 120 ))
until [ "$(received)" = "$expected" ] || [ "$(date +%s)" -ge "$deadline" ]; do sleep 2; done
sleep 10 # anything else that was coming
got=$(received)
[ "$got" = "$expected" ] || fail "alerts received differ from the demo's stories:
--- expected
$expected
--- received
$got"
python3 - "$tmp/received.jsonl" <<'PY' || fail "an alert arrived twice, or without its severity or runbook"
import collections, json, sys
count = collections.Counter()
for line in open(sys.argv[1]):
    a = json.loads(line)
    key = json.dumps(a["labels"], sort_keys=True)
    count[key] += 1
    assert a["labels"].get("severity") in ("info", "warning", "critical"), a
    assert a["annotations"].get("runbook_url", "").startswith("https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#"), a
twice = [k for k, n in count.items() if n > 1]
assert not twice, twice
print(f"ok: {len(count)} alerts, each once, each with its severity and runbook_url")
PY
echo "ok: the demo's stories and nothing else reached Alertmanager's receiver"
echo "e2e (alertmanager) passed in $(( $(date +%s) - started ))s"
