//! The per-auth upstream cap as the API sees it: it never wedges after a slow spell, and it
//! holds at the deadline against an API that keeps working on abandoned requests.

use std::time::Duration;

use balena_simulator::{Fault, FaultRule};

use crate::helpers::*;
use crate::stub::{one_device_fleet, Connections, StubApi};

/// The sequence that once locked an auth out until a restart: the API slow for six probes
/// (each request takes about half of the probe's time, so the auth's estimate grows past what
/// a probe allows), then fast again. The next probe succeeds.
#[actix_rt::test]
async fn an_auth_recovers_at_once_after_a_slow_spell() {
    let app = spawn_with(world(&[("shop", 3)]), |url| {
        format!(
            "api:\n  url: {url}\n  timeout: 5s\n  cache_ttl: 0s\nauths:\n  acme:\n    token: {TOKEN}\ntargets:\n  shop:\n    fleet: acme/shop\n    auth: acme\n"
        )
    })
    .await;
    let scrape = [("X-Prometheus-Scrape-Timeout-Seconds", "2")];
    app.sim.inject(FaultRule::always(
        "/v7",
        Fault::Delay(Duration::from_millis(800)),
    ));
    for _ in 0..6 {
        app.get_with("/probe?target=shop", &scrape).await;
    }
    app.sim.clear_faults();
    // The spell's last abandoned request is still the API's for up to 0.8 s: it holds its
    // slot until answered, and its time refreshes the estimate. Scrapes come seconds apart.
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let answer = app.get_with("/probe?target=shop&debug=true", &scrape).await;
        assert!(
            answer.body.contains("probe_success 1"),
            "probe {i} after the slow spell: {}",
            answer.body
        );
    }
    app.stop().await;
}

/// 30 distinct probes of one auth with a 2 s scrape timeout, against an API that takes 1.5 s
/// per request and finishes every request it got even when the exporter has given up on it:
/// with `max_concurrency: 2`, the API never works on more than 2 requests of the auth.
#[actix_rt::test]
async fn the_cap_holds_at_the_deadline_against_an_api_that_works_on() {
    let stub = StubApi::start(
        one_device_fleet,
        Duration::from_millis(1500),
        Connections::KeepAlive,
    );
    let url = stub.url.clone();
    let app = spawn_with(world(&[]), |_| {
        let mut yaml = format!(
            "api:\n  url: {url}\n  cache_ttl: 0s\n  fleet_cache_ttl: 0s\n  max_concurrency: 2\nauths:\n  a:\n    token: tok\ntargets:\n"
        );
        for i in 0..30 {
            yaml.push_str(&format!("  t{i}:\n    fleet: org/app\n    auth: a\n"));
        }
        yaml
    })
    .await;
    let scrape = [("X-Prometheus-Scrape-Timeout-Seconds", "2")];
    let probes = (0..30).map(|i| {
        let app = &app;
        async move {
            app.get_with(&format!("/probe?target=t{i}"), &scrape)
                .await
                .status
        }
    });
    let statuses = futures_util::future::join_all(probes).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    stub.idle(Duration::from_secs(10)).await;
    assert!(
        stub.answered() > 0,
        "the API saw no request: the test proves nothing"
    );
    assert!(
        stub.most_working() <= 2,
        "the API worked on {} requests of the auth at once (cap 2)",
        stub.most_working()
    );
    app.stop().await;
    stub.stop();
}

/// 1,000 distinct targets (one cache key each) of one auth: the results held never pass
/// `api.cache_max_bytes` (the oldest go first, the newest stays), and once every result has
/// expired the sweep drops them all with no probe coming.
#[actix_rt::test]
async fn the_cache_stays_under_its_bound_and_empties_after_expiry() {
    let bound = 16 * 1024;
    let app = spawn_with(world(&[("shop", 10)]), |url| {
        let mut yaml = format!(
            "api:\n  url: {url}\n  cache_ttl: 2s\n  cache_max_bytes: {bound}\nauths:\n  acme:\n    token: {TOKEN}\ntargets:\n"
        );
        for i in 0..1000 {
            yaml.push_str(&format!("  t{i}:\n    fleet: acme/shop\n    auth: acme\n"));
        }
        yaml
    })
    .await;
    let mut most = 0.0f64;
    for batch in (0..1000).collect::<Vec<_>>().chunks(50) {
        let probes = batch
            .iter()
            .map(|i| app.probe_owned(format!("target=t{i}")));
        for samples in futures_util::future::join_all(probes).await {
            assert_eq!(samples.value("probe_success", &[]), 1.0);
        }
        let own = parse(&app.get("/metrics").await.body);
        let held = own.value("balena_exporter_cache_bytes", &[]);
        most = most.max(held);
        assert!(held <= bound as f64, "{held} bytes held, bound {bound}");
    }
    assert!(
        most > bound as f64 / 2.0,
        "the bound was never approached: {most}"
    );
    let newest = app.get("/probe?target=t999&debug=true").await.body;
    assert!(
        newest.contains("from the cache"),
        "the newest result stays: {newest}"
    );
    actix_rt::time::sleep(Duration::from_millis(3500)).await;
    let own = parse(&app.get("/metrics").await.body);
    assert_eq!(own.value("balena_exporter_cache_entries", &[]), 0.0);
    assert_eq!(own.value("balena_exporter_cache_bytes", &[]), 0.0);
    app.stop().await;
}

/// A 503 (or 429) with `Retry-After` holds every request of that auth — probes, discovery and
/// the background services read — until it passes, capped by `api.max_retry_after`: a probe
/// meanwhile answers at once with `probe_success 0`, reason `rate_limited`, no request sent,
/// and its debug page says until when; `/metrics` shows the hold. Another auth over the same
/// fleets is untouched. The simulator counts the requests.
#[actix_rt::test]
async fn retry_after_holds_one_auth_until_it_passes() {
    let app = spawn_with(world(&[("shop", 3), ("depot", 2)]), |url| {
        format!(
            "api:\n  url: {url}\n  timeout: 5s\n  cache_ttl: 0s\n  fleet_cache_ttl: 0s\n  max_retry_after: 3s\nauths:\n  held:\n    token: {TOKEN}\n  other:\n    token: {TOKEN}\ntargets:\n  shop: {{fleet: acme/shop, auth: held}}\n  org: {{org: acme, auth: held}}\n  shop-other: {{fleet: acme/shop, auth: other}}\n"
        )
    })
    .await;
    // Services read first (so a hold cannot be mistaken for a missing snapshot).
    assert_eq!(
        app.probe("target=shop").await.value("probe_success", &[]),
        1.0
    );
    app.sim
        .inject(FaultRule::always("/v7/device", Fault::Unavailable(Some("3600".into()))).times(1));
    let first = app.get("/probe?target=shop&debug=true").await.body;
    assert!(first.contains("probe_success 0"), "{first}");
    assert!(
        first.contains("HTTP 503 with Retry-After: every request of auth held held for 3s (asked 3600s; api.max_retry_after)"),
        "{first}"
    );
    let sent = app.sim.requests("/v7");
    let started = std::time::Instant::now();
    for target in ["shop", "org"] {
        let debug = app
            .get(&format!("/probe?target={target}&debug=true"))
            .await
            .body;
        assert!(debug.contains("Result: failure (rate_limited)"), "{debug}");
        assert!(
            debug.contains("its requests are held until 20") && debug.contains("so none was sent"),
            "the debug page says until when: {debug}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
    // Discovery of the org target under the held auth sends nothing either.
    let sd = app.get("/sd").await;
    assert_eq!(sd.status, 200);
    assert_eq!(app.sim.requests("/v7"), sent, "no request of the held auth");
    // The other auth reads the same fleet meanwhile.
    let other = app.probe("target=shop-other").await;
    assert_eq!(other.value("probe_success", &[]), 1.0);
    assert!(app.sim.requests("/v7") > sent, "the other auth is not held");
    let own = parse(&app.get("/metrics").await.body);
    let left = own.value("balena_exporter_api_hold_seconds", &[("auth", "held")]);
    assert!(left > 0.0 && left <= 3.0, "{left}");
    assert!(own
        .find("balena_exporter_api_hold_seconds", &[("auth", "other")])
        .is_empty());
    let not_sent: f64 = own
        .find(
            "balena_exporter_upstream_requests_not_sent_total",
            &[("auth", "held")],
        )
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(not_sent >= 2.0, "{not_sent}");
    // Once it passes, the auth asks again.
    actix_rt::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        app.probe("target=shop").await.value("probe_success", &[]),
        1.0
    );
    let own = parse(&app.get("/metrics").await.body);
    assert!(!own.has("balena_exporter_api_hold_seconds"), "no hold left");
    app.stop().await;
}
