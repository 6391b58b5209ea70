//! Soak benchmark: mixed probes with faults injected, for a fixed time, against a separate
//! exporter process; records its RSS and open file descriptors every 5 s. They must stay flat.
//!
//! `cargo build --release && cargo run --release --example soak -- [SECONDS]` (default 600).
//! Loopback only; the load loop is bounded by the duration and by a request budget.

use std::time::{Duration, Instant};

use balena_simulator::{Fault, FaultRule, Simulator};

mod support;
use support::{status_kib, world, Exporter};

fn proc_stats(pid: u32) -> (u64, usize) {
    let rss = status_kib(pid, "VmRSS:");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

#[actix_rt::main]
async fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let fleets: Vec<(String, usize)> = (0..6).map(|i| (format!("f{i}"), 200 * (i + 1))).collect();
    let fleets: Vec<(&str, usize)> = fleets.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let spec = world("soak", &fleets, "soak-token");
    let sim = Simulator::start(&spec, "127.0.0.1:0").unwrap();
    let mut yaml = format!("api:\n  url: {}\n  timeout: 3s\n  cache_ttl: 2s\nauths:\n  a:\n    token: soak-token\n  bad:\n    token: wrong\nmodules:\n  summary:\n    devices: false\ntargets:\n", sim.url());
    for i in 0..6 {
        yaml.push_str(&format!("  f{i}: {{fleet: soak/f{i}, auth: a}}\n"));
    }
    yaml.push_str("  org: {org: soak, auth: a, module: summary}\n  bad: {fleet: soak/f0, auth: bad}\n  gone: {fleet: soak/nope, auth: a}\n");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let exporter = Exporter::start(&yaml, "error", &client).await;
    let base = exporter.base.clone();
    // Faults come and go: each rule applies to the next few matching requests.
    let faults = [
        Fault::Status(500),
        Fault::RateLimit(Some("1".into())),
        Fault::MalformedJson,
        Fault::TruncatedJson,
        Fault::Reset,
        Fault::Delay(Duration::from_secs(4)),
        Fault::Html502,
    ];
    let targets = ["f0", "f1", "f2", "f3", "f4", "f5", "org", "bad", "gone"];
    let started = Instant::now();
    let deadline = Duration::from_secs(secs);
    let (mut requests, mut errors, mut round) = (0u64, 0u64, 0usize);
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    println!("time_s,rss_kib,open_fds,requests,http_errors");
    while started.elapsed() < deadline && requests < 5_000_000 {
        if started.elapsed() >= next_sample {
            let (rss, fds) = proc_stats(exporter.pid());
            println!(
                "{},{rss},{fds},{requests},{errors}",
                started.elapsed().as_secs()
            );
            samples.push((rss, fds));
            next_sample += Duration::from_secs(5);
        }
        sim.inject(FaultRule::always("/v7/", faults[round % faults.len()].clone()).times(2));
        let batch: Vec<String> = targets
            .iter()
            .map(|t| format!("{base}/probe?target={t}"))
            .collect();
        let results = futures_util::future::join_all(batch.iter().map(|u| {
            client
                .get(u.as_str())
                .insert_header(("X-Prometheus-Scrape-Timeout-Seconds", "3"))
                .send()
        }))
        .await;
        for r in results {
            requests += 1;
            match r {
                Ok(mut resp) if resp.status().is_success() => {
                    let _ = resp.body().limit(64 << 20).await;
                }
                _ => errors += 1,
            }
        }
        round += 1;
    }
    drop(exporter);
    sim.stop().await;
    let first = samples
        .iter()
        .skip(2)
        .take(3)
        .map(|s| s.0)
        .max()
        .unwrap_or(0);
    let last = samples.iter().rev().take(3).map(|s| s.0).max().unwrap_or(0);
    let fds: Vec<usize> = samples.iter().map(|s| s.1).collect();
    println!(
        "summary: {secs}s, {requests} probes, {errors} HTTP-level errors; RSS after warm-up {first} KiB, at the end {last} KiB; open fds min {} max {}",
        fds.iter().min().unwrap_or(&0),
        fds.iter().max().unwrap_or(&0)
    );
}
