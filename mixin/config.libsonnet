// What a user of the mixin sets: the selectors of the two jobs, the `for` of each alert, the
// thresholds, and the SLO objectives. Override with `(import 'mixin.libsonnet') + { _config+::
// { ... } }`.
{
  _config+:: {
    // The probes (/probe of every target) and the exporter's own /metrics.
    probeSelector: 'job="balena"',
    exporterSelector: 'job="balena-exporter"',
    // How long a condition holds before its alert fires.
    fors: {
      BalenaFleetDevicesOffline: '15m',
      BalenaFleetDevicesUndervolted: '30m',
      BalenaDevicesNotOnTargetRelease: '6h',
      BalenaFleetServiceNotRunning: '15m',
      BalenaFleetServicesStale: '10m',
      BalenaFleetUpdatesStuck: '15m',
      BalenaFleetUpdatesFailed: '30m',
      BalenaFleetLatestBuildFailed: '5m',
      BalenaFleetOsUpdateFailed: '15m',
      BalenaDevicesOnEndOfLifeOs: '1h',
      BalenaSupervisorUpdatePendingTooLong: '24h',
      BalenaFleetHardwareMetricsDisabled: '1h',
      BalenaExporterDown: '5m',
      BalenaProbeScrapeFailing: '5m',
      BalenaProbeFailing: '5m',
      BalenaUpstreamRateLimited: '15m',
      BalenaApiRequestsHeld: '1m',
      BalenaUpstreamErrors: '15m',
      BalenaExporterConfigReloadFailed: '5m',
      // The SLO alerts: a fast burn pages soon, a slow one opens a ticket.
      BalenaFleetDeviceAvailabilityBurnFast: '2m',
      BalenaFleetDeviceAvailabilityBurnSlow: '1h',
      BalenaProbeAvailabilityBurnFast: '2m',
      BalenaProbeAvailabilityBurnSlow: '1h',
    },
    // Fractions as strings: jsonnet would print 0.2 as 0.20000000000000001.
    thresholds: {
      offlineRatio: '0.2',  // BalenaFleetDevicesOffline: share of a fleet's devices offline
      offlineMinDevices: 5,  // ... in fleets of at least this many devices
      servicesStaleSeconds: 1800,  // BalenaFleetServicesStale
      updateStuckSeconds: 21600,  // BalenaFleetUpdatesStuck: downloading or applying longer
      holdSeconds: 300,  // BalenaApiRequestsHeld: a Retry-After hold longer than this
      upstreamErrorRatio: '0.1',  // BalenaUpstreamErrors
    },
    // Service level objectives: the share of a fleet's devices online, and of successful
    // probes per target. Alerts burn the error budget by the SRE workbook's windows.
    slos: {
      device_availability: '0.95',
      probe_availability: '0.99',
    },
    // The dashboard's job variable opens on these.
    dashboardProbeJob: 'balena',
    dashboardExporterJob: 'balena-exporter',
  },
}
