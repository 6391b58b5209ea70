//! Application health: services by status, update states, releases, pins, OS and supervisor
//! versions, the newest build — every series equal to what the simulator's rows say, counted
//! here independently of the exporter, for fleets in each scenario and every module.

use std::collections::BTreeMap;

use balena_simulator::{FleetSpec, OrgSpec, Row, Scenario, UserSpec, WorldSpec};
use serde_json::Value;

use crate::helpers::*;

fn scenario_world() -> WorldSpec {
    let fleet = |name: &str, n, scenario| FleetSpec {
        scenario,
        ..FleetSpec::new(name, n)
    };
    WorldSpec {
        seed: 11,
        orgs: vec![OrgSpec {
            handle: "acme".into(),
            fleets: vec![
                fleet("steady", 200, Scenario::Steady),
                fleet("rollout", 120, Scenario::Rollout),
                fleet("crashed", 80, Scenario::CrashedService),
                fleet("stuck", 80, Scenario::StuckUpdate),
                fleet("failed", 30, Scenario::FailedBuild),
            ],
        }],
        users: vec![UserSpec {
            username: "ops".into(),
            token: TOKEN.into(),
            orgs: vec!["acme".into()],
        }],
    }
}

const FLEETS: [&str; 5] = ["steady", "rollout", "crashed", "stuck", "failed"];

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// (service, status) → installs, by the rule docs/metrics.md states: every install of each
/// device that is not deleted (balena-sdk's current_services), old and new during an update.
fn current_services(installs: &[Vec<Row>]) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for device in installs {
        for i in device.iter().filter(|i| i["status"] != "deleted") {
            *out.entry((s(&i["service_name"]), s(&i["status"])))
                .or_insert(0.0) += 1.0;
        }
    }
    out
}

#[actix_rt::test]
async fn application_series_equal_the_simulators_rows() {
    let app = spawn_with(scenario_world(), |url| {
        format!(
            "{}modules:\n  default:\n    services: true\n  summary:\n    devices: false\n    services: true\n  services:\n    services: true\n    device_services: true\n",
            default_config(url, &FLEETS)
        )
    })
    .await;
    let mut saw = BTreeMap::<&str, f64>::new();
    for name in FLEETS {
        let slug = format!("acme/{name}");
        let fleet = [("fleet", slug.as_str())];
        let (rows, installs, releases, target) = app.sim.with_world(|w| {
            let rows = w.devices_of(&slug);
            let installs: Vec<Vec<Row>> = rows
                .iter()
                .map(|d| w.installs_of(d["id"].as_u64().unwrap()))
                .collect();
            let fid = w.fleet(&slug).unwrap()["id"].as_u64().unwrap();
            let mut releases: Vec<Row> = (1..=w.max_id("release"))
                .filter_map(|id| w.row("release", id).cloned())
                .filter(|r| r["belongs_to__application"]["__id"] == fid)
                .collect();
            releases.sort_by_key(|r| s(&r["created_at"]));
            let target = w.fleet(&slug).unwrap()["should_be_running__release"]["__id"].as_u64();
            (rows, installs, releases, target)
        });
        let commit_of = |id: &Value| {
            releases
                .iter()
                .find(|r| r["id"] == *id)
                .map(|r| s(&r["commit"]))
        };
        for module in ["default", "summary", "services"] {
            let m = app.probe(&format!("target={name}&module={module}")).await;
            assert_eq!(m.value("probe_success", &[]), 1.0, "{name} {module}");
            // Services by status: every (service, status) the rows give, Running always there.
            let truth = current_services(&installs);
            for ((service, status), n) in &truth {
                assert_eq!(
                    m.value(
                        "balena_fleet_services",
                        &[("fleet", &slug), ("service", service), ("status", status)]
                    ),
                    *n,
                    "{name} {module} {service} {status}"
                );
                *saw.entry(if status == "Running" {
                    "running"
                } else {
                    "not running"
                })
                .or_default() += n;
            }
            let written = m.find("balena_fleet_services", &fleet);
            let extra: Vec<_> = written
                .iter()
                .filter(|x| {
                    !truth.contains_key(&(x.labels["service"].clone(), x.labels["status"].clone()))
                })
                .collect();
            assert!(
                extra
                    .iter()
                    .all(|x| x.value == 0.0 && x.labels["status"] == "Running"),
                "{extra:?}"
            );
            // Update states, zeros included, null as none.
            for status in [
                "aborted",
                "applying changes",
                "done",
                "downloaded",
                "downloading",
                "none",
                "rejected",
            ] {
                let n = rows
                    .iter()
                    .filter(|d| match &d["update_status"] {
                        Value::Null => status == "none",
                        v => v == status,
                    })
                    .count() as f64;
                assert_eq!(
                    m.value(
                        "balena_fleet_devices_update_status",
                        &[("fleet", &slug), ("status", status)]
                    ),
                    n,
                    "{name} {module} update {status}"
                );
                *saw.entry(status).or_default() += n;
            }
            // Devices per running release (rollout progress), pinned, OS and supervisor.
            let mut per_release = BTreeMap::<String, f64>::new();
            for d in &rows {
                let commit = commit_of(&d["is_running__release"]["__id"]).unwrap_or("none".into());
                *per_release.entry(commit).or_default() += 1.0;
            }
            assert_eq!(
                m.find("balena_fleet_devices_release", &fleet).len(),
                per_release.len()
            );
            for (commit, n) in &per_release {
                assert_eq!(
                    m.value(
                        "balena_fleet_devices_release",
                        &[("fleet", &slug), ("release", commit)]
                    ),
                    *n
                );
            }
            assert_eq!(
                m.value("balena_fleet_devices_pinned", &fleet),
                rows.iter()
                    .filter(|d| !d["is_pinned_on__release"].is_null())
                    .count() as f64
            );
            let mut os = BTreeMap::<(String, String), f64>::new();
            let mut sup = BTreeMap::<String, f64>::new();
            for d in &rows {
                *os.entry((s(&d["os_version"]), s(&d["os_variant"])))
                    .or_default() += 1.0;
                *sup.entry(s(&d["supervisor_version"])).or_default() += 1.0;
            }
            for ((v, var), n) in &os {
                assert_eq!(
                    m.value(
                        "balena_fleet_devices_os",
                        &[("fleet", &slug), ("os_version", v), ("os_variant", var)]
                    ),
                    *n
                );
            }
            for (v, n) in &sup {
                assert_eq!(
                    m.value(
                        "balena_fleet_devices_supervisor",
                        &[("fleet", &slug), ("supervisor_version", v)]
                    ),
                    *n
                );
            }
            // The newest build beside the target.
            let latest = releases.last().unwrap();
            assert_eq!(
                m.value(
                    "balena_fleet_latest_release_info",
                    &[
                        ("fleet", &slug),
                        ("release", &s(&latest["commit"])),
                        ("status", &s(&latest["status"])),
                        ("semver", &s(&latest["semver"]))
                    ]
                ),
                1.0
            );
            let ts = |v: &Value| {
                humantime::parse_rfc3339_weak(v.as_str().unwrap())
                    .unwrap()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs_f64()
            };
            assert_eq!(
                m.value(
                    "balena_fleet_latest_release_created_timestamp_seconds",
                    &fleet
                ),
                ts(&latest["created_at"])
            );
            let target_row = releases
                .iter()
                .find(|r| r["id"].as_u64() == target)
                .unwrap();
            assert_eq!(
                m.value(
                    "balena_fleet_target_release_created_timestamp_seconds",
                    &fleet
                ),
                ts(&target_row["created_at"])
            );
            if name == "failed" {
                assert_eq!(s(&latest["status"]), "failed");
                assert_ne!(
                    latest["id"].as_u64(),
                    target,
                    "the failed build is not the target"
                );
            }
            // Per device, where the module writes devices.
            let per_device = module != "summary";
            assert_eq!(m.has("balena_device_update_status"), per_device, "{module}");
            assert_eq!(
                m.has("balena_device_service_status"),
                module == "services",
                "{module}"
            );
            if !per_device {
                continue;
            }
            for (d, device_installs) in rows.iter().zip(&installs) {
                let base = [
                    ("fleet", slug.as_str()),
                    ("device_uuid", d["uuid"].as_str().unwrap()),
                ];
                let update = d["update_status"].as_str().unwrap_or("none");
                let with_status = [base[0], base[1], ("status", update)];
                assert_eq!(m.value("balena_device_update_status", &with_status), 1.0);
                assert_eq!(m.find("balena_device_update_status", &base).len(), 1);
                match &d["last_update_status_event"] {
                    Value::Null => assert!(m
                        .find("balena_device_update_status_timestamp_seconds", &base)
                        .is_empty()),
                    v => assert_eq!(
                        m.value("balena_device_update_status_timestamp_seconds", &base),
                        ts(v)
                    ),
                }
                assert_eq!(
                    m.value("balena_device_pinned", &base),
                    if d["is_pinned_on__release"].is_null() {
                        0.0
                    } else {
                        1.0
                    }
                );
                match &d["changed_api_heartbeat_state_on__date"] {
                    Value::Null => assert!(m
                        .find("balena_device_heartbeat_changed_timestamp_seconds", &base)
                        .is_empty()),
                    v => assert_eq!(
                        m.value("balena_device_heartbeat_changed_timestamp_seconds", &base),
                        ts(v)
                    ),
                }
                if module == "services" {
                    let truth = current_services(std::slice::from_ref(device_installs));
                    assert_eq!(
                        m.find("balena_device_service_status", &base).len(),
                        truth.len()
                    );
                    for (service, status) in truth.keys() {
                        let labels = [
                            base[0],
                            base[1],
                            ("service", service.as_str()),
                            ("status", status.as_str()),
                        ];
                        assert_eq!(m.value("balena_device_service_status", &labels), 1.0);
                    }
                }
            }
        }
    }
    // The scenarios really exercise what the checks compare.
    for (what, min) in [
        ("not running", 10.0),
        ("downloading", 10.0),
        ("applying changes", 3.0),
        ("aborted", 3.0),
        ("none", 1.0),
    ] {
        assert!(
            saw.get(what).copied().unwrap_or(0.0) >= min,
            "{what}: {saw:?}"
        );
    }
    app.stop().await;
}

/// The debug page (and the landing page, from the same record) says in words what needs
/// attention, with the simulator's numbers: crashed services, a failed newest build, failed and
/// running updates.
#[actix_rt::test]
async fn what_needs_attention_is_said_in_words() {
    let app = spawn_with(scenario_world(), |url| {
        format!(
            "{}modules:\n  default:\n    services: true\n",
            default_config(url, &FLEETS)
        )
    })
    .await;
    for name in ["crashed", "failed", "stuck", "rollout"] {
        let slug = format!("acme/{name}");
        let (rows, installs) = app.sim.with_world(|w| {
            let rows = w.devices_of(&slug);
            let installs: Vec<Vec<Row>> = rows
                .iter()
                .map(|d| w.installs_of(d["id"].as_u64().unwrap()))
                .collect();
            (rows, installs)
        });
        let debug = app
            .get(&format!("/probe?target={name}&debug=true"))
            .await
            .body;
        let said: Vec<&str> = debug
            .lines()
            .filter_map(|l| l.strip_prefix("Needs attention: "))
            .collect();
        // Worst first: crashed services (the most devices first), a failed build, failed
        // updates, updates under way.
        let mut crashed: Vec<(f64, String)> = Vec::new();
        for ((service, status), n) in current_services(&installs) {
            if ["exited", "Dead", "restarting"].contains(&status.as_str()) {
                let devices = if n == 1.0 {
                    "1 device".to_string()
                } else {
                    format!("{n} devices")
                };
                crashed.push((
                    -n,
                    format!("{slug}: service {service} {status} on {devices}"),
                ));
            }
        }
        crashed.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        let mut want: Vec<String> = crashed.into_iter().map(|(_, line)| line).collect();
        if name == "failed" {
            want.push(format!("{slug}: the newest build 1.3.0 failed"));
        }
        let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|d| f(d)).count();
        let failed =
            count(&|d| d["update_status"] == "aborted" || d["update_status"] == "rejected");
        if failed > 0 {
            let devices = if failed == 1 {
                "1 device".to_string()
            } else {
                format!("{failed} devices")
            };
            want.push(format!(
                "{slug}: the last update of {devices} was aborted or rejected"
            ));
        }
        let updating = count(&|d| {
            ["downloading", "applying changes", "downloaded"]
                .contains(&d["update_status"].as_str().unwrap_or(""))
        });
        want.truncate(6);
        let prefix: Vec<&str> = said.iter().take(want.len()).copied().collect();
        assert_eq!(
            prefix,
            want.iter().map(String::as_str).collect::<Vec<_>>(),
            "{name}: {debug}"
        );
        if updating > 0 && want.len() < 6 {
            let line = said
                .get(want.len())
                .unwrap_or_else(|| panic!("{name}: no update line: {debug}"));
            let devices = if updating == 1 {
                "1 device".to_string()
            } else {
                format!("{updating} devices")
            };
            assert!(
                line.starts_with(&format!("{slug}: {devices} updating")),
                "{line}"
            );
            if name == "stuck" {
                assert!(line.contains("(the longest for 3 days)"), "{line}");
            }
        }
        if name == "crashed" {
            assert!(
                !want.is_empty(),
                "the crashed-service fleet has crashed services"
            );
        }
    }
    // The landing page shows the same lines for the target's last probe.
    let landing = app.get("/").await.body;
    let row = landing
        .lines()
        .find(|l| l.starts_with("<tr><td>failed</td>"))
        .unwrap();
    assert!(
        row.contains("⚠ acme/failed: the newest build 1.3.0 failed"),
        "{row}"
    );
    app.stop().await;
}

/// The services of `slug` by the simulator's rows now.
fn services_now(app: &TestApp, slug: &str) -> BTreeMap<(String, String), f64> {
    app.sim.with_world(|w| {
        let installs: Vec<Vec<Row>> = w
            .device_ids(slug)
            .into_iter()
            .map(|id| w.installs_of(id))
            .collect();
        current_services(&installs)
    })
}

/// Every `balena_fleet_services` of the fleet that is not zero.
fn services_written(m: &Samples, slug: &str) -> BTreeMap<(String, String), f64> {
    m.find("balena_fleet_services", &[("fleet", slug)])
        .into_iter()
        .filter(|x| x.value != 0.0)
        .map(|x| {
            (
                (x.labels["service"].clone(), x.labels["status"].clone()),
                x.value,
            )
        })
        .collect()
}

/// Every install of the fleet's devices that is running now reads `exited`.
fn crash_every_service(app: &TestApp, slug: &str) {
    app.sim.with_world_mut(|w| {
        let ids: Vec<u64> = w
            .device_ids(slug)
            .into_iter()
            .flat_map(|d| w.installs_of(d))
            .filter(|i| i["status"] == "Running")
            .filter_map(|i| i["id"].as_u64())
            .collect();
        assert!(!ids.is_empty(), "the fleet runs services");
        for id in ids {
            w.row_mut("image_install", id).unwrap()["status"] = "exited".into();
        }
    });
}

/// Services are a snapshot: a probe answers with it while it is younger than
/// `services_interval`, the first probe after that answers with the old one and starts a read
/// in the background, and a later probe has the new one, with a newer read time. With
/// `services_interval: 0s` every probe reads them and waits.
#[actix_rt::test]
async fn services_are_read_again_in_the_background_once_services_interval_old() {
    let app = spawn_with(scenario_world(), |url| {
        format!(
            "{}modules:\n  default:\n    services_interval: 2s\n  live:\n    services_interval: 0s\n",
            default_config(url, &["steady", "rollout"])
                .replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 0s\n")
        )
    })
    .await;
    let reads = || app.sim.requests("/v7/image_install");
    let slug = "acme/steady";
    let before = services_now(&app, slug);
    let first = app.probe("target=steady").await;
    assert_eq!(
        services_written(&first, slug),
        before,
        "the first probe waits"
    );
    let read_at = first.value(
        "balena_fleet_services_timestamp_seconds",
        &[("fleet", slug)],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - read_at).abs() < 5.0, "read {read_at}, now {now}");
    let listed = reads();
    assert!(listed >= 1);

    crash_every_service(&app, slug);
    let after = services_now(&app, slug);
    assert_ne!(after, before);
    let fresh = app.probe("target=steady").await;
    assert_eq!(
        services_written(&fresh, slug),
        before,
        "younger than 2s: kept"
    );
    assert_eq!(reads(), listed, "no read while fresh");

    actix_rt::time::sleep(std::time::Duration::from_millis(2100)).await;
    let stale = app.get("/probe?target=steady&debug=true").await.body;
    assert!(
        stale.contains("services: reading fleet ")
            && stale.contains(" in the background (interval 2s)"),
        "{stale}"
    );
    let mut newer = None;
    for _ in 0..50 {
        actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
        let m = app.probe("target=steady").await;
        if services_written(&m, slug) == after {
            newer = Some(m);
            break;
        }
    }
    let newer = newer.expect("the background read lands");
    assert!(
        newer.value(
            "balena_fleet_services_timestamp_seconds",
            &[("fleet", slug)]
        ) > read_at,
        "a newer read time"
    );

    // services_interval 0s: every probe reads, and answers with what it read.
    let rollout = "acme/rollout";
    let listed = reads();
    let m = app.probe("target=rollout&module=live").await;
    assert_eq!(services_written(&m, rollout), services_now(&app, rollout));
    crash_every_service(&app, rollout);
    let m = app.probe("target=rollout&module=live").await;
    assert_eq!(services_written(&m, rollout), services_now(&app, rollout));
    assert!(reads() >= listed + 2, "a read per probe");
    app.stop().await;
}

/// A services read that fails never fails the probe: the device series are all there, services
/// are absent (no snapshot yet), the debug page says why, the next probe's debug page carries
/// the background session's own log, and `/metrics` counts the failure by reason.
#[actix_rt::test]
async fn a_failed_services_read_leaves_the_probe_whole() {
    use balena_simulator::{Fault, FaultRule};
    let app = spawn_with(world(&[("screens", 7)]), |url| {
        default_config(url, &["screens"])
            .replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 0s\n")
    })
    .await;
    app.sim
        .inject(FaultRule::always("/v7/image_install", Fault::Status(500)));
    let debug = app.get("/probe?target=screens&debug=true").await.body;
    assert!(
        debug.contains("services: the read failed: unexpected HTTP status 500; tried again in 30s; answering with none"),
        "{debug}"
    );
    let next = app.get("/probe?target=screens&debug=true").await.body;
    assert!(
        next.contains("services: the last read of fleet ")
            && next.contains("failed: unexpected HTTP status 500"),
        "{next}"
    );
    assert!(
        next.contains("services (background, +0.0")
            && next.contains("s): GET /v7/image_install?")
            && next.contains("-> 500 in"),
        "the background session's notes: {next}"
    );
    let m = parse(&app.get("/probe?target=screens").await.body);
    assert_eq!(m.value("probe_success", &[]), 1.0);
    assert_eq!(
        m.value("balena_fleet_devices", &[("fleet", "acme/screens")]),
        7.0
    );
    assert!(!m.has("balena_fleet_services"));
    assert!(!m.has("balena_fleet_services_timestamp_seconds"));
    let own = parse(&app.get("/metrics").await.body);
    assert_eq!(
        own.value(
            "balena_exporter_background_reads_total",
            &[("read", "services"), ("result", "api_error")]
        ),
        1.0,
        "one read: the later probes do not retry within 30 s"
    );
    assert_eq!(
        own.value(
            "balena_exporter_background_reads_total",
            &[("read", "services"), ("result", "success")]
        ),
        0.0
    );
    app.stop().await;
}
