// Service level objectives with multi-window, multi-burn-rate alerts (the SRE workbook, ch. 5):
// device availability (the share of a fleet's devices online) and probe availability (the share
// of successful probes of a target). Recording rules give each error ratio averaged over the
// workbook's windows; the objective is a recording rule of its own (`balena:slo_objective`),
// so that the chart can set it from its values.
{
  local c = $._config,
  local windows = ['5m', '30m', '1h', '2h', '6h', '1d', '3d'],
  local objective(slo) = 'scalar(balena:slo_objective{slo="%s"})' % slo,
  // Fast: 2% of a 30-day budget in 1h (14.4x) or 5% in 6h (6x); slow: 10% in 3 days (1x) or
  // 10% in 1 day (3x); each with a short window that clears it quickly once the burn stops.
  local burn(ratio, slo, pairs) = std.join('\nor\n', [
    '(\n  %(r)s_avg%(long)s > (%(f)s * (1 - %(o)s))\n  and\n  %(r)s_avg%(short)s > (%(f)s * (1 - %(o)s))\n)' % {
      r: ratio,
      long: p[0],
      short: p[1],
      f: p[2],
      o: objective(slo),
    }
    for p in pairs
  ]) + '\n',
  local fast = [['1h', '5m', '14.4'], ['6h', '30m', '6']],
  local slow = [['1d', '2h', '3'], ['3d', '6h', '1']],

  prometheusRules+:: {
    groups+: [
      {
        name: 'balena-slo',
        rules: [
          {
            record: 'balena:slo_objective',
            expr: 'vector(%s)' % c.slos[slo],
            labels: { slo: slo },
          }
          for slo in std.objectFields(c.slos)
        ] + [
          {
            record: 'balena:fleet_devices_online:ratio',
            expr: |||
              max by (namespace, cluster, job, fleet) (balena_fleet_devices_online{%(s)s})
              /
              max by (namespace, cluster, job, fleet) (balena_fleet_devices{%(s)s} > 0)
            ||| % { s: c.probeSelector },
          },
        ] + [
          {
            record: 'balena:fleet_devices_offline:ratio_avg' + w,
            expr: '1 - avg_over_time(balena:fleet_devices_online:ratio[%s])' % w,
          }
          for w in windows
        ] + [
          {
            record: 'balena:probe_failure:ratio_avg' + w,
            expr: '1 - avg by (namespace, cluster, job, instance) (avg_over_time(probe_success{%s}[%s]))' % [c.probeSelector, w],
          }
          for w in windows
        ],
      },
    ],
  },

  prometheusAlerts+:: {
    local alert(name, severity, ratio, slo, pairs, summary, description, runbook) = {
      alert: name,
      expr: burn(ratio, slo, pairs),
      'for': c.fors[name],
      labels: { severity: severity, slo: slo },
      annotations: {
        summary: summary,
        description: std.strReplace(description, 'FOR_DURATION', c.fors[name]),
        runbook_url: 'https://github.com/balena-exporter/balena-exporter/blob/main/docs/runbook.md#' + std.asciiLower(runbook),
      },
    },
    groups+: [
      {
        name: 'balena-slo-alerts',
        rules: [
          alert('BalenaFleetDeviceAvailabilityBurnFast', 'critical', 'balena:fleet_devices_offline:ratio', 'device_availability', fast,
                'Fleet {{ $labels.fleet }} burns its device-availability budget fast',
                'The devices of {{ $labels.fleet }} are offline at more than 6x the rate the availability objective allows, over both a long and a short window, for FOR_DURATION: at this pace the 30-day error budget is gone within days.',
                'BalenaFleetDeviceAvailabilityBurn'),
          alert('BalenaFleetDeviceAvailabilityBurnSlow', 'warning', 'balena:fleet_devices_offline:ratio', 'device_availability', slow,
                'Fleet {{ $labels.fleet }} burns its device-availability budget',
                'The devices of {{ $labels.fleet }} have been offline at more than the rate the availability objective allows, for a day or more (firing for FOR_DURATION): the 30-day error budget runs out before the month does.',
                'BalenaFleetDeviceAvailabilityBurn'),
          alert('BalenaProbeAvailabilityBurnFast', 'critical', 'balena:probe_failure:ratio', 'probe_availability', fast,
                'The probes of {{ $labels.instance }} fail fast enough to spend their budget within days',
                'The probes of {{ $labels.instance }} fail at more than 6x the rate the probe-availability objective allows, over both a long and a short window, for FOR_DURATION.',
                'BalenaProbeAvailabilityBurn'),
          alert('BalenaProbeAvailabilityBurnSlow', 'warning', 'balena:probe_failure:ratio', 'probe_availability', slow,
                'The probes of {{ $labels.instance }} spend their error budget',
                'The probes of {{ $labels.instance }} have failed at more than the rate the probe-availability objective allows, for a day or more (firing for FOR_DURATION).',
                'BalenaProbeAvailabilityBurn'),
        ],
      },
    ],
  },
}
