//! Organization and `all` targets, modules, tag labels, the compatibility gauge, counts-only
//! probes and the auth override.

use balena_simulator::{FleetSpec, OrgSpec, UserSpec, WorldSpec};

use crate::helpers::*;

fn orgs_world() -> WorldSpec {
    WorldSpec {
        seed: 11,
        orgs: vec![
            OrgSpec {
                handle: "acme".into(),
                fleets: vec![
                    FleetSpec::new("alpha", 5),
                    FleetSpec::new("bravo", 40),
                    FleetSpec::new("charlie", 200),
                ],
            },
            OrgSpec {
                handle: "empty_org".into(),
                fleets: vec![],
            },
            OrgSpec {
                handle: "other_org".into(),
                fleets: vec![FleetSpec::new("xray", 3)],
            },
        ],
        users: vec![
            UserSpec {
                username: "ops".into(),
                token: TOKEN.into(),
                orgs: vec!["acme".into(), "empty_org".into()],
            },
            UserSpec {
                username: "other".into(),
                token: "other-token-5521".into(),
                orgs: vec!["other_org".into()],
            },
        ],
    }
}

fn orgs_config(url: &str) -> String {
    format!(
        r#"
api:
  url: {url}
  cache_ttl: 0s
auths:
  acme:
    token: {TOKEN}
  other:
    token: other-token-5521
modules:
  default:
    device_tags: [location, 'Floor #2']
  summary:
    devices: false
  compat:
    counts_only: true
    legacy_devices_online: true
targets:
  acme: {{org: acme, auth: acme}}
  acme-caps: {{org: ACME, auth: acme}}
  empty: {{org: empty_org, auth: acme}}
  hidden: {{org: other_org, auth: acme}}
  everything: {{all: true, auth: acme}}
  alpha: {{fleet: acme/alpha, auth: acme, allowed_auths: [other]}}
  xray: {{fleet: other_org/xray, auth: acme, allowed_auths: [other]}}
"#
    )
}

const FLEETS: [&str; 3] = ["acme/alpha", "acme/bravo", "acme/charlie"];

/// An org target reports every fleet with the simulator's numbers, in three requests in all.
#[actix_rt::test]
async fn org_target_covers_every_fleet_in_three_requests() {
    let app = spawn_with(orgs_world(), orgs_config).await;
    let m = app.probe("target=acme").await;
    assert_eq!(m.value("probe_success", &[]), 1.0);
    for slug in FLEETS {
        let rows = app.sim.with_world(|w| w.devices_of(slug));
        let fleet = [("fleet", slug)];
        assert_eq!(
            m.value("balena_fleet_devices", &fleet),
            rows.len() as f64,
            "{slug}"
        );
        let online = rows.iter().filter(|r| r["is_online"] == true).count() as f64;
        assert_eq!(
            m.value("balena_fleet_devices_online", &fleet),
            online,
            "{slug}"
        );
        let operational = rows
            .iter()
            .filter(|r| r["overall_status"] == "operational")
            .count() as f64;
        assert_eq!(
            m.value(
                "balena_fleet_devices_status",
                &[("fleet", slug), ("status", "operational")]
            ),
            operational
        );
        assert_eq!(
            m.find(
                "balena_fleet_info",
                &[("fleet", slug), ("organization", "acme")]
            )
            .len(),
            1
        );
        assert_eq!(
            m.find("balena_device_info", &fleet).len(),
            rows.len(),
            "device series keep their fleet label"
        );
    }
    assert_eq!(
        app.sim.probe_requests(),
        3,
        "fleets of the org + devices of those fleets (a page and the end), besides the background reads"
    );
    assert_eq!(m.value("balena_probe_api_requests", &[]), 3.0);
    app.stop().await;
}

/// balena organization handles are lowercase, like fleet slugs: `org: ACME` is `acme`.
#[actix_rt::test]
async fn org_handles_are_lowercased_like_slugs() {
    let app = spawn_with(orgs_world(), orgs_config).await;
    let lower = app.probe("target=acme").await;
    let caps = app.probe("target=acme-caps").await;
    assert_eq!(caps.value("probe_success", &[]), 1.0);
    assert_eq!(
        caps.find("balena_fleet_info", &[]).len(),
        lower.find("balena_fleet_info", &[]).len()
    );
    assert_eq!(
        caps.find("balena_device_info", &[]).len(),
        lower.find("balena_device_info", &[]).len()
    );
    assert!(app
        .sim
        .state
        .log
        .lock()
        .unwrap()
        .iter()
        .all(|r| !r.query.contains("ACME")));
    app.stop().await;
}

/// An org with no fleets is a success with no fleet series; an org the token cannot see fails.
#[actix_rt::test]
async fn empty_and_invisible_orgs_are_told_apart() {
    let app = spawn_with(orgs_world(), orgs_config).await;
    let empty = app.probe("target=empty").await;
    assert_eq!(empty.value("probe_success", &[]), 1.0);
    assert!(!empty.has("balena_fleet_info"));
    let hidden = app.probe("target=hidden").await;
    assert_eq!(hidden.value("probe_success", &[]), 0.0);
    assert_eq!(app.probes_total("hidden", "not_found").await, 1.0);
    app.stop().await;
}

/// `all: true` covers the fleets of every org the token belongs to, and no others.
#[actix_rt::test]
async fn all_target_covers_every_accessible_fleet() {
    let app = spawn_with(orgs_world(), orgs_config).await;
    let m = app.probe("target=everything").await;
    let fleets: Vec<&str> = m
        .find("balena_fleet_info", &[])
        .iter()
        .map(|s| s.labels["fleet"].as_str())
        .collect();
    assert_eq!(fleets, FLEETS);
    assert_eq!(m.find("balena_device_info", &[]).len(), 245);
    app.stop().await;
}

/// The summary module writes the same fleet numbers and no per-device series.
#[actix_rt::test]
async fn summary_module_emits_no_device_series() {
    let app = spawn_with(orgs_world(), orgs_config).await;
    let full = app.probe("target=acme").await;
    let summary = app.probe("target=acme&module=summary").await;
    assert!(
        summary
            .names()
            .iter()
            .all(|n| !n.starts_with("balena_device_")),
        "{:?}",
        summary.names()
    );
    for metric in [
        "balena_fleet_devices",
        "balena_fleet_devices_online",
        "balena_fleet_devices_on_target_release",
        "balena_fleet_devices_online_not_on_target_release",
        "balena_fleet_devices_undervolted",
    ] {
        for slug in FLEETS {
            assert_eq!(
                summary.value(metric, &[("fleet", slug)]),
                full.value(metric, &[("fleet", slug)]),
                "{metric} {slug}"
            );
        }
    }
    let log = app.sim.state.log.lock().unwrap().clone();
    let listing = log.iter().rev().find(|r| r.path == "/v7/device").unwrap();
    assert!(
        !listing.query.contains("cpu_usage") && !listing.query.contains("device_tag"),
        "summary selects only what it needs: {}",
        listing.query
    );
    assert_eq!(app.get("/probe?target=acme&module=nope").await.status, 400);
    app.stop().await;
}

/// Tag keys become valid label names; values with quotes, backslashes and newlines survive the
/// text format.
#[actix_rt::test]
async fn device_tags_become_sanitised_labels() {
    let app = spawn_with(orgs_world(), orgs_config).await;
    let m = app.probe("target=alpha").await;
    let checked = app.sim.with_world(|w| {
        let mut checked = 0;
        for id in w.device_ids("acme/alpha") {
            let uuid = w.row("device", id).unwrap()["uuid"]
                .as_str()
                .unwrap()
                .to_string();
            let tags = w.tags_of(id);
            let info = m.find("balena_device_info", &[("device_uuid", &uuid)]);
            assert_eq!(info.len(), 1);
            let want = |k: &str| {
                tags.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert_eq!(info[0].labels["tag_location"], want("location"));
            assert_eq!(info[0].labels["tag_floor_2"], want("Floor #2"));
            assert!(
                !info[0].labels.contains_key("tag_owner"),
                "only configured tags become labels"
            );
            if want("Floor #2").contains('"') && want("Floor #2").contains('\n') {
                checked += 1;
            }
        }
        checked
    });
    assert!(checked > 0, "some tag values hold quotes and newlines");
    app.stop().await;
}

/// The compat gauge matches the online count and counts-only probes make exactly one request.
#[actix_rt::test]
async fn counts_only_module_makes_one_request_and_feeds_the_compat_gauge() {
    let app = spawn_with(orgs_world(), orgs_config).await;
    for target in ["acme", "everything"] {
        let before = app.sim.requests("/");
        let m = app.probe(&format!("target={target}&module=compat")).await;
        assert_eq!(
            app.sim.requests("/") - before,
            1,
            "{target}: one request for every fleet"
        );
        assert_eq!(app.sim.device_listings(), 0, "no device rows listed");
        for slug in FLEETS {
            let rows = app.sim.with_world(|w| w.devices_of(slug));
            let online = rows.iter().filter(|r| r["is_online"] == true).count() as f64;
            let name = slug.split('/').nth(1).unwrap();
            assert_eq!(
                m.value("balena_devices_online", &[("fleet_name", name)]),
                online,
                "{slug}"
            );
            assert_eq!(
                m.value("balena_fleet_devices_online", &[("fleet", slug)]),
                online
            );
        }
        assert!(!m.has("balena_device_info"));
        // The debug page counts the online devices it read, and shows the module as it takes
        // effect (counts_only lists no device: no per-device series, no services).
        let online: usize = FLEETS
            .iter()
            .filter(|slug| target == "everything" || slug.starts_with("acme/"))
            .map(|slug| {
                app.sim.with_world(|w| {
                    w.devices_of(slug)
                        .iter()
                        .filter(|r| r["is_online"] == true)
                        .count()
                })
            })
            .sum();
        let debug = app
            .get(&format!("/probe?target={target}&module=compat&debug=true"))
            .await
            .body;
        assert!(
            debug.contains(&format!(" {online} devices online\n"))
                || debug.contains(&format!(" {online} device online\n")),
            "{online} online: {debug}"
        );
        let module = debug
            .split("Module configuration (as it takes effect):\n")
            .nth(1)
            .unwrap();
        assert!(
            module.contains("devices: false") && module.contains("services: false"),
            "{module}"
        );
    }
    app.stop().await;
}

/// `&auth=` may pick another auth only where the target allows it.
#[actix_rt::test]
async fn auth_override_is_limited_to_allowed_auths() {
    let app = spawn_with(orgs_world(), orgs_config).await;
    // xray belongs to other_org: invisible to acme's token, visible to other's.
    assert_eq!(
        app.probe("target=xray").await.value("probe_success", &[]),
        0.0
    );
    let m = app.probe("target=xray&auth=other").await;
    assert_eq!(m.value("probe_success", &[]), 1.0);
    assert_eq!(
        m.value("balena_fleet_devices", &[("fleet", "other_org/xray")]),
        3.0
    );
    let callers: Vec<String> = app
        .sim
        .state
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.caller.clone())
        .collect();
    assert!(callers.contains(&"other".to_string()));
    let refused = app.get("/probe?target=acme&auth=other").await;
    assert_eq!(refused.status, 400, "acme does not allow the other auth");
    app.stop().await;
}

/// `/sd` expands org and `all` targets into one target per discovered fleet; each probes as a
/// fleet target; an org that cannot be listed stays as itself.
#[actix_rt::test]
async fn sd_lists_one_target_per_discovered_fleet() {
    use balena_exporter::config::{self, SharedConfig};
    use balena_exporter::startup::Settings;
    use balena_simulator::Simulator;
    let sim = Simulator::start(&orgs_world(), "127.0.0.1:0").unwrap();
    let cfg = config::from_yaml_str(&orgs_config(&sim.url()), "t.yml").unwrap();
    let mut settings = Settings::new(SharedConfig::new(cfg, None), "127.0.0.1:0");
    settings.discovery_interval = Some(std::time::Duration::from_secs(300));
    let app = spawn_settings(sim, settings).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let names = loop {
        let groups: serde_json::Value = serde_json::from_str(&app.get("/sd").await.body).unwrap();
        let names: Vec<String> = groups
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["targets"][0].as_str().unwrap().to_string())
            .collect();
        if names.iter().any(|n| n.starts_with("acme/"))
            && names.iter().any(|n| n.starts_with("acme-caps/"))
            && names.iter().any(|n| n.starts_with("everything/"))
        {
            break names;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no discovery: {names:?}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let want = [
        "acme/acme/alpha",
        "acme/acme/bravo",
        "acme/acme/charlie",
        "acme-caps/acme/alpha",
        "acme-caps/acme/bravo",
        "acme-caps/acme/charlie",
        "alpha",
        "everything/acme/alpha",
        "everything/acme/bravo",
        "everything/acme/charlie",
        "hidden",
        "xray",
    ];
    assert_eq!(
        names, want,
        "empty_org has no fleet to list; hidden cannot be listed and stays itself"
    );
    let m = app.probe("target=acme/acme/bravo").await;
    assert_eq!(
        m.value("balena_fleet_devices", &[("fleet", "acme/bravo")]),
        40.0
    );
    assert_eq!(m.find("balena_fleet_info", &[]).len(), 1);
    assert_eq!(
        app.get("/probe?target=acme/other_org/xray").await.status,
        400,
        "not discovered under acme"
    );
    app.stop().await;
}
