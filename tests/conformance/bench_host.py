#!/usr/bin/env python3
"""What the layer under the application costs a probe, against the real balena API
(open-balena-api on loopback), for docs/performance.md. Not a test: numbers from one run, so
that ratios compare.

    tests/conformance/real-balena-api/start.sh ~/.cache/real-balena-api
    python3 tests/conformance/bench_host.py ~/.cache/real-balena-api BEFORE_BIN AFTER_BIN [DEVICES]

BEFORE_BIN is the exporter built before the host layer (it selects two device fields fewer
and has no host read), AFTER_BIN the exporter with it. Seeds one fleet of DEVICES (default
10,000) devices with SQL rows (host app, OS and supervisor releases through the API, each
device pointed at its target OS and supervisor, a tenth pending, a few variables), then, in one
run, alternating the binaries (each first half the time): the default and summary modules'
probe (median of 45 after a first probe that starts the background reads; the API's own
run-to-run spread is a few percent, so one pair of probes says little), and the host read's own
requests, raw.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from balena import Api, RunningExporter, api_key, env_file, login, seed_devices  # noqa: E402
from seed import commit, iso  # noqa: E402

RUNS = 45


def main():
    api_dir, before, after = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 10_000
    env = env_file(os.path.join(api_dir, "run", "env"))
    url = env["BALENA_API_URL"]
    token = api_key(url, login(url, env["SUPERUSER_EMAIL"], env["SUPERUSER_PASSWORD"]), "bench-host")
    api = Api(url, token)
    types = {t["slug"]: t["id"] for t in api.get("device_type", "$select=id,slug")}
    dt = types["raspberrypi4-64"]
    from datetime import datetime, timezone
    now = datetime.now(timezone.utc)
    stamp = int(time.time())  # a second run against the same API seeds fleets of its own
    host = api.post("application", {"app_name": f"rpi4-host-{n}-{stamp}", "organization": 1, "is_for__device_type": dt,
                                    "is_host": True, "is_public": True})["id"]
    os_ids = []
    for i, (version, phase) in enumerate([("5.3.24", "end-of-life"), ("6.0.13", "sunset"), ("6.5.3", "current")]):
        rid = api.post("release", {"belongs_to__application": host, "commit": commit(0xbe00 + i), "composition": {},
                                   "status": "success", "source": "cloud", "start_timestamp": iso(now),
                                   "semver": version})["id"]
        api.patch("release", rid, {"phase": phase})
        os_ids.append((version, rid))
    fleet = api.post("application", {"app_name": f"Host-Bench-{n}-{stamp}", "organization": 1, "is_for__device_type": dt})
    fid, slug = fleet["id"], fleet["slug"]
    t = time.perf_counter()
    seed_devices(env["PG_PORT"], fid, dt, n, f"host-bench-{fid}", {
        "os version": "(array['balenaOS 5.3.24','balenaOS 6.0.13','balenaOS 6.5.3'])[1 + i % 3]",
        "supervisor version": "'17.0.3'",
        "should be operated by-release": f"case when i % 10 = 0 then {os_ids[2][1]} "
                                         f"else (array[{os_ids[0][1]},{os_ids[1][1]},{os_ids[2][1]}])[1 + i % 3] end",
        "provisioning state": "case when i % 50 = 0 then 'Running OS update' end",
        "provisioning progress": "case when i % 50 = 0 then 50 end",
    })
    api.post("application_config_variable", {"application": fid, "name": "BALENA_SUPERVISOR_HARDWARE_METRICS",
                                             "value": "false"})
    print(f"seeded {n} devices in {time.perf_counter() - t:.1f}s (fleet {slug})\n")

    config = (f"api:\n  url: {url}\n  cache_ttl: 0s\n  timeout: 60s\nauths:\n  a:\n    token: {token}\n"
              f"modules:\n  default: {{devices: true}}\n  summary: {{devices: false}}\n"
              f"targets:\n  t: {{fleet: {slug}, auth: a}}\n")
    results = {}
    with RunningExporter(before, config) as old, RunningExporter(after, config) as new:
        for module in ("default", "summary"):
            for ex in (old, new):
                ex.timed(f"target=t&module={module}")  # starts (and waits for) the background reads
            time.sleep(2)
            times = {"before": [], "after": []}
            for i in range(RUNS):
                pair = [("before", old), ("after", new)]
                for name, ex in pair if i % 2 == 0 else pair[::-1]:  # each first half the time
                    times[name].append(ex.timed(f"target=t&module={module}")[0])
            results[module] = {k: statistics.median(v) for k, v in times.items()}
    print(f"probe of the {n:,}-device fleet, before and after the host layer (median of {RUNS}, alternating, "
          "gzip answer):")
    print("| module | before | after | ratio |\n|---|---|---|---|")
    for module, r in results.items():
        print(f"| {module} | {r['before'] * 1000:.0f} ms | {r['after'] * 1000:.0f} ms | "
              f"{r['after'] / r['before']:.3f}x |")

    devices = f"belongs_to__application%20eq%20{fid}"
    reads = [
        ("release", "$select=id,belongs_to__application,commit,status,semver,semver_major,semver_minor,semver_patch,"
                    "semver_prerelease,semver_build,revision,variant,phase&$expand=release_tag($select=tag_key,value;"
                    "$filter=tag_key%20eq%20%27version%27)&$filter=belongs_to__application/any(a:a/is_host%20eq%20true"
                    f"%20and%20a/owns__release/any(r:r/should_operate__device/any(d:d/{devices})))%20and%20status%20eq"
                    f"%20%27success%27%20or%20should_operate__device/any(d:d/{devices})%20or%20should_manage__device/"
                    f"any(d:d/{devices})%20or%20is_running_on__device/any(d:d/{devices})&$orderby=id%20asc&$top=10000"),
        ("application_config_variable", f"$select=id,application,name,value&$filter=application%20eq%20{fid}"),
        ("device_config_variable", f"$select=id,device,name,value&$filter=device/any(d:d/{devices})"),
        ("device (targets)", "$select=id,should_be_operated_by__release,should_be_managed_by__release&$filter="
                             f"{devices}%20and%20(should_be_operated_by__release%20ne%20null%20or%20"
                             "should_be_managed_by__release%20ne%20null)&$orderby=id%20asc&$top=10000"),
    ]
    print("\nthe host read's requests, raw (median of 5; a listing also asks once more to see its end):")
    print("| request | time |\n|---|---|")
    for resource, q in reads:
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            status, _ = api.request("GET", f"/v7/{resource.split()[0]}", raw_query=q)
            assert status == 200, (resource, status)
            ts.append(time.perf_counter() - t)
        print(f"| {resource} | {statistics.median(ts) * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
