"""Tests of the Grafana dashboard deploy/grafana/balena-fleets.json with promtool.

Every query of the dashboard is checked as PromQL (`promtool check rules`), and every fleet and
device panel is evaluated (`promtool test rules`) on series where one fleet is reported by two
targets -- a fleet target and its organization's target, as the README example and the demo
configuration do. Each panel must show the fleet's own numbers (the ground truth below), never
their sum over targets.

Run: python tests/helm/test_dashboard.py   (needs promtool on PATH)
"""

import json
import os
import re
import subprocess
import tempfile
import unittest

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "balena-fleets.json")

# Variables as Grafana would send them with "All" selected.
VARIABLES = {"$__rate_interval": "5m", "$cluster": ".*", "$exporter_job": "balena-exporter", "$instance": ".*",
             "$fleet": ".*", "$device": ".*", "$job": "balena"}

# Ground truth: fleets, the targets that report each one, and their devices.
FLEETS = {
    "acme/screens": dict(targets=["screens", "acme-all"], devices=10, online=7, on_target=8, undervolted=1,
                         status={"operational": 6, "disconnected": 3, "updating": 1},
                         heartbeat={"online": 7, "offline": 3}),
    "acme/tiny": dict(targets=["acme-all"], devices=2, online=0, on_target=2, undervolted=0,
                      status={"disconnected": 2}, heartbeat={"offline": 2}),
    "partner/kiosk": dict(targets=["kiosk", "partner-all"], devices=4, online=4, on_target=1, undervolted=0,
                          status={"operational": 4}, heartbeat={"online": 4}),
}
STATUSES = ["configuring", "disconnected", "inactive", "operational", "post-provisioning",
            "reduced-functionality", "updating"]
STATES = ["online", "offline", "timeout", "unknown"]
# What the fleets run: per fleet, services {(service, status): n}, update states, devices per
# release, OS (version, variant), supervisor versions, newest build (commit, status, semver).
APPS = {
    "acme/screens": dict(services={("main", "Running"): 9, ("main", "exited"): 1, ("proxy", "Running"): 10},
                         update={"done": 8, "downloading": 2}, releases={"abc": 8, "old": 2},
                         os={("balenaOS 6.0.0", "prod"): 10}, supervisor={"17.0.3": 10},
                         latest=("abc", "success", "1.1.0")),
    "acme/tiny": dict(services={("main", "Running"): 2}, update={"done": 2}, releases={"abc": 2},
                      os={("balenaOS 6.0.0", "prod"): 1, ("balenaOS 5.3.24", "dev"): 1}, supervisor={"16.7.9": 2},
                      latest=("new", "failed", "1.2.0")),
    "partner/kiosk": dict(services={("main", "Running"): 3, ("main", "restarting"): 1}, update={"aborted": 1, "done": 3},
                          releases={"abc": 4}, os={("balenaOS 6.0.0", "prod"): 4}, supervisor={"17.0.3": 4},
                          latest=("abc", "success", "1.1.0")),
}

# The layer under the application: OS update states, OS phases, supervisors behind, settings,
# and the semver of each release in use (balena_fleet_release_info).
HOSTS = {
    "acme/screens": dict(os_update={"none": 6, "pending": 2, "in_progress": 1, "failed": 1},
                         phase={"current": 7, "end-of-life": 3}, supervisor_pending=2,
                         settings={"hardware_metrics_disabled": 1, "local_mode": 0, "lock_override": 0},
                         semver={"abc": "1.1.0", "old": "1.0.0"}),
    "acme/tiny": dict(os_update={"none": 2}, phase={"current": 1, "sunset": 1}, supervisor_pending=0,
                      settings={"hardware_metrics_disabled": 0, "local_mode": 2, "lock_override": 0},
                      semver={"abc": "1.1.0", "new": "1.2.0"}),
    "partner/kiosk": dict(os_update={"none": 4}, phase={"current": 4}, supervisor_pending=1,
                          settings={"hardware_metrics_disabled": 0, "local_mode": 0, "lock_override": 1},
                          semver={"abc": "1.1.0"}),
}
LOCATIONS = {"a1": (52.52, 13.405), "b2": (-23.55, -46.633)}

DEVICES = {  # uuid -> fleet, name, values
    "a1": dict(fleet="acme/screens", name="lobby", cpu=0.5, temp=51.0, mem=(1 << 30, 4 << 30),
               disk=(8 << 30, 32 << 30), online=1, on_target=1, undervolted=1, progress=0.25, seen=1000),
    "b2": dict(fleet="partner/kiosk", name="lobby", cpu=0.125, temp=40.0, mem=(2 << 30, 8 << 30),
               disk=(4 << 30, 16 << 30), online=1, on_target=0, undervolted=0, progress=None, seen=500),
}


def series():
    out = []
    add = lambda name, labels, value: out.append((name, labels, value))
    for fleet, f in FLEETS.items():
        for t in f["targets"]:
            base = {"job": "balena", "instance": t, "fleet": fleet}
            add("balena_fleet_info", dict(base, fleet_id=str(len(fleet)), organization=fleet.split("/")[0],
                                          device_type="raspberrypi4-64", target_release="abc"), 1)
            add("balena_fleet_devices", base, f["devices"])
            add("balena_fleet_devices_online", base, f["online"])
            add("balena_fleet_devices_on_target_release", base, f["on_target"])
            add("balena_fleet_devices_undervolted", base, f["undervolted"])
            for s in STATUSES:
                add("balena_fleet_devices_status", dict(base, status=s), f["status"].get(s, 0))
            for s in STATES:
                add("balena_fleet_devices_heartbeat", dict(base, state=s), f["heartbeat"].get(s, 0))
            a = APPS[fleet]
            for (service, status), n in a["services"].items():
                add("balena_fleet_services", dict(base, service=service, status=status), n)
            for status, n in a["update"].items():
                add("balena_fleet_devices_update_status", dict(base, status=status), n)
            for release, n in a["releases"].items():
                add("balena_fleet_devices_release", dict(base, release=release), n)
            for (version, variant), n in a["os"].items():
                add("balena_fleet_devices_os", dict(base, os_version=version, os_variant=variant), n)
            for version, n in a["supervisor"].items():
                add("balena_fleet_devices_supervisor", dict(base, supervisor_version=version), n)
            commit, status, semver = a["latest"]
            add("balena_fleet_latest_release_info", dict(base, release=commit, status=status, semver=semver), 1)
            h = HOSTS[fleet]
            for state in ("failed", "in_progress", "none", "pending"):
                add("balena_fleet_devices_os_update", dict(base, status=state), h["os_update"].get(state, 0))
            for phase in ("current", "end-of-life", "next", "sunset", "unknown"):
                add("balena_fleet_devices_os_phase", dict(base, phase=phase), h["phase"].get(phase, 0))
            add("balena_fleet_devices_supervisor_update_pending", base, h["supervisor_pending"])
            for setting, n in h["settings"].items():
                add("balena_fleet_devices_supervisor_setting", dict(base, setting=setting), n)
            for release, version in h["semver"].items():
                add("balena_fleet_release_info", dict(base, release=release, semver=version, status="success"), 1)
    for uuid, d in DEVICES.items():
        for t in FLEETS[d["fleet"]]["targets"]:
            base = {"job": "balena", "instance": t, "fleet": d["fleet"], "device_uuid": uuid, "device_name": d["name"]}
            add("balena_device_info", dict(base, device_type="raspberrypi4-64", os_version="balenaOS 6.0.0",
                                           release="abc", tag_location="hall"), 1)
            add("balena_device_cpu_usage_ratio", base, d["cpu"])
            add("balena_device_cpu_temperature_celsius", base, d["temp"])
            add("balena_device_memory_usage_bytes", base, d["mem"][0])
            add("balena_device_memory_total_bytes", base, d["mem"][1])
            add("balena_device_storage_usage_bytes", base, d["disk"][0])
            add("balena_device_storage_total_bytes", base, d["disk"][1])
            add("balena_device_online", base, d["online"])
            add("balena_device_on_target_release", base, d["on_target"])
            add("balena_device_undervolted", base, d["undervolted"])
            add("balena_device_last_connectivity_timestamp_seconds", base, d["seen"])
            if d["progress"] is not None:
                add("balena_device_update_progress_ratio", base, d["progress"])
            lat, lon = LOCATIONS[uuid]
            add("balena_device_latitude_degrees", base, lat)
            add("balena_device_longitude_degrees", base, lon)
    return out


def per_fleet(fn):
    return {f'{{fleet="{name}"}}': fn(f) for name, f in FLEETS.items()}


def per_device(fn):
    return {f'{{device_name="{d["name"]}", device_uuid="{u}", fleet="{d["fleet"]}"}}': fn(d)
            for u, d in DEVICES.items() if fn(d) is not None}


def apps_summed(field, labels):
    """Sum over fleets of APPS[fleet][field], keyed by the label values (what `sum by` shows)."""
    out = {}
    for a in APPS.values():
        for k, n in a[field].items():
            k = k if isinstance(k, tuple) else (k,)
            key = "{" + ", ".join(f'{l}="{v}"' for l, v in sorted(zip(labels, k))) + "}"
            out[key] = out.get(key, 0) + n
    return out


def summed(key, values):
    return {f'{{{key}="{v}"}}': sum(f[{"status": "status", "state": "heartbeat"}[key]].get(v, 0) for f in FLEETS.values())
            for v in values}


def summed_hosts(field, label):
    """Sum over fleets of HOSTS[fleet][field] per label value, zeros written as the exporter does."""
    out = {}
    for h in HOSTS.values():
        for k, n in h[field].items():
            out[f'{{{label}="{k}"}}'] = out.get(f'{{{label}="{k}"}}', 0) + n
    if field == "os_update":
        for k in ("failed", "in_progress", "none", "pending"):
            out.setdefault(f'{{{label}="{k}"}}', 0)
    if field == "phase":
        for k in ("current", "end-of-life", "next", "sunset", "unknown"):
            out.setdefault(f'{{{label}="{k}"}}', 0)
    return out


def rollout_by_semver():
    out = {}
    for name, a in APPS.items():
        for release, n in a["releases"].items():
            key = f'{{fleet="{name}", semver="{HOSTS[name]["semver"][release]}"}}'
            out[key] = out.get(key, 0) + n
    return out


# What each fleet and device panel must show, from the ground truth (panel title -> one
# expectation per query of the panel). Eval time is 5m: `time()` is 300.
EXPECTED = {
    "Devices online / offline": [per_fleet(lambda f: f["online"]), per_fleet(lambda f: f["devices"] - f["online"])],
    "Offline ratio": [per_fleet(lambda f: 1 - f["online"] / f["devices"])],
    "Status mix (overall_status)": [summed("status", STATUSES)],
    "Heartbeat states": [summed("state", STATES)],
    "Release rollout: devices on their target release": [per_fleet(lambda f: f["on_target"] / f["devices"])],
    "Undervolted devices": [per_fleet(lambda f: f["undervolted"])],
    "Fleets": [{f'{{device_type="raspberrypi4-64", fleet="{n}", fleet_id="{len(n)}", '
                f'organization="{n.split("/")[0]}", target_release="abc"}}': 1 for n in FLEETS}],
    "Devices": [{f'{{device_name="{d["name"]}", device_type="raspberrypi4-64", device_uuid="{u}", '
                 f'fleet="{d["fleet"]}", os_version="balenaOS 6.0.0", release="abc", tag_location="hall"}}': 1
                 for u, d in DEVICES.items()}],
    "CPU usage": [per_device(lambda d: d["cpu"])],
    "CPU temperature": [per_device(lambda d: d["temp"])],
    "Memory used": [per_device(lambda d: d["mem"][0] / d["mem"][1])],
    "Storage used": [per_device(lambda d: d["disk"][0] / d["disk"][1])],
    "Time since last connectivity change": [per_device(lambda d: 300 - d["seen"])],
    "Online, on target release, undervolted": [per_device(lambda d: d["online"]), per_device(lambda d: d["on_target"]),
                                               per_device(lambda d: d["undervolted"])],
    "Update progress": [per_device(lambda d: d["progress"])],
    "Rollout: devices per running release": [
        {f'{{fleet="{name}", release="{r}"}}': n for name, a in APPS.items() for r, n in a["releases"].items()}],
    "Services by status": [apps_summed("services", ["service", "status"])],
    "Update status": [apps_summed("update", ["status"])],
    "OS versions in use": [apps_summed("os", ["os_version", "os_variant"])],
    "Supervisor versions in use": [apps_summed("supervisor", ["supervisor_version"])],
    "OS updates: devices per state": [summed_hosts("os_update", "status")],
    "OS lifecycle: devices per phase": [summed_hosts("phase", "phase")],
    "Supervisor drift: devices behind their target supervisor": [
        {f'{{fleet="{n}"}}': h["supervisor_pending"] for n, h in HOSTS.items()}],
    "Supervisor settings: devices per setting": [summed_hosts("settings", "setting")],
    "Rollout by version: devices per release semver": [rollout_by_semver()],
    "Device locations": [
        {f'{{device_name="{d["name"]}", device_uuid="{u}", fleet="{d["fleet"]}"}}': LOCATIONS[u][i]
         for u, d in DEVICES.items()} for i in (0, 1)],
    "Releases: newest build beside the target": [
        {f'{{fleet="{name}", release="{a["latest"][0]}", semver="{a["latest"][2]}", status="{a["latest"][1]}"}}': 1
         for name, a in APPS.items()}],
}


def panels():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    return dash, [p for p in dash["panels"] if p.get("targets")]


def substitute(expr):
    for k, v in VARIABLES.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, expr
    return expr


def promtool(*args, cwd):
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)


class DashboardTest(unittest.TestCase):
    def test_every_query_is_valid_promql(self):
        _, ps = panels()
        rules = [{"record": f"panel_{p['id']}_{t['refId']}", "expr": substitute(t["expr"])} for p in ps for t in p["targets"]]
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "rules.yml"), "w") as f:
                yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
            r = promtool("check", "rules", "rules.yml", cwd=tmp)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertGreaterEqual(len(rules), 25)

    def test_fleet_and_device_panels_count_each_fleet_once(self):
        _, ps = panels()
        by_title = {p["title"]: p for p in ps}
        self.assertLessEqual(set(EXPECTED), set(by_title))
        input_series = [{"series": name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(l.items())) + "}",
                         "values": f"{v}x10"} for name, l, v in series()]
        tests = []
        for title, expectations in EXPECTED.items():
            targets = by_title[title]["targets"]
            self.assertEqual(len(targets), len(expectations), title)
            for t, exp in zip(targets, expectations):
                tests.append({"expr": substitute(t["expr"]), "eval_time": "5m",
                              "exp_samples": [{"labels": k, "value": v} for k, v in exp.items()]})
        doc = {"evaluation_interval": "1m",
               "tests": [{"interval": "1m", "input_series": input_series, "promql_expr_test": tests}]}
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "test.yml"), "w") as f:
                yaml.safe_dump(doc, f, width=1000)
            r = promtool("test", "rules", "test.yml", cwd=tmp)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_variables_and_rate_intervals_follow_the_mixin_conventions(self):
        dash, ps = panels()
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        self.assertTrue({"datasource", "job", "instance", "fleet", "device"} <= set(variables))
        # Devices are chosen by UUID (names need not be unique), shown by name.
        device = variables["device"]
        self.assertIn("(?<value>", device["regex"])
        self.assertIn("device_uuid", device["regex"].split("(?<value>")[0])
        for p in ps:
            for t in p["targets"]:
                if "rate(" in t["expr"]:
                    self.assertIn("[$__rate_interval]", t["expr"], p["title"])
                if "balena_device_" in t["expr"] and p["type"] != "geomap":
                    # A map draws a point per device: every device of the chosen fleets.
                    self.assertIn('device_uuid=~"$device"', t["expr"], p["title"])
                    self.assertNotIn("device_name=~", t["expr"], p["title"])


    def test_defaults_are_the_shipped_jobs_and_one_device(self):
        dash, _ = panels()
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        # The probe job lists only jobs that scrape this exporter's /probe (blackbox's
        # probe_success jobs are not offered), and opens on the jobs the chart and rules use.
        job = variables["job"]
        self.assertIn("balena_fleet_info", job["definition"])
        self.assertNotIn("probe_success", job["definition"])
        self.assertEqual(job["current"]["value"], "balena")
        self.assertEqual(variables["exporter_job"]["current"]["value"], "balena-exporter")
        self.assertIn("balena_exporter_", variables["exporter_job"]["definition"])
        # Never All devices: a 2,000-device fleet would draw 2,000 lines in each device panel.
        self.assertFalse(variables["device"]["includeAll"])
        self.assertNotIn("allValue", variables["device"])
        self.assertEqual(variables["device"].get("current"), {})
        # Shared crosshair.
        self.assertEqual(dash.get("graphTooltip"), 1)

    def test_every_selector_follows_the_cluster_variable(self):
        dash, ps = panels()
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        cluster = variables["cluster"]
        self.assertTrue(cluster["includeAll"])
        self.assertEqual(cluster["allValue"], ".*")  # also matches series without a cluster label
        names = [v["name"] for v in dash["templating"]["list"]]
        self.assertLess(names.index("cluster"), names.index("job"))
        exprs = [t["expr"] for p in ps for t in p["targets"]]
        exprs += [variables[n]["definition"] for n in ("job", "instance", "fleet", "device", "exporter_job")]
        for e in exprs:
            for sel in re.findall(r"\{[^}]*\}", e):
                if "job=~" in sel:
                    self.assertIn('cluster=~"$cluster"', sel, e)

    def test_no_panel_mixes_units_on_one_axis(self):
        _, ps = panels()

        def unit(expr):
            if "histogram_quantile" in expr or ("time() -" in expr and "_timestamp_seconds" in expr):
                return "seconds"
            if "rate(" in expr:
                return "per second"
            if " / " in expr or "_ratio" in expr:
                return "ratio"
            for suffix, u in (("_seconds", "seconds"), ("_bytes", "bytes"), ("_celsius", "celsius")):
                if re.search(suffix + r"\b", expr):
                    return u
            return "count"

        for p in ps:
            units = {unit(t["expr"]) for t in p["targets"]}
            self.assertEqual(len(units), 1, f"{p['title']}: {units}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
