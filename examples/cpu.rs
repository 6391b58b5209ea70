//! CPU per probe, from the exporter process's own counters: one fleet of 10,000 devices on the
//! simulator, an exporter process with `cache_ttl: 0s`, and for each case one probe to warm
//! up (its background reads of services and host run then), then `PROBES` probes one after
//! the other; the process's user + system time (`process_cpu_seconds_total`) over them, divided by their
//! number. Cases: the default module answered with gzip (what Prometheus asks for) and
//! uncompressed, and the summary module with gzip. The simulator runs in this process, so
//! its CPU is not counted.
//!
//! `cargo build --release && cargo run --release --example cpu -- [DEVICES] [PROBES]`
//! (defaults 10000 and 20; `EXPORTER_BIN=path` measures another build). Loopback only.

use std::time::{Duration, Instant};

use balena_simulator::Simulator;

mod support;
use support::{world, Exporter};

/// The process's user + system CPU in seconds, as it reports it (`process_cpu_seconds_total`
/// on `/metrics`, from `/proc/self/stat`: steps of 10 ms).
async fn cpu_seconds(client: &awc::Client, base: &str) -> f64 {
    let mut resp = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    let body = resp.body().limit(1 << 24).await.expect("metrics body");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("process_cpu_seconds_total on /metrics")
}

/// One probe to its last byte, not inflated here; the answer's size.
async fn probe(client: &awc::Client, url: &str, gzip: bool) -> usize {
    let mut resp = client
        .get(url)
        .no_decompress()
        .insert_header(("Accept-Encoding", if gzip { "gzip" } else { "identity" }))
        .send()
        .await
        .expect("answer");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.body().limit(1 << 30).await.expect("body").len()
}

#[actix_rt::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let devices: usize = args.next().map_or(10_000, |a| a.parse().expect("DEVICES"));
    let probes: usize = args.next().map_or(20, |a| a.parse().expect("PROBES"));
    let sim = Simulator::start(&world("acme", &[("big", devices)], "tok"), "127.0.0.1:0")
        .expect("simulator");
    let yaml = format!(
        "api:\n  url: {}\n  timeout: 60s\n  cache_ttl: 0s\nauths:\n  a:\n    token: tok\n\
         modules:\n  summary:\n    devices: false\n\
         targets:\n  big: {{fleet: acme/big, auth: a}}\n",
        sim.url()
    );
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .finish();
    let bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/balena-exporter");
    let exporter = Exporter::start(&bin, &yaml, "warn", &client).await;
    println!("{devices} devices, {probes} probes a case, cache_ttl 0s");
    for (module, gzip) in [("default", true), ("default", false), ("summary", true)] {
        let url = format!("{}/probe?target=big&module={module}", exporter.base);
        probe(&client, &url, gzip).await;
        let (cpu0, t0) = (cpu_seconds(&client, &exporter.base).await, Instant::now());
        let mut bytes = 0;
        for _ in 0..probes {
            bytes = probe(&client, &url, gzip).await;
        }
        let wall = t0.elapsed();
        let cpu = cpu_seconds(&client, &exporter.base).await - cpu0;
        println!(
            "module {module:8} {:8}: CPU {:6.1} ms a probe, wall {:6.1} ms a probe, answer {bytes} bytes",
            if gzip { "gzip" } else { "identity" },
            cpu * 1000.0 / probes as f64,
            wall.as_secs_f64() * 1000.0 / probes as f64,
        );
    }
    drop(exporter);
    sim.stop().await;
}
