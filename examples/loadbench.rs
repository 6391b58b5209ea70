//! Load benchmark: the simulator and the exporter on loopback, measured in one run.
//!
//! `cargo run --release --example loadbench` (after `cargo build --release --bins` so that the
//! exporter binary exists for the memory part). Reports, side by side:
//! (a) a bare fetch of a 10,000-device fleet's device list vs a full `/probe` of it;
//! (b) 100 concurrent probes of one target → upstream device fetches;
//! (c) cached probe throughput on a 100-device fleet;
//! (d) peak RSS of an exporter process probing 100,000 devices across targets.
//! Only loopback; every loop is bounded in count and time.
//!
//! `LOADBENCH_WRAP=heaptrack` starts the memory part's exporters under that command (a heap
//! profiler). The RSS figures are then the wrapper's, and the wrapped exporters outlive the
//! benchmark: stop them with `pkill -TERM -f 'balena-exporter --config.file=/tmp/balena-loadbench'`,
//! which also makes heaptrack write its data.

use std::time::{Duration, Instant};

use balena_exporter::balena::{device_query, odata::Query};
use balena_exporter::config::{self, ModuleConfig, SharedConfig};
use balena_exporter::startup::{Application, Settings};
use balena_simulator::{FleetSpec, OrgSpec, Simulator, UserSpec, WorldSpec};

const TOKEN: &str = "bench-token";

fn spec(fleets: Vec<FleetSpec>) -> WorldSpec {
    WorldSpec {
        seed: 1,
        orgs: vec![OrgSpec {
            handle: "bench".into(),
            fleets,
        }],
        users: vec![UserSpec {
            username: "bench".into(),
            token: TOKEN.into(),
            orgs: vec!["bench".into()],
        }],
    }
}

fn config_yaml(sim: &str, ttl: &str, targets: &[(&str, &str, &str)]) -> String {
    let mut y = format!(
        "api:\n  url: {sim}\n  timeout: 60s\n  cache_ttl: {ttl}\nauths:\n  bench:\n    token: {TOKEN}\nmodules:\n  summary:\n    devices: false\n  compact:\n    compact_cache: true\ntargets:\n"
    );
    for (name, fleet, module) in targets {
        y.push_str(&format!(
            "  {name}:\n    fleet: bench/{fleet}\n    auth: bench\n    module: {module}\n"
        ));
    }
    y
}

async fn start_exporter(yaml: &str) -> (String, actix_web::dev::ServerHandle) {
    let cfg = config::from_yaml_str(yaml, "bench.yml").expect("config");
    let app = Application::build(Settings::new(SharedConfig::new(cfg, None), "127.0.0.1:0"))
        .expect("app");
    let url = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    (url, handle)
}

async fn get(client: &awc::Client, url: &str, token: Option<&str>) -> usize {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let mut resp = req.send().await.expect("answer");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.body().limit(1 << 30).await.expect("body").len()
}

/// Like `get`, but the answer is not inflated here: the time to its last byte, as a scraper
/// sees it before it decodes (the bare fetch has nothing to inflate either).
async fn get_raw(client: &awc::Client, url: &str) -> usize {
    let mut resp = client
        .get(url)
        .no_decompress()
        .insert_header(("Accept-Encoding", "gzip"))
        .send()
        .await
        .expect("answer");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.body().limit(1 << 30).await.expect("body").len()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[actix_rt::main]
async fn main() {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .finish();

    // (a) bare fetch vs probe, 10,000 devices, no cache.
    let sim = Simulator::start(
        &spec(vec![
            FleetSpec::new("big", 10_000),
            FleetSpec::new("small", 100),
        ]),
        "127.0.0.1:0",
    )
    .unwrap();
    let fleet_id = sim.with_world(|w| w.fleet("bench/big").unwrap()["id"].as_u64().unwrap());
    let (exporter, handle) = start_exporter(&config_yaml(
        &sim.url(),
        "0s",
        &[("big", "big", "default"), ("big-summary", "big", "summary")],
    ))
    .await;
    let (select, expand) = device_query(&ModuleConfig::default());
    let q = Query::new()
        .option("$select", select)
        .option("$expand", expand)
        .option("$filter", format!("belongs_to__application eq {fleet_id}"))
        .option("$orderby", "id asc")
        .option("$top", "20000")
        .option("$skip", "0");
    let bare_url = format!("{}/v7/device?{}", sim.url(), q.to_wire());
    let probe_url = format!("{exporter}/probe?target=big");
    let summary_url = format!("{exporter}/probe?target=big-summary");
    let (mut bare, mut probe, mut probe_raw, mut summary) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut bare_bytes, mut probe_bytes, mut raw_bytes, mut summary_bytes) = (0, 0, 0, 0);
    get(&client, &bare_url, Some(TOKEN)).await; // warm-up
    get(&client, &probe_url, None).await;
    for _ in 0..9 {
        let t = Instant::now();
        bare_bytes = get(&client, &bare_url, Some(TOKEN)).await;
        bare.push(t.elapsed());
        let t = Instant::now();
        raw_bytes = get_raw(&client, &probe_url).await;
        probe_raw.push(t.elapsed());
        let t = Instant::now();
        probe_bytes = get(&client, &probe_url, None).await;
        probe.push(t.elapsed());
        let t = Instant::now();
        summary_bytes = get(&client, &summary_url, None).await;
        summary.push(t.elapsed());
    }
    let (b, r, p, s) = (
        median(bare),
        median(probe_raw),
        median(probe),
        median(summary),
    );
    println!("(a) 10,000-device fleet, median of 9 interleaved runs:");
    println!(
        "    bare device-list fetch from the simulator: {:>8.1} ms  ({} bytes JSON)",
        b.as_secs_f64() * 1e3,
        bare_bytes
    );
    println!(
        "    /probe, module default (per-device):       {:>8.1} ms  ({} bytes gzip, to the last byte)  ratio {:.2}x",
        r.as_secs_f64() * 1e3,
        raw_bytes,
        r.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "      the same, inflated by this client:       {:>8.1} ms  ({} bytes text)  ratio {:.2}x",
        p.as_secs_f64() * 1e3,
        probe_bytes,
        p.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "    /probe, module summary (fleet series):     {:>8.1} ms  ({} bytes text)  ratio {:.2}x",
        s.as_secs_f64() * 1e3,
        summary_bytes,
        s.as_secs_f64() / b.as_secs_f64()
    );

    // (b) 100 concurrent probes of one target → upstream fetches.
    // A fetch is a first device page (keyset pages after it carry `id gt`).
    let first_pages = || {
        sim.state.log.lock().map_or(0, |log| {
            log.iter()
                .filter(|r| r.path.starts_with("/v7/device") && !r.query.contains("%20gt%20"))
                .count()
        })
    };
    let before = first_pages();
    let probes: Vec<_> = (0..100).map(|_| get(&client, &probe_url, None)).collect();
    futures_util::future::join_all(probes).await;
    let fetches = first_pages() - before;
    println!("(b) 100 concurrent probes of one 10,000-device target (cache_ttl 0): {fetches} upstream device fetch(es)");
    handle.stop(false).await;

    // (c) cached probe throughput, 100-device fleet.
    let (exporter, handle) = start_exporter(&config_yaml(
        &sim.url(),
        "30s",
        &[("small", "small", "default")],
    ))
    .await;
    let url = format!("{exporter}/probe?target=small");
    get(&client, &url, None).await;
    let concurrency = 32;
    let window = Duration::from_secs(5);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let mut n = 0u64;
                while started.elapsed() < window && n < 1_000_000 {
                    get(&client, &url, None).await;
                    n += 1;
                }
                n
            }
        })
        .collect();
    let total: u64 = futures_util::future::join_all(workers).await.iter().sum();
    let secs = started.elapsed().as_secs_f64();
    println!("(c) cached /probe of a 100-device fleet, {concurrency} connections for {secs:.1} s (load generator in the same process): {:.0} req/s", total as f64 / secs);
    // The same with wrk, a load generator in its own process (as Prometheus would be), if installed.
    match std::process::Command::new("wrk")
        .args(["-t2", "-c32", "-d5s", "-H", "Accept-Encoding: gzip", &url])
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let rps = text
                .lines()
                .find(|l| l.starts_with("Requests/sec:"))
                .unwrap_or("Requests/sec: ?");
            println!(
                "    with wrk -t2 -c32 -d5s (gzip): {}",
                rps.trim_start_matches("Requests/sec:").trim()
            );
        }
        _ => println!("    wrk not installed: apt-get install wrk for an external load generator"),
    }
    handle.stop(false).await;
    sim.stop().await;

    // (d) peak RSS of a separate exporter process probing 100,000 devices across 10 targets.
    let bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/balena-exporter");
    if !bin.exists() {
        println!("(d) skipped: build target/release/balena-exporter first (cargo build --release)");
        return;
    }
    let fleets: Vec<FleetSpec> = (0..10)
        .map(|i| FleetSpec::new(&format!("f{i}"), 10_000))
        .collect();
    let sim = Simulator::start(&spec(fleets), "127.0.0.1:0").unwrap();
    for (module, ttl) in [
        ("summary", "30s"),
        ("default", "30s"),
        ("default", "0s"),
        ("compact", "30s"),
    ] {
        let targets: Vec<(String, String)> = (0..10)
            .map(|i| (format!("t{i}"), format!("f{i}")))
            .collect();
        let t: Vec<(&str, &str, &str)> = targets
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str(), module))
            .collect();
        let dir = std::env::temp_dir().join(format!("balena-loadbench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yml");
        std::fs::write(&file, config_yaml(&sim.url(), ttl, &t)).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut child = match std::env::var("LOADBENCH_WRAP") {
            Ok(w) => {
                let mut c = std::process::Command::new(w);
                c.arg(&bin);
                c
            }
            Err(_) => std::process::Command::new(&bin),
        };
        child
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stderr(std::process::Stdio::null());
        let mut child = child.spawn().expect("exporter starts");
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if client.get(format!("{base}/-/healthy")).send().await.is_ok() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        // Every target once, then all of them concurrently twice (cache hits and refetches).
        for round in 0..3 {
            let urls: Vec<String> = (0..10)
                .map(|i| format!("{base}/probe?target=t{i}"))
                .collect();
            let reqs: Vec<_> = urls.iter().map(|u| get(&client, u, None)).collect();
            if round == 0 {
                for r in reqs {
                    r.await;
                }
            } else {
                futures_util::future::join_all(reqs).await;
            }
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
            if let Some(l) = status.lines().find(|l| l.starts_with("VmHWM:")) {
                println!(
                    "    after round {round} ({}): {l}",
                    if round == 0 {
                        "targets one by one"
                    } else {
                        "10 targets at once"
                    }
                );
            }
        }
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .map(|l| l[k.len()..].trim().to_string())
                .unwrap_or_default()
        };
        println!("(d) exporter process, 10 targets x 10,000 devices, module {module}, cache_ttl {ttl}: peak RSS (VmHWM) {}, RSS now {}", field("VmHWM:"), field("VmRSS:"));
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
    sim.stop().await;
}
