#!/usr/bin/env python3
"""What application health (services, update states, releases) costs on the real balena API
(open-balena-api on loopback), for docs/performance.md. Not a test: numbers, measured in one
run so that ratios compare.

    tests/conformance/real-balena-api/install.sh ~/.cache/real-balena-api
    tests/conformance/real-balena-api/start.sh ~/.cache/real-balena-api
    python3 tests/conformance/bench_services.py ~/.cache/real-balena-api target/release/balena-exporter [DEVICES] [BIG] [OLD]

OLD, optional: a release binary built before application health (e.g. commit 853fc92), probed
the same way for "today's" cost.

Seeds a fleet of DEVICES (default 10,000) devices with 3 services each — services, images and a
release through the API, the device and image_install rows by SQL (through the device API they
would take an hour), every tenth device mid-update (a second release's installs, Downloading)
and a deleted install on every twentieth — then measures, per module:

- one device page of 10,000 rows with the request shapes considered: as before application
  health; with the new device fields; with the services expand (with and without
  `$filter=status ne 'deleted'`);
- the services by their own keyset listing of image_install, in the shapes considered (the
  exporter's; without the deleted filter; with the service id expanded);
- the exporter's probe of the fleet: before application health (OLD), `services: false`, and
  with services — the first probe (it waits for the read), the steady state (the snapshot
  fresh), the probe that starts a background read and the one during it, `services_interval: 0s`;

and the summary module's probe of a BIG-device fleet (default 50,000) against a 10 s scrape;
last, the install listing by target scope (fleet, organization, all).
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from balena import Api, RunningExporter, api_key, env_file, login, psql, seed_devices, timed_probes  # noqa: E402

OLD_DEFAULT = ("id,uuid,device_name,belongs_to__application,is_online,api_heartbeat_state,overall_status,"
               "overall_progress,os_version,os_variant,supervisor_version,cpu_usage,cpu_temp,memory_usage,"
               "memory_total,storage_usage,storage_total,is_undervolted,is_connected_to_vpn,last_connectivity_event,"
               "should_be_running__release")
OLD_SUMMARY = "id,belongs_to__application,is_online,api_heartbeat_state,overall_status,is_undervolted,should_be_running__release"
NEW_DEFAULT = OLD_DEFAULT + ",update_status,last_update_status_event,is_pinned_on__release,changed_api_heartbeat_state_on__date"
NEW_SUMMARY = OLD_SUMMARY + ",update_status,is_pinned_on__release,os_version,os_variant,supervisor_version"
RELEASE = "is_running__release($select=id,commit)"
TYPE = "is_of__device_type($select=slug)"
SERVICES = ("image_install($select=id,status,install_date;$filter=status ne 'deleted';"
            "$expand=installs__image($select=id;$expand=is_a_build_of__service($select=service_name)))")
SERVICES_UNFILTERED = SERVICES.replace("$filter=status ne 'deleted';", "")
SHAPES = {  # module -> shape -> ($select, $expand); the exporter's are src/balena/mod.rs's device_query
    "default": {
        "before application health": (OLD_DEFAULT, f"{RELEASE},{TYPE}"),
        "+ device fields": (NEW_DEFAULT, f"{RELEASE},{TYPE}"),
        "+ services expand (the exporter's)": (NEW_DEFAULT, f"{RELEASE},{SERVICES},{TYPE}"),
        "+ services expand, deleted not filtered": (NEW_DEFAULT, f"{RELEASE},{SERVICES_UNFILTERED},{TYPE}"),
    },
    "summary": {
        "before application health": (OLD_SUMMARY, RELEASE),
        "+ device fields": (NEW_SUMMARY, RELEASE),
        "+ services expand (the exporter's)": (NEW_SUMMARY, f"{RELEASE},{SERVICES}"),
        "+ services expand, deleted not filtered": (NEW_SUMMARY, f"{RELEASE},{SERVICES_UNFILTERED}"),
    },
}
PAGE = 10_000


def q(select, expand, flt, top=PAGE):
    return f"$select={select}&$expand={expand}&$filter={flt}&$orderby=id asc&$top={top}".replace(" ", "%20")


def fetched(api, path, query):
    """(seconds, body) of one GET that must answer 200."""
    t = time.perf_counter()
    status, body = api.request("GET", path, raw_query=query)
    assert status == 200, (status, body[:300])
    return time.perf_counter() - t, body


def timed(api, path, query):
    spent, body = fetched(api, path, query)
    return spent, len(body)


def median3(fn):
    runs = [fn() for _ in range(3)]
    return statistics.median(r[0] for r in runs), runs[0][1]


def seed_fleet(api, env, n, name):
    """A fleet of n devices, 3 services, releases r1 (target) and r2 (rolling out)."""
    types = {t["slug"]: t["id"] for t in api.get("device_type", "$select=id,slug")}
    dt = types["raspberrypi4-64"]
    fleet = api.post("application", {"app_name": name, "organization": 1, "is_for__device_type": dt})
    fid = fleet["id"]
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    services = {s: api.post("service", {"application": fid, "service_name": s})["id"] for s in ("main", "proxy", "metrics")}
    images = {}
    for r, commit in ((1, "b1" * 16), (2, "b2" * 16)):
        rid = api.post("release", {"belongs_to__application": fid, "commit": commit, "composition": {},
                                   "status": "success", "source": "cloud", "start_timestamp": now})["id"]
        for s, sid in services.items():
            iid = api.post("image", {"is_a_build_of__service": sid, "status": "success", "start_timestamp": now,
                                     "push_timestamp": now, "project_type": "dockerfile"})["id"]
            api.post("release_image", {"is_part_of__release": rid, "image": iid})
            images[(r, s)] = (iid, rid)
    api.patch("application", fid, {"should_track_latest_release": False,
                                    "should_be_running__release": images[(1, "main")][1]})
    seed_devices(env["PG_PORT"], fid, dt, n, name, {
        "supervisor version": "'17.0.' || (i % 9)",
        "is running-release": str(images[(1, "main")][1]),
        "update status": "case when i % 10 = 0 then 'downloading' else 'done' end",
        "last update status event": "now() - (i || ' minutes')::interval",
        "changed api heartbeat state on-date": "now() - (i || ' seconds')::interval",
    })
    values = []
    for (r, s), (iid, rid) in images.items():
        if r == 1:
            status = "case when d.i % 50 = 0 then 'exited' else 'Running' end"
            where = "true"
        else:
            status = "'Downloading'"
            where = "d.i % 10 = 0"
        values.append(f"""insert into "image install" (device, "installs-image", "install date", status,
                          "is provided by-release", "download progress")
                          select d.id, {iid}, now() - interval '{3 - r} days', {status}, {rid},
                                 {'null' if r == 1 else '40'}
                          from (select id, row_number() over (order by id) as i from device
                                where "belongs to-application" = {fid}) d where {where}""")
    for v in values:
        psql(env["PG_PORT"], v)
    # A deleted install (an old release's, removed) on every twentieth device: a third release.
    rid3 = api.post("release", {"belongs_to__application": fid, "commit": "b0" * 16, "composition": {},
                                "status": "success", "source": "cloud", "start_timestamp": now})["id"]
    iid3 = api.post("image", {"is_a_build_of__service": services["main"], "status": "success", "start_timestamp": now,
                              "push_timestamp": now, "project_type": "dockerfile"})["id"]
    psql(env["PG_PORT"], f"""insert into "image install" (device, "installs-image", "install date", status, "is provided by-release")
        select d.id, {iid3}, now() - interval '9 days', 'deleted', {rid3}
        from (select id, row_number() over (order by id) as i from device where "belongs to-application" = {fid}) d
        where d.i % 20 = 0""")
    psql(env["PG_PORT"], 'analyze device; analyze "image install"; analyze image; analyze service')
    return fid, fleet["slug"]


INSTALL_SELECT = "id,device,installs__image,status,install_date"  # src/balena/mod.rs INSTALL_FIELDS
INSTALL_SHAPES = {  # shape -> ($select, $expand, filter after the fleet's)
    "the exporter's: no expand, deleted filtered": (INSTALL_SELECT, None, " and status ne 'deleted'"),
    "no expand, deleted not filtered": (INSTALL_SELECT, None, ""),
    "service id expanded, deleted filtered": ("id,device,status,install_date",
                                              "installs__image($select=is_a_build_of__service)",
                                              " and status ne 'deleted'"),
}


def own_listing(api, fid, select, expand, extra):
    """The services by their own keyset listing of image_install (the fleet's devices' installs),
    then, as the exporter does, the service names of the images they point to."""
    spent, size, after, pages, images = 0.0, 0, None, 0, set()
    while True:
        flt = f"device/any(d:d/belongs_to__application eq {fid}){extra}"
        if after is not None:
            flt = f"({flt}) and id gt {after}"
        expand_opt = f"&$expand={expand}" if expand else ""
        query = f"$select={select}{expand_opt}&$filter={flt}&$orderby=id asc&$top={PAGE}".replace(" ", "%20")
        took, body = fetched(api, "/v7/image_install", query)
        spent, size = spent + took, size + len(body)
        pages += 1
        rows = json.loads(body)["d"]
        if not rows:
            break
        after = rows[-1]["id"]
        images.update(r["installs__image"]["__id"] for r in rows if isinstance(r.get("installs__image"), dict))
    if images:
        ids = ",".join(str(i) for i in sorted(images))
        query = (f"$select=id&$expand=is_a_build_of__service($select=service_name)&$filter=id in ({ids})"
                 ).replace(" ", "%20")
        took, body = fetched(api, "/v7/image", query)
        spent, size, pages = spent + took, size + len(body), pages + 1
    return spent, size, pages


def scope_listings(api, fid, org):
    """The exporter's install listing by each kind of target scope: the fleet, its organization
    (every fleet seeded so far), every fleet the token sees. Median of 3."""
    scopes = {
        "fleet": f"belongs_to__application eq {fid}",
        "org": f"belongs_to__application/any(a:a/organization/any(o:o/handle eq '{org}'))",
        "all": "belongs_to__application/any(a:a/is_directly_accessible_by__user/any(dau:1 eq 1))",
    }
    print("| scope | installs listed | pages | time |\n|---|---|---|---|")
    for name, flt in scopes.items():
        runs = [listing_by_filter(api, f"device/any(d:d/{flt}) and status ne 'deleted'") for _ in range(3)]
        print(f"| {name} | {runs[0][1]:,} | {runs[0][2]} | {statistics.median(r[0] for r in runs) * 1000:.0f} ms |")


def listing_by_filter(api, flt):
    """(seconds, rows, pages) of the exporter's keyset listing of image_install under `flt`."""
    spent, rows, pages, after = 0.0, 0, 0, None
    while True:
        f = flt if after is None else f"({flt}) and id gt {after}"
        query = f"$select={INSTALL_SELECT}&$filter={f}&$orderby=id asc&$top={PAGE}".replace(" ", "%20")
        took, body = fetched(api, "/v7/image_install", query)
        spent, pages = spent + took, pages + 1
        page = json.loads(body)["d"]
        if not page:
            return spent, rows, pages
        rows, after = rows + len(page), page[-1]["id"]


def config(url, token, slug, module, services=None, interval=None):
    """The benchmark's exporter config; `services=None`: a binary from before the key existed."""
    devices = "true" if module == "default" else "false"
    keys = "" if services is None else f", services: {str(services).lower()}"
    if interval is not None:
        keys += f", services_interval: {interval}"
    return (f"api:\n  url: {url}\n  cache_ttl: 0s\n  timeout: 60s\n  page_size: {PAGE}\nauths:\n  a:\n"
            f"    token: {token}\nmodules:\n  m: {{devices: {devices}{keys}}}\n"
            f"targets:\n  t: {{fleet: {slug}, auth: a, module: m}}\n")


HEADERS = {"X-Prometheus-Scrape-Timeout-Seconds": "60"}


def median_probe(binary, cfg):
    return timed_probes(binary, cfg, "target=t", headers=HEADERS)


def snapshot_probes(binary, cfg_5m, cfg_2s):
    """With services on: the first probe (it waits for the read), the steady state (median of the
    next 3: the snapshot is fresh), and the probe that finds it stale and starts a read in the
    background (interval 2s), with the probe right after it (while the read runs)."""
    with RunningExporter(binary, cfg_5m, HEADERS) as ex:
        first, _ = ex.timed("target=t")
        steady = statistics.median(ex.timed("target=t")[0] for _ in range(3))
    with RunningExporter(binary, cfg_2s, HEADERS) as ex:
        ex.timed("target=t")
        time.sleep(2.2)
        starts, _ = ex.timed("target=t")
        during, _ = ex.timed("target=t")
    return first, steady, starts, during


def main():
    api_dir, binary = sys.argv[1:3]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10_000
    big = int(sys.argv[4]) if len(sys.argv) > 4 else 50_000
    old = sys.argv[5] if len(sys.argv) > 5 else None
    env = env_file(os.path.join(api_dir, "run", "env"))
    url = env["BALENA_API_URL"]
    token = api_key(url, login(url, env["SUPERUSER_EMAIL"], env["SUPERUSER_PASSWORD"]), "bench-services")
    api = Api(url, token)
    t = time.perf_counter()
    fid, slug = seed_fleet(api, env, n, f"Svc-{n}")
    print(f"seeded {n:,} devices x 3 services in {time.perf_counter() - t:.1f}s (fleet {slug})\n")

    print(f"one device page of {PAGE:,} rows (the whole fleet), median of 3:")
    print("| module | request shape | time | bytes | vs before |\n|---|---|---|---|---|")
    flt = f"belongs_to__application eq {fid}"
    for module, shapes in SHAPES.items():
        base = None
        for shape, (select, expand) in shapes.items():
            s, size = median3(lambda: timed(api, "/v7/device", q(select, expand, flt)))
            base = base or s
            print(f"| {module} | {shape} | {s * 1000:.0f} ms | {size / 1e6:.1f} MB | {s / base:.2f}x |")

    print(f"\nthe services by their own listing of the fleet's image installs (keyset pages of {PAGE:,}, "
          "then the images' service names), median of 3:")
    print("| listing shape | requests | time | bytes |\n|---|---|---|---|")
    for shape, (select, expand, extra) in INSTALL_SHAPES.items():
        runs = [own_listing(api, fid, select, expand, extra) for _ in range(3)]
        spent = statistics.median(r[0] for r in runs)
        print(f"| {shape} | {runs[0][2]} | {spent * 1000:.0f} ms | {runs[0][1] / 1e6:.1f} MB |")

    print(f"\nthe exporter's probe of the {n:,}-device fleet (gzip answer; medians of 3 unless one probe):")
    print("| module | binary, services | probe | answer | vs before |\n|---|---|---|---|---|")
    for module in ("default", "summary"):
        before = None
        if old:
            before, size = median_probe(old, config(url, token, slug, module))
            print(f"| {module} | before application health | {before:.2f} s | {size / 1e3:.0f} kB | 1.00x |")
        off, size = median_probe(binary, config(url, token, slug, module, False))
        before = before or off
        print(f"| {module} | now, services: false | {off:.2f} s | {size / 1e3:.0f} kB | {off / before:.2f}x |")
        first, steady, starts, during = snapshot_probes(
            binary, config(url, token, slug, module, True), config(url, token, slug, module, True, "2s"))
        for what, s in (("services (default): the first probe, waiting for the read", first),
                        ("services (default): steady state, the snapshot fresh", steady),
                        ("services: the probe that starts a background read", starts),
                        ("services: the probe after it, the read still running", during)):
            print(f"| {module} | {what} | {s:.2f} s | | {s / before:.2f}x |")
        every, _ = median_probe(binary, config(url, token, slug, module, True, "0s"))
        print(f"| {module} | services_interval: 0s, every probe waits for a read | {every:.2f} s | | {every / before:.2f}x |")

    if big:
        t = time.perf_counter()
        _, big_slug = seed_fleet(api, env, big, f"Svc-{big}")
        print(f"\nseeded {big:,} devices x 3 services in {time.perf_counter() - t:.1f}s")
        print(f"the summary module's probe of the {big:,}-device fleet:")
        print("| services | probe |\n|---|---|")
        off, _ = median_probe(binary, config(url, token, big_slug, "summary", False))
        print(f"| false | {off:.2f} s |")
        first, steady, starts, during = snapshot_probes(
            binary, config(url, token, big_slug, "summary", True), config(url, token, big_slug, "summary", True, "2s"))
        print(f"| default (5m): the first probe, waiting for the read | {first:.2f} s |")
        print(f"| default (5m): steady state (median of 3) | {steady:.2f} s |")
        print(f"| the probe that starts a background read / the next, during it | {starts:.2f} s / {during:.2f} s |")
        every, _ = median_probe(binary, config(url, token, big_slug, "summary", True, "0s"))
        print(f"| services_interval: 0s (median of 3) | {every:.2f} s |")

    print(f"\nthe install listing of the {n:,}-device fleet by target scope (the org holds every fleet seeded):")
    scope_listings(api, fid, slug.split("/")[0])


if __name__ == "__main__":
    main()
