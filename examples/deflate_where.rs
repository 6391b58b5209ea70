//! Where a probe's deflate runs: on a helper thread while the probe goes on writing (what
//! `Exposition::packing` does), or inline on the probe's own thread. Writes the per-device
//! samples of N synthetic devices (every device family, as the default module writes them) and
//! compresses them into the cached series both ways, interleaved, and reports the medians and
//! their ratio, measured in one run (docs/performance.md).
//!
//! `cargo run --release --example deflate_where -- [RUNS]` (default 15).

use std::time::{Duration, Instant};

use balena_exporter::exposition::body::CompressedSeries;
use balena_exporter::exposition::codec::Codec;
use balena_exporter::exposition::Exposition;
use balena_exporter::probe::device::DEVICE_FAMILIES;

fn run(n: usize, mut e: Exposition) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        let uuid = format!("{:032x}", 0xabc0_0000_u64 + i as u64);
        let name = format!("device-{i}");
        let labels = [
            ("fleet", "acme/big"),
            ("device_uuid", uuid.as_str()),
            ("device_name", name.as_str()),
        ];
        for (f, family) in DEVICE_FAMILIES.iter().enumerate() {
            e.gauge(family.def, &labels, (i * 31 + f * 7) as f64 / 97.0);
        }
    }
    let series = CompressedSeries::from_expositions(Codec::Deflate, [e]);
    assert!(series.len() > n * 100);
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    println!("| devices | helper thread (median of {runs}) | inline | inline / helper |\n|---|---|---|---|");
    for n in [1_000usize, 10_000, 50_000] {
        let (mut helper, mut inline) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            helper.push(run(n, Exposition::packing(64 * 1024, Codec::Deflate)));
            inline.push(run(
                n,
                Exposition::packing_inline(64 * 1024, Codec::Deflate),
            ));
        }
        let (h, i) = (median(helper), median(inline));
        println!(
            "| {n} | {:.1} ms | {:.1} ms | {:.2}x |",
            h.as_secs_f64() * 1e3,
            i.as_secs_f64() * 1e3,
            i.as_secs_f64() / h.as_secs_f64()
        );
    }
}
