//! What a probe costs the exporter process: its peak RSS and its CPU, from the process's own
//! counters. The simulator serves three fleets of 10,000 devices; the exporter (a process of
//! its own, `cache_ttl: 0s`) is probed
//!
//! 1. for memory: the three targets one after the other, three times (the first probes also
//!    start the background reads of services and host), then `VmHWM` of the process;
//! 2. for CPU: per case, one probe to warm up, then `PROBES` probes one after the other, and the
//!    process's user + system time over them (`/proc/PID/stat`) divided by their
//!    number. Cases: the default module answered with gzip (what Prometheus asks for), with
//!    zstd (what Prometheus asks for with its `zstd-scrape` feature: the series are then
//!    compressed as zstd) and uncompressed (the answer is kept compressed, so this one decodes
//!    it), and the summary module with gzip;
//! 3. the floor of the same answer, measured in this process once the exporter and the
//!    simulator have stopped: a summary probe's CPU (case 4) + writing the answer's lines +
//!    deflate or zstd level 1 of its text; then each default probe's CPU as a ratio to its
//!    floor (docs/performance.md, "Where this leaves ≤ 40 ms of CPU a probe"), which moves
//!    less with the machine's speed than the milliseconds do.
//!
//! The simulator runs in this process, so its CPU is not counted.
//!
//! `cargo build --release && cargo run --release --example probe_cost -- [DEVICES] [PROBES]`
//! (defaults 10000 and 20; `EXPORTER_BIN=path` measures another build). Loopback only.

use std::time::{Duration, Instant};

use balena_simulator::Simulator;

mod support;
use support::{status_kib, world, Exporter};

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
    let mut cpu_ms = Vec::new();
    for (module, encoding) in cases {
        let url = format!("{}/probe?target=big&module={module}", exporter.base);
        probe(&client, &url, encoding).await;
        let (cpu0, t0) = (cpu_seconds(exporter.pid(), hz), Instant::now());
        let mut bytes = 0;
        for _ in 0..probes {
            bytes = probe(&client, &url, encoding).await;
        }
        let wall = t0.elapsed();
        let cpu = cpu_seconds(exporter.pid(), hz) - cpu0;
        cpu_ms.push(cpu * 1000.0 / probes as f64);
        println!(
            "module {module:8} {encoding:8}: CPU {:6.1} ms a probe, wall {:6.1} ms a probe ({probes} probes), answer {bytes} bytes",
            cpu * 1000.0 / probes as f64,
            wall.as_secs_f64() * 1000.0 / probes as f64,
        );
    }
    // The floor of the same answer, measured now: the summary probe (the same requests and
    // rows, no per-device series) + writing the answer's lines + compressing its text.
    let url = format!("{}/probe?target=big", exporter.base);
    let mut resp = client
        .get(&url)
        .insert_header(("Accept-Encoding", "identity"))
        .send()
        .await
        .expect("answer");
    let text = resp.body().limit(1 << 30).await.expect("body");
    let text = std::str::from_utf8(&text).expect("UTF-8 answer").to_owned();
    drop(exporter);
    sim.stop().await;
    let [gzip, zstd, _, summary] = cpu_ms[..] else {
        unreachable!("four cases")
    };
    let floors = Floors::of(&text);
    println!(
        "floor of this answer ({} bytes of text), measured now, medians of {FLOOR_RUNS}: \
         write {:.1} ms, deflate level 1 {:.1} ms, zstd level 1 {:.1} ms",
        text.len(),
        floors.write,
        floors.deflate,
        floors.zstd
    );
    for (encoding, probe, compress) in [("gzip", gzip, floors.deflate), ("zstd", zstd, floors.zstd)]
    {
        let floor = summary + floors.write + compress;
        println!(
            "module default  {encoding:8}: CPU {probe:6.1} ms a probe = {:.2}x its floor \
             (summary probe {summary:.1} + write {:.1} + compress {compress:.1} = {floor:.1} ms)",
            probe / floor,
            floors.write,
        );
    }
}

/// Runs of each floor step; its median is reported.
const FLOOR_RUNS: usize = 7;

/// The CPU floor of an answer's work beyond a summary probe's, in ms (one thread, medians).
struct Floors {
    write: f64,
    deflate: f64,
    zstd: f64,
}

impl Floors {
    /// Measures them on `text`, an answer: writing its lines (each series copied, its value
    /// formatted, as `benches/pipeline.rs`'s `floor/write`), deflate level 1 and zstd level 1
    /// of the whole text in one call each (`floor/deflate1`, `floor/zstd1`).
    fn of(text: &str) -> Self {
        use std::fmt::Write as _;
        use std::io::Write as _;
        let lines: Vec<(&str, f64)> = text
            .lines()
            .map(|l| match l.rsplit_once(' ') {
                Some((series, v)) if !l.starts_with('#') => (series, v.parse().unwrap_or(0.0)),
                _ => (l, f64::NAN),
            })
            .collect();
        let write = median_ms(|| {
            let mut out = String::with_capacity(text.len());
            for (series, value) in &lines {
                out.push_str(series);
                if !value.is_nan() {
                    write!(out, " {value}").expect("a String takes any text");
                }
                out.push('\n');
            }
            std::hint::black_box(out.len());
        });
        let deflate = median_ms(|| {
            let mut e = flate2::write::DeflateEncoder::new(
                Vec::with_capacity(text.len() / 4),
                flate2::Compression::fast(),
            );
            e.write_all(text.as_bytes()).expect("in memory");
            std::hint::black_box(e.finish().expect("in memory").len());
        });
        let zstd = median_ms(|| {
            let packed = zstd::bulk::compress(text.as_bytes(), 1).expect("zstd level 1");
            std::hint::black_box(packed.len());
        });
        Self {
            write,
            deflate,
            zstd,
        }
    }
}

/// The median wall time of `FLOOR_RUNS` runs of `f` on this (otherwise idle) thread, in ms.
fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..FLOOR_RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[FLOOR_RUNS / 2]
}
