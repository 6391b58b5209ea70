//! Soak benchmark: mixed probes with faults injected, for a fixed time, against a separate
//! exporter process; records its RSS and open file descriptors every 5 s. They must stay flat.
//!
//! `cargo build --release && cargo run --release --example soak -- [SECONDS]` (default 600).
//! Loopback only; the load loop is bounded by the duration and by a request budget.

use std::time::{Duration, Instant};

use balena_simulator::{Fault, FaultRule, FleetSpec, OrgSpec, Simulator, UserSpec, WorldSpec};

fn proc_stats(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
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
    let spec = WorldSpec {
        seed: 9,
        orgs: vec![OrgSpec {
            handle: "soak".into(),
            fleets: (0..6)
                .map(|i| FleetSpec::new(&format!("f{i}"), 200 * (i + 1)))
                .collect(),
        }],
        users: vec![UserSpec {
            username: "soak".into(),
            token: "soak-token".into(),
            orgs: vec!["soak".into()],
        }],
    };
    let sim = Simulator::start(&spec, "127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(format!("balena-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut yaml = format!("api:\n  url: {}\n  timeout: 3s\n  cache_ttl: 2s\nauths:\n  a:\n    token: soak-token\n  bad:\n    token: wrong\nmodules:\n  summary:\n    devices: false\ntargets:\n", sim.url());
    for i in 0..6 {
        yaml.push_str(&format!("  f{i}: {{fleet: soak/f{i}, auth: a}}\n"));
    }
    yaml.push_str("  org: {org: soak, auth: a, module: summary}\n  bad: {fleet: soak/f0, auth: bad}\n  gone: {fleet: soak/nope, auth: a}\n");
    let file = dir.join("config.yml");
    std::fs::write(&file, yaml).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/balena-exporter");
    let mut child = std::process::Command::new(&bin)
        .arg(format!("--config.file={}", file.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=error")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("build target/release/balena-exporter first");
    let base = format!("http://127.0.0.1:{port}");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    for _ in 0..100 {
        if client.get(format!("{base}/-/ready")).send().await.is_ok() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
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
            let (rss, fds) = proc_stats(child.id());
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
    let _ = child.kill();
    let _ = child.wait();
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
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
