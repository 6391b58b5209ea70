// The Grafana dashboard (dashboards/balena-fleets.json, built and tested panel by panel by
// tests/helm/test_dashboard.py), its job variables opening on the configured jobs.
{
  grafanaDashboards+:: {
    local c = $._config,
    local board = import 'dashboards/balena-fleets.json',
    local job(v) =
      if v.name == 'job' then v { current+: { text: c.dashboardProbeJob, value: c.dashboardProbeJob } }
      else if v.name == 'exporter_job' then v { current+: { text: c.dashboardExporterJob, value: c.dashboardExporterJob } }
      else v,
    'balena-fleets.json': board {
      templating+: { list: [job(v) for v in board.templating.list] },
    },
  },
}
