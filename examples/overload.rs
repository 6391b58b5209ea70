//! Overload: 1,000 probes of distinct targets at once against a slow API (every request takes
//! 2 s), one token capped at `max_concurrency: 4`, a 10 s scrape timeout. Capacity is 4 slots
//! × 10 s / 2 s = 20 requests, i.e. 6 probes of 3 requests (fleet row, device page, end page):
//! the exporter should finish about that many instead of starting every probe and finishing
//! none. Reports probes answered with success, upstream requests sent and not sent, and the
//! most requests the API saw at once.
//!
//! `cargo run --release --example overload -- [PROBES]` (default 1,000). Loopback only.

use std::time::{Duration, Instant};

use balena_exporter::config::{self, SharedConfig};
use balena_exporter::startup::{Application, Settings};
use balena_simulator::{Fault, FaultRule, FleetSpec, OrgSpec, Simulator, UserSpec, WorldSpec};

#[actix_rt::main]
async fn main() {
    if std::env::var("OVERLOAD_LOG").is_ok() {
        balena_exporter::telemetry::init(
            "info",
            balena_exporter::cli::LogFormat::Logfmt,
            std::io::stderr,
        );
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let spec = WorldSpec {
        seed: 3,
        orgs: vec![OrgSpec {
            handle: "acme".into(),
            fleets: (0..n)
                .map(|i| FleetSpec::new(&format!("f{i}"), 2))
                .collect(),
        }],
        users: vec![UserSpec {
            username: "ops".into(),
            token: "tok".into(),
            orgs: vec!["acme".into()],
        }],
    };
    let sim = Simulator::start(&spec, "127.0.0.1:0").expect("simulator");
    let delay_ms: u64 = std::env::var("OVERLOAD_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    sim.inject(FaultRule::always(
        "/v7/",
        Fault::Delay(Duration::from_millis(delay_ms)),
    ));
    let mut yaml = format!(
        "api:\n  url: {}\n  max_concurrency: 4\n  cache_ttl: 0s\nauths:\n  a:\n    token: tok\ntargets:\n",
        sim.url()
    );
    for i in 0..n {
        yaml.push_str(&format!("  t{i}: {{fleet: acme/f{i}, auth: a}}\n"));
    }
    let cfg = config::from_yaml_str(&yaml, "overload.yml").expect("config");
    let app = Application::build(Settings::new(SharedConfig::new(cfg, None), "127.0.0.1:0"))
        .expect("app");
    let url = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());

    // One connection per probe (awc's default pool of 100 would stagger the probes' starts).
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(n + 10))
        .timeout(Duration::from_secs(30))
        .finish();
    let started = Instant::now();
    let probes: Vec<_> = (0..n)
        .map(|i| {
            let req = client
                .get(format!("{url}/probe?target=t{i}"))
                .insert_header(("X-Prometheus-Scrape-Timeout-Seconds", "10"));
            async move {
                let t = Instant::now();
                let mut resp = req.send().await.ok()?;
                let body = resp.body().limit(1 << 24).await.ok()?;
                if std::env::var("OVERLOAD_TRACE").is_ok() {
                    eprintln!("{:.2}", t.elapsed().as_secs_f64());
                }
                Some(String::from_utf8_lossy(&body).contains("probe_success 1"))
            }
        })
        .collect();
    let results = futures_util::future::join_all(probes).await;
    let took = started.elapsed();
    let ok = results.iter().filter(|r| **r == Some(true)).count();
    let unanswered = results.iter().filter(|r| r.is_none()).count();
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .body()
        .limit(1 << 24)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&metrics);
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    println!(
        "{n} probes, API 2 s per request, cap 4, 10 s timeout: {ok} succeeded, {unanswered} unanswered, in {:.1}s; requests sent {}, not sent {}; at most {} in flight at the API",
        took.as_secs_f64(),
        sum("balena_exporter_upstream_requests_total"),
        sum("balena_exporter_upstream_requests_not_sent_total"),
        sim.state.max_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    );
    handle.stop(false).await;
    sim.stop().await;
}
