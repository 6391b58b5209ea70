//! `/probe`: numbers equal the simulator's, failures are `probe_success 0`, bad requests 400.

use std::time::Duration;

use balena_simulator::{Fault, FaultRule, Row};
use serde_json::Value;

use crate::helpers::*;

const MIB: f64 = 1_048_576.0;

fn count(rows: &[Row], f: impl Fn(&Row) -> bool) -> f64 {
    rows.iter().filter(|r| f(r)).count() as f64
}

fn on_target(r: &Row) -> bool {
    let target = r["should_be_running__release"].get("__id");
    target.is_some() && r["is_running__release"].get("__id") == target
}

/// Every fleet series equals what the simulator generated, and device series carry base units.
#[actix_rt::test]
async fn fleet_probe_reports_the_simulators_numbers() {
    let app = spawn_app(&[("screens", 300)]).await;
    let m = app.probe("target=screens").await;
    let rows = app.sim.with_world(|w| w.devices_of("acme/screens"));
    let fleet = [("fleet", "acme/screens")];

    assert_eq!(m.value("probe_success", &[]), 1.0);
    assert_eq!(m.value("balena_fleet_devices", &fleet), 300.0);
    assert_eq!(
        m.value("balena_fleet_devices_online", &fleet),
        count(&rows, |r| r["is_online"] == true)
    );
    for status in [
        "configuring",
        "disconnected",
        "inactive",
        "operational",
        "post-provisioning",
        "reduced-functionality",
        "updating",
    ] {
        assert_eq!(
            m.value(
                "balena_fleet_devices_status",
                &[("fleet", "acme/screens"), ("status", status)]
            ),
            count(&rows, |r| r["overall_status"] == status),
            "status {status}"
        );
    }
    for state in ["online", "offline", "timeout", "unknown"] {
        assert_eq!(
            m.value(
                "balena_fleet_devices_heartbeat",
                &[("fleet", "acme/screens"), ("state", state)]
            ),
            count(&rows, |r| r["api_heartbeat_state"] == state),
            "heartbeat {state}"
        );
    }
    assert_eq!(
        m.value("balena_fleet_devices_undervolted", &fleet),
        count(&rows, |r| r["is_undervolted"] == true)
    );
    assert_eq!(
        m.value("balena_fleet_devices_on_target_release", &fleet),
        count(&rows, on_target)
    );
    let could_update = |r: &Row| {
        r["is_online"] == true
            && r["should_be_running__release"].get("__id").is_some()
            && !on_target(r)
    };
    assert_eq!(
        m.value("balena_fleet_devices_online_not_on_target_release", &fleet),
        count(&rows, could_update)
    );
    assert!(count(&rows, could_update) > 0.0);
    assert!(
        count(&rows, |r| !on_target(r) && r["is_online"] != true) > 0.0,
        "offline devices off target exist and are not counted"
    );
    // The generated mix really exercises the statuses (otherwise the checks above prove little).
    assert!(count(&rows, |r| r["overall_status"] == "disconnected") > 0.0);
    assert!(count(&rows, |r| r["overall_status"] == "updating") > 0.0);
    assert!(count(&rows, |r| !on_target(r)) > 0.0);
    assert!(
        count(&rows, |r| r["is_online"] == true
            && r["is_connected_to_vpn"] != true)
            > 0.0,
        "some devices are up but unreachable (online, VPN down)"
    );

    // Per-device series: one info per device; units converted; nulls give no series.
    assert_eq!(m.find("balena_device_info", &fleet).len(), 300);
    for r in &rows {
        let uuid = r["uuid"].as_str().unwrap();
        let d = [("device_uuid", uuid)];
        match r["memory_usage"].as_f64() {
            Some(mib) => assert_eq!(m.value("balena_device_memory_usage_bytes", &d), mib * MIB),
            None => assert!(
                m.find("balena_device_memory_usage_bytes", &d).is_empty(),
                "null memory_usage must give no series"
            ),
        }
        match r["cpu_usage"].as_f64() {
            Some(pct) => assert_eq!(m.value("balena_device_cpu_usage_ratio", &d), pct / 100.0),
            None => assert!(m.find("balena_device_cpu_usage_ratio", &d).is_empty()),
        }
        match r["overall_progress"].as_f64() {
            Some(pct) => assert_eq!(
                m.value("balena_device_update_progress_ratio", &d),
                pct / 100.0
            ),
            None => assert!(m.find("balena_device_update_progress_ratio", &d).is_empty()),
        }
        assert_eq!(
            m.value("balena_device_online", &d),
            if r["is_online"] == true { 1.0 } else { 0.0 }
        );
        assert_eq!(
            m.value("balena_device_vpn_connected", &d),
            if r["is_connected_to_vpn"] == true {
                1.0
            } else {
                0.0
            }
        );
        let status = r["overall_status"].as_str().unwrap();
        assert_eq!(
            m.value(
                "balena_device_status",
                &[("device_uuid", uuid), ("status", status)]
            ),
            1.0
        );
        assert_eq!(
            m.value("balena_device_on_target_release", &d),
            if on_target(r) { 1.0 } else { 0.0 }
        );
        assert_eq!(
            m.find(
                "balena_device_info",
                &[
                    ("device_uuid", uuid),
                    ("device_name", r["device_name"].as_str().unwrap())
                ]
            )
            .len(),
            1
        );
    }
    assert!(
        rows.iter().any(|r| r["memory_usage"].is_null()),
        "the world has null metrics to check"
    );
    app.stop().await;
}

/// The exporter on one fleet `acme/big` of 120 devices, listed in pages of 50.
async fn spawn_paged_fleet() -> TestApp {
    spawn_with(world(&[("big", 120)]), |url| {
        default_config(url, &["big"]).replace("  timeout: 5s\n", "  timeout: 5s\n  page_size: 50\n")
    })
    .await
}

/// All 120 devices of `acme/big` are in `m`, counted once.
fn assert_all_120(m: &Samples) {
    assert_eq!(
        m.value("balena_fleet_devices", &[("fleet", "acme/big")]),
        120.0
    );
    assert_eq!(m.find("balena_device_info", &[]).len(), 120);
}

/// A fleet larger than `api.page_size` is fetched in pages and counted once.
#[actix_rt::test]
async fn large_fleets_are_paged_and_counted_once() {
    let app = spawn_paged_fleet().await;
    let m = app.probe("target=big").await;
    assert_all_120(&m);
    assert_eq!(
        app.sim.device_listings(),
        4,
        "pages of 50, 50 and 20, and the empty page that ends the listing"
    );
    assert_eq!(
        m.value("balena_probe_api_requests", &[]),
        5.0,
        "fleet row + 4 pages"
    );
    app.stop().await;
}

/// A server that caps `$top` below `page_size` answers short pages that are not the last:
/// the listing goes on until an empty page, so nothing is undercounted.
#[actix_rt::test]
async fn a_server_cap_on_top_does_not_end_the_listing() {
    let app = spawn_paged_fleet().await;
    app.sim
        .state
        .top_cap
        .store(20, std::sync::atomic::Ordering::Relaxed);
    let m = app.probe("target=big").await;
    assert_eq!(m.value("probe_success", &[]), 1.0);
    assert_all_120(&m);
    assert_eq!(
        app.sim.device_listings(),
        7,
        "six capped pages of 20 and the empty one"
    );
    app.stop().await;
}

/// Devices created and deleted while a listing runs: keyset pages (`id gt <last>`) miss no
/// device that exists throughout and count none twice (`$skip` paging would skip as many
/// unseen devices as were deleted among the seen ones).
#[actix_rt::test]
async fn devices_changing_between_pages_are_neither_missed_nor_counted_twice() {
    use balena_simulator::{Fault, FaultRule};
    let app = spawn_paged_fleet().await;
    // Hold the second page back while the world changes.
    app.sim.inject(
        FaultRule::always(
            "/v7/device",
            Fault::Delay(std::time::Duration::from_millis(400)),
        )
        .when_query_contains(" gt ")
        .times(1),
    );
    let ids = app.sim.with_world(|w| w.device_ids("acme/big"));
    let uuid_of = |id: u64| {
        app.sim.with_world(|w| {
            w.row("device", id).unwrap()["uuid"]
                .as_str()
                .unwrap()
                .to_string()
        })
    };
    let all: Vec<String> = ids.iter().map(|id| uuid_of(*id)).collect();
    let probe = app.probe("target=big");
    let change = async {
        actix_rt::time::sleep(std::time::Duration::from_millis(150)).await;
        app.sim.with_world_mut(|w| {
            // Ten seen devices and five not yet seen are deleted; three are created.
            for id in ids[10..20].iter().chain(&ids[80..85]) {
                assert!(w.remove("device", *id));
            }
            let template = w.row("device", ids[0]).unwrap().clone();
            for n in 0..3u64 {
                let mut row = template.clone();
                let id = w.max_id("device") + 1;
                row.insert("id".into(), id.into());
                row.insert("uuid".into(), format!("{:032x}", 0xfeed_0000 + n).into());
                row.insert("device_name".into(), format!("new-{n}").into());
                w.insert("device", serde_json::Value::Object(row));
            }
        });
    };
    let (m, ()) = futures_util::future::join(probe, change).await;
    assert_eq!(m.value("probe_success", &[]), 1.0);
    let seen: Vec<String> = m
        .find("balena_device_info", &[])
        .iter()
        .map(|s| s.labels["device_uuid"].clone())
        .collect();
    let unique: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a device counted twice");
    let throughout: Vec<&String> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| !(10..20).contains(i) && !(80..85).contains(i))
        .map(|(_, u)| u)
        .collect();
    let missed: Vec<&&String> = throughout
        .iter()
        .filter(|u| !unique.contains(**u))
        .collect();
    assert!(
        missed.is_empty(),
        "missed {} devices: {missed:?}",
        missed.len()
    );
    // The first page (50) was read before the change: its 10 deleted devices are in it; the 5
    // deleted later are not; the 3 created (higher ids) are in the last page.
    assert_eq!(seen.len(), 50 + (70 - 5) + 3);
    assert_eq!(
        m.value("balena_fleet_devices", &[("fleet", "acme/big")]),
        seen.len() as f64
    );
    app.stop().await;
}

/// The device listing selects computed fields explicitly and quotes the slug per OData rules.
#[actix_rt::test]
async fn upstream_requests_select_fields_and_quote_the_slug() {
    let app = spawn_app(&[("screens", 3)]).await;
    app.probe("target=screens").await;
    let log = app.sim.state.log.lock().unwrap().clone();
    let fleet = log
        .iter()
        .find(|r| r.path == "/v7/application")
        .expect("fleet lookup");
    assert!(
        fleet
            .query
            .contains("$filter=slug%20eq%20%27acme%2Fscreens%27"),
        "{}",
        fleet.query
    );
    let dev = log
        .iter()
        .find(|r| r.path == "/v7/device")
        .expect("device listing");
    assert!(
        dev.query.contains("$select=") && dev.query.contains("overall_status"),
        "{}",
        dev.query
    );
    assert!(dev.query.contains("$orderby=id%20asc"), "{}", dev.query);
    assert!(
        log.iter().all(|r| r.caller == "ops" && r.status == 200),
        "{log:?}"
    );
    app.stop().await;
}

/// An unknown token reads as a guest, and the real API answers a guest's fleet lookup (it
/// expands the organization) with 401: unauthorized, with no whoami needed.
#[actix_rt::test]
async fn a_rejected_token_fails_the_probe_after_a_whoami_check() {
    let app = spawn_with(world(&[("screens", 5)]), |url| {
        default_config(url, &["screens"]).replace(TOKEN, "not-a-real-token")
    })
    .await;
    let m = app.probe("target=screens").await;
    assert_eq!(m.value("probe_success", &[]), 0.0);
    assert!(!m.has("balena_fleet_devices"));
    assert_eq!(app.sim.requests("/v7/application"), 1);
    assert_eq!(app.sim.device_listings(), 0);
    assert_eq!(app.sim.requests("/actor/v1/whoami"), 0);
    assert_eq!(app.probes_total("screens", "unauthorized").await, 1.0);
    app.stop().await;
}

/// A fleet that does not exist is a failed probe too, told apart from a bad token.
#[actix_rt::test]
async fn a_missing_fleet_fails_the_probe_with_reason_not_found() {
    let app = spawn_with(world(&[("screens", 5)]), |url| {
        default_config(url, &["screens"]).replace("fleet: acme/screens", "fleet: acme/gone")
    })
    .await;
    let m = app.probe("target=screens").await;
    assert_eq!(m.value("probe_success", &[]), 0.0);
    assert_eq!(app.probes_total("screens", "not_found").await, 1.0);
    app.stop().await;
}

/// Upstream faults give `probe_success 0` with HTTP 200, and a healthy target is unaffected.
#[actix_rt::test]
async fn upstream_faults_fail_only_the_affected_probe() {
    let app = spawn_app(&[("sick", 4), ("fine", 6)]).await;
    let sick_id = app
        .sim
        .with_world(|w| w.fleet("acme/sick").unwrap()["id"].as_u64().unwrap());
    let filter = format!("belongs_to__application eq {sick_id}&");
    let cases = [
        (Fault::Status(500), "api_error"),
        (Fault::Status(503), "api_error"),
        (Fault::Status(403), "forbidden"),
        (Fault::Html502, "api_error"),
        (Fault::MalformedJson, "decode"),
        (Fault::TruncatedJson, "decode"),
        (Fault::RateLimit(Some("3600".into())), "rate_limited"),
        (Fault::RateLimit(None), "rate_limited"),
    ];
    for (fault, reason) in cases {
        app.sim.clear_faults();
        app.sim
            .inject(FaultRule::always("/v7/device", fault.clone()).when_query_contains(&filter));
        let m = app.probe("target=sick").await;
        assert_eq!(m.value("probe_success", &[]), 0.0, "{fault:?}");
        let ok = app.probe("target=fine").await;
        assert_eq!(
            ok.value("probe_success", &[]),
            1.0,
            "healthy target during {fault:?}"
        );
        assert_eq!(
            ok.value("balena_fleet_devices", &[("fleet", "acme/fine")]),
            6.0
        );
        let metrics = parse(&app.get("/metrics").await.body);
        assert!(
            metrics.value(
                "balena_exporter_probes_total",
                &[("target", "sick"), ("result", reason)]
            ) >= 1.0,
            "{fault:?}"
        );
    }
    app.stop().await;
}

/// A 429 whose Retry-After fits in the deadline is retried and the probe succeeds; one that
/// does not fit fails the probe at once (and holds the auth: `limits.rs`).
#[actix_rt::test]
async fn a_short_retry_after_is_honoured() {
    let app = spawn_with(world(&[("screens", 5)]), |url| {
        default_config(url, &["screens"])
            .replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 0s\n")
    })
    .await;
    let deadline = [("X-Prometheus-Scrape-Timeout-Seconds", "3.5")];
    app.get_with("/probe?target=screens", &deadline).await;
    let before = app.sim.device_listings();
    app.sim
        .inject(FaultRule::always("/v7/device", Fault::RateLimit(Some("1".into()))).times(1));
    let m = parse(&app.get_with("/probe?target=screens", &deadline).await.body);
    assert_eq!(
        m.value("probe_success", &[]),
        1.0,
        "Retry-After: 1 fits in 3 s"
    );
    assert_eq!(app.sim.device_listings() - before, 3);
    assert_eq!(
        m.value("balena_probe_api_requests", &[]),
        3.0,
        "429, the retry and the end-of-listing page; the fleet row comes from the fleet-row cache"
    );
    app.sim
        .inject(FaultRule::always("/v7/device", Fault::RateLimit(Some("60".into()))).times(1));
    let started = std::time::Instant::now();
    let a = app.get_with("/probe?target=screens", &deadline).await;
    assert_eq!(
        parse(&a.body).value("probe_success", &[]),
        0.0,
        "Retry-After: 60 cannot fit in 3 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast instead of waiting"
    );
    app.stop().await;
}

/// An API slower than the scrape timeout fails the probe inside the deadline.
#[actix_rt::test]
async fn a_hanging_api_fails_the_probe_within_the_scrape_timeout() {
    let app = spawn_app(&[("screens", 5)]).await;
    app.sim.inject(FaultRule::always(
        "/v7/device",
        Fault::Delay(Duration::from_secs(20)),
    ));
    let started = std::time::Instant::now();
    let a = app
        .get_with(
            "/probe?target=screens",
            &[("X-Prometheus-Scrape-Timeout-Seconds", "2")],
        )
        .await;
    let m = parse(&a.body);
    assert_eq!(m.value("probe_success", &[]), 0.0);
    assert_eq!(m.value("probe_timeout_seconds", &[]), 1.5);
    // Not a speed assertion: the answer must simply come before the 20 s the API would take.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(app.probes_total("screens", "timeout").await, 1.0);
    app.stop().await;
}

/// Missing, repeated and unknown targets or modules are 400 with one line, and touch no API.
#[actix_rt::test]
async fn bad_probe_requests_are_400_with_one_line() {
    let app = spawn_app(&[("screens", 5)]).await;
    let cases = [
        ("/probe", "Target parameter is missing"),
        ("/probe?target=", "Target parameter is missing"),
        ("/probe?target=nope", "Unknown target \"nope\""),
        (
            "/probe?target=screens&target=screens",
            "given more than once",
        ),
        (
            "/probe?target=screens&module=nope",
            "Unknown module \"nope\"",
        ),
        ("/probe?target=screens&auth=other", "Unknown auth \"other\""),
        (
            "/probe?target=x%27%20or%201%20eq%201",
            "Unknown target \"x' or 1 eq 1\"",
        ),
        (
            "/probe?target=acme%2Fscreens",
            "Unknown target \"acme/screens\"",
        ),
    ];
    for (path, msg) in cases {
        let a = app.get(path).await;
        assert_eq!(a.status, 400, "{path}");
        assert!(a.body.contains(msg), "{path}: {}", a.body);
        assert_eq!(a.body.trim_end().lines().count(), 1, "{path}");
    }
    assert_eq!(
        app.sim.state.log.lock().unwrap().len(),
        0,
        "no upstream request for a bad probe request"
    );
    let bad_header = app
        .get_with(
            "/probe?target=screens",
            &[("X-Prometheus-Scrape-Timeout-Seconds", "soon")],
        )
        .await;
    assert_eq!(bad_header.status, 400);
    let metrics = parse(&app.get("/metrics").await.body);
    assert_eq!(
        metrics.value(
            "balena_exporter_probe_request_errors_total",
            &[("reason", "unknown_target")]
        ),
        3.0
    );
    app.stop().await;
}

/// Changes in the API show up on the next probe (no stale data without a cache).
#[actix_rt::test]
async fn the_next_probe_sees_devices_going_offline() {
    let app = spawn_with(world(&[("screens", 40)]), |url| {
        default_config(url, &["screens"])
            .replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 0s\n")
    })
    .await;
    let before = app.probe("target=screens").await;
    assert!(before.value("balena_fleet_devices_online", &[("fleet", "acme/screens")]) > 0.0);
    app.sim.with_world_mut(|w| {
        for id in w.device_ids("acme/screens") {
            let d = w.row_mut("device", id).unwrap();
            d.insert("is_online".into(), Value::Bool(false));
            d.insert("is_connected_to_vpn".into(), Value::Bool(false));
            d.insert("api_heartbeat_state".into(), "offline".into());
        }
    });
    let after = app.probe("target=screens").await;
    assert_eq!(
        after.value("balena_fleet_devices_online", &[("fleet", "acme/screens")]),
        0.0
    );
    app.stop().await;
}

/// A response past `api.max_response_bytes` fails the probe with reason `too_large`.
#[actix_rt::test]
async fn a_response_over_the_size_cap_fails_the_probe() {
    let app = spawn_with(world(&[("screens", 50)]), |url| {
        default_config(url, &["screens"]).replace(
            "  timeout: 5s\n",
            "  timeout: 5s\n  max_response_bytes: 4KiB\n",
        )
    })
    .await;
    let m = app.probe("target=screens").await;
    assert_eq!(m.value("probe_success", &[]), 0.0);
    assert_eq!(app.probes_total("screens", "too_large").await, 1.0);
    app.stop().await;
}

/// The series of an answer (not the per-request `probe_*` head), sorted; for a debug page,
/// those after "Metrics that would have been returned".
fn answer_series(body: &str) -> Vec<String> {
    let metrics = body
        .split_once("Metrics that would have been returned:\n")
        .map_or(body, |(_, m)| m);
    let mut v: Vec<String> = metrics
        .lines()
        .filter(|l| !l.contains("probe_"))
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// Every form of an answer carries the same series: per-device series kept compressed (the
/// default) or as values (`compact_cache`), data fetched for the probe, from the cache, or
/// shared with an identical probe in flight, answered gzip, zstd, identity or as the debug
/// page, whichever encoding the fetching probe asked for (the cached pieces are deflate or
/// zstd by the first, and re-encoded for the others).
#[actix_rt::test]
async fn every_answer_form_carries_the_same_series() {
    use balena_simulator::{Fault, FaultRule};
    let app = spawn_with(world(&[("screens", 700)]), |url| {
        default_config(url, &["screens"])
            + "modules:\n  default:\n    device_tags: [location]\n  compact:\n    device_tags: [location]\n    compact_cache: true\n"
            + "  zdefault:\n    device_tags: [location]\n  zcompact:\n    device_tags: [location]\n    compact_cache: true\n"
    })
    .await;
    let reference = answer_series(&app.get("/probe?target=screens").await.body);
    assert!(reference.len() > 700 * 10, "{} series", reference.len());
    /// An answer form: its name, its request headers, its query suffix.
    type Form<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let forms: [Form; 4] = [
        ("gzip", &[], ""),
        ("zstd", &[("Accept-Encoding", "zstd, gzip")], ""),
        ("identity", &[("Accept-Encoding", "identity")], ""),
        ("debug", &[], "&debug=true"),
    ];
    // Each module fetched by a gzip probe (deflate pieces) and, under another name, by a zstd
    // one (zstd pieces).
    for (module, by) in [
        ("default", 0),
        ("compact", 0),
        ("zdefault", 1),
        ("zcompact", 1),
    ] {
        // Shared: the fetching probe while the device listing takes 600 ms, the other forms
        // 100 ms later (the fetch is in flight by then: its fleet row is not delayed).
        app.sim.inject(
            FaultRule::always(
                "/v7/device",
                Fault::Delay(std::time::Duration::from_millis(600)),
            )
            .times(1),
        );
        let path = format!("/probe?target=screens&module={module}");
        let ask = |(_, headers, extra): Form<'static>| {
            let path = format!("{path}{extra}");
            let app = &app;
            async move { app.get_with(&path, headers).await }
        };
        let others = forms.iter().enumerate().filter(|(i, _)| *i != by);
        let later = async {
            actix_rt::time::sleep(std::time::Duration::from_millis(100)).await;
            futures_util::future::join_all(others.map(|(_, f)| ask(*f))).await
        };
        let (fetching, later) = tokio::join!(ask(forms[by]), later);
        let first = [(forms[by], fetching)].into_iter().chain(
            forms
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != by)
                .map(|(_, f)| *f)
                .zip(later),
        );
        for ((form, _, _), answer) in first {
            assert_eq!(answer.status, 200, "{module} {form}");
            // awc asks for gzip unless told; the debug page is compressed by the server.
            let encoding = match form {
                "zstd" => "zstd",
                "identity" => "",
                _ => "gzip",
            };
            assert_eq!(answer.content_encoding, encoding, "{module} {form}");
            assert_eq!(
                answer_series(&answer.body),
                reference,
                "{module} {form}, fetched or shared"
            );
            if form == "debug" {
                let kept = if by == 0 { "deflate" } else { "zstd" };
                let kept = format!(" bytes of {kept} pieces");
                assert!(answer.body.contains(&kept), "{module}: {}", answer.body);
            }
        }
        // Cached: the same forms again.
        for (form, headers, extra) in forms {
            let answer = app.get_with(&format!("{path}{extra}"), headers).await;
            assert_eq!(
                answer_series(&answer.body),
                reference,
                "{module} {form}, cached"
            );
            if form == "debug" {
                assert!(
                    answer.body.contains("Data: from the cache"),
                    "{}",
                    answer.body
                );
            }
        }
    }
    let shared = app
        .state
        .metrics
        .cache_hits
        .with_label_values(&["shared"])
        .get();
    assert!(shared > 0, "no answer was shared with a fetch in flight");
    app.stop().await;
}

/// A module with `compact_cache` keeps per-device values and renders them for every answer:
/// the same series as the default path, whether fetched or cached, gzip or not.
#[actix_rt::test]
async fn a_compact_cache_module_answers_the_same_series() {
    let app = spawn_with(world(&[("screens", 700)]), |url| {
        default_config(url, &["screens"])
            + "modules:\n  default:\n    device_tags: [location]\n  compact:\n    device_tags: [location]\n    compact_cache: true\n"
    })
    .await;
    let series = |body: &str| -> Vec<String> {
        let mut v: Vec<String> = body
            .lines()
            .filter(|l| !l.contains("probe_"))
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    let normal = app.get("/probe?target=screens").await;
    let fetched = app.get("/probe?target=screens&module=compact").await;
    let cached = app.get("/probe?target=screens&module=compact").await;
    let plain = app
        .get_with(
            "/probe?target=screens&module=compact",
            &[("Accept-Encoding", "identity")],
        )
        .await;
    assert_eq!(
        parse(&normal.body).find("balena_device_info", &[]).len(),
        700
    );
    assert!(series(&normal.body).len() > 700 * 10);
    for (what, answer) in [
        ("fetched", &fetched),
        ("cached", &cached),
        ("identity", &plain),
    ] {
        assert_eq!(answer.status, 200, "{what}");
        assert_eq!(series(&answer.body), series(&normal.body), "{what}");
    }
    assert_eq!(
        parse(&cached.body).value("balena_probe_api_requests", &[]),
        0.0
    );
    assert_eq!(
        app.sim.device_listings(),
        4,
        "one fetch (a page and the empty end page) per module"
    );
    app.stop().await;
}
