//! The layer under the application, end to end: every host series of every device-listing
//! module equals what the simulator's rows say, by rules written here from the API's
//! documentation (docs/metrics.md, "Host layer"), not from the exporter's code; locations are
//! the custom ones over the IP ones; an openBalena model refuses a module with locations with
//! one clear reason.

use std::collections::BTreeMap;

use balena_simulator::{FleetSpec, OrgSpec, Row, Scenario, UserSpec, World, WorldSpec};
use serde_json::Value;

use crate::helpers::*;

fn spec() -> WorldSpec {
    let fleet = |name: &str, devices, scenario| FleetSpec {
        scenario,
        ..FleetSpec::new(name, devices)
    };
    WorldSpec {
        seed: 11,
        orgs: vec![OrgSpec {
            handle: "acme".into(),
            fleets: vec![
                fleet("steady", 400, Scenario::Steady),
                fleet("routers", 30, Scenario::HostOsUpdate),
                fleet("calm", 40, Scenario::Steady),
            ],
        }],
        users: vec![UserSpec {
            username: "ops".into(),
            token: TOKEN.into(),
            orgs: vec!["acme".into()],
        }],
    }
}

const FLEETS: [&str; 3] = ["steady", "routers", "calm"];

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// What the rows say of one device: its OS update state, the updater's progress, where it is.
type DeviceTruth = (String, Option<f64>, Option<(f64, f64)>);

/// What the rows say of one fleet.
#[derive(Debug, Default)]
struct Truth {
    os_update: BTreeMap<String, f64>,
    os_phase: BTreeMap<String, f64>,
    supervisor_pending: f64,
    settings: BTreeMap<String, f64>,
    /// commit → (semver, status)
    releases: BTreeMap<String, (String, String)>,
    /// uuid → (os update state, progress, (lat, lon))
    devices: BTreeMap<String, DeviceTruth>,
}

/// A setting variable's value as a boolean, or None when it is not one.
fn boolean(v: &str) -> Option<bool> {
    match v.to_lowercase().as_str() {
        "true" | "1" | "on" => Some(true),
        "false" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// The value set at one level (a fleet's or a device's variables) for a setting whose names
/// are `names`, first name first.
fn level(vars: &[&Row], names: &[&str]) -> Option<bool> {
    names.iter().find_map(|n| {
        vars.iter()
            .find(|v| s(&v["name"]) == *n)
            .and_then(|v| boolean(s(&v["value"])))
    })
}

fn truth(w: &World, slug: &str) -> Truth {
    let fleet = w.fleet(slug).unwrap().clone();
    let fid = fleet["id"].as_u64().unwrap();
    let releases = w.rows("release");
    let release = |id: &Value| -> Option<&Row> {
        let id = id["__id"].as_u64()?;
        releases.iter().copied().find(|r| r["id"] == id)
    };
    let mut t = Truth::default();
    for k in ["failed", "in_progress", "none", "pending"] {
        t.os_update.insert(k.into(), 0.0);
    }
    for k in ["current", "end-of-life", "next", "sunset", "unknown"] {
        t.os_phase.insert(k.into(), 0.0);
    }
    let settings: [(&str, &[&str], bool); 3] = [
        (
            "hardware_metrics_disabled",
            &[
                "BALENA_SUPERVISOR_HARDWARE_METRICS",
                "RESIN_SUPERVISOR_HARDWARE_METRICS",
            ],
            false,
        ),
        (
            "local_mode",
            &[
                "BALENA_SUPERVISOR_LOCAL_MODE",
                "RESIN_SUPERVISOR_LOCAL_MODE",
            ],
            true,
        ),
        (
            "lock_override",
            &[
                "BALENA_SUPERVISOR_OVERRIDE_LOCK",
                "RESIN_SUPERVISOR_OVERRIDE_LOCK",
                "BALENA_OVERRIDE_LOCK",
                "RESIN_OVERRIDE_LOCK",
            ],
            true,
        ),
    ];
    for (name, _, _) in settings {
        t.settings.insert(name.into(), 0.0);
    }
    let fleet_vars: Vec<&Row> = w
        .rows("application_config_variable")
        .into_iter()
        .filter(|v| v["application"]["__id"] == fid)
        .collect();
    let mut running = Vec::new();
    for d in w.devices_of(slug) {
        // As a Value, a field the row lacks reads as null.
        let d = Value::Object(d);
        let did = d["id"].as_u64().unwrap();
        let os = s(&d["os_version"]);
        let state = s(&d["provisioning_state"]);
        let target = release(&d["should_be_operated_by__release"]);
        let update = if state == "OS update failed" {
            "failed"
        } else if !d["provisioning_progress"].is_null() && state != "Post-Provisioning" {
            "in_progress"
        } else if target
            .is_some_and(|r| !os.is_empty() && format!("balenaOS {}", s(&r["raw_version"])) != os)
        {
            "pending"
        } else {
            "none"
        };
        *t.os_update.get_mut(update).unwrap() += 1.0;
        let phase = target
            .and_then(|tr| {
                releases.iter().find(|r| {
                    r["belongs_to__application"] == tr["belongs_to__application"]
                        && format!("balenaOS {}", s(&r["raw_version"])) == os
                })
            })
            .map(|r| s(&r["phase"]).to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "unknown".into());
        *t.os_phase.get_mut(&phase).unwrap() += 1.0;
        if let Some(r) = release(&d["should_be_managed_by__release"]) {
            let running = s(&d["supervisor_version"]);
            if !running.is_empty() && s(&r["raw_version"]) != running {
                t.supervisor_pending += 1.0;
            }
        }
        let own: Vec<&Row> = w
            .rows("device_config_variable")
            .into_iter()
            .filter(|v| v["device"]["__id"] == did)
            .collect();
        for (name, names, matters) in settings {
            let on = level(&own, names).or(level(&fleet_vars, names));
            if on == Some(matters) {
                *t.settings.get_mut(name).unwrap() += 1.0;
            }
        }
        if let Some(r) = release(&d["is_running__release"]) {
            running.push(r);
        }
        let progress =
            (update == "in_progress").then(|| d["provisioning_progress"].as_f64().unwrap() / 100.0);
        let num = |k: &str| s(&d[k]).parse::<f64>().ok();
        let location = match (num("custom_latitude"), num("custom_longitude")) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => num("latitude").zip(num("longitude")),
        };
        t.devices
            .insert(s(&d["uuid"]).into(), (update.into(), progress, location));
    }
    let newest = releases
        .iter()
        .filter(|r| r["belongs_to__application"]["__id"] == fid)
        .max_by_key(|r| s(&r["created_at"]).to_string());
    for r in running
        .into_iter()
        .chain(release(&fleet["should_be_running__release"]))
        .chain(newest.copied())
    {
        t.releases.insert(
            s(&r["commit"]).into(),
            (s(&r["semver"]).into(), s(&r["status"]).into()),
        );
    }
    t
}

#[actix_rt::test]
async fn host_series_equal_what_the_rows_say_in_every_module() {
    let app = spawn_with(spec(), |url| {
        default_config(url, &FLEETS)
            + "modules:\n  default:\n    locations: true\n  summary:\n    devices: false\n  compact:\n    compact_cache: true\n"
    })
    .await;
    // Variations the generator does not make: a device's variable over its fleet's, and two
    // names at one level.
    app.sim.with_world_mut(|w| {
        let fid = w.fleet("acme/calm").unwrap()["id"].as_u64().unwrap();
        let ids = w.device_ids("acme/calm");
        let mut id = w
            .max_id("device_config_variable")
            .max(w.max_id("application_config_variable"))
            + 1;
        let mut var = |w: &mut World, table, owner: (&str, u64), name: &str, value: &str| {
            let (field, oid) = owner;
            w.insert(
                table,
                serde_json::json!({"id": id, field: {"__id": oid}, "name": name, "value": value}),
            );
            id += 1;
        };
        var(
            w,
            "application_config_variable",
            ("application", fid),
            "RESIN_SUPERVISOR_LOCAL_MODE",
            "1",
        );
        var(
            w,
            "device_config_variable",
            ("device", ids[0]),
            "BALENA_SUPERVISOR_LOCAL_MODE",
            "false",
        );
        var(
            w,
            "device_config_variable",
            ("device", ids[1]),
            "RESIN_SUPERVISOR_LOCAL_MODE",
            "off",
        );
        var(
            w,
            "device_config_variable",
            ("device", ids[1]),
            "BALENA_SUPERVISOR_LOCAL_MODE",
            "on",
        );
        var(
            w,
            "device_config_variable",
            ("device", ids[2]),
            "RESIN_OVERRIDE_LOCK",
            "1",
        );
        var(
            w,
            "device_config_variable",
            ("device", ids[3]),
            "BALENA_SUPERVISOR_HARDWARE_METRICS",
            "maybe",
        );
    });
    let mut seen = BTreeMap::<String, f64>::new();
    for name in FLEETS {
        let slug = format!("acme/{name}");
        let want = app.sim.with_world(|w| truth(w, &slug));
        for module in ["default", "summary", "compact"] {
            let m = app.probe(&format!("target={name}&module={module}")).await;
            assert_eq!(m.value("probe_success", &[]), 1.0, "{name} {module}");
            let fleet = [("fleet", slug.as_str())];
            let got = |metric: &str, label: &str| -> BTreeMap<String, f64> {
                m.find(metric, &fleet)
                    .iter()
                    .map(|x| (x.labels[label].clone(), x.value))
                    .collect()
            };
            assert_eq!(
                got("balena_fleet_devices_os_update", "status"),
                want.os_update,
                "{name} {module}"
            );
            assert_eq!(
                got("balena_fleet_devices_os_phase", "phase"),
                want.os_phase,
                "{name} {module}"
            );
            assert_eq!(
                got("balena_fleet_devices_supervisor_setting", "setting"),
                want.settings,
                "{name} {module}"
            );
            assert_eq!(
                m.value("balena_fleet_devices_supervisor_update_pending", &fleet),
                want.supervisor_pending,
                "{name} {module}"
            );
            let releases: BTreeMap<String, (String, String)> = m
                .find("balena_fleet_release_info", &fleet)
                .iter()
                .map(|x| {
                    assert_eq!(x.value, 1.0);
                    (
                        x.labels["release"].clone(),
                        (x.labels["semver"].clone(), x.labels["status"].clone()),
                    )
                })
                .collect();
            assert_eq!(releases, want.releases, "{name} {module}");
            if module == "summary" {
                assert!(!m.has("balena_device_os_update"), "no per-device series");
                continue;
            }
            for (uuid, (state, progress, location)) in &want.devices {
                let d = [("device_uuid", uuid.as_str())];
                let states = m.find("balena_device_os_update", &d);
                assert_eq!(states.len(), 1, "{name} {module} {uuid}");
                assert_eq!(states[0].labels["status"], *state);
                let p = m.find("balena_device_os_update_progress_ratio", &d);
                assert_eq!(
                    p.first().map(|x| x.value),
                    *progress,
                    "{name} {module} {uuid}"
                );
                let at = |metric| m.find(metric, &d).first().map(|x| x.value);
                let want_at = if module == "default" { *location } else { None };
                let got_at =
                    at("balena_device_latitude_degrees").zip(at("balena_device_longitude_degrees"));
                assert_eq!(got_at, want_at, "{name} {module} {uuid}");
            }
        }
        for (k, v) in want
            .os_update
            .iter()
            .chain(&want.os_phase)
            .chain(&want.settings)
        {
            *seen.entry(k.clone()).or_default() += v;
        }
        *seen.entry("supervisor_pending".into()).or_default() += want.supervisor_pending;
    }
    // The test proves something only if the worlds have every state.
    for k in [
        "failed",
        "in_progress",
        "pending",
        "none",
        "end-of-life",
        "sunset",
        "current",
        "unknown",
        "hardware_metrics_disabled",
        "local_mode",
        "lock_override",
        "supervisor_pending",
    ] {
        assert!(
            seen.get(k).copied().unwrap_or(0.0) > 0.0,
            "no device is {k}: {seen:?}"
        );
    }
    app.stop().await;
}

#[actix_rt::test]
async fn an_openbalena_api_fails_a_module_with_locations_saying_which_key() {
    let app = spawn_with(world(&[("screens", 5)]), |url| {
        default_config(url, &["screens"]) + "modules:\n  located:\n    locations: true\n"
    })
    .await;
    app.sim.with_world_mut(|w| w.openbalena = true);
    let plain = app.probe("target=screens").await;
    assert_eq!(
        plain.value("probe_success", &[]),
        1.0,
        "without locations it works"
    );
    assert!(!plain.has("balena_device_latitude_degrees"));
    let debug = app
        .get("/probe?target=screens&module=located&debug=true")
        .await
        .body;
    assert!(debug.contains("probe_success 0"), "{debug}");
    assert!(
        debug.contains("`locations: true` in this module needs balenaCloud"),
        "{debug}"
    );
    let own = parse(&app.get("/metrics").await.body);
    assert_eq!(
        own.value(
            "balena_exporter_probes_total",
            &[("module", "located"), ("result", "unsupported")]
        ),
        1.0
    );
    app.stop().await;
}

/// A host read that fails (its variables listing answers 500) leaves the probe whole: the
/// device series are there, the host series are not, and the debug page says why.
#[actix_rt::test]
async fn a_failed_host_read_leaves_the_probe_whole() {
    use balena_simulator::{Fault, FaultRule};
    let app = spawn_with(world(&[("screens", 7)]), |url| {
        default_config(url, &["screens"])
            .replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 0s\n")
    })
    .await;
    app.sim.inject(FaultRule::always(
        "/v7/device_config_variable",
        Fault::Status(500),
    ));
    let debug = app.get("/probe?target=screens&debug=true").await.body;
    assert!(
        debug.contains("host: the read failed: unexpected HTTP status 500"),
        "{debug}"
    );
    let m = parse(&app.get("/probe?target=screens").await.body);
    assert_eq!(m.value("probe_success", &[]), 1.0);
    assert_eq!(
        m.value("balena_fleet_devices", &[("fleet", "acme/screens")]),
        7.0
    );
    for family in [
        "balena_fleet_devices_os_update",
        "balena_fleet_devices_os_phase",
        "balena_fleet_release_info",
        "balena_device_os_update",
    ] {
        assert!(!m.has(family), "{family} without a host snapshot");
    }
    assert!(m.has("balena_fleet_services"), "the services read is apart");
    let own = parse(&app.get("/metrics").await.body);
    assert_eq!(
        own.value(
            "balena_exporter_background_reads_total",
            &[("read", "host"), ("result", "api_error")]
        ),
        1.0
    );
    app.stop().await;
}

/// What the host read costs a token, as docs/scaling.md says: per listing, one request while it
/// has no rows and two once it has (the page and the empty page that ends it) — releases, the
/// fleet's and the devices' variables, the devices' targets: 4 to 8, about 6.
#[actix_rt::test]
async fn the_host_read_costs_a_request_or_two_per_listing() {
    let app = spawn_app(&[("screens", 30)]).await;
    let m = app.probe("target=screens").await;
    assert_eq!(m.value("probe_success", &[]), 1.0);
    let (fleet_vars, device_vars, targets) = app.sim.with_world(|w| {
        let fid = w.fleet("acme/screens").unwrap()["id"].as_u64().unwrap();
        let ids = w.device_ids("acme/screens");
        let on = |table: &str, field: &str, owners: &[u64]| {
            w.rows(table)
                .iter()
                .filter(|r| {
                    r[field]["__id"]
                        .as_u64()
                        .is_some_and(|o| owners.contains(&o))
                })
                .count()
        };
        let targets = w
            .devices_of("acme/screens")
            .iter()
            .filter(|d| {
                !d.get("should_be_operated_by__release")
                    .is_none_or(|v| v.is_null())
                    || !d
                        .get("should_be_managed_by__release")
                        .is_none_or(|v| v.is_null())
            })
            .count();
        (
            on("application_config_variable", "application", &[fid]),
            on("device_config_variable", "device", &ids),
            targets,
        )
    });
    let requests = |rows: usize| if rows == 0 { 1 } else { 2 };
    assert_eq!(
        app.sim.requests("/v7/release"),
        2,
        "releases in use, then the empty page"
    );
    assert_eq!(
        app.sim.requests("/v7/application_config_variable"),
        requests(fleet_vars)
    );
    assert_eq!(
        app.sim.requests("/v7/device_config_variable"),
        requests(device_vars)
    );
    assert_eq!(
        app.sim.requests("/v7/device") - app.sim.device_listings(),
        requests(targets)
    );
    assert!(targets > 0, "the fleet's devices have targets");
    app.stop().await;
}
