#!/usr/bin/env bash
# Writes the files the mixin ships, from mixin/mixin.libsonnet (jsonnet: Debian's `jsonnet`):
#   deploy/prometheus/rules/balena-alerts.yml   and the chart's files/balena-alerts.yml
#   deploy/grafana/balena-fleets.json           and the chart's files/balena-fleets.json
# `mixin/build.sh --check` writes nothing and fails if any of them differs (CI runs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
check=${1:-}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
command -v jsonnet >/dev/null || { echo "mixin/build.sh: no jsonnet (apt-get install jsonnet)" >&2; exit 1; }
{
  cat "$root/mixin/rules-header.txt"
  jsonnet -J "$root/mixin" -S -e '
    local m = import "mixin.libsonnet";
    std.manifestYamlDoc({ groups: m.prometheusRules.groups + m.prometheusAlerts.groups }, indent_array_in_object=true, quote_keys=false)'
  echo
} >"$out/balena-alerts.yml"
jsonnet -J "$root/mixin" -e '(import "mixin.libsonnet").grafanaDashboards["balena-fleets.json"]' >"$out/balena-fleets.json"
status=0
for pair in "balena-alerts.yml:deploy/prometheus/rules/balena-alerts.yml" \
            "balena-alerts.yml:deploy/helm/balena-exporter/files/balena-alerts.yml" \
            "balena-fleets.json:deploy/grafana/balena-fleets.json" \
            "balena-fleets.json:deploy/helm/balena-exporter/files/balena-fleets.json"; do
  src=$out/${pair%%:*} dst=$root/${pair#*:}
  if [ "$check" = --check ]; then
    if ! cmp -s "$src" "$dst"; then
      echo "mixin/build.sh: ${pair#*:} is not what the mixin generates (run mixin/build.sh):" >&2
      diff -u "$dst" "$src" | head -40 >&2 || true
      status=1
    fi
  else
    cp "$src" "$dst"
  fi
done
[ "$check" = --check ] && [ "$status" = 0 ] && echo "mixin: the shipped rules and dashboard are what it generates"
exit $status
