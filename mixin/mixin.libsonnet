// balena-exporter's monitoring mixin (https://monitoring.mixins.dev conventions): `_config`,
// `prometheusAlerts`, `prometheusRules` and `grafanaDashboards`. `mixin/build.sh` writes the
// files the repository and the Helm chart ship; CI regenerates them and fails on a difference.
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'slos.libsonnet') +
(import 'dashboards.libsonnet')
