"""Talking to a running open-balena-api: HTTP, OData quoting, seeding through the API, and the
ground truth the conformance suite compares the exporter with.

The ground truth is computed here from independent queries (plain `$select`s of each table,
no `$expand`), never from the exporter's own request shapes, so that a mistake in those shapes
cannot hide in both sides.
"""

import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

MIB = 1024 * 1024
STATUSES = ["configuring", "disconnected", "inactive", "operational", "post-provisioning",
            "reduced-functionality", "updating"]
STATES = ["online", "offline", "timeout", "unknown"]


def quote(value):
    """An OData string literal ('' doubles a quote), percent-encoded the way the API accepts."""
    return urllib.parse.quote("'" + value.replace("'", "''") + "'", safe="'")


class Api:
    def __init__(self, url, token=None):
        self.url = url.rstrip("/")
        self.token = token

    def request(self, method, path, body=None, token=None, raw_query="", content_type="application/json",
                headers=None):
        url = self.url + path + (("?" + raw_query) if raw_query else "")
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", content_type)
        tok = self.token if token is None else token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method, path, body=None, raw_query="", expect=(200, 201)):
        status, text = self.request(method, path, body, raw_query=raw_query)
        if status not in expect:
            raise RuntimeError(f"{method} {path}?{raw_query}: {status} {text[:300]!r}")
        return json.loads(text) if text.strip() else None

    def get(self, resource, query):
        """`GET /v7/<resource>?<query>` → rows."""
        return self.json("GET", f"/v7/{resource}", raw_query=query)["d"]

    def post(self, resource, body):
        return self.json("POST", f"/v7/{resource}", body)

    def patch(self, resource, rid, body):
        self.json("PATCH", f"/v7/{resource}({rid})", body)


def login(url, email, password):
    status, text = Api(url).request("POST", "/login_", {"username": email, "password": password})
    assert status == 200, (status, text)
    return text.decode().strip().strip('"')


def api_key(url, jwt, name, expiry=None):
    body = {"name": name}
    if expiry:
        body["expiryDate"] = expiry
    status, text = Api(url, jwt).request("POST", "/api-key/user/full", body)
    assert status in (200, 201), (status, text)
    return json.loads(text)


def psql(pg_port, sql):
    """Runs SQL as postgres on the throwaway cluster (bulk rows only; see seed.py)."""
    out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres",
                          "-d", "balena", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


# A seeded device's columns and their SQL, of `i` (its number, from 1): what every benchmark's
# fleet starts from; a benchmark overrides or adds columns for what it measures.
SEED_DEVICE_COLUMNS = {
    "is online": "i % 3 <> 0",
    "api heartbeat state": "(array['online','offline','timeout','unknown'])[1 + i % 4]",
    "is connected to vpn": "i % 2 = 0",
    "last connectivity event": "now() - (i || ' seconds')::interval",
    "cpu usage": "i % 100",
    "cpu temp": "40 + i % 30",
    "memory usage": "500 + i % 400",
    "memory total": "3906",
    "storage usage": "2000 + i % 900",
    "storage total": "29000",
    "is undervolted": "i % 97 = 0",
    "os version": "'balenaOS 6.0.' || (i % 20)",
    "os variant": "'prod'",
    "supervisor version": "'16.4.' || (i % 9)",
}


def seed_devices(pg_port, fleet, device_type, n, name, columns=None):
    """Inserts `n` devices of `fleet` in SQL (one statement: the API's own POST would take minutes
    for 50,000), named `<name>-device-<i>` with uuid md5('<name>-<i>'), the columns of
    SEED_DEVICE_COLUMNS with `columns` (column -> SQL of i) over them, then analyzes the table."""
    cols = dict(SEED_DEVICE_COLUMNS, **(columns or {}))
    psql(pg_port, f"""
        with a as (insert into actor ("created at") select now() from generate_series(1, {n}) returning id),
             x as (select id, row_number() over (order by id) as i from a)
        insert into device (actor, uuid, "device name", "is of-device type", "belongs to-application",
                            {", ".join(f'"{c}"' for c in cols)})
        select id, md5('{name}-' || i), '{name}-device-' || i, {device_type}, {fleet}, {", ".join(cols.values())}
        from x""")
    psql(pg_port, "analyze device")


def epoch(iso):
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def nav(value):
    """The id of a navigation field (`{"__id": N}`), or None."""
    return value["__id"] if isinstance(value, dict) else None


def sanitize_tag(key):
    """A tag key as a label name suffix: what docs/configuration.md says of device_tags."""
    out = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in key.lower())
    return out


DEVICE_SELECT = ",".join([
    "id", "uuid", "device_name", "belongs_to__application", "is_of__device_type", "is_online",
    "api_heartbeat_state", "overall_status", "overall_progress", "os_version", "os_variant",
    "supervisor_version", "cpu_usage", "cpu_temp", "memory_usage", "memory_total", "storage_usage",
    "storage_total", "is_undervolted", "is_connected_to_vpn", "last_connectivity_event", "is_running__release",
    "should_be_running__release", "update_status", "last_update_status_event", "is_pinned_on__release",
    "changed_api_heartbeat_state_on__date", "provisioning_state", "provisioning_progress",
    "should_be_operated_by__release", "should_be_managed_by__release",
])
OS_UPDATE_STATES = ["failed", "in_progress", "none", "pending"]
OS_PHASES = ["current", "end-of-life", "next", "sunset", "unknown"]
# setting label -> (variable names, first wins; the value that matters), docs/metrics.md
SETTINGS = {
    "hardware_metrics_disabled": (["BALENA_SUPERVISOR_HARDWARE_METRICS", "RESIN_SUPERVISOR_HARDWARE_METRICS"], False),
    "local_mode": (["BALENA_SUPERVISOR_LOCAL_MODE", "RESIN_SUPERVISOR_LOCAL_MODE"], True),
    "lock_override": (["BALENA_SUPERVISOR_OVERRIDE_LOCK", "RESIN_SUPERVISOR_OVERRIDE_LOCK", "BALENA_OVERRIDE_LOCK",
                       "RESIN_OVERRIDE_LOCK"], True),
}


def boolean(value):
    """A configuration variable as the supervisor reads a boolean; None for anything else."""
    v = (value or "").strip().lower()
    return True if v in ("true", "1", "on") else False if v in ("false", "0", "off") else None
UPDATE_STATUSES = ["aborted", "applying changes", "done", "downloaded", "downloading", "none", "rejected"]


def keyset(api, resource, select, filt=None, page=1000):
    """Every row of a listing, in keyset pages written independently of the exporter's."""
    rows, after = [], 0
    while True:
        f = f"({filt})%20and%20id%20gt%20{after}" if filt else f"id%20gt%20{after}"
        batch = api.get(resource, f"$select={select}&$filter={f}&$orderby=id%20asc&$top={page}")
        if not batch:
            return rows
        rows += batch
        after = batch[-1]["id"]


class Truth:
    """What the API says, by independent queries: fleets, devices, releases, tags."""

    def __init__(self, api):
        self.orgs = {o["id"]: o["handle"] for o in api.get("organization", "$select=id,handle")}
        self.types = {t["id"]: t["slug"] for t in api.get("device_type", "$select=id,slug")}
        self.release_rows = {r["id"]: r for r in keyset(
            api, "release", "id,commit,status,semver,created_at,belongs_to__application,variant,phase")}
        self.fleet_vars, self.device_vars = {}, {}
        for v in keyset(api, "application_config_variable", "id,application,name,value"):
            self.fleet_vars.setdefault(nav(v["application"]), {})[v["name"]] = v["value"]
        for v in keyset(api, "device_config_variable", "id,device,name,value"):
            self.device_vars.setdefault(nav(v["device"]), {})[v["name"]] = v["value"]
        self.releases = {i: r["commit"] for i, r in self.release_rows.items()}
        # Services per device from three plain listings: installs, images, services.
        service_names = {x["id"]: x["service_name"] for x in keyset(api, "service", "id,service_name")}
        image_service = {x["id"]: service_names.get(nav(x["is_a_build_of__service"]))
                         for x in keyset(api, "image", "id,is_a_build_of__service")}
        self.installs = {}
        for i in keyset(api, "image_install", "id,device,installs__image,status"):
            i["service_name"] = image_service.get(nav(i["installs__image"]))
            self.installs.setdefault(nav(i["device"]), []).append(i)
        self.fleets = {f["slug"]: f for f in api.get(
            "application", "$select=id,app_name,slug,organization,is_for__device_type,should_be_running__release")}
        self.devices = {}
        for slug, f in self.fleets.items():
            rows, after = [], 0
            while True:  # plain keyset pages of 1000, written independently of the exporter's
                page = api.get("device", f"$select={DEVICE_SELECT}&$filter=belongs_to__application%20eq%20{f['id']}"
                                         f"%20and%20id%20gt%20{after}&$orderby=id%20asc&$top=1000")
                if not page:
                    break
                rows += page
                after = page[-1]["id"]
            self.devices[slug] = rows
        self.tags = {}
        for t in api.get("device_tag", "$select=device,tag_key,value"):
            self.tags.setdefault(nav(t["device"]), {})[t["tag_key"]] = t["value"]

    def fleet_series(self, slug, module):
        f = self.fleets[slug]
        devs = self.devices[slug]
        out = {}
        target = self.releases.get(nav(f["should_be_running__release"]), "")
        out[("balena_fleet_info", (("device_type", self.types[nav(f["is_for__device_type"])]),
                                   ("fleet", slug), ("fleet_id", str(f["id"])),
                                   ("organization", self.orgs[nav(f["organization"])]),
                                   ("target_release", target)))] = 1.0
        fl = (("fleet", slug),)
        online = sum(1 for d in devs if d["is_online"])
        out[("balena_fleet_devices_online", fl)] = float(online)
        if module.get("legacy_devices_online"):
            out[("balena_devices_online", (("fleet_name", f["app_name"]),))] = float(online)
        out.update(self.release_series(f, slug))
        if module.get("counts_only"):
            return out
        out[("balena_fleet_devices", fl)] = float(len(devs))
        for s in STATUSES:
            out[("balena_fleet_devices_status", fl + (("status", s),))] = float(
                sum(1 for d in devs if d["overall_status"] == s))
        for s in STATES:
            out[("balena_fleet_devices_heartbeat", fl + (("state", s),))] = float(
                sum(1 for d in devs if d["api_heartbeat_state"] == s))
        out[("balena_fleet_devices_on_target_release", fl)] = float(sum(1 for d in devs if self.on_target(d)))
        out[("balena_fleet_devices_online_not_on_target_release", fl)] = float(sum(
            1 for d in devs if d["is_online"] and nav(d["should_be_running__release"]) is not None
            and not self.on_target(d)))
        out[("balena_fleet_devices_undervolted", fl)] = float(sum(1 for d in devs if d["is_undervolted"]))
        services = self.current_services(devs) if module.get("services", True) else {}
        for (service, status), n in services.items():
            out[("balena_fleet_services", fl + (("service", service), ("status", status)))] = float(n)
        for service in {service for service, _ in services}:
            out.setdefault(("balena_fleet_services", fl + (("service", service), ("status", "Running"))), 0.0)
        for u in UPDATE_STATUSES:
            out[("balena_fleet_devices_update_status", fl + (("status", u),))] = float(
                sum(1 for d in devs if (d["update_status"] or "none") == u))
        for d in devs:
            rel = (("fleet", slug), ("release", self.releases.get(nav(d["is_running__release"]), "none")))
            out[("balena_fleet_devices_release", rel)] = out.get(("balena_fleet_devices_release", rel), 0.0) + 1
            os_key = (("fleet", slug), ("os_variant", d["os_variant"] or ""), ("os_version", d["os_version"] or ""))
            out[("balena_fleet_devices_os", os_key)] = out.get(("balena_fleet_devices_os", os_key), 0.0) + 1
            sup = (("fleet", slug), ("supervisor_version", d["supervisor_version"] or ""))
            out[("balena_fleet_devices_supervisor", sup)] = out.get(("balena_fleet_devices_supervisor", sup), 0.0) + 1
        out[("balena_fleet_devices_pinned", fl)] = float(sum(1 for d in devs if nav(d["is_pinned_on__release"])))
        host = module.get("host", True)
        if host:
            out.update(self.host_series(f, slug, devs))
        if module.get("devices", True):
            for d in devs:
                out.update(self.device_series(slug, d, module.get("device_tags", [])))
                base = (("device_name", d["device_name"]), ("device_uuid", d["uuid"]), ("fleet", slug))
                if host:
                    out[("balena_device_os_update", tuple(sorted(base + (("status", self.os_update(d)),))))] = 1.0
                if module.get("device_services"):
                    for (service, status), n in self.current_services([d]).items():
                        out[("balena_device_service_status",
                             tuple(sorted(base + (("service", service), ("status", status)))))] = float(n)
        return out

    # ---- the layer under the application, by docs/metrics.md ("Host layer") ----

    def os_update(self, d):
        state = d["provisioning_state"] or ""
        if state == "OS update failed":
            return "failed"
        if d["provisioning_progress"] is not None and state != "Post-Provisioning":
            return "in_progress"
        target = self.release_rows.get(nav(d["should_be_operated_by__release"]))
        if target and d["os_version"] and "balenaOS " + target["semver"] != d["os_version"]:
            return "pending"
        return "none"

    def os_phase(self, d):
        target = self.release_rows.get(nav(d["should_be_operated_by__release"]))
        if not target or not d["os_version"]:
            return "unknown"
        for r in self.release_rows.values():
            if (nav(r["belongs_to__application"]) == nav(target["belongs_to__application"])
                    and r["status"] == "success" and r["variant"] in ("", d["os_variant"])
                    and "balenaOS " + r["semver"] == d["os_version"]):
                return r["phase"] or "unknown"
        return "unknown"

    def host_series(self, f, slug, devs):
        out, fl = {}, (("fleet", slug),)
        updates = dict.fromkeys(OS_UPDATE_STATES, 0)
        phases = dict.fromkeys(OS_PHASES, 0)
        settings = dict.fromkeys(SETTINGS, 0)
        behind = 0
        for d in devs:
            updates[self.os_update(d)] += 1
            phases[self.os_phase(d)] += 1
            supervisor = self.release_rows.get(nav(d["should_be_managed_by__release"]))
            if supervisor and d["supervisor_version"] and supervisor["semver"] != d["supervisor_version"]:
                behind += 1
            own, fleet = self.device_vars.get(d["id"], {}), self.fleet_vars.get(f["id"], {})
            for label, (names, matters) in SETTINGS.items():
                def level(vars_):
                    return next((boolean(vars_[n]) for n in names if n in vars_ and boolean(vars_[n]) is not None),
                                None)
                value = level(own)
                if value is None:
                    value = level(fleet)
                settings[label] += value == matters
        for k, n in updates.items():
            out[("balena_fleet_devices_os_update", fl + (("status", k),))] = float(n)
        for k, n in phases.items():
            out[("balena_fleet_devices_os_phase", (("fleet", slug), ("phase", k)))] = float(n)
        for k, n in settings.items():
            out[("balena_fleet_devices_supervisor_setting", (("fleet", slug), ("setting", k)))] = float(n)
        out[("balena_fleet_devices_supervisor_update_pending", fl)] = float(behind)
        own = sorted((r for r in self.release_rows.values() if nav(r["belongs_to__application"]) == f["id"]),
                     key=lambda r: r["created_at"])
        in_use = [self.release_rows.get(nav(d["is_running__release"])) for d in devs]
        in_use += [self.release_rows.get(nav(f["should_be_running__release"]))] + own[-1:]
        for r in filter(None, in_use):
            out[("balena_fleet_release_info", (("fleet", slug), ("release", r["commit"]), ("semver", r["semver"]),
                                               ("status", r["status"])))] = 1.0
        return out

    def release_series(self, f, slug):
        """The newest build (by created_at) beside the target."""
        out, fl = {}, (("fleet", slug),)
        own = sorted((r for r in self.release_rows.values() if nav(r["belongs_to__application"]) == f["id"]),
                     key=lambda r: r["created_at"])
        if own:
            latest = own[-1]
            out[("balena_fleet_latest_release_info", fl + (("release", latest["commit"]), ("semver", latest["semver"]),
                                                            ("status", latest["status"])))] = 1.0
            out[("balena_fleet_latest_release_created_timestamp_seconds", fl)] = epoch(latest["created_at"])
        target = self.release_rows.get(nav(f["should_be_running__release"]))
        if target:
            out[("balena_fleet_target_release_created_timestamp_seconds", fl)] = epoch(target["created_at"])
        return out

    def current_services(self, devs):
        """(service, status) → installs: every install of each device that is not deleted, as
        balena-sdk's current_services lists them and docs/metrics.md says."""
        out = {}
        for d in devs:
            for i in self.installs.get(d["id"], []):
                if i["status"] != "deleted":
                    k = (i["service_name"], i["status"])
                    out[k] = out.get(k, 0) + 1
        return out

    @staticmethod
    def on_target(d):
        target = nav(d["should_be_running__release"])
        return target is not None and nav(d["is_running__release"]) == target

    def device_series(self, slug, d, tag_keys):
        base = (("device_name", d["device_name"]), ("device_uuid", d["uuid"]), ("fleet", slug))
        tags = self.tags.get(d["id"], {})
        info = dict(base)
        info.update(device_type=self.types[nav(d["is_of__device_type"])], os_version=d["os_version"] or "",
                    os_variant=d["os_variant"] or "", supervisor_version=d["supervisor_version"] or "",
                    release=self.releases.get(nav(d["is_running__release"]), ""))
        for k in tag_keys:
            info["tag_" + sanitize_tag(k)] = tags.get(k, "")
        out = {("balena_device_info", tuple(sorted(info.items()))): 1.0}

        def put(name, value, extra=()):
            if value is not None:
                out[(name, tuple(sorted(base + extra)))] = float(value)
        put("balena_device_online", None if d["is_online"] is None else int(d["is_online"]))
        put("balena_device_status", 1, (("status", d["overall_status"]),))
        put("balena_device_heartbeat", 1, (("state", d["api_heartbeat_state"]),))
        put("balena_device_last_connectivity_timestamp_seconds",
            None if d["last_connectivity_event"] is None else epoch(d["last_connectivity_event"]))
        put("balena_device_cpu_usage_ratio", None if d["cpu_usage"] is None else d["cpu_usage"] / 100)
        put("balena_device_cpu_temperature_celsius", d["cpu_temp"])
        for field in ("memory_usage", "memory_total", "storage_usage", "storage_total"):
            put(f"balena_device_{field}_bytes", None if d[field] is None else d[field] * MIB)
        put("balena_device_undervolted", None if d["is_undervolted"] is None else int(d["is_undervolted"]))
        put("balena_device_vpn_connected",
            None if d["is_connected_to_vpn"] is None else int(d["is_connected_to_vpn"]))
        if nav(d["should_be_running__release"]) is not None:
            put("balena_device_on_target_release", int(self.on_target(d)))
        put("balena_device_update_progress_ratio",
            None if d["overall_progress"] is None else d["overall_progress"] / 100)
        put("balena_device_update_status", 1, (("status", d["update_status"] or "none"),))
        put("balena_device_update_status_timestamp_seconds",
            None if d["last_update_status_event"] is None else epoch(d["last_update_status_event"]))
        put("balena_device_pinned", int(nav(d["is_pinned_on__release"]) is not None))
        put("balena_device_heartbeat_changed_timestamp_seconds",
            None if d["changed_api_heartbeat_state_on__date"] is None
            else epoch(d["changed_api_heartbeat_state_on__date"]))
        if (d["provisioning_state"] or "") not in ("OS update failed", "Post-Provisioning"):
            put("balena_device_os_update_progress_ratio",
                None if d["provisioning_progress"] is None else d["provisioning_progress"] / 100)
        return out


def parse_exposition(text):
    """Prometheus text format → {(name, ((label, value), ...)): value} (sorted labels)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = min(i for i in (line.find("{"), line.find(" ")) if i >= 0)
        name, rest = line[:name_end], line[name_end:]
        labels = []
        if rest.startswith("{"):
            i = 1
            while rest[i] != "}":
                eq = rest.index("=", i)
                key = rest[i:eq].strip().lstrip(",").strip()
                assert rest[eq + 1] == '"', line
                j, val = eq + 2, []
                while rest[j] != '"':
                    if rest[j] == "\\":
                        val.append({"\\": "\\", '"': '"', "n": "\n"}[rest[j + 1]])
                        j += 2
                    else:
                        val.append(rest[j])
                        j += 1
                labels.append((key, "".join(val)))
                i = j + 1
                if rest[i] == ",":
                    i += 1
            rest = rest[i + 1:]
        key = (name, tuple(sorted(labels)))
        assert key not in out, f"duplicate series {key}"
        out[key] = float(rest.split()[0])
    return out


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class RunningExporter:
    """The exporter binary on `config_text`, on a free loopback port, for the benchmarks:
    `timed(query)` times one probe of `/probe?<query>` (gzip answer) -> (seconds, bytes).
    Stopped when the `with` block ends."""

    def __init__(self, binary, config_text, headers=None):
        self.binary, self.config_text, self.headers = binary, config_text, headers or {}

    def __enter__(self):
        import tempfile
        import time
        self.dir = tempfile.TemporaryDirectory()
        cfg = os.path.join(self.dir.name, "c.yml")
        with open(cfg, "w") as f:
            f.write(self.config_text)
        self.port = free_port()
        self.proc = subprocess.Popen([self.binary, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        return self

    def timed(self, query, encoding="gzip"):
        """Seconds to the last byte of a probe answered in `encoding` (not decoded), and its size."""
        import time
        t = time.perf_counter()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/probe?{query}",
                                     headers=dict({"Accept-Encoding": encoding}, **self.headers))
        with urllib.request.urlopen(req, timeout=120) as r:
            size = len(r.read())
        return time.perf_counter() - t, size

    def cpu_seconds(self):
        """The process's user + system CPU so far (`/proc/PID/stat`, steps of 10 ms)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        self.dir.cleanup()


def timed_probes(binary, config_text, query, runs=3, headers=None):
    """Runs the exporter binary on `config_text`, times `runs` probes of `/probe?<query>` (gzip
    answers) and returns (median seconds, bytes of the last answer). For the benchmarks."""
    import statistics
    with RunningExporter(binary, config_text, headers) as ex:
        runs = [ex.timed(query) for _ in range(runs)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def env_file(path):
    env = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            if k:
                env[k] = v.strip("'\"")
    return env


def here(*parts):
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), *parts)
