//! The fault matrix: every way the balena API (or the path to it) can misbehave, injected by
//! the simulator on one fleet while a second fleet stays healthy. Each case asserts the probe
//! result, that a healthy target is unaffected in the same run, and that the process still
//! serves. docs/reliability.md lists the same cases; `UPDATE_DOCS=1 cargo test --test api
//! faults` regenerates its table from [`CASES`].

use std::time::Duration;

use balena_simulator::{Fault, FaultRule};
use serde_json::Value;

use crate::helpers::*;

/// How a case is made.
#[derive(Clone, Copy)]
enum Make {
    /// The simulator answers the sick fleet's device listing with this fault; the probe must
    /// fail with `reason`.
    Fault(fn() -> Fault, &'static str),
    /// Probing this target (of [`config`]) must fail with `reason`.
    Target(&'static str, &'static str),
    /// As `Fault`, probed through the sick fleet's target of an auth of its own (`limited`):
    /// the fault holds that auth's requests (Retry-After), which must not touch the others.
    HoldingFault(fn() -> Fault, &'static str),
    /// Data the exporter must survive, checked on one probe of the sick fleet after the
    /// simulator's rows were changed (see [`data_cases`]).
    Data,
}

/// One case of the matrix: its name, what is injected, what is expected (for
/// docs/reliability.md) and how it is made. The one table both the test and the doc read.
struct Case {
    name: &'static str,
    injected: &'static str,
    expected: &'static str,
    make: Make,
}

const fn case(
    name: &'static str,
    injected: &'static str,
    expected: &'static str,
    make: Make,
) -> Case {
    Case {
        name,
        injected,
        expected,
        make,
    }
}

const CASES: &[Case] = &[
    case(
        "status_401",
        "device listing answers 401",
        "probe_success 0, reason unauthorized",
        Make::Fault(|| Fault::Status(401), "unauthorized"),
    ),
    case(
        "status_403",
        "device listing answers 403",
        "probe_success 0, reason forbidden",
        Make::Fault(|| Fault::Status(403), "forbidden"),
    ),
    case(
        "status_404",
        "device listing answers 404 (empty body)",
        "probe_success 0, reason api_error",
        Make::Fault(|| Fault::Status(404), "api_error"),
    ),
    case(
        "status_429_retry_after_beyond_deadline",
        "429 with Retry-After: 3600",
        "probe_success 0 at once, reason rate_limited; that auth held for api.max_retry_after (30m), other auths untouched",
        Make::HoldingFault(|| Fault::RateLimit(Some("3600".into())), "rate_limited"),
    ),
    case(
        "status_429_without_retry_after",
        "429 with no Retry-After",
        "probe_success 0, reason rate_limited",
        Make::Fault(|| Fault::RateLimit(None), "rate_limited"),
    ),
    case(
        "status_500",
        "500 \"Server error\"",
        "probe_success 0, reason api_error",
        Make::Fault(|| Fault::Status(500), "api_error"),
    ),
    case(
        "status_503",
        "503",
        "probe_success 0, reason api_error",
        Make::Fault(|| Fault::Status(503), "api_error"),
    ),
    case(
        "html_502_from_a_gateway",
        "502 with an HTML page",
        "probe_success 0, reason api_error",
        Make::Fault(|| Fault::Html502, "api_error"),
    ),
    case(
        "hang_past_the_deadline",
        "no answer for 20 s, scrape timeout 2 s",
        "probe_success 0 within the deadline, reason timeout",
        Make::Fault(|| Fault::Delay(Duration::from_secs(20)), "timeout"),
    ),
    case(
        "slow_byte_by_byte_body",
        "200 whose body trickles one byte per 50 ms",
        "probe_success 0 within the deadline, reason timeout",
        Make::Fault(|| Fault::SlowBody(Duration::from_millis(50)), "timeout"),
    ),
    case(
        "connection_reset_mid_body",
        "200, half the body, then the connection drops",
        "probe_success 0, reason transport",
        Make::Fault(|| Fault::Reset, "transport"),
    ),
    case(
        "truncated_json",
        "200 with the JSON cut in half",
        "probe_success 0, reason decode",
        Make::Fault(|| Fault::TruncatedJson, "decode"),
    ),
    case(
        "malformed_json",
        "200 with a body that is not JSON",
        "probe_success 0, reason decode",
        Make::Fault(|| Fault::MalformedJson, "decode"),
    ),
    case(
        "body_over_the_size_cap",
        "a 400-device answer over max_response_bytes (64 KiB)",
        "probe_success 0, reason too_large",
        Make::Target("big", "too_large"),
    ),
    case(
        "guest_token_on_a_private_fleet",
        "an unknown token: the fleet lookup answers 401 (as open-balena-api answers a guest)",
        "probe_success 0, reason unauthorized",
        Make::Target("guest", "unauthorized"),
    ),
    case(
        "valid_token_missing_fleet",
        "a fleet that does not exist: empty lookup, whoami 200",
        "probe_success 0, reason not_found",
        Make::Target("gone", "not_found"),
    ),
    case(
        "unknown_enum_values",
        "overall_status \"Frozen!\" and api_heartbeat_state \"hibernating\"",
        "success; values kept sanitised: status=\"frozen_\", state=\"hibernating\"",
        Make::Data,
    ),
    case(
        "every_nullable_field_null",
        "a device with every nullable field null",
        "success; that device has info/status/heartbeat but no value series",
        Make::Data,
    ),
    case(
        "duplicate_device_rows",
        "every device row sent twice",
        "success; each device counted and written once",
        Make::Data,
    ),
    case(
        "quotes_backslashes_newlines_in_names_and_tags",
        "device name and tag value with \", \\, newline and %41-style escapes",
        "success; labels escaped and read back unchanged",
        Make::Data,
    ),
];

/// The failures of a run, by case: every case runs, and the test reports them all at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, case: &str, what: impl std::fmt::Display) {
        if !ok {
            self.0.push(format!("{case}: {what}"));
        }
    }
}

fn config(url: &str) -> String {
    format!(
        r#"
api:
  url: {url}
  timeout: 5s
  cache_ttl: 0s
  max_response_bytes: 64KiB
auths:
  good:
    token: {TOKEN}
  guest:
    token: unknown-token
  limited:
    token: {TOKEN}
modules:
  default:
    device_tags: [location]
targets:
  sick: {{fleet: acme/sick, auth: good}}
  fine: {{fleet: acme/fine, auth: good}}
  big: {{fleet: acme/big, auth: good}}
  guest: {{fleet: acme/sick, auth: guest}}
  gone: {{fleet: acme/gone, auth: good}}
  limited: {{fleet: acme/sick, auth: limited}}
"#
    )
}

async fn result_of(app: &TestApp, target: &str, timeout: &str) -> (f64, String, Samples) {
    let a = app
        .get_with(
            &format!("/probe?target={target}&debug=true"),
            &[("X-Prometheus-Scrape-Timeout-Seconds", timeout)],
        )
        .await;
    let reason = a
        .body
        .lines()
        .find_map(|l| l.strip_prefix("Result: "))
        .unwrap_or("")
        .to_string();
    let metrics = parse(
        a.body
            .split("Metrics that would have been returned:\n")
            .nth(1)
            .unwrap_or(""),
    );
    (metrics.value("probe_success", &[]), reason, metrics)
}

/// Every case of the matrix, in one run with a healthy neighbour. Every case runs; the
/// failures of all of them are reported together.
#[actix_rt::test]
async fn the_fault_matrix() {
    let app = spawn_with(world(&[("sick", 5), ("fine", 6), ("big", 400)]), config).await;
    let sick_id = app
        .sim
        .with_world(|w| w.fleet("acme/sick").unwrap()["id"].as_u64().unwrap());
    let only_sick = format!("belongs_to__application eq {sick_id}&");
    let mut f = Failures::default();
    for c in CASES {
        let (target, timeout, reason) = match c.make {
            Make::Fault(fault, reason) => {
                app.sim.clear_faults();
                app.sim.inject(
                    FaultRule::always("/v7/device", fault()).when_query_contains(&only_sick),
                );
                ("sick", "2", reason)
            }
            Make::HoldingFault(fault, reason) => {
                app.sim.clear_faults();
                app.sim.inject(
                    FaultRule::always("/v7/device", fault()).when_query_contains(&only_sick),
                );
                ("limited", "2", reason)
            }
            Make::Target(target, reason) => {
                app.sim.clear_faults();
                (target, "5", reason)
            }
            Make::Data => continue,
        };
        let started = std::time::Instant::now();
        let (ok, result, _) = result_of(&app, target, timeout).await;
        let took = started.elapsed();
        f.check(ok == 0.0, c.name, format!("probe_success {ok}"));
        f.check(
            result.starts_with(&format!("failure ({reason})")),
            c.name,
            format!("result {result:?}, expected reason {reason}"),
        );
        f.check(
            took < Duration::from_secs(timeout.parse().unwrap()),
            c.name,
            format!("answered after {took:?}, beyond the scrape timeout"),
        );
        let (fine, _, m) = result_of(&app, "fine", timeout).await;
        f.check(
            fine == 1.0 && m.value("balena_fleet_devices", &[("fleet", "acme/fine")]) == 6.0,
            c.name,
            "the healthy target was affected",
        );
        f.check(
            app.get("/-/healthy").await.status == 200,
            c.name,
            "the process stopped serving",
        );
    }
    app.sim.clear_faults();
    data_cases(&app, &only_sick, &mut f).await;
    app.stop().await;
    assert!(
        f.0.is_empty(),
        "{} failing check(s):\n{}",
        f.0.len(),
        f.0.join("\n")
    );
}

/// The [`Make::Data`] cases: rows of the sick fleet changed in the simulator, one probe.
async fn data_cases(app: &TestApp, only_sick: &str, f: &mut Failures) {
    let data: Vec<&str> = CASES
        .iter()
        .filter(|c| matches!(c.make, Make::Data))
        .map(|c| c.name)
        .collect();
    assert_eq!(
        data,
        [
            "unknown_enum_values",
            "every_nullable_field_null",
            "duplicate_device_rows",
            "quotes_backslashes_newlines_in_names_and_tags"
        ],
        "every data case of CASES is checked below"
    );
    let ids = app.sim.with_world(|w| w.device_ids("acme/sick"));
    let uuid = |i: usize| {
        app.sim.with_world(|w| {
            w.row("device", ids[i]).unwrap()["uuid"]
                .as_str()
                .unwrap()
                .to_string()
        })
    };
    app.sim.with_world_mut(|w| {
        let d = w.row_mut("device", ids[0]).unwrap();
        d.insert("test_overall_status".into(), "Frozen!".into());
        d.insert("api_heartbeat_state".into(), "hibernating".into());
        let d = w.row_mut("device", ids[1]).unwrap();
        for k in [
            "device_name",
            "os_version",
            "os_variant",
            "supervisor_version",
            "cpu_usage",
            "cpu_temp",
            "memory_usage",
            "memory_total",
            "storage_usage",
            "storage_total",
            "last_connectivity_event",
            "is_running__release",
            "is_pinned_on__release",
            "provisioning_progress",
            "download_progress",
        ] {
            d.insert(k.into(), Value::Null);
        }
        let d = w.row_mut("device", ids[2]).unwrap();
        d.insert("device_name".into(), "say \"hi\" \\o/\nline2 %41".into());
    });
    let weird_tag = "back\\slash \"quoted\"\nnext %2F";
    app.sim
        .with_world_mut(|w| w.set_tag(ids[2], "location", weird_tag));
    let (ok, why, m) = result_of(app, "sick", "5").await;
    f.check(
        ok == 1.0,
        "data cases",
        format!("probe_success {ok}: {why}"),
    );

    let case = "unknown_enum_values";
    let u0 = uuid(0);
    f.check(
        m.value(
            "balena_device_status",
            &[("device_uuid", &u0), ("status", "frozen_")],
        ) == 1.0,
        case,
        "status not kept as frozen_",
    );
    f.check(
        m.value(
            "balena_device_heartbeat",
            &[("device_uuid", &u0), ("state", "hibernating")],
        ) == 1.0,
        case,
        "state not kept as hibernating",
    );
    f.check(
        m.value(
            "balena_fleet_devices_status",
            &[("fleet", "acme/sick"), ("status", "frozen_")],
        ) == 1.0,
        case,
        "fleet count of frozen_ is not 1",
    );

    let case = "every_nullable_field_null";
    let u1 = uuid(1);
    let nulls = [("device_uuid", u1.as_str())];
    f.check(
        m.find("balena_device_info", &nulls).len() == 1,
        case,
        "no info series",
    );
    for absent in [
        "balena_device_cpu_usage_ratio",
        "balena_device_memory_usage_bytes",
        "balena_device_storage_total_bytes",
        "balena_device_last_connectivity_timestamp_seconds",
        "balena_device_update_progress_ratio",
        "balena_device_cpu_temperature_celsius",
    ] {
        f.check(
            m.find(absent, &nulls).is_empty(),
            case,
            format!("{absent} for a null field"),
        );
    }

    let case = "quotes_backslashes_newlines_in_names_and_tags";
    let info = m.find("balena_device_info", &[("device_uuid", &uuid(2))]);
    f.check(
        info.first().is_some_and(|i| {
            i.labels["device_name"] == "say \"hi\" \\o/\nline2 %41"
                && i.labels["tag_location"] == weird_tag
        }),
        case,
        "labels not read back unchanged",
    );

    let case = "duplicate_device_rows";
    app.sim.inject(
        FaultRule::always("/v7/device", Fault::DuplicateRows).when_query_contains(only_sick),
    );
    let (ok, _, m) = result_of(app, "sick", "5").await;
    f.check(
        ok == 1.0
            && m.value("balena_fleet_devices", &[("fleet", "acme/sick")]) == 5.0
            && m.find("balena_device_info", &[("fleet", "acme/sick")])
                .len()
                == 5,
        case,
        "devices not counted and written once",
    );
    app.sim.clear_faults();
}

/// docs/reliability.md carries the matrix generated from [`CASES`].
#[test]
fn reliability_doc_lists_the_fault_matrix() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reliability.md");
    let mut table = String::from("| case (test) | injected | expected |\n|---|---|---|\n");
    for c in CASES {
        table.push_str(&format!(
            "| `{}` | {} | {} |\n",
            c.name, c.injected, c.expected
        ));
    }
    let doc = std::fs::read_to_string(path).unwrap_or_default();
    let (begin, end) = ("<!-- fault-matrix:begin -->\n", "<!-- fault-matrix:end -->");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let (head, rest) = doc.split_once(begin).expect("begin marker");
        let (_, tail) = rest.split_once(end).expect("end marker");
        std::fs::write(path, format!("{head}{begin}{table}{end}{tail}")).unwrap();
        return;
    }
    assert!(doc.contains(&format!("{begin}{table}{end}")), "docs/reliability.md is out of date: run UPDATE_DOCS=1 cargo test --test api reliability_doc");
}

/// An API that closes every connection after its answer, without saying so (HTTP/1.0 servers,
/// proxies with short keep-alive): the exporter's next request on the pooled connection finds
/// it closed before any answer, and retries once on a new one. Every probe succeeds.
#[actix_rt::test]
async fn a_connection_closed_by_the_api_is_retried_once() {
    use crate::stub::{one_device_fleet, Connections, StubApi};
    let stub = StubApi::start(one_device_fleet, Duration::ZERO, Connections::CloseAfterOne);
    let url = stub.url.clone();
    let app = spawn_with(world(&[]), |_| {
        format!(
            "api:\n  url: {url}\n  cache_ttl: 0s\n  fleet_cache_ttl: 0s\nauths:\n  a:\n    token: tok\nmodules:\n  summary:\n    devices: false\n    services: false\n    host: false\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n    module: summary\n"
        )
    })
    .await;
    let mut retried = 0;
    for i in 0..5 {
        let answer = app.get("/probe?target=t&debug=true").await;
        assert!(
            answer.body.contains("probe_success 1"),
            "probe {i}: {}",
            answer.body
        );
        retried += answer
            .body
            .matches("the connection closed before an answer: retrying once")
            .count();
    }
    assert!(
        retried > 0,
        "no probe met a closed connection: the test proves nothing"
    );
    assert_eq!(stub.answered(), 15, "3 answered requests per probe");
    stub.stop();
    app.stop().await;
}

/// An API that answers 429 with `Retry-After: 0` again and again: the exporter retries as
/// asked, gives up after 10 in a row, and says so (not "exceeds the time left").
#[actix_rt::test]
async fn retry_after_zero_forever_gives_up_and_says_why() {
    let app = spawn_app(&[("shop", 3)]).await;
    app.sim.inject(FaultRule::always(
        "/v7/device",
        Fault::RateLimit(Some("0".into())),
    ));
    let debug = app.get("/probe?target=shop&debug=true").await.body;
    assert!(debug.contains("failure (rate_limited)"), "{debug}");
    assert!(
        debug.contains("rate limited (HTTP 429) 10 times in a row, each retried after its Retry-After; gave up"),
        "{debug}"
    );
    assert!(!debug.contains("exceeds the time left"), "{debug}");
    app.stop().await;
}
