//! Memory of the probe cache: 1,000 distinct targets (one cache key each) of a 2,000-device
//! fleet, probed once each against a separate exporter process with `cache_ttl: 20s` and the
//! given `api.cache_max_bytes`; reports the exporter's RSS and `balena_exporter_cache_bytes`
//! after the probes, then again once every result has expired (the sweep drops them within a
//! second and hands the memory back).
//!
//! `cargo build --release && cargo run --release --example cache_memory -- [BOUND...]`
//! (default `64MiB 256MiB`, one exporter each). Loopback only; about a minute per bound.

use std::time::{Duration, Instant};

use balena_simulator::Simulator;

mod support;
use support::{status_kib, world, Exporter};

const TARGETS: usize = 1000;
const TTL_SECONDS: u64 = 20;

/// One value of the exporter's own metrics.
async fn own_metric(client: &awc::Client, base: &str, name: &str) -> f64 {
    let Ok(mut resp) = client.get(format!("{base}/metrics")).send().await else {
        return f64::NAN;
    };
    let body = resp.body().limit(1 << 24).await.unwrap_or_default();
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn run(sim_url: &str, bound: &str) {
    let mut yaml = format!(
        "api:\n  url: {sim_url}\n  cache_ttl: {TTL_SECONDS}s\n  cache_max_bytes: {bound}\nauths:\n  a:\n    token: tok\ntargets:\n"
    );
    for i in 0..TARGETS {
        yaml.push_str(&format!("  t{i}: {{fleet: acme/big, auth: a}}\n"));
    }
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .finish();
    let exporter = Exporter::start(&yaml, "warn", &client).await;
    let (base, pid) = (exporter.base.clone(), exporter.pid());
    let started = Instant::now();
    let targets: Vec<usize> = (0..TARGETS).collect();
    for batch in targets.chunks(8) {
        let probes = batch.iter().map(|i| {
            let req = client.get(format!("{base}/probe?target=t{i}"));
            async move {
                if let Ok(mut resp) = req.send().await {
                    let _ = resp.body().limit(1 << 30).await;
                }
            }
        });
        futures_util::future::join_all(probes).await;
    }
    let probed = started.elapsed();
    println!(
        "cache_max_bytes {bound}: {TARGETS} targets probed in {:.1}s; cache {:.0} MiB in {} entries; exporter RSS {} MiB (peak {} MiB)",
        probed.as_secs_f64(),
        own_metric(&client, &base, "balena_exporter_cache_bytes").await / 1048576.0,
        own_metric(&client, &base, "balena_exporter_cache_entries").await,
        status_kib(pid, "VmRSS:") / 1024,
        status_kib(pid, "VmHWM:") / 1024,
    );
    actix_rt::time::sleep(Duration::from_secs(TTL_SECONDS + 3)).await;
    println!(
        "cache_max_bytes {bound}: {TTL_SECONDS}s later, every result expired: cache {:.0} MiB in {} entries; exporter RSS {} MiB",
        own_metric(&client, &base, "balena_exporter_cache_bytes").await / 1048576.0,
        own_metric(&client, &base, "balena_exporter_cache_entries").await,
        status_kib(pid, "VmRSS:") / 1024,
    );
}

#[actix_rt::main]
async fn main() {
    let bounds: Vec<String> = std::env::args().skip(1).collect();
    let bounds = if bounds.is_empty() {
        vec!["64MiB".to_string(), "256MiB".to_string()]
    } else {
        bounds
    };
    let sim = Simulator::start(&world("acme", &[("big", 2_000)], "tok"), "127.0.0.1:0")
        .expect("simulator");
    for bound in &bounds {
        run(&sim.url(), bound).await;
    }
    sim.stop().await;
}
