#!/usr/bin/env python3
"""Paging and probe timings against the real balena API (open-balena-api on loopback), for
docs/performance.md. Not a test: numbers, measured in one run so that ratios compare.

    tests/conformance/real-balena-api/install.sh ~/.cache/real-balena-api
    tests/conformance/real-balena-api/start.sh ~/.cache/real-balena-api
    python3 tests/conformance/bench.py ~/.cache/real-balena-api target/release/balena-exporter [DEVICES]

Seeds one fleet of DEVICES (default 50,000) devices (SQL rows, read through the API), then
measures: one page of 1k/5k/10k/20k rows per module (time, bytes); a whole listing by keyset
pages and by `$skip` pages; how a listing's end is found (an empty keyset page, or `$count`);
and the exporter's probe of the fleet per module and page size next to the raw requests it
makes (the same requests with the same Accept-Encoding, one after the other, read to their last
byte by this script, nothing decoded in the timed part).
"""

import gzip
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from balena import Api, api_key, env_file, login, seed_devices, timed_probes  # noqa: E402

def exporter_fields(const):
    """A field list the exporter selects, read from its source (src/balena/model.rs), so that the
    raw requests timed here are the probe's own, whatever fields it selects today."""
    import re
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "balena",
                            "model.rs")).read()
    body = re.search(r"pub const " + const + r": &\[&str\] = &\[(.*?)\];", src, re.S).group(1)
    return ",".join(re.findall(r'"([a-z_]+)"', body))


DEVICE_FIELDS = exporter_fields("DEVICE_FIELDS")
SUMMARY_FIELDS = exporter_fields("SUMMARY_DEVICE_FIELDS")
MODULES = {  # the exporter's $select/$expand per module (src/balena/mod.rs, device_query)
    "default": (DEVICE_FIELDS, "is_running__release($select=id,commit),is_of__device_type($select=slug)"),
    "summary": (SUMMARY_FIELDS, "is_running__release($select=id,commit)"),
}


def query(module, fleet, top=None, after=None, skip=None):
    select, expand = MODULES[module]
    flt = f"belongs_to__application eq {fleet}"
    if after is not None:
        flt = f"({flt}) and id gt {after}"
    q = f"$select={select}&$expand={expand}&$filter={flt}&$orderby=id asc"
    if top:
        q += f"&$top={top}"
    if skip:
        q += f"&$skip={skip}"
    return q.replace(" ", "%20")


# What the exporter's HTTP client (awc, built with gzip) asks for: the API then compresses its
# answer (a 10,000-device page: 8.1 MB of JSON, ~0.5 MB on the wire, some tens of ms of the API's
# CPU), so the raw requests ask the same, or they would not be the probe's own.
PROBE_HEADERS = {"Accept-Encoding": "gzip, deflate"}


def timed(api, path, q):
    """One request as the probe makes it, read to its last byte: (seconds, JSON text, bytes on
    the wire). The answer is inflated outside the timed part."""
    t = time.perf_counter()
    status, body = api.request("GET", path, raw_query=q, headers=PROBE_HEADERS)
    spent = time.perf_counter() - t
    assert status == 200, (status, body[:200])
    wire = len(body)
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return spent, body, wire


def listing(api, module, fleet, page, keyset=True, limit=None):
    """Reads a whole listing (or `limit` rows); returns (seconds spent in requests, pages, bytes).
    Rows are parsed outside the timed part (only to find the last id)."""
    spent, pages, size, after, rows = 0.0, 0, 0, None, 0
    while True:
        q = query(module, fleet, page, after=after) if keyset else query(module, fleet, page, skip=rows or None)
        s, body, _ = timed(api, "/v7/device", q)
        spent += s
        pages += 1
        size += len(body)
        d = json.loads(body)["d"]
        if not d:
            break
        rows += len(d)
        after = d[-1]["id"]
        if limit and rows >= limit:
            break
    return spent, pages, size


def probe(binary, url, token, fleet_slug, module, page):
    config = (f"api:\n  url: {url}\n  cache_ttl: 0s\n  timeout: 60s\n  page_size: {page}\nauths:\n  a:\n"
              f"    token: {token}\nmodules:\n  default: {{devices: true}}\n  summary: {{devices: false}}\n"
              f"targets:\n  t: {{fleet: {fleet_slug}, auth: a}}\n")
    return timed_probes(binary, config, f"target=t&module={module}")[0]


def main():
    api_dir, binary = sys.argv[1:3]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 50_000
    env = env_file(os.path.join(api_dir, "run", "env"))
    url = env["BALENA_API_URL"]
    token = api_key(url, login(url, env["SUPERUSER_EMAIL"], env["SUPERUSER_PASSWORD"]), "bench")
    api = Api(url, token)
    types = {t["slug"]: t["id"] for t in api.get("device_type", "$select=id,slug")}
    fleet = api.post("application", {"app_name": f"Bench-{n}-{int(time.time())}", "organization": 1,
                                     "is_for__device_type": types["raspberrypi4-64"]})
    fid, slug = fleet["id"], fleet["slug"]
    t = time.perf_counter()
    seed_devices(env["PG_PORT"], fid, types["raspberrypi4-64"], n, f"bench-{fid}")
    print(f"seeded {n} devices in {time.perf_counter() - t:.1f}s (fleet {slug})\n")

    print("one page, first of the listing (median of 3):")
    print("| module | rows | time | bytes (on the wire) |\n|---|---|---|---|")
    for module in MODULES:
        for page in (1000, 5000, 10000, 20000):
            ts, size, wire = [], 0, 0
            for _ in range(3):
                s, body, wire = timed(api, "/v7/device", query(module, fid, page))
                ts.append(s)
                size = len(body)
            print(f"| {module} | {page:,} | {statistics.median(ts) * 1000:.0f} ms | {size / 1e6:.1f} MB ({wire / 1e6:.2f} MB) |")

    print("\nwhole listing of the fleet, module default:")
    print("| paging | page | time | pages |\n|---|---|---|---|")
    for page in (1000, 5000, 10000, 20000):
        s, pages, _ = listing(api, "default", fid, page)
        print(f"| keyset | {page:,} | {s:.2f} s | {pages} (last empty) |")
    s, pages, _ = listing(api, "default", fid, 1000, keyset=False, limit=10_000)
    k, kpages, _ = listing(api, "default", fid, 1000, keyset=True, limit=10_000)
    print(f"| $skip, first 10,000 rows | 1,000 | {s:.2f} s | {pages} |")
    print(f"| keyset, first 10,000 rows | 1,000 | {k:.2f} s | {kpages} |")

    print("\nfinding the end of a listing (median of 5):")
    last = api.get("device", f"$select=id&$filter=belongs_to__application%20eq%20{fid}&$orderby=id%20desc&$top=1")[0]["id"]
    empty = statistics.median(timed(api, "/v7/device", query("default", fid, 20000, after=last))[0] for _ in range(5))
    count = statistics.median(timed(api, "/v7/device/$count", f"$filter=belongs_to__application%20eq%20{fid}")[0]
                              for _ in range(5))
    print(f"| empty keyset page after the last id | {empty * 1000:.1f} ms |\n| `$count` of the fleet | {count * 1000:.1f} ms |")

    print(f"\nprobe of the {n:,}-device fleet vs the raw requests it makes (median of 3, gzip answer):")
    print("| module | page_size | probe | raw requests | ratio |\n|---|---|---|---|---|")
    for module in MODULES:
        for page in (1000, 2000, 10000):
            raw = statistics.median(listing(api, module, fid, page)[0] for _ in range(3))
            p = probe(binary, url, token, slug, module, page)
            print(f"| {module} | {page:,} | {p:.2f} s | {raw:.2f} s | {p / raw:.2f}x |")


if __name__ == "__main__":
    main()
