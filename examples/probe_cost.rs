//! What a probe costs the exporter process: its peak RSS and its CPU, from the process's own
//! counters. The simulator serves three fleets of 10,000 devices; the exporter (a process of
//! its own, `cache_ttl: 0s`) is probed
//!
//! 1. for memory: the three targets one after the other, three times (the first probes also
//!    start the background reads of services and host), then `VmHWM` of the process;
//! 2. for CPU: one probe of each case to warm up, then `PROBES` rounds of one probe of each
//!    case, and the process's user + system time over each probe (`/proc/PID/stat`), averaged
//!    per case. Cases: the default module answered with gzip (what Prometheus asks for), with
//!    zstd (what Prometheus asks for with its `zstd-scrape` feature: the series are then
//!    compressed as zstd) and uncompressed (the answer is kept compressed, so this one decodes
//!    it), and the summary module with gzip;
//! 3. the floor of the same answer, measured in this process between the rounds (one run of
//!    each step a round, their medians): a summary probe's CPU (the last case) + writing the
//!    answer's lines + deflate or zstd level 1 of its text; then each default probe's CPU as a
//!    ratio to its floor (docs/performance.md, "Where this leaves ≤ 40 ms of CPU a probe").
//!    Interleaved, a machine that slows down for a while slows the probes and the floor alike.
//!
//! The simulator runs in this process, so its CPU is not counted.
//!
//! `cargo build --release && cargo run --release --example probe_cost -- [DEVICES] [PROBES]`
//! (defaults 10000 and 20; `EXPORTER_BIN=path` measures another build). Loopback only.

use std::time::{Duration, Instant};

use balena_simulator::Simulator;

mod support;
use support::{floor, status_kib, world, Exporter};

/// A process's user + system CPU in seconds (`/proc/PID/stat` fields 14 and 15, in clock
/// ticks: what `process_cpu_seconds_total` reports, read the same way for any build).
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count the fields after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks as f64 / ticks_per_second
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`, 100 when it cannot say).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One probe to its last byte, asking for `encoding`, not decoded here; the answer's size.
async fn probe(client: &awc::Client, url: &str, encoding: &str) -> usize {
    let mut resp = client
        .get(url)
        .no_decompress()
        .insert_header(("Accept-Encoding", encoding))
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
    let fleets = [("big", devices), ("big2", devices), ("big3", devices)];
    let sim = Simulator::start(&world("acme", &fleets, "tok"), "127.0.0.1:0").expect("simulator");
    let yaml = format!(
        "api:\n  url: {}\n  timeout: 60s\n  cache_ttl: 0s\nauths:\n  a:\n    token: tok\n\
         modules:\n  summary:\n    devices: false\n\
         targets:\n  big: {{fleet: acme/big, auth: a}}\n  big2: {{fleet: acme/big2, auth: a}}\n  \
         big3: {{fleet: acme/big3, auth: a}}\n",
        sim.url()
    );
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .finish();
    let exporter = Exporter::start(&yaml, "warn", &client).await;
    let hz = ticks_per_second();
    println!("{devices} devices a fleet, cache_ttl 0s");
    for _ in 0..3 {
        for target in ["big", "big2", "big3"] {
            let url = format!("{}/probe?target={target}", exporter.base);
            probe(&client, &url, "gzip").await;
        }
    }
    println!(
        "three targets one after the other, 3 times (gzip): peak RSS {:.1} MiB",
        status_kib(exporter.pid(), "VmHWM:") as f64 / 1024.0
    );
    let cases = [
        ("default", "gzip"),
        ("default", "zstd"),
        ("default", "identity"),
        ("summary", "gzip"),
    ];
    let url = |module: &str| format!("{}/probe?target=big&module={module}", exporter.base);
    // The answer's text, whose floor is measured between the rounds of probes.
    let mut resp = client
        .get(url("default"))
        .insert_header(("Accept-Encoding", "identity"))
        .send()
        .await
        .expect("answer");
    let text = resp.body().limit(1 << 30).await.expect("body");
    let text = std::str::from_utf8(&text).expect("UTF-8 answer").to_owned();
    let floor = Floor::new(&text);
    for (module, encoding) in cases {
        probe(&client, &url(module), encoding).await;
    }
    // Rounds of one probe of each case, then one run of each floor step: a machine that slows
    // down for a while slows every case and the floor alike.
    let (mut cpu, mut wall, mut bytes) = ([0.0; 4], [0.0; 4], [0; 4]);
    let mut steps = Vec::with_capacity(probes);
    for _ in 0..probes {
        for (k, (module, encoding)) in cases.into_iter().enumerate() {
            let (cpu0, t0) = (cpu_seconds(exporter.pid(), hz), Instant::now());
            bytes[k] = probe(&client, &url(module), encoding).await;
            wall[k] += t0.elapsed().as_secs_f64() * 1000.0 / probes as f64;
            cpu[k] += (cpu_seconds(exporter.pid(), hz) - cpu0) * 1000.0 / probes as f64;
        }
        steps.push(floor.steps());
    }
    drop(exporter);
    sim.stop().await;
    for (k, (module, encoding)) in cases.into_iter().enumerate() {
        println!(
            "module {module:8} {encoding:8}: CPU {:6.1} ms a probe, wall {:6.1} ms a probe ({probes} probes), answer {} bytes",
            cpu[k], wall[k], bytes[k],
        );
    }
    let median = |step: fn(&Steps) -> f64| {
        let mut times: Vec<f64> = steps.iter().map(step).collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let (write, deflate, zstd) = (
        median(|s| s.write),
        median(|s| s.deflate),
        median(|s| s.zstd),
    );
    let summary = cpu[3];
    println!(
        "floor of this answer ({} bytes of text), medians of {probes} runs between the probes: \
         write {write:.1} ms, deflate level 1 {deflate:.1} ms, zstd level 1 {zstd:.1} ms",
        text.len(),
    );
    for (encoding, probe, compress) in [("gzip", cpu[0], deflate), ("zstd", cpu[1], zstd)] {
        let floor = summary + write + compress;
        println!(
            "module default  {encoding:8}: CPU {probe:6.1} ms a probe = {:.2}x its floor \
             (summary probe {summary:.1} + write {write:.1} + compress {compress:.1} = {floor:.1} ms)",
            probe / floor,
        );
    }
}

/// The work of an answer beyond a summary probe's, at its floor ([`floor`]).
struct Floor<'a> {
    text: &'a str,
    lines: Vec<(&'a str, f64)>,
}

/// One run of each step of a [`Floor`], in ms.
struct Steps {
    write: f64,
    deflate: f64,
    zstd: f64,
}

impl<'a> Floor<'a> {
    fn new(text: &'a str) -> Self {
        let lines = floor::lines(text);
        Self { text, lines }
    }

    fn steps(&self) -> Steps {
        let text = self.text;
        Steps {
            write: ms(|| floor::write(&self.lines, text.len())),
            deflate: ms(|| floor::deflate1(text)),
            zstd: ms(|| floor::zstd1(text)),
        }
    }
}

/// The wall time of `f` on this (otherwise idle) thread, in ms.
fn ms(f: impl FnOnce() -> usize) -> f64 {
    let t = Instant::now();
    std::hint::black_box(f());
    t.elapsed().as_secs_f64() * 1000.0
}
