#!/usr/bin/env python3
"""Two exporter builds side by side against the real balena API (open-balena-api on loopback),
for docs/performance.md. Not a test: numbers from one run, so that ratios compare.

    tests/conformance/real-balena-api/start.sh ~/.cache/real-balena-api
    python3 tests/conformance/bench_pair.py ~/.cache/real-balena-api BEFORE_BIN AFTER_BIN \
        [--devices 10000] [--pages 1000,2000,10000] [--runs 9] [--modules default,summary] [--split-cores]
        [--encodings gzip,gzip]

Seeds one fleet of `--devices` devices (SQL rows, as bench.py does), then for each module and
page size runs both exporters (`cache_ttl: 0s`, `page_size` set) and, `--runs` times, alternating
which goes first: the probe's own device requests replayed raw (same query, same
Accept-Encoding, one after the other, each read to its last byte), then one probe of each build
(to its last byte, in the encodings of `--encodings BEFORE,AFTER`: gzip for both unless told; one
build twice with `gzip,zstd` compares the two answers). Prints medians, the ratios probe / raw requests, and each
build's CPU per probe over the timed probes (`/proc/PID/stat`, user + system).

`--split-cores` pins the API's processes (node, PostgreSQL, Redis) to CPU 0 and this script
with both exporters to CPU 1, as if the API ran on another machine (balenaCloud does): on a
shared machine an exporter's CPU is taken from the API's, and a probe's requests slow down by
what it works beside them. The pinning is undone at the end.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from balena import Api, RunningExporter, api_key, env_file, login, seed_devices  # noqa: E402
from bench import PROBE_HEADERS, query, timed  # noqa: E402


def api_pids():
    pids = []
    for pattern in ("oba-local-launch", "postgres", "redis-server"):
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    return pids


def pin(pids, cpus):
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", cpus, str(pid)], capture_output=True)


def raw(api, module, fid, page):
    """Seconds spent in the probe's own device requests, one after the other."""
    import json
    after, spent = None, 0.0
    while True:
        s, body, _ = timed(api, "/v7/device", query(module, fid, page, after=after))
        spent += s
        d = json.loads(body)["d"]
        if not d:
            return spent
        after = d[-1]["id"]


def main():
    a = argparse.ArgumentParser()
    a.add_argument("api_dir")
    a.add_argument("before")
    a.add_argument("after")
    a.add_argument("--devices", type=int, default=10_000)
    a.add_argument("--pages", default="1000,2000,10000")
    a.add_argument("--runs", type=int, default=9)
    a.add_argument("--modules", default="default,summary")
    a.add_argument("--split-cores", action="store_true")
    a.add_argument("--encodings", default="gzip,gzip")
    args = a.parse_args()
    encodings = args.encodings.split(",")
    env = env_file(os.path.join(args.api_dir, "run", "env"))
    url = env["BALENA_API_URL"]
    token = api_key(url, login(url, env["SUPERUSER_EMAIL"], env["SUPERUSER_PASSWORD"]), "bench-pair")
    api = Api(url, token)
    types = {t["slug"]: t["id"] for t in api.get("device_type", "$select=id,slug")}
    n = args.devices
    fleet = api.post("application", {"app_name": f"Pair-{n}-{int(time.time())}", "organization": 1,
                                     "is_for__device_type": types["raspberrypi4-64"]})
    fid, slug = fleet["id"], fleet["slug"]
    seed_devices(env["PG_PORT"], fid, types["raspberrypi4-64"], n, f"pair-{fid}")
    pids = api_pids()
    if args.split_cores:
        pin(pids, "0x1")
        os.sched_setaffinity(0, {1})
    print(f"seeded {n} devices (fleet {slug}); {args.runs} runs each; cores "
          f"{'split: API on CPU 0, exporters on CPU 1' if args.split_cores else 'shared'}; "
          f"raw requests with {PROBE_HEADERS}; answers before / after: {' / '.join(encodings)}\n")
    print("| module | page_size | raw requests | before | after | before / raw | after / raw | after / before "
          "| CPU a probe, before | after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for module in args.modules.split(","):
            for page in (int(p) for p in args.pages.split(",")):
                config = (f"api:\n  url: {url}\n  cache_ttl: 0s\n  timeout: 60s\n  page_size: {page}\n"
                          f"auths:\n  a:\n    token: {token}\nmodules:\n  default: {{devices: true}}\n"
                          f"  summary: {{devices: false}}\ntargets:\n  t: {{fleet: {slug}, auth: a}}\n")
                q = f"target=t&module={module}"
                with RunningExporter(args.before, config) as b, RunningExporter(args.after, config) as f:
                    b.timed(q, encodings[0])  # the first probe starts the background reads
                    f.timed(q, encodings[1])
                    r, bt, ft = [], [], []
                    cpu0 = (b.cpu_seconds(), f.cpu_seconds())
                    for i in range(args.runs):
                        r.append(raw(api, module, fid, page))
                        pair = ((b, bt, encodings[0]), (f, ft, encodings[1]))
                        for ex, out, encoding in pair if i % 2 == 0 else pair[::-1]:
                            out.append(ex.timed(q, encoding)[0])
                    bc, fc = ((ex.cpu_seconds() - c) * 1000 / args.runs for ex, c in zip((b, f), cpu0))
                r, bt, ft = (statistics.median(x) for x in (r, bt, ft))
                print(f"| {module} | {page:,} | {r * 1000:.0f} ms | {bt * 1000:.0f} ms | {ft * 1000:.0f} ms "
                      f"| {bt / r:.3f}x | {ft / r:.3f}x | {ft / bt:.3f} | {bc:.0f} ms | {fc:.0f} ms |", flush=True)
    finally:
        if args.split_cores:
            pin(pids, "0x" + format((1 << os.cpu_count()) - 1, "x"))


if __name__ == "__main__":
    main()
