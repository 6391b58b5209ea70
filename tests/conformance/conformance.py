#!/usr/bin/env python3
"""Conformance of the exporter, and of its simulator, with the real balena API server.

Run by tests/conformance/run.sh, which installs and starts open-balena-api on loopback and
passes its directory. This script:

1. seeds the API through the API (seed.py);
2. runs the exporter binary against it and compares every fleet and device series of every
   target (fleet, org, all) and module (per-device, summary, counts-only, compact cache) with
   the ground truth of independent queries (balena.Truth);
3. checks bad input against the real API: a bad key, an expired key, an org and a fleet that do
   not exist, a fleet slug and an org handle in capitals;
4. follows a real device-key heartbeat until it expires;
5. holds the simulator to the real API: loads the same rows into the simulator
   (examples/simulator.rs), runs the same exporter config against both, compares the answers,
   then replays every request the exporter sent (with a good, a bad and no token) to both
   servers and compares status codes and every field of every row.

Ends with one line: "conformance: N passed, N failed". Exit status 1 on any failure.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from balena import Api, Truth, api_key, env_file, free_port, here, login, parse_exposition  # noqa: E402
from seed import TAG_KEYS, heartbeat, seed, uuid  # noqa: E402

MODULES = {
    "default": {"devices": True, "device_tags": TAG_KEYS, "services": True},
    "summary": {"devices": False, "services": True},
    "compat": {"counts_only": True, "legacy_devices_online": True},
    "compact": {"devices": True, "device_tags": TAG_KEYS, "compact_cache": True},
    "services": {"devices": True, "services": True, "device_services": True, "services_interval": "0s"},
}
# Modules in the config but not in the comparison loop: locations are balenaCloud's, and the
# real (open) API must fail a probe of this module with one clear reason.
EXTRA_MODULES = {"located": {"devices": True, "locations": True}}
READ_TIMES = "balena_fleet_services_timestamp_seconds"  # when services were read: checked apart
RUN_STARTED = time.time()
INSTALL_STATUSES = ["Stopping", "Stopped", "Downloading", "Downloaded", "Installing", "Installed", "Starting",
                    "Running", "Idle", "Handing over", "Awaiting handover", "Deleting", "deleted", "Dead", "paused",
                    "restarting", "removing", "exited", "configuring", "Unknown"]  # balena.sbvr, image install status
PAGE_SIZE = 300  # small, so that the 2,000-device fleet is listed in 7 pages (and one empty)


class Results:
    def __init__(self):
        self.passed, self.failed = 0, []

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"ok: {what}")
        else:
            self.failed.append(what)
            print(f"FAIL: {what}\n{detail}")
        return ok


class Exporter:
    """The exporter binary on a free loopback port with a config file; stopped on exit."""

    def __init__(self, binary, config_text, workdir, name):
        self.config = os.path.join(workdir, f"{name}.yml")
        self.log = os.path.join(workdir, f"{name}.log")
        with open(self.config, "w") as f:
            f.write(config_text)
        self.port = free_port()
        self.proc = subprocess.Popen([binary, f"--config.file={self.config}", f"--web.listen-address=127.0.0.1:{self.port}",
                                      "--log.level=debug"], stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                if self.get("/-/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"exporter {name} did not start: {open(self.log).read()[-2000:]}")

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=120) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def probe(self, target, module):
        status, text = self.get(f"/probe?target={target}&module={module}")
        assert status == 200, (status, text)
        return parse_exposition(text)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)


def config(url, tokens, targets):
    lines = [f"api:\n  url: {url}\n  cache_ttl: 0s\n  fleet_cache_ttl: 0s\n  page_size: {PAGE_SIZE}\n  timeout: 30s\nauths:"]
    lines += [f"  {name}:\n    token: {json.dumps(tok)}" for name, tok in tokens.items()]
    lines.append("modules:")
    lines += [f"  {name}: {json.dumps(m)}" for name, m in dict(MODULES, **EXTRA_MODULES).items()]
    lines.append("targets:")
    lines += [f"  {name}: {json.dumps(t)}" for name, t in targets.items()]
    return "\n".join(lines) + "\n"


# target -> (definition, the fleets it covers or the failure reason the docs promise)
TARGETS = {
    "screens": ({"fleet": "admin/screens", "auth": "good"}, ["admin/screens"]),
    "empty": ({"fleet": "admin/empty-fleet", "auth": "good"}, ["admin/empty-fleet"]),
    "big": ({"fleet": "admin/big-fleet", "auth": "good"}, ["admin/big-fleet"]),
    "kiosks": ({"fleet": "partner/kiosks", "auth": "good"}, ["partner/kiosks"]),
    "apps": ({"fleet": "admin/apps", "auth": "good"}, ["admin/apps"]),
    "admin-org": ({"org": "admin", "auth": "good"}, ["admin/apps", "admin/big-fleet", "admin/empty-fleet", "admin/screens"]),
    "partner-org": ({"org": "partner", "auth": "good"}, ["partner/kiosks"]),
    # The superuser is a member of balena_os here (add-org.sh), so its host and supervisor apps
    # are fleets it can access (a balenaCloud user is no member: not so there).
    "everything": ({"all": True, "auth": "good"},
                   ["admin/apps", "admin/big-fleet", "admin/empty-fleet", "admin/screens",
                    "balena_os/aarch64-supervisor", "balena_os/raspberrypi4-64", "partner/kiosks"]),
    "caps-fleet": ({"fleet": "ADMIN/Screens", "auth": "good"}, ["admin/screens"]),
    "caps-org": ({"org": "PARTNER", "auth": "good"}, ["partner/kiosks"]),
    "bad-key": ({"fleet": "admin/screens", "auth": "bad"}, "unauthorized"),
    "expired-key": ({"fleet": "admin/screens", "auth": "expired"}, "unauthorized"),
    "bad-key-org": ({"org": "admin", "auth": "bad"}, "unauthorized"),
    "bad-key-all": ({"all": True, "auth": "bad"}, "unauthorized"),
    "missing-fleet": ({"fleet": "admin/no-such-fleet", "auth": "good"}, "not_found"),
    "missing-org": ({"org": "no-such-org", "auth": "good"}, "not_found"),
}


def balena_series(samples):
    return {k: v for k, v in samples.items()
            if k[0].startswith("balena_") and not k[0].startswith("balena_probe_") and k[0] != READ_TIMES}


def services_on(module):
    return module.get("services", True) and not module.get("counts_only")


def diff(want, got, limit=8):
    lines = []
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            lines.append(f"    {k[0]}{dict(k[1])}: want {want.get(k)} got {got.get(k)}")
    more = f"\n    ... {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def check_targets(ex, truth, r):
    for target, (_, covers) in TARGETS.items():
        for module in MODULES:
            samples = ex.probe(target, module)
            if isinstance(covers, str):
                ok = samples.get(("probe_success", ())) == 0.0 and not balena_series(samples)
                r.check(ok, f"{target} ({module}): probe_success 0 and no series against the real API")
                continue
            want = {}
            for slug in covers:
                want.update(truth.fleet_series(slug, MODULES[module]))
            got = balena_series(samples)
            r.check(samples.get(("probe_success", ())) == 1.0 and got == want,
                    f"{target} ({module}): {len(want)} fleet and device series equal the API's independent answers",
                    diff(want, got))
            stamps = {dict(k[1])["fleet"]: v for k, v in samples.items() if k[0] == READ_TIMES}
            expected = set(covers) if services_on(MODULES[module]) else set()
            r.check(set(stamps) == expected and all(RUN_STARTED - 1 <= t <= time.time() for t in stamps.values()),
                    f"{target} ({module}): services read during this run for each of its {len(expected)} fleets",
                    f"    {stamps}")


def check_failure_reasons(ex, r):
    _, text = ex.get("/metrics")
    metrics = parse_exposition(text)
    for target, (_, covers) in TARGETS.items():
        if not isinstance(covers, str):
            continue
        n = metrics.get(("balena_exporter_probes_total", (("module", "default"), ("result", covers), ("target", target))))
        r.check(n == 1.0, f"{target}: counted as {covers}, the reason docs/operations.md gives", f"    got {n}")


def check_no_token_in_logs(paths, tokens, r):
    for path in paths:
        with open(path) as f:
            text = f.read()
        leaked = [name for name, tok in tokens.items() if tok and tok in text]
        r.check(not leaked, f"{os.path.basename(path)}: no token in the exporter's debug log", f"    leaked: {leaked}")


def check_locations_refused(ex, r):
    """A module with `locations: true` against openBalena: probe_success 0, the reason
    `unsupported`, and the debug page names the key."""
    status, text = ex.get("/probe?target=screens&module=located&debug=true")
    r.check(status == 200 and "probe_success 0" in text and "`locations: true` in this module needs balenaCloud" in text,
            "a module with locations: true fails against the real (open) API, saying which key",
            "    " + "\n    ".join(text.splitlines()[:12]))
    _, metrics = ex.get("/metrics")
    n = parse_exposition(metrics).get(("balena_exporter_probes_total", (("module", "located"), ("result", "unsupported"),
                                                                        ("target", "screens"))))
    r.check(n == 1.0, "and it is counted with reason unsupported", f"    got {n}")


def check_host_seed(truth, r):
    """The seed covers every host state the series distinguish."""
    devs = [d for rows in truth.devices.values() for d in rows]
    updates = {truth.os_update(d) for d in devs}
    phases = {truth.os_phase(d) for d in devs}
    r.check(updates == {"failed", "in_progress", "none", "pending"}, f"the seed has every OS update state: {sorted(updates)}")
    r.check(phases >= {"end-of-life", "sunset", "current", "unknown"}, f"and OS phases {sorted(phases)}")
    targets = {d["should_be_operated_by__release"]["__id"] for d in devs if d["should_be_operated_by__release"]}
    r.check(len(targets) >= 3, f"the API set {len(targets)} distinct target OS releases itself from reported versions")


def check_heartbeat(ex, api, device_key, r):
    """A real device-key heartbeat: online, then (with the short timeouts run.sh starts the API
    with) timeout and offline; the exporter reports each state the API reports."""
    hb_uuid = uuid(50)
    heartbeat(api, hb_uuid, device_key)
    seen = set()
    deadline = time.time() + 60
    while time.time() < deadline and len(seen) < 3:
        state = api.get("device", f"$select=api_heartbeat_state&$filter=uuid%20eq%20'{hb_uuid}'")[0]["api_heartbeat_state"]
        samples = ex.probe("screens", "default")
        after = api.get("device", f"$select=api_heartbeat_state&$filter=uuid%20eq%20'{hb_uuid}'")[0]["api_heartbeat_state"]
        if state != after:
            continue  # changed while probing: ask again
        got = [dict(k[1])["state"] for k in samples if k[0] == "balena_device_heartbeat" and dict(k[1])["device_uuid"] == hb_uuid]
        if state not in seen:
            r.check(got == [state], f"heartbeat device: the exporter reports '{state}' as the API does", f"    got {got}")
            seen.add(state)
        time.sleep(1)
    r.check({"online", "timeout"} <= seen, "the device-key heartbeat was seen online, then expiring", f"    seen {seen}")


# ---- the simulator held to the real API ----

def dump(api, token):
    tables = {}
    for t in ("organization", "application", "device", "release", "device_type", "device_tag", "service", "image",
              "image_install", "release_tag", "application_config_variable", "device_config_variable"):
        rows, after = [], 0
        while True:
            page = api.get(t, f"$filter=id%20gt%20{after}&$orderby=id%20asc&$top=1000")
            if not page:
                break
            rows += page
            after = page[-1]["id"]
        tables[t] = [{k: v for k, v in row.items() if not k.startswith("__")} for row in rows]
    handles = [o["handle"] for o in tables["organization"]]
    return {"tables": tables, "users": [{"username": "admin", "token": token, "orgs": handles}]}


class Simulator:
    def __init__(self, binary, dump_path, log):
        self.proc = subprocess.Popen([binary, dump_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(log, "w"), text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening on (\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"simulator did not start: {line!r}, see {log}")
        self.url = m.group(1)

    def stop(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def same_rows(real, sim, path=""):
    """Where two API answers differ (None when equal), ignoring only OData metadata (`__…`
    members other than `__id`)."""
    if isinstance(real, dict) and isinstance(sim, dict):
        rk = {k for k in real if k == "__id" or not k.startswith("__")}
        sk = {k for k in sim if k == "__id" or not k.startswith("__")}
        if rk != sk:
            return f"{path}: fields {sorted(rk)} vs {sorted(sk)}"
        for k in sorted(rk):
            d = same_rows(real[k], sim[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(real, list) and isinstance(sim, list):
        if len(real) != len(sim):
            return f"{path}: {len(real)} rows vs {len(sim)}"
        for i, (a, b) in enumerate(zip(real, sim)):
            d = same_rows(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if real == sim else f"{path}: {real!r} vs {sim!r}"


def check_simulator(real_ex, sim_ex, sim, api, tokens, r):
    # Same config, same data: the same answers for every target and module.
    for target, (_, covers) in TARGETS.items():
        for module in MODULES:
            a = real_ex.probe(target, module)
            b = sim_ex.probe(target, module)
            ok = a.get(("probe_success", ())) == b.get(("probe_success", ())) and balena_series(a) == balena_series(b)
            r.check(ok, f"{target} ({module}): the exporter answers the same against the simulator and the real API",
                    diff(balena_series(a), balena_series(b)))
    # Every request the exporter sent, with a good, a bad and no token, to both servers.
    with urllib.request.urlopen(sim.url + "/_sim/requests") as resp:
        log = json.load(resp)
    shapes = sorted({(e["path"], e["query"]) for e in log})
    sim_api = Api(sim.url)
    mismatches = []
    for path, query in shapes:
        for who, tok in (("good", tokens["good"]), ("bad", tokens["bad"]), ("guest", "")):
            rs, rb = api.request("GET", path, token=tok, raw_query=query)
            ss, sb = sim_api.request("GET", path, token=tok, raw_query=query)
            if rs != ss:
                mismatches.append(f"    {who} {path}?{query}: real {rs}, simulator {ss}")
                continue
            if rs == 200 and path == "/actor/v1/whoami":
                # Ids are data (the simulator numbers its users itself); the exporter reads the
                # actor's type and name, and that the fields are there.
                a, b = json.loads(rb), json.loads(sb)
                if set(a) != set(b) or any(a[k] != b[k] for k in ("actorType", "username")):
                    mismatches.append(f"    {who} {path}: {a} vs {b}")
            elif rs == 200:
                d = same_rows(json.loads(rb), json.loads(sb), "d")
                if d:
                    mismatches.append(f"    {who} {path}?{query}: {d}")
    r.check(not mismatches, f"{len(shapes)} request shapes x 3 callers: the same status and the same fields and values "
                            "from the simulator and the real API", "\n".join(mismatches[:10]))
    r.check(len(shapes) >= 10, f"the replay covers {len(shapes)} distinct requests (device pages, fleets, orgs, whoami)")


def main():
    api_dir, exporter_bin, simulator_bin = sys.argv[1:4]
    env = env_file(os.path.join(api_dir, "run", "env"))
    env["DIR"] = api_dir
    url = env["BALENA_API_URL"]
    jwt = login(url, env["SUPERUSER_EMAIL"], env["SUPERUSER_PASSWORD"])
    tokens = {
        "good": api_key(url, jwt, "conformance"),
        "bad": "conformance-not-a-key-" + "x" * 10,
        "expired": api_key(url, jwt, "expired", iso_past()),
    }
    api = Api(url, tokens["good"])
    r = Results()
    status, _ = Api(url, tokens["expired"]).request("GET", "/actor/v1/whoami")
    r.check(status == 401, "the expired key is refused by the API itself", f"    whoami answered {status}")
    t0 = time.time()
    seeded = seed(api, env, here("real-balena-api", "add-org.sh"))
    print(f"seeded through the API in {time.time() - t0:.1f}s: {len(seeded['fleets'])} fleets, "
          f"{len(seeded['devices'])} devices by API, 2,000 by SQL")
    targets = {name: t for name, (t, _) in TARGETS.items()}
    keep = os.environ.get("CONFORMANCE_KEEP")  # a directory to keep logs, configs and the dump in
    with (tempfile.TemporaryDirectory() if not keep else _kept(keep)) as work:
        real_ex = Exporter(exporter_bin, config(url, tokens, targets), work, "exporter-real")
        try:
            truth = Truth(api)
            statuses = {d["overall_status"] for d in truth.devices["admin/screens"]}
            states = {d["api_heartbeat_state"] for d in truth.devices["admin/big-fleet"]}
            r.check(statuses >= {"configuring", "disconnected", "operational", "post-provisioning",
                                 "reduced-functionality", "updating"},
                    f"the seed covers every overall_status the API computes: {sorted(statuses)}")
            r.check(states == {"online", "offline", "timeout", "unknown"}, f"and every heartbeat state: {sorted(states)}")
            installed = {i["status"] for rows in truth.installs.values() for i in rows}
            r.check(installed == set(INSTALL_STATUSES),
                    f"devices reported every image_install status of the model ({len(installed)})",
                    f"    missing {sorted(set(INSTALL_STATUSES) - installed)}")
            updates = {d["update_status"] for d in truth.devices["admin/apps"]}
            r.check(updates == {None, "aborted", "applying changes", "done", "downloaded", "downloading", "rejected"},
                    f"and every update_status, null included: {sorted(map(str, updates))}")
            two = [d for d in truth.devices["admin/apps"]
                   if len({i["installs__image"]["__id"] for i in truth.installs.get(d["id"], [])}) > 4]
            r.check(two, "a device mid-update holds two releases' installs at once")
            check_host_seed(truth, r)
            check_targets(real_ex, truth, r)
            check_failure_reasons(real_ex, r)
            check_locations_refused(real_ex, r)

            path = os.path.join(work, "dump.json")
            with open(path, "w") as f:
                json.dump(dump(api, tokens["good"]), f)
            sim = Simulator(simulator_bin, path, os.path.join(work, "simulator.log"))
            try:
                sim_ex = Exporter(exporter_bin, config(sim.url, tokens, targets), work, "exporter-sim")
                try:
                    check_simulator(real_ex, sim_ex, sim, api, tokens, r)
                finally:
                    sim_ex.stop()
            finally:
                sim.stop()
            check_heartbeat(real_ex, api, seeded["device_key"], r)
        finally:
            real_ex.stop()
        check_no_token_in_logs([real_ex.log], tokens, r)
    print(f"conformance: {r.passed} passed, {len(r.failed)} failed")
    return 1 if r.failed else 0


class _kept:
    def __init__(self, path):
        os.makedirs(path, exist_ok=True)
        self.path = path

    def __enter__(self):
        return self.path

    def __exit__(self, *_):
        return False


def iso_past():
    return (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(timespec="seconds").replace("+00:00", "Z")


if __name__ == "__main__":
    sys.exit(main())
