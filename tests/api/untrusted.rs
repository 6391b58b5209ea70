//! Answers the exporter must not trust, from a stub API: rows out of id order, one uuid on two
//! rows, a row or a string over its cap, a token echoed into a wrongly typed field. Each fails
//! the probe with its reason (never `probe_success 1` with a wrong count), quotes nothing of
//! the answer, and the next probe of a good target still succeeds.

use std::time::Duration;

use crate::helpers::*;
use crate::stub::{device_rows, Connections, StubApi};

const FLEET: &str = r#"{"d":[{"id":1,"app_name":"app","slug":"org/app","organization":[{"handle":"org"}],"is_for__device_type":[{"slug":"rpi"}],"should_be_running__release":[]}]}"#;
const UUID_A: &str = "0123456789abcdef0123456789abcdef";
const UUID_B: &str = "fedcba9876543210fedcba9876543210";

/// The fleet lookup, then `page` for the first device page and an empty page after it.
fn answer(head: &str, page: fn() -> String) -> String {
    if head.starts_with("GET /v7/application") {
        FLEET.into()
    } else if head.contains("%20gt%20") {
        r#"{"d":[]}"#.into()
    } else {
        page()
    }
}

fn reversed(head: &str) -> String {
    answer(head, || device_rows(&[(9, UUID_A), (5, UUID_B)]))
}

fn one_uuid_twice(head: &str) -> String {
    answer(head, || device_rows(&[(5, UUID_A), (9, UUID_A)]))
}

fn a_huge_name(head: &str) -> String {
    answer(head, || {
        device_rows(&[(5, UUID_A)]).replace("\"d5\"", &format!("\"{}\"", "n".repeat(20_000)))
    })
}

fn a_huge_row(head: &str) -> String {
    answer(head, || {
        let tags: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"tag_key":"k{i}","value":"{}"}}"#, "v".repeat(8_000)))
            .collect();
        device_rows(&[(5, UUID_A)]).replace(
            "\"is_undervolted\"",
            &format!("\"device_tag\":[{}],\"is_undervolted\"", tags.join(",")),
        )
    })
}

fn a_huge_fleet_name(head: &str) -> String {
    let fleet = answer(head, || device_rows(&[(5, UUID_A)]));
    fleet.replace(
        "\"app_name\":\"app\"",
        &format!("\"app_name\":\"{}\"", "a".repeat(20_000)),
    )
}

/// A proxy that echoes the Authorization header into a field that must be a number.
fn echoed_token(head: &str) -> String {
    answer(head, || {
        device_rows(&[(5, UUID_A)]).replace("\"id\":5", "\"id\":\"Bearer secret-tok-9c1e\"")
    })
}

/// Probes `t` (token `secret-tok-9c1e`) against a stub answering with `api`: the result, the
/// reason and the debug page.
async fn probe_stub(api: fn(&str) -> String) -> (f64, f64, String) {
    probe_stub_with(api, Connections::KeepAlive).await
}

async fn probe_stub_with(api: fn(&str) -> String, connections: Connections) -> (f64, f64, String) {
    let stub = StubApi::start(api, Duration::ZERO, connections);
    let url = stub.url.clone();
    let app = spawn_with(world(&[]), |_| {
        format!("api:\n  url: {url}\n  cache_ttl: 0s\nauths:\n  a:\n    token: secret-tok-9c1e\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n")
    })
    .await;
    let samples = app.probe("target=t").await;
    let debug = app.get("/probe?target=t&debug=true").await.body;
    let logs = app.get("/logs?id=1").await.body;
    let devices = samples
        .find("balena_fleet_devices", &[])
        .first()
        .map_or(-1.0, |s| s.value);
    let ok = samples.value("probe_success", &[]);
    app.stop().await;
    stub.stop();
    (ok, devices, format!("{debug}\n{logs}"))
}

#[actix_rt::test]
async fn rows_out_of_id_order_fail_the_probe() {
    let (ok, devices, debug) = probe_stub(reversed).await;
    assert_eq!(ok, 0.0, "{debug}");
    assert_eq!(
        devices, -1.0,
        "no fleet count from an untrusted listing: {debug}"
    );
    assert!(debug.contains("failure (inconsistent)"), "{debug}");
    assert!(
        debug.contains("rows out of id order (id 5 after id 9)"),
        "{debug}"
    );
}

#[actix_rt::test]
async fn one_uuid_on_two_rows_fails_the_probe() {
    let (ok, _, debug) = probe_stub(one_uuid_twice).await;
    assert_eq!(ok, 0.0, "{debug}");
    assert!(
        debug.contains("the rows of ids 5 and 9 have the same uuid"),
        "{debug}"
    );
    assert!(!debug.contains(UUID_A), "the uuid is not quoted: {debug}");
}

#[actix_rt::test]
async fn a_string_or_a_row_over_its_cap_fails_the_probe() {
    let (ok, _, debug) = probe_stub(a_huge_name).await;
    assert_eq!(ok, 0.0, "{debug}");
    assert!(debug.contains("failure (too_large)"), "{debug}");
    assert!(
        debug.contains("a string longer than 16384 bytes"),
        "{debug}"
    );
    assert!(!debug.contains(&"n".repeat(100)), "{debug}");
    let (ok, _, debug) = probe_stub(a_huge_row).await;
    assert_eq!(ok, 0.0, "{debug}");
    assert!(debug.contains("a row longer than 1048576 bytes"), "{debug}");
    // Fleet rows are held whole (lookups), and their strings become labels too.
    let (ok, _, debug) = probe_stub(a_huge_fleet_name).await;
    assert_eq!(ok, 0.0, "{debug}");
    assert!(
        debug.contains("fleet row 1: a string longer than 16384 bytes"),
        "{debug}"
    );
}

#[actix_rt::test]
async fn a_decode_error_never_quotes_the_answer() {
    let (ok, _, debug) = probe_stub(echoed_token).await;
    assert_eq!(ok, 0.0, "{debug}");
    assert!(debug.contains("failure (decode)"), "{debug}");
    assert!(debug.contains("invalid type: string"), "{debug}");
    for leak in ["secret-tok-9c1e", "Bearer", "tok-9c1e"] {
        assert!(!debug.contains(leak), "{leak} in {debug}");
    }
}

/// A 200 with neither Content-Length nor chunking, ended by closing the connection: the HTTP
/// client reads it as empty. The probe fails and says so; it never succeeds on missing data.
#[actix_rt::test]
async fn a_close_delimited_answer_fails_and_says_why() {
    let (ok, devices, debug) =
        probe_stub_with(crate::stub::one_device_fleet, Connections::CloseDelimited).await;
    assert_eq!(ok, 0.0, "{debug}");
    assert_eq!(devices, -1.0, "{debug}");
    assert!(debug.contains("failure (decode)"), "{debug}");
    assert!(
        debug.contains("ended by closing the connection, is read as empty"),
        "{debug}"
    );
}

/// Five devices with distinct uuids and one id: which row is the device? The listing fails,
/// it never counts one device.
fn one_id_five_rows(head: &str) -> String {
    answer(head, || {
        let uuids: Vec<String> = (0..5).map(|i| format!("{i:032x}")).collect();
        let rows: Vec<(u64, &str)> = uuids.iter().map(|u| (5, u.as_str())).collect();
        device_rows(&rows)
    })
}

fn a_row_without_id(head: &str) -> String {
    answer(head, || {
        device_rows(&[(5, UUID_A), (9, UUID_B)]).replace("\"id\":9,", "")
    })
}

#[actix_rt::test]
async fn one_id_on_differing_rows_or_a_row_without_id_fails_the_probe() {
    let (ok, devices, debug) = probe_stub(one_id_five_rows).await;
    assert_eq!(ok, 0.0, "{debug}");
    assert_eq!(devices, -1.0, "never one device out of five: {debug}");
    assert!(debug.contains("failure (inconsistent)"), "{debug}");
    assert!(
        debug.contains("the device listing cannot be trusted: two different rows of id 5"),
        "{debug}"
    );
    let (ok, devices, debug) = probe_stub(a_row_without_id).await;
    assert_eq!((ok, devices), (0.0, -1.0), "{debug}");
    assert!(
        debug.contains("the device listing cannot be trusted: a row without an id"),
        "{debug}"
    );
}

/// Image installs without an id: the services read fails `inconsistent` (services are never
/// undercounted as a success), the probe itself succeeds without services, and the next probe's
/// debug page and `/metrics` say why.
fn installs_without_id(head: &str) -> String {
    if head.starts_with("GET /v7/image_install") && !head.contains("%20gt%20") {
        r#"{"d":[{"device":{"__id":5},"installs__image":{"__id":7},"status":"Running","install_date":"2026-01-01T00:00:00Z"},{"device":{"__id":5},"installs__image":{"__id":8},"status":"Running","install_date":"2026-01-01T00:00:00Z"}]}"#.into()
    } else if head.starts_with("GET /v7/image?") {
        r#"{"d":[{"id":7,"is_a_build_of__service":[{"service_name":"main"}]},{"id":8,"is_a_build_of__service":[{"service_name":"db"}]}]}"#.into()
    } else {
        crate::stub::one_device_fleet(head)
    }
}

#[actix_rt::test]
async fn install_rows_without_id_fail_the_services_read_visibly() {
    let stub = StubApi::start(installs_without_id, Duration::ZERO, Connections::KeepAlive);
    let url = stub.url.clone();
    let app = spawn_with(world(&[]), |_| {
        format!("api:\n  url: {url}\n  cache_ttl: 0s\nauths:\n  a:\n    token: secret-tok-9c1e\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n")
    })
    .await;
    let first = app.probe("target=t").await;
    assert_eq!(first.value("probe_success", &[]), 1.0);
    assert_eq!(first.value("balena_fleet_devices", &[]), 1.0);
    assert!(
        !first.has("balena_fleet_services"),
        "no services from untrusted rows"
    );
    let debug = app.get("/probe?target=t&debug=true").await.body;
    assert!(
        debug.contains("services: the last read of fleet 1")
            && debug.contains(
                "failed: the image install listing cannot be trusted: a row without an id"
            ),
        "{debug}"
    );
    let own = parse(&app.get("/metrics").await.body);
    assert_eq!(
        own.value(
            "balena_exporter_background_reads_total",
            &[("read", "services"), ("result", "inconsistent")]
        ),
        1.0
    );
    app.stop().await;
    stub.stop();
}

/// A device listing that never ends (every page 50 new rows after the id asked for): all pages
/// of one listing together are bounded by `api.max_response_bytes`, so the probe fails
/// `too_large` at once instead of filling its time (and memory) with rows.
fn endless_devices(head: &str) -> String {
    if head.starts_with("GET /v7/application") {
        return FLEET.into();
    }
    let after = crate::stub::after_id(head);
    let uuids: Vec<String> = (after + 1..=after + 50)
        .map(|i| format!("{i:032x}"))
        .collect();
    let rows: Vec<(u64, &str)> = (after + 1..=after + 50)
        .zip(uuids.iter().map(String::as_str))
        .collect();
    device_rows(&rows)
}

#[actix_rt::test]
async fn an_endless_device_listing_is_bounded_by_max_response_bytes() {
    let stub = StubApi::start(endless_devices, Duration::ZERO, Connections::KeepAlive);
    let url = stub.url.clone();
    let app = spawn_with(world(&[]), |_| {
        format!("api:\n  url: {url}\n  cache_ttl: 0s\n  max_response_bytes: 256KiB\nauths:\n  a:\n    token: secret-tok-9c1e\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n")
    })
    .await;
    let started = std::time::Instant::now();
    let debug = app.get("/probe?target=t&debug=true").await.body;
    assert!(debug.contains("Result: failure (too_large)"), "{debug}");
    assert!(
        debug.contains("the device rows of one listing pass 262144 bytes in all"),
        "{debug}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed at once"
    );
    app.stop().await;
    stub.stop();
}
