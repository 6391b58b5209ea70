//! Memory under a burst: 1,000 clients ask for one cached target of 10,000 devices at once,
//! with gzip and without, against a separate exporter process; reports the process' peak RSS
//! (VmHWM) before and after each burst. Answers without gzip are inflated as they are sent,
//! at most 32 at a time (src/probe/answer.rs), so the burst waits rather than holding an
//! inflater and a chunk per client. `BURST_MODE=gzip|identity|zstd` runs one kind (zstd:
//! answers re-encoded from the cached deflate pieces, under the same limit).
//!
//! While each burst runs, a separate client asks `/-/healthy` every 20 ms and the slowest
//! answer is reported (how long a kubelet probe waits behind the burst).
//!
//! `cargo build --release && cargo run --release --example burst -- [CLIENTS]` (default
//! 1,000). Loopback only; one burst of each kind.

use std::time::{Duration, Instant};

use balena_simulator::Simulator;

mod support;
use support::{status_kib, world, Exporter};

#[actix_rt::main]
async fn main() {
    let clients: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let sim = Simulator::start(&world("acme", &[("big", 10_000)], "tok"), "127.0.0.1:0")
        .expect("simulator");
    let yaml = format!(
        "api:\n  url: {}\n  cache_ttl: 10m\nauths:\n  a:\n    token: tok\ntargets:\n  big: {{fleet: acme/big, auth: a}}\n",
        sim.url()
    );
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(clients + 10))
        .timeout(Duration::from_secs(120))
        .finish();
    let exporter = Exporter::start(&yaml, "warn", &client).await;
    let (base, pid, port) = (exporter.base.clone(), exporter.pid(), exporter.port);
    // Fill the cache once, asking for gzip as Prometheus does (`FILL=identity` or `zstd`: the
    // series are then kept as zstd pieces, and gzip answers re-encode them).
    let fill = std::env::var("FILL").unwrap_or_else(|_| "gzip".into());
    let mut first = client
        .get(format!("{base}/probe?target=big"))
        .no_decompress()
        .insert_header(("Accept-Encoding", fill.as_str()))
        .send()
        .await
        .expect("probe");
    let _ = first.body().limit(1 << 30).await;
    println!(
        "cached; exporter peak RSS {} MiB",
        status_kib(pid, "VmHWM:") / 1024
    );
    // `zstd` (not in the default run): answers re-encoded from the cached deflate pieces, as
    // many at once as identity answers (~50 ms of CPU each for this target).
    let asked = std::env::var("BURST_MODE").unwrap_or_default();
    let modes: Vec<&str> = match asked.as_str() {
        mode @ ("gzip" | "identity" | "zstd") => vec![mode],
        _ => vec!["gzip", "identity"],
    };
    for mode in modes {
        let started = Instant::now();
        let reqs: Vec<_> = (0..clients)
            .map(|_| {
                let mut r = client
                    .get(format!("{base}/probe?target=big"))
                    .no_decompress();
                r = r.insert_header(("Accept-Encoding", mode));
                async move {
                    let mut resp = match r.send().await {
                        Ok(resp) => resp,
                        Err(e) => {
                            eprintln!("send: {e}");
                            return None;
                        }
                    };
                    match resp.body().limit(1 << 30).await {
                        Ok(b) => Some(b.len()),
                        Err(e) => {
                            eprintln!("body: {e}");
                            None
                        }
                    }
                }
            })
            .collect();
        // A thread of its own with plain blocking sockets: the burst's clients share this
        // runtime, and would delay a health client on it more than the exporter does.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let health = {
            let done = done.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut slowest = Duration::ZERO;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let asked = Instant::now();
                    if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                        let _ = conn.write_all(
                            b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        );
                        let _ = conn.read_to_end(&mut Vec::new());
                    }
                    slowest = slowest.max(asked.elapsed());
                    std::thread::sleep(Duration::from_millis(20));
                }
                slowest
            })
        };
        let sizes = futures_util::future::join_all(reqs).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let slowest_health = health.join().unwrap_or_default();
        let ok = sizes.iter().filter(|s| s.is_some()).count();
        println!(
            "{clients} clients, {mode}: {ok} answered ({} bytes each) in {:.1}s; exporter peak RSS {} MiB, RSS now {} MiB; slowest /-/healthy {:.0} ms",
            sizes.iter().flatten().next().copied().unwrap_or(0),
            started.elapsed().as_secs_f64(),
            status_kib(pid, "VmHWM:") / 1024,
            status_kib(pid, "VmRSS:") / 1024,
            slowest_health.as_secs_f64() * 1000.0,
        );
    }
    drop(exporter);
    sim.stop().await;
}
