//! Background reads never hurt the foreground and never outgrow their bound: a reload storm
//! keeps the snapshots (no new read, memory flat), a slow install listing never makes a probe
//! fail or wait. The endless listing held within `api.background_max_bytes` is a process test
//! (`tests/process.rs`, it measures the binary's RSS); the scheduler's own rules are unit
//! tests (`src/probe/reads/scheduler.rs`).

use std::time::{Duration, Instant};

use balena_exporter::config::{self, LoadOptions, SharedConfig};
use balena_simulator::{Fault, FaultRule, Simulator};

use crate::helpers::*;

/// 30 `POST /-/reload`s of a config that changes nothing a read depends on (a target added,
/// the cache TTL changed): no new install listing, the snapshot bytes stay the same, and the
/// probes keep their services.
#[actix_rt::test]
async fn a_reload_storm_starts_no_read_and_holds_no_more() {
    let sim = Simulator::start(&world(&[("one", 20), ("two", 30)]), "127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(format!("balena-exporter-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    let url = sim.url();
    let yaml = |i: usize| {
        default_config(&url, &["one", "two"]).replace(
            "  timeout: 5s\n",
            &format!("  timeout: 5s\n  cache_ttl: {}s\n", i % 3),
        ) + &format!("  extra-{i}:\n    fleet: acme/one\n    auth: acme\n")
    };
    std::fs::write(&file, yaml(0)).unwrap();
    let opts = LoadOptions::file(&file);
    let app = spawn_config(
        sim,
        SharedConfig::new(config::load(&opts).unwrap(), Some(opts)),
    )
    .await;
    for t in ["one", "two"] {
        let m = app.probe(&format!("target={t}")).await;
        assert!(m.has("balena_fleet_services"), "{t} has services");
    }
    let reads = app.sim.requests("/v7/image_install");
    let bytes =
        |own: &Samples| own.value("balena_exporter_background_bytes", &[("read", "services")]);
    let held = bytes(&parse(&app.get("/metrics").await.body));
    assert!(held > 0.0);
    for i in 1..=30 {
        std::fs::write(&file, yaml(i)).unwrap();
        assert_eq!(app.post("/-/reload").await.status, 200, "reload {i}");
        for t in ["one", "two", &format!("extra-{i}")] {
            let m = app.probe(&format!("target={t}")).await;
            assert_eq!(m.value("probe_success", &[]), 1.0);
            assert!(
                m.has("balena_fleet_services"),
                "{t} keeps its services after reload {i}"
            );
        }
    }
    assert_eq!(
        app.sim.requests("/v7/image_install"),
        reads,
        "no install listing after 30 reloads"
    );
    let own = parse(&app.get("/metrics").await.body);
    assert_eq!(bytes(&own), held, "snapshot bytes flat over 30 reloads");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// 20 fleet targets of one auth (the default `max_concurrency` 4), an install listing that
/// answers in 4 s, every target probed every 3 s for five rounds with a 2.5 s scrape timeout:
/// at least 95 % of the probes succeed (the background reads wait behind the probes, on a
/// budget of one slot, and their 4 s never count in the probes' estimate).
#[actix_rt::test]
async fn a_slow_install_listing_never_fails_the_probes() {
    let fleets: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    let sizes: Vec<(&str, usize)> = fleets.iter().map(|f| (f.as_str(), 3)).collect();
    let names: Vec<&str> = fleets.iter().map(String::as_str).collect();
    let app = spawn_with(world(&sizes), |url| {
        default_config(url, &names).replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 0s\n")
    })
    .await;
    app.sim.inject(FaultRule::always(
        "/v7/image_install",
        Fault::Delay(Duration::from_secs(4)),
    ));
    let scrape = [("X-Prometheus-Scrape-Timeout-Seconds", "2.5")];
    let (mut ok, mut all) = (0, 0);
    for round in 0..5 {
        let started = Instant::now();
        let paths: Vec<String> = names.iter().map(|t| format!("/probe?target={t}")).collect();
        let answers =
            futures_util::future::join_all(paths.iter().map(|p| app.get_with(p, &scrape))).await;
        for a in &answers {
            all += 1;
            if parse(&a.body).value("probe_success", &[]) == 1.0 {
                ok += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_millis(2600),
            "round {round}: every probe answered within its scrape timeout"
        );
        actix_rt::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    }
    eprintln!("a slow install listing: {ok} of {all} probes succeeded");
    assert!(ok * 100 >= all * 95, "{ok} of {all} probes succeeded");
    app.stop().await;
}
