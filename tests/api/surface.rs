//! The rest of the HTTP surface: `/metrics`, `/config`, health, landing page, the methods of
//! `/-/reload` (reloads themselves are in `tests/reload.rs`).

use crate::helpers::*;

/// `/metrics` carries the exporter's own metrics only, counted per upstream endpoint and code;
/// the second probe inside `cache_ttl` is a cache hit that makes no request.
#[actix_rt::test]
async fn metrics_count_upstream_requests_and_cache_hits() {
    let app = spawn_app(&[("screens", 5)]).await;
    let first = app.probe("target=screens").await;
    let second = app.probe("target=screens").await;
    assert_eq!(
        first.value("balena_probe_api_requests", &[]),
        3.0,
        "fleet row, device page, empty end page"
    );
    assert_eq!(second.value("balena_probe_api_requests", &[]), 0.0);
    assert!(second.value("balena_probe_data_age_seconds", &[]) >= 0.0);
    assert_eq!(
        first.value("balena_fleet_devices", &[("fleet", "acme/screens")]),
        second.value("balena_fleet_devices", &[("fleet", "acme/screens")])
    );
    let a = app.get("/metrics").await;
    assert_eq!(a.status, 200);
    let m = parse(&a.body);
    let up = |endpoint: &str| {
        m.value(
            "balena_exporter_upstream_requests_total",
            &[("auth", "acme"), ("endpoint", endpoint), ("code", "200")],
        )
    };
    assert_eq!(
        app.sim.device_listings(),
        2,
        "a page and the empty end page"
    );
    assert_eq!(
        up("device"),
        app.sim.requests("/v7/device") as f64,
        "the probe's and the host read's (the devices' targets)"
    );
    assert_eq!(up("application"), 1.0);
    assert_eq!(
        m.value("balena_exporter_cache_hits_total", &[("kind", "cache")]),
        1.0
    );
    // One result held; its compressed series are smaller than their text but not empty.
    assert_eq!(m.value("balena_exporter_cache_entries", &[]), 1.0);
    let text = app.get("/probe?target=screens").await.body;
    let held = m.value("balena_exporter_cache_bytes", &[]);
    assert!(
        held > 100.0 && held < text.len() as f64 / 2.0,
        "{held} bytes held for {} bytes of text",
        text.len()
    );
    assert_eq!(
        m.value(
            "balena_exporter_probes_total",
            &[
                ("target", "screens"),
                ("module", "default"),
                ("result", "success")
            ]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "balena_exporter_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Filled from the build: this checkout's revision (as git says it) and the compiler.
    let build = &m.find("balena_exporter_build_info", &[])[0].labels;
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(rev) = git {
        assert!(build["revision"].starts_with(&rev), "{build:?} vs {rev}");
    }
    let rustc = &build["rustc"];
    assert!(
        rustc.split('.').count() == 3 && rustc.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "{build:?}"
    );
    assert!(
        !m.has("balena_fleet_devices"),
        "target metrics never appear on /metrics"
    );
    app.stop().await;
}

/// Concurrent identical probes share one upstream fetch, even with `cache_ttl: 0`.
#[actix_rt::test]
async fn concurrent_probes_make_one_upstream_fetch() {
    use balena_simulator::{Fault, FaultRule};
    let app = spawn_with(world(&[("screens", 50)]), |url| {
        default_config(url, &["screens"])
            .replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 0s\n")
    })
    .await;
    app.sim.inject(FaultRule::always(
        "/v7/device",
        Fault::Delay(std::time::Duration::from_millis(500)),
    ));
    let probes: Vec<_> = (0..30).map(|_| app.probe("target=screens")).collect();
    let results = futures_util::future::join_all(probes).await;
    for m in &results {
        assert_eq!(m.value("probe_success", &[]), 1.0);
        assert_eq!(
            m.value("balena_fleet_devices", &[("fleet", "acme/screens")]),
            50.0
        );
    }
    assert_eq!(
        app.sim.device_listings(),
        2,
        "one fetch: a page and the end"
    );
    let fetched = results
        .iter()
        .filter(|m| m.value("balena_probe_api_requests", &[]) > 0.0)
        .count();
    assert_eq!(fetched, 1, "exactly one probe made the requests");
    // With cache_ttl 0 the next probe fetches again.
    app.probe("target=screens").await;
    assert_eq!(app.sim.device_listings(), 4);
    app.stop().await;
}

/// `/config` shows the config in force with the token as `<secret>`.
#[actix_rt::test]
async fn config_endpoint_redacts_tokens() {
    let app = spawn_app(&[("screens", 1)]).await;
    let a = app.get("/config").await;
    assert_eq!(a.status, 200);
    assert!(!a.body.contains(TOKEN));
    let yaml: serde_yaml::Value = serde_yaml::from_str(&a.body).unwrap();
    assert_eq!(yaml["auths"]["acme"]["token"], "<secret>");
    assert_eq!(yaml["targets"]["screens"]["fleet"], "acme/screens");
    app.stop().await;
}

/// Health endpoints and the landing page answer; reload refuses other methods.
#[actix_rt::test]
async fn health_landing_and_reload_method() {
    let app = spawn_app(&[("screens", 1)]).await;
    assert_eq!(app.get("/-/healthy").await.status, 200);
    assert_eq!(app.get("/-/ready").await.status, 200);
    let landing = app.get("/").await;
    assert_eq!(landing.status, 200);
    assert!(
        landing.body.contains("probe?target=screens"),
        "{}",
        landing.body
    );
    assert_eq!(app.get("/-/reload").await.status, 405);
    app.stop().await;
}

/// `api.max_concurrency` caps the requests in flight per auth across all targets.
#[actix_rt::test]
async fn upstream_concurrency_is_capped_per_auth() {
    use balena_simulator::{Fault, FaultRule};
    use std::sync::atomic::Ordering;
    let names = ["f1", "f2", "f3", "f4", "f5", "f6"];
    let fleets: Vec<(&str, usize)> = names.iter().map(|n| (*n, 3)).collect();
    let app = spawn_with(world(&fleets), |url| {
        default_config(url, &names)
            .replace("  timeout: 5s\n", "  timeout: 5s\n  max_concurrency: 2\n")
    })
    .await;
    app.sim.inject(FaultRule::always(
        "/v7/",
        Fault::Delay(std::time::Duration::from_millis(150)),
    ));
    let probes: Vec<_> = names
        .iter()
        .map(|n| app.probe_owned(format!("target={n}")))
        .collect();
    for m in futures_util::future::join_all(probes).await {
        assert_eq!(m.value("probe_success", &[]), 1.0);
    }
    assert_eq!(
        app.sim.probe_requests(),
        18,
        "fleet row, page and end page per target, besides the background reads"
    );
    assert_eq!(
        app.sim.state.max_in_flight.load(Ordering::SeqCst),
        2,
        "never more than max_concurrency at once"
    );
    app.stop().await;
}

/// A cached result expires after `api.cache_ttl`: the next probe fetches again.
#[actix_rt::test]
async fn the_cache_expires_after_its_ttl() {
    let app = spawn_with(world(&[("screens", 5)]), |url| {
        default_config(url, &["screens"])
            .replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 1s\n")
    })
    .await;
    app.probe("target=screens").await;
    app.probe("target=screens").await;
    assert_eq!(
        app.sim.device_listings(),
        2,
        "second probe inside the TTL (one fetch: a page and the end)"
    );
    actix_rt::time::sleep(std::time::Duration::from_millis(1200)).await;
    let m = app.probe("target=screens").await;
    assert_eq!(app.sim.device_listings(), 4, "after the TTL a new fetch");
    assert_eq!(m.value("balena_probe_data_age_seconds", &[]), 0.0);
    app.stop().await;
}

/// In steady state a fleet probe is the device listing only (a page and the empty page that
/// ends it): the fleet row is reused for
/// `api.fleet_cache_ttl`; counts-only probes never reuse it (it carries live counts).
#[actix_rt::test]
async fn steady_state_fleet_probes_make_one_request() {
    let app = spawn_with(world(&[("screens", 5)]), |url| {
        format!(
            "{}modules:\n  compat:\n    counts_only: true\n",
            default_config(url, &["screens"])
                .replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 0s\n")
        )
    })
    .await;
    let first = app.probe("target=screens").await;
    let second = app.probe("target=screens").await;
    assert_eq!(first.value("balena_probe_api_requests", &[]), 3.0);
    assert_eq!(
        second.value("balena_probe_api_requests", &[]),
        2.0,
        "only the device listing"
    );
    assert_eq!(
        second.value("balena_fleet_devices", &[("fleet", "acme/screens")]),
        5.0
    );
    assert_eq!(
        second
            .find(
                "balena_fleet_info",
                &[("fleet", "acme/screens"), ("organization", "acme")]
            )
            .len(),
        1
    );
    assert_eq!(app.sim.requests("/v7/application"), 1);
    app.probe("target=screens&module=compat").await;
    app.probe("target=screens&module=compat").await;
    assert_eq!(
        app.sim.requests("/v7/application"),
        3,
        "counts-only rows are always fresh"
    );
    app.stop().await;
}
