// The alerts of balena-exporter, from `_config` (config.libsonnet): the job selectors, the
// `for` of each alert (a description's "for …" follows it), and the thresholds that matter.
// `mixin/build.sh` writes them to deploy/prometheus/rules/balena-alerts.yml and the chart's
// copy; CI fails on any difference. Fleet alerts aggregate with
// `max by (namespace, cluster, job, fleet)`: a fleet covered by several targets alerts once.
{
  prometheusAlerts+:: {
    local c = $._config,
    local sel(expr) = std.strReplace(std.strReplace(std.strReplace(
      expr, 'job="balena-exporter"', 'EXPORTER_JOB'
    ), 'job="balena"', c.probeSelector), 'EXPORTER_JOB', c.exporterSelector),
    local rule(r) = r {
      expr: sel(r.expr),
      'for': c.fors[r.alert],
      annotations+: {
        description: std.strReplace(r.annotations.description, 'FOR_DURATION', c.fors[r.alert]),
      },
    },
    groups+: [
      {
        name: "balena-fleets",
        rules: [
          rule({
            alert: "BalenaFleetDevicesOffline",
            expr: |||
              (
                1 - max by (namespace, cluster, job, fleet) (balena_fleet_devices_online{job="balena"})
                  / max by (namespace, cluster, job, fleet) (balena_fleet_devices{job="balena"})
              ) > %(offlineRatio)s
              and max by (namespace, cluster, job, fleet) (balena_fleet_devices{job="balena"}) >= %(offlineMinDevices)s
            ||| % c.thresholds,
            labels: {"severity": "warning"},
            annotations: {
              summary: "More than 20% of the devices of fleet {{ $labels.fleet }} are offline",
              description: "{{ $value | humanizePercentage }} of the devices of {{ $labels.fleet }} are offline, more than 20% for FOR_DURATION.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenafleetdevicesoffline",
            },
          }),
          rule({
            alert: "BalenaFleetDevicesUndervolted",
            expr: "max by (namespace, cluster, job, fleet) (balena_fleet_devices_undervolted{job=\"balena\"}) > 0",
            labels: {"severity": "warning"},
            annotations: {
              summary: "Devices of fleet {{ $labels.fleet }} report under-voltage",
              description: "{{ $value }} devices of {{ $labels.fleet }} report under-voltage, some for FOR_DURATION: check their power supplies (the runbook shows how to list them).",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenafleetdevicesundervolted",
            },
          }),
          rule({
            alert: "BalenaDevicesNotOnTargetRelease",
            expr: "max by (namespace, cluster, job, fleet) (balena_fleet_devices_online_not_on_target_release{job=\"balena\"}) > 0\n",
            labels: {"severity": "info"},
            annotations: {
              summary: "Online devices of {{ $labels.fleet }} have not reached their target release",
              description: "{{ $value }} online devices of {{ $labels.fleet }} have run another release than their target for FOR_DURATION (offline devices, which cannot update, are not counted).",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenadevicesnotontargetrelease",
            },
          }),
        ],
      },
      {
        name: "balena-applications",
        rules: [
          rule({
            alert: "BalenaFleetServiceNotRunning",
            expr: |||
              sum by (namespace, cluster, job, fleet, service) (
                max by (namespace, cluster, job, fleet, service, status) (balena_fleet_services{job="balena", status=~"exited|Dead|restarting"})
              ) > 0
            |||,
            labels: {"severity": "warning"},
            annotations: {
              summary: "Service {{ $labels.service }} is not running on devices of {{ $labels.fleet }}",
              description: "Service {{ $labels.service }} has exited, died or keeps restarting on {{ $value }} devices of {{ $labels.fleet }}, for FOR_DURATION.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenafleetservicenotrunning",
            },
          }),
          rule({
            alert: "BalenaFleetServicesStale",
            expr: "time() - max by (namespace, cluster, job, fleet) (balena_fleet_services_timestamp_seconds{job=\"balena\"}) > %(servicesStaleSeconds)s\n" % c.thresholds,
            labels: {"severity": "warning"},
            annotations: {
              summary: "The services of fleet {{ $labels.fleet }} have not been read for over 30 min",
              description: "The services of {{ $labels.fleet }} were last read {{ $value | humanizeDuration }} ago, more than 30 min for FOR_DURATION: the service alerts judge old data.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenafleetservicesstale",
            },
          }),
          rule({
            alert: "BalenaFleetUpdatesStuck",
            expr: |||
              count by (namespace, cluster, job, fleet) (
                max by (namespace, cluster, job, fleet, device_uuid) (balena_device_update_status{job="balena", status=~"downloading|applying changes"})
                and on (namespace, cluster, job, fleet, device_uuid)
                (time() - max by (namespace, cluster, job, fleet, device_uuid) (balena_device_update_status_timestamp_seconds{job="balena"}) > %(updateStuckSeconds)s)
              ) > 0
            ||| % c.thresholds,
            labels: {"severity": "warning"},
            annotations: {
              summary: "Updates are stuck on devices of {{ $labels.fleet }}",
              description: "{{ $value }} devices of {{ $labels.fleet }} have been downloading or applying an update longer than 6h, for FOR_DURATION.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenafleetupdatesstuck",
            },
          }),
          rule({
            alert: "BalenaFleetUpdatesFailed",
            expr: |||
              sum by (namespace, cluster, job, fleet) (
                max by (namespace, cluster, job, fleet, status) (balena_fleet_devices_update_status{job="balena", status=~"aborted|rejected"})
              ) > 0
            |||,
            labels: {"severity": "warning"},
            annotations: {
              summary: "Updates failed on devices of {{ $labels.fleet }}",
              description: "The last update of {{ $value }} devices of {{ $labels.fleet }} was aborted or rejected, for FOR_DURATION.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenafleetupdatesfailed",
            },
          }),
          rule({
            alert: "BalenaFleetLatestBuildFailed",
            expr: "max by (namespace, cluster, job, fleet, release, semver) (balena_fleet_latest_release_info{job=\"balena\", status=~\"failed|error\"}) == 1\n",
            labels: {"severity": "warning"},
            annotations: {
              summary: "The newest build of {{ $labels.fleet }} failed",
              description: "Release {{ $labels.release }} ({{ $labels.semver }}) of {{ $labels.fleet }}, its newest, failed to build, for FOR_DURATION: the fleet stays on its target release.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenafleetlatestbuildfailed",
            },
          }),
        ],
      },
      {
        name: "balena-hosts",
        rules: [
          rule({
            alert: "BalenaFleetOsUpdateFailed",
            expr: "max by (namespace, cluster, job, fleet) (balena_fleet_devices_os_update{job=\"balena\", status=\"failed\"}) > 0\n",
            labels: {"severity": "warning"},
            annotations: {
              summary: "A host OS update failed on devices of {{ $labels.fleet }}",
              description: "The host OS update of {{ $value }} devices of {{ $labels.fleet }} failed (the updater reported OS update failed), for FOR_DURATION: they still run their old balenaOS.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenafleetosupdatefailed",
            },
          }),
          rule({
            alert: "BalenaDevicesOnEndOfLifeOs",
            expr: "max by (namespace, cluster, job, fleet) (balena_fleet_devices_os_phase{job=\"balena\", phase=\"end-of-life\"}) > 0\n",
            labels: {"severity": "warning"},
            annotations: {
              summary: "Devices of {{ $labels.fleet }} run an end-of-life balenaOS",
              description: "{{ $value }} devices of {{ $labels.fleet }} run a balenaOS release whose phase is end-of-life, for FOR_DURATION: no more fixes reach them; update their host OS.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenadevicesonendoflifeos",
            },
          }),
          rule({
            alert: "BalenaSupervisorUpdatePendingTooLong",
            expr: "max by (namespace, cluster, job, fleet) (balena_fleet_devices_supervisor_update_pending{job=\"balena\"}) > 0\n",
            labels: {"severity": "warning"},
            annotations: {
              summary: "Supervisor updates of {{ $labels.fleet }} have been pending far too long",
              description: "{{ $value }} devices of {{ $labels.fleet }} have not run their target supervisor for FOR_DURATION.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenasupervisorupdatependingtoolong",
            },
          }),
          rule({
            alert: "BalenaFleetHardwareMetricsDisabled",
            expr: "max by (namespace, cluster, job, fleet) (balena_fleet_devices_supervisor_setting{job=\"balena\", setting=\"hardware_metrics_disabled\"}) > 0\n",
            labels: {"severity": "info"},
            annotations: {
              summary: "Devices of {{ $labels.fleet }} report no hardware metrics",
              description: "{{ $value }} devices of {{ $labels.fleet }} run with SUPERVISOR_HARDWARE_METRICS false, for FOR_DURATION: their CPU, memory and temperature series are absent by choice, not by fault.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenafleethardwaremetricsdisabled",
            },
          }),
        ],
      },
      {
        name: "balena-exporter",
        rules: [
          rule({
            alert: "BalenaExporterDown",
            expr: "up{job=\"balena-exporter\"} == 0 or absent(up{job=\"balena-exporter\"})",
            labels: {"severity": "critical"},
            annotations: {
              summary: "balena-exporter {{ with $labels.instance }}{{ . }} {{ end }}is down",
              description: "{{ with $labels.instance }}Prometheus cannot scrape the exporter at {{ . }}{{ else }}Prometheus scrapes no balena-exporter at all{{ end }} for FOR_DURATION: no fleet or device data is collected through it.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenaexporterdown",
            },
          }),
          rule({
            alert: "BalenaProbeScrapeFailing",
            expr: |||
              up{job="balena"} == 0
              unless on (namespace, cluster) (up{job="balena-exporter"} == 0)
            |||,
            labels: {"severity": "warning"},
            annotations: {
              summary: "The exporter does not answer the probe of {{ $labels.instance }}",
              description: "Prometheus gets no answer from the exporter for target {{ $labels.instance }} for FOR_DURATION (unreachable, or the scrape timed out): not the same as a failing probe.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenaprobescrapefailing",
            },
          }),
          rule({
            alert: "BalenaProbeFailing",
            expr: "probe_success{job=\"balena\"} == 0",
            labels: {"severity": "warning"},
            annotations: {
              summary: "balena probe of {{ $labels.instance }} is failing",
              description: "The exporter cannot read target {{ $labels.instance }} from the balena API for FOR_DURATION; open /probe?target={{ $labels.instance }}&debug=true on the exporter for the reason (bad token, missing fleet, rate limit, timeout).",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenaprobefailing",
            },
          }),
          rule({
            alert: "BalenaUpstreamRateLimited",
            expr: "sum by (namespace, cluster, job, instance, auth) (rate(balena_exporter_upstream_requests_total{job=\"balena-exporter\", code=\"429\"}[10m])) > 0\n",
            labels: {"severity": "warning"},
            annotations: {
              summary: "The balena API rate-limits auth {{ $labels.auth }} on {{ $labels.instance }}",
              description: "The balena API has answered 429 to auth {{ $labels.auth }} for FOR_DURATION ({{ printf \"%.3f\" $value }} per second): probes are delayed or fail.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenaupstreamratelimited",
            },
          }),
          rule({
            alert: "BalenaApiRequestsHeld",
            expr: "max by (namespace, cluster, job, instance, auth) (balena_exporter_api_hold_seconds{job=\"balena-exporter\"}) > %(holdSeconds)s\n" % c.thresholds,
            labels: {"severity": "warning"},
            annotations: {
              summary: "The balena API asked auth {{ $labels.auth }} on {{ $labels.instance }} to wait more than 5 min",
              description: "The requests of auth {{ $labels.auth }} are held for {{ $value | humanizeDuration }} more (Retry-After, capped by api.max_retry_after), for FOR_DURATION: every probe of its targets fails with rate_limited until then.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenaapirequestsheld",
            },
          }),
          rule({
            alert: "BalenaUpstreamErrors",
            expr: |||
              sum by (namespace, cluster, job, instance, auth) (rate(balena_exporter_upstream_requests_total{job="balena-exporter", code=~"5..|error"}[10m]))
              /
              sum by (namespace, cluster, job, instance, auth) (rate(balena_exporter_upstream_requests_total{job="balena-exporter"}[10m]))
              > %(upstreamErrorRatio)s
            ||| % c.thresholds,
            labels: {"severity": "warning"},
            annotations: {
              summary: "More than 10% of balena API requests of auth {{ $labels.auth }} fail",
              description: "{{ $value | humanizePercentage }} of the requests of auth {{ $labels.auth }} on {{ $labels.instance }} got a 5xx or no answer, more than 10% for FOR_DURATION.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenaupstreamerrors",
            },
          }),
          rule({
            alert: "BalenaExporterConfigReloadFailed",
            expr: "balena_exporter_config_last_reload_successful{job=\"balena-exporter\"} == 0",
            labels: {"severity": "warning"},
            annotations: {
              summary: "balena-exporter config reload failed on {{ $labels.instance }}",
              description: "The last reload of the exporter configuration failed (for FOR_DURATION now); the previous configuration is still in force. See the exporter log.",
              runbook_url: "https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#balenaexporterconfigreloadfailed",
            },
          }),
        ],
      },
    ],
  },
}
