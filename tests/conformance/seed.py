"""Seeds a fresh open-balena-api through its own API: two organizations, fleets (one empty,
one whose devices report services, updates and releases through the device API as supervisors
do,
one of 2,000+ devices), devices in every `overall_status` and `api_heartbeat_state` the API can
be made to compute, metrics with nulls, undervolted devices, a fleet target release with devices
on it, off it and pinned to another release, device tags with odd characters, and one device
whose heartbeat comes from its own device key.

Two things go in with SQL, and only these: the second organization (users cannot create
organizations through open-balena-api; add-org.sh) and the 2,000 rows of the big fleet
(through the API they would take minutes; each is an ordinary device row, read back through
the API like every other).
"""

import subprocess
import time
import urllib.parse
from datetime import datetime, timedelta, timezone

from balena import psql

BIG_DEVICES = 2000
TAG_KEYS = ["location", "Floor-2", "owner.team"]


def iso(dt):
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def commit(n):
    return f"{n:032x}"


def uuid(n):
    return f"{0xc0ffee000000 + n:032x}"


def seed(api, env, add_org):
    now = datetime.now(timezone.utc)
    types = {t["slug"]: t["id"] for t in api.get("device_type", "$select=id,slug")}
    orgs = {o["handle"]: o["id"] for o in api.get("organization", "$select=id,handle")}
    out = subprocess.run([add_org, env["DIR"], "partner", "Partner Org"], capture_output=True, text=True, check=True)
    orgs["partner"] = int(out.stdout.split()[-1])
    # The host layer first, as on balenaCloud: devices reporting their versions then get their
    # target OS and supervisor from the API itself.
    host = seed_host(api, env, add_org, types["raspberrypi4-64"], now)

    def fleet(org, name, dtype):
        return api.post("application", {"app_name": name, "organization": orgs[org],
                                        "is_for__device_type": types[dtype]})["id"]
    fleets = {
        "admin/screens": fleet("admin", "Screens", "raspberrypi4-64"),
        "admin/empty-fleet": fleet("admin", "Empty-Fleet", "raspberrypi4-64"),
        "admin/big-fleet": fleet("admin", "Big-Fleet", "raspberrypi3"),
        "partner/kiosks": fleet("partner", "Kiosks", "intel-nuc"),
    }

    def release(fid, n, status="success"):
        return api.post("release", {"belongs_to__application": fid, "commit": commit(n), "composition": {},
                                    "status": status, "source": "cloud", "start_timestamp": iso(now)})["id"]
    screens = fleets["admin/screens"]
    r_target, r_other = release(screens, 1), release(screens, 2)
    api.patch("application", screens, {"should_track_latest_release": False, "should_be_running__release": r_target})
    release(fleets["partner/kiosks"], 3)  # a release, but no target: on-target series are absent

    connected = iso(now - timedelta(hours=1))
    metrics = {"cpu_usage": 37, "cpu_temp": 52, "memory_usage": 812, "memory_total": 3906,
               "storage_usage": 2048, "storage_total": 29000}
    online = {"is_online": True, "api_heartbeat_state": "online", "is_connected_to_vpn": True,
              "last_connectivity_event": connected, "os_version": "balenaOS 6.0.13", "os_variant": "prod",
              "supervisor_version": "16.4.6"}
    # name -> (fields PATCHed, tags). Each comment is the overall_status the API computes.
    specs = {
        "op-1": (dict(online, **metrics, is_running__release=r_target), {"location": "Zürich \"HQ\" \\ west"}),
        "op-undervolted": (dict(online, is_undervolted=True, is_running__release=r_other), {"location": "Köln"}),
        "pinned-on": (dict(online, is_pinned_on__release=r_other, is_running__release=r_other),
                      {"Floor-2": "2nd 'wing'"}),
        "pinned-off": (dict(online, is_pinned_on__release=r_other, is_running__release=r_target), {}),
        "disconnected": (dict(online, is_online=False, api_heartbeat_state="offline", is_connected_to_vpn=False,
                              last_connectivity_event=iso(now - timedelta(days=2)), cpu_usage=0, cpu_temp=None),
                         {"owner.team": "ops"}),
        "never-connected": ({}, {}),  # configuring: no VPN, heartbeat unknown, never connected
        "post-provisioning": ({"provisioning_state": "Post-Provisioning", "provisioning_progress": 90}, {}),
        "updating": (dict(online, status="Downloading", download_progress=42, is_running__release=r_other), {}),
        "provisioning": (dict(online, provisioning_progress=60), {}),  # configuring, with progress
        "hb-timeout": (dict(online, api_heartbeat_state="timeout"), {}),  # reduced-functionality
        "no-vpn": (dict(online, is_connected_to_vpn=False), {}),  # reduced-functionality
        "Café \"lobby\" 'west' \\ ✓": (dict(online, **metrics), {"location": "naïve \"quoted\" \\ value"}),
    }
    devices = {}
    for i, (name, (fields, tags)) in enumerate(specs.items()):
        did = api.post("device", {"belongs_to__application": screens, "is_of__device_type": types["raspberrypi4-64"],
                                  "uuid": uuid(i), "device_name": name})["id"]
        if fields:
            api.patch("device", did, fields)
        for k, v in tags.items():
            api.post("device_tag", {"device": did, "tag_key": k, "value": v})
        devices[name] = did
    for i in range(3):
        did = api.post("device", {"belongs_to__application": fleets["partner/kiosks"],
                                  "is_of__device_type": types["intel-nuc"], "uuid": uuid(100 + i),
                                  "device_name": f"kiosk-{i}"})["id"]
        api.patch("device", did, dict(online, cpu_usage=10 * i, is_online=i != 2))
    # The API refuses whitespace in tag keys: the suite checks that answer too.
    status, _ = api.request("POST", "/v7/device_tag", {"device": devices["op-1"], "tag_key": "bad key", "value": "x"})
    assert status == 400, f"a tag key with whitespace answered {status}"

    # A device that heartbeats with its own device key, as a supervisor does.
    hb = api.post("device", {"belongs_to__application": screens, "is_of__device_type": types["raspberrypi4-64"],
                             "uuid": uuid(50), "device_name": "heartbeat"})["id"]
    status, key = api.request("POST", f"/api-key/device/{hb}/device-key", {})
    assert status in (200, 201), (status, key)
    device_key = key.decode().strip().strip('"')
    devices["heartbeat"] = hb

    dt = types["raspberrypi3"]
    psql(env["PG_PORT"], f"""
        with a as (insert into actor ("created at") select now() from generate_series(1, {BIG_DEVICES}) returning id),
             n as (select id, row_number() over (order by id) as i from a)
        insert into device (actor, uuid, "device name", "is of-device type", "belongs to-application", "is online",
                            "api heartbeat state", "is connected to vpn", "last connectivity event", "cpu usage",
                            "memory usage", "memory total", "is undervolted", "os version")
        select id, md5('big-' || i), 'big-' || i, {dt}, {fleets["admin/big-fleet"]}, i % 3 = 0,
               (array['online','offline','timeout','unknown'])[1 + i % 4], i % 2 = 0,
               now() - (i || ' minutes')::interval, case when i % 5 = 0 then null else i % 100 end,
               100 + i % 50, 1024, i % 97 = 0, 'balenaOS 5.1.' || (i % 7)
        from n""")
    fleets["admin/apps"] = fleet("admin", "Apps", "raspberrypi4-64")
    release(fleets["partner/kiosks"], 4, status="failed")  # kiosks' newest build failed
    apps = seed_applications(api, fleets["admin/apps"], types["raspberrypi4-64"], now)
    host_story(api, apps, host)
    return {"fleets": fleets, "devices": devices, "device_key": device_key, "orgs": orgs,
            "releases": {"target": r_target, "other": r_other}, "apps": apps, "host": host,
            "seeded_at": time.time()}


# The host OS releases of the raspberrypi4-64 host app, and their lifecycle phases; the
# supervisor releases of its CPU architecture.
OS_RELEASES = [("5.3.24", "end-of-life"), ("6.0.13", "sunset"), ("6.5.3", "current"), ("6.6.0", "next")]
SUPERVISOR_RELEASES = ["16.7.9", "17.0.3", "17.1.0"]


def seed_host(api, env, add_org, dtype, now):
    """balena's host app and supervisor app for one device type, as the platform makes them:
    the organization balena_os (SQL: add-org.sh, the one step a user cannot do), a public host
    app with its OS releases and a public supervisor app `balena_os/<arch>-supervisor`, each
    release created `running` with its semver, then marked `success`, then given its phase, as
    balena's OS team does."""
    out = subprocess.run([add_org, env["DIR"], "balena_os", "balenaOS"], capture_output=True, text=True, check=True)
    org = int(out.stdout.split()[-1])

    def app(name, host):
        return api.post("application", {"app_name": name, "organization": org, "is_for__device_type": dtype,
                                        "is_host": host, "is_public": True})["id"]

    def release(aid, n, version, phase=None):
        rid = api.post("release", {"belongs_to__application": aid, "commit": commit(0xb000 + n), "composition": {},
                                   "status": "running", "source": "cloud", "start_timestamp": iso(now),
                                   "semver": version})["id"]
        api.patch("release", rid, {"status": "success"})
        if phase:
            api.patch("release", rid, {"phase": phase})
        return rid
    host_app = app("raspberrypi4-64", True)
    os_releases = {v: release(host_app, i, v, phase) for i, (v, phase) in enumerate(OS_RELEASES)}
    supervisor_app = app("aarch64-supervisor", False)
    supervisors = {v: release(supervisor_app, 100 + i, v) for i, v in enumerate(SUPERVISOR_RELEASES)}
    return {"org": org, "host_app": host_app, "os": os_releases, "supervisor": supervisors}


def host_story(api, apps, host):
    """What happens under the application of the apps fleet, through the API the way balena and
    devices do it: a user asks for OS updates and a supervisor update (PATCH of the targets);
    the OS updater of one device reports progress, another's reports failure, each with its
    own device key as balenahup does (a form-encoded PATCH of /v6/device); supervisor settings
    are configuration variables of the fleet and of devices, both names."""
    d, keys = apps["devices"], apps["keys"]
    newer = host["os"]["6.5.3"]
    for name in ("app-done", "app-crashed", "app-aborted"):
        api.patch("device", d[name], {"should_be_operated_by__release": newer})
    api.patch("device", d["app-rejected"], {"should_be_managed_by__release": host["supervisor"]["17.1.0"]})
    for name, progress, state in (("app-crashed", 50, "Running OS update"), ("app-aborted", 100, "OS update failed")):
        uuid_hex = apps["uuids"][name]
        body = urllib.parse.urlencode({"provisioning_progress": progress, "provisioning_state": state,
                                       "status": "configuring"}).encode()
        query = "$filter=" + urllib.parse.quote(f"uuid eq '{uuid_hex}'", safe="$='")
        status, text = api.request("PATCH", "/v6/device", raw_query=query, token=keys[name], body=body,
                                   content_type="application/x-www-form-urlencoded")
        assert status == 200, (name, status, text[:300])
    fleet = apps["fleet"]
    api.post("application_config_variable", {"application": fleet, "name": "RESIN_SUPERVISOR_HARDWARE_METRICS",
                                             "value": "false"})
    api.post("application_config_variable", {"application": fleet, "name": "BALENA_SUPERVISOR_OVERRIDE_LOCK",
                                             "value": "1"})
    for name, var, value in (("app-done", "BALENA_SUPERVISOR_HARDWARE_METRICS", "true"),
                             ("app-pinned", "RESIN_SUPERVISOR_LOCAL_MODE", "1"),
                             ("app-pinned", "BALENA_SUPERVISOR_LOCAL_MODE", "false"),
                             ("app-mid-update", "BALENA_SUPERVISOR_LOCAL_MODE", "true"),
                             ("app-applying", "BALENA_SUPERVISOR_OVERRIDE_LOCK", "0"),
                             ("app-legacy", "RESIN_OVERRIDE_LOCK", "maybe")):
        api.post("device_config_variable", {"device": d[name], "name": var, "value": value})


SERVICES = ["main", "proxy", "metrics", "worker"]
# Every image_install status of the v7 model, and every update_status the API accepts, laid out
# over devices as a supervisor would report them: (name, running release, pinned, {release:
# (update_status, statuses of main, proxy, metrics, worker)}). "old" is the previous release,
# "new" the fleet's target; a device mid-update reports both releases' installs at once.
APP_DEVICES = [
    ("app-done", "new", False, {"new": ("done", ["Running", "Running", "Running", "exited"])}),
    ("app-crashed", "new", False, {"new": ("done", ["Dead", "restarting", "paused", "Stopped"])}),
    ("app-mid-update", "old", False, {"old": ("downloading", ["Running", "Stopping", "Idle", "Running"]),
                                       "new": ("downloading", ["Downloading", "Downloaded", "Installing", "Installed"])}),
    ("app-applying", "old", False, {"old": ("done", ["Running", "Running", "Running", "Running"]),
                                     "new": ("applying changes", ["Starting", "Handing over", "Awaiting handover", "Deleting"])}),
    ("app-aborted", "old", False, {"old": ("aborted", ["removing", "configuring", "Unknown", "deleted"])}),
    ("app-rejected", "old", False, {"old": ("rejected", ["Running", "Running", "exited", "Running"])}),
    ("app-downloaded", "old", False, {"old": ("done", ["Running", "Running", "Running", "Running"]),
                                       "new": ("downloaded", ["Downloaded", "Downloaded", "Downloaded", "Downloaded"])}),
    ("app-pinned", "old", True, {"old": ("done", ["Running", "Running", "Running", "Running"])}),
    ("app-legacy", None, False, {}),  # an old supervisor: no state report, update_status null
]


def seed_applications(api, fid, dtype, now):
    """A fleet whose devices report their application state through the device API, as
    supervisors do: services and their images in two successful releases (built the way the
    builder registers them: service, image, release_image), a failed newest build, then per
    device `PATCH /device/v3/state` with each release's update_status and each service's status
    and download progress, with the device's own key."""
    app_uuid = api.get("application", f"$select=uuid&$filter=id%20eq%20{fid}")[0]["uuid"]
    services = {n: api.post("service", {"application": fid, "service_name": n})["id"] for n in SERVICES}
    releases, locations = {}, {}
    for n, (name, semver) in enumerate([("old", "1.0.0"), ("new", "1.1.0")]):
        rid = api.post("release", {"belongs_to__application": fid, "commit": commit(0xa0 + n), "composition": {},
                                   "status": "success", "source": "cloud", "start_timestamp": iso(now),
                                   "semver": semver})["id"]
        releases[name] = (rid, commit(0xa0 + n))
        for service, sid in services.items():
            img = api.post("image", {"is_a_build_of__service": sid, "status": "success", "start_timestamp": iso(now),
                                     "push_timestamp": iso(now), "project_type": "dockerfile"})["id"]
            api.post("release_image", {"is_part_of__release": rid, "image": img})
            # The API names the image's location itself; the supervisor reports it back.
            locations[(name, service)] = api.get(
                "image", f"$select=is_stored_at__image_location&$filter=id%20eq%20{img}")[0]["is_stored_at__image_location"]
    api.patch("application", fid, {"should_track_latest_release": False, "should_be_running__release": releases["new"][0]})
    time.sleep(0.01)
    api.post("release", {"belongs_to__application": fid, "commit": commit(0xaf), "composition": {}, "status": "failed",
                         "source": "cloud", "start_timestamp": iso(now), "semver": "1.2.0"})
    devices, keys, uuids = {}, {}, {}
    for i, (name, running, pinned, reports) in enumerate(APP_DEVICES):
        did = api.post("device", {"belongs_to__application": fid, "is_of__device_type": dtype,
                                  "uuid": uuid(200 + i), "device_name": name})["id"]
        devices[name] = did
        uuids[name] = uuid(200 + i)
        if pinned:
            api.patch("device", did, {"is_pinned_on__release": releases["old"][0]})
        if running is None:
            continue
        status, key = api.request("POST", f"/api-key/device/{did}/device-key", {})
        assert status in (200, 201), (status, key)
        key = key.decode().strip().strip('"')
        keys[name] = key
        body = {uuid(200 + i): {
            "os_version": ["balenaOS 6.0.13", "balenaOS 5.3.24", "balenaOS 6.5.3"][i % 3],
            "os_variant": ["prod", "dev"][i % 3 == 0],
            "supervisor_version": ["17.0.3", "16.7.9"][i % 2],
            "apps": {app_uuid: {"release_uuid": releases[running][1], "releases": {
                releases[rel][1]: {"update_status": update, "services": {
                    service: dict({"image": locations[(rel, service)], "status": st},
                                  **({"download_progress": 30} if st == "Downloading" else {}))
                    for service, st in zip(SERVICES, statuses)}}
                for rel, (update, statuses) in reports.items()}}}}}
        status, text = api.request("PATCH", "/device/v3/state", body, token=key)
        assert status == 200, (name, status, text[:300])
    return {"fleet": fid, "devices": devices, "keys": keys, "uuids": uuids,
            "releases": {k: v[0] for k, v in releases.items()}}


def heartbeat(api, uuid_hex, device_key):
    """`GET /device/v3/<uuid>/state` with the device's key: what makes the API see it online."""
    status, body = api.request("GET", f"/device/v3/{uuid_hex}/state", token=device_key)
    assert status == 200, (status, body[:200])
