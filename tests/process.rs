//! The binary as operators run it: SIGTERM exits cleanly, a bad web config stops start-up, the
//! environment-only start probes and discovers. Reloads, SIGHUP included, are in
//! `tests/reload.rs`. Each test starts the exporter (and a simulator) on free loopback ports
//! and kills what it started.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "support/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "api/stub.rs"]
mod stub;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use balena_simulator::Simulator;
use helpers::*;
use process::*;

/// SIGTERM stops the exporter with exit code 0.
#[actix_rt::test]
async fn sigterm_exits_cleanly() {
    let mut exp = start(&["--demo".to_string()]).await;
    signal(&exp.child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = exp.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
}

/// An invalid web config stops start-up with exit 1 and a message naming the problem.
#[test]
fn a_bad_web_config_exits_1() {
    let dir = std::env::temp_dir().join(format!("balena-exporter-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(&web, "basic_auth_users:\n  prom: not-a-hash\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
        .args(["--demo", "--web.listen-address=127.0.0.1:0"])
        .arg(format!("--web.config.file={}", web.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web.yml: basic_auth_users.prom: not a bcrypt hash"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Started with only `BALENA_TOKEN` and `BALENA_API_URL`: `/sd` lists every fleet the token can
/// see, each probes with the simulator's numbers, and the token appears nowhere.
#[actix_rt::test]
async fn environment_only_start_discovers_and_probes_every_fleet() {
    let token = "env-only-TOKEN-6d2a1f";
    let mut spec = world(&[("one", 4), ("two", 7)]);
    spec.users[0].token = token.into();
    let sim = Simulator::start(&spec, "127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(format!("balena-exporter-envonly-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let stderr_path = dir.join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
        .current_dir(&dir)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=trace")
        .env("BALENA_TOKEN", token)
        .env("BALENA_API_URL", sim.url())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let exp = Exporter {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let targets = loop {
        if let Ok(mut r) = awc::Client::new()
            .get(format!("{}/sd", exp.base))
            .send()
            .await
        {
            let groups: serde_json::Value =
                serde_json::from_slice(&r.body().await.unwrap()).unwrap();
            let names: Vec<String> = groups
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| {
                    g["targets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_str().unwrap().to_string())
                })
                .collect();
            if names.len() == 2 {
                break names;
            }
        }
        assert!(
            Instant::now() < deadline,
            "discovery did not list the fleets"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(targets, ["all/acme/one", "all/acme/two"]);
    let mut bodies = Vec::new();
    for (target, slug) in [("all/acme/one", "acme/one"), ("all/acme/two", "acme/two")] {
        let (status, text) = body(&format!("{}/probe?target={target}", exp.base)).await;
        assert_eq!(status, 200);
        let m = parse(&text);
        assert_eq!(m.value("probe_success", &[]), 1.0);
        let want = sim.with_world(|w| w.devices_of(slug).len()) as f64;
        assert_eq!(m.value("balena_fleet_devices", &[("fleet", slug)]), want);
        assert!(
            !m.has("balena_fleet_info") || m.find("balena_fleet_info", &[]).len() == 1,
            "one fleet per per-fleet target"
        );
        bodies.push(text);
    }
    // The drop-in scrape of docs/migration.md: the older exporter's gauge in one request.
    let before = sim.requests("/");
    let (_, text) = body(&format!("{}/probe?target=all&module=compat", exp.base)).await;
    assert_eq!(
        sim.requests("/") - before,
        1,
        "one API request for every fleet"
    );
    let m = parse(&text);
    for (name, slug) in [("one", "acme/one"), ("two", "acme/two")] {
        let online = sim.with_world(|w| {
            w.devices_of(slug)
                .iter()
                .filter(|d| d["is_online"] == true)
                .count()
        }) as f64;
        assert_eq!(
            m.value("balena_devices_online", &[("fleet_name", name)]),
            online
        );
    }
    bodies.push(text);
    // A fleet discovery did not find is not probed: the name never reaches the API.
    assert_eq!(
        body(&format!("{}/probe?target=all/acme/three", exp.base))
            .await
            .0,
        400
    );
    for path in ["/config", "/probe?target=all&debug=true", "/metrics", "/"] {
        bodies.push(body(&format!("{}{path}", exp.base)).await.1);
    }
    drop(exp);
    let logs = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        logs.contains("level=trace") || logs.contains("level=debug"),
        "trace logging was on"
    );
    for text in bodies.iter().chain(std::iter::once(&logs)) {
        assert!(
            !text.contains(token) && !text.contains("TOKEN-6d2a1f"),
            "the token leaked"
        );
    }
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Neither a config file nor a token: exit 1 with a message showing the ways to start.
#[test]
fn no_file_and_no_token_exits_1_with_guidance() {
    let dir = std::env::temp_dir().join(format!("balena-exporter-noconf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
        .current_dir(&dir)
        .arg("--web.listen-address=127.0.0.1:0")
        .env_remove("BALENA_TOKEN")
        .env_remove("BALENA_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "no configuration",
        "--config.file=balena-exporter.yml",
        "BALENA_TOKEN=",
        "--demo",
    ] {
        assert!(err.contains(want), "{want} missing in {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// logfmt pairs of one line, values unquoted.
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut end = 0;
            let bytes = quoted.as_bytes();
            while end < bytes.len()
                && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\'))
            {
                end += 1;
            }
            (
                quoted[..end].replace("\\\"", "\""),
                &quoted[(end + 1).min(quoted.len())..],
            )
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.push((key.trim().to_string(), value));
        rest = next.trim_start();
    }
    out
}

/// `--demo`, its stderr in a file: the process and the file's path.
fn demo_with_log(dir: &std::path::Path) -> (std::process::Child, String, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let log = dir.join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
        .args(["--demo", &format!("--web.listen-address=127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, format!("http://127.0.0.1:{port}"), log)
}

async fn wait_ready(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = awc::Client::new();
    while client.get(format!("{base}/-/ready")).send().await.is_err() {
        assert!(Instant::now() < deadline, "exporter did not start");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// docs/operations.md's sample log lines are what the binary writes for the same probes of
/// `--demo`: the same keys in the same order, the same values but for times and durations.
/// And the `--demo` banner is the last thing said before the first probe, with URLs that work.
#[actix_rt::test]
async fn the_documented_log_lines_and_the_demo_banner_are_what_the_binary_writes() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let documented: Vec<Vec<(String, String)>> = doc
        .lines()
        .filter(|l| l.starts_with("time=") && l.contains("source=balena_exporter::probe"))
        .map(logfmt)
        .collect();
    assert_eq!(
        documented.len(),
        2,
        "docs/operations.md shows two probe lines"
    );
    let dir = std::env::temp_dir().join(format!("balena-exporter-doclog-{}", std::process::id()));
    let (mut child, base, log) = demo_with_log(&dir);
    wait_ready(&base).await;
    // The banner comes once the demo's first probes are in.
    let until = Instant::now() + Duration::from_secs(30);
    let banner = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("stop  Ctrl-C") {
            break text;
        }
        assert!(Instant::now() < until, "no banner: {text}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        banner.contains("target_name=kiosks") && banner.contains("target_name=broken-token"),
        "the demo's first probes are logged before the banner: {banner}"
    );
    // The banner's URLs, with localhost as printed, answer as they say.
    let urls: Vec<String> = banner
        .split_whitespace()
        .filter(|w| w.starts_with("http://localhost:"))
        .map(|w| w.replace("http://localhost:", "http://127.0.0.1:"))
        .collect();
    assert_eq!(urls.len(), 3, "{banner}");
    assert!(
        banner.trim_end().ends_with("stop  Ctrl-C"),
        "the banner comes last: {banner}"
    );
    assert!(!banner.contains("actix_server"), "{banner}");
    let (status, landing) = body(&urls[0]).await;
    assert_eq!((status, landing.contains("<h2>Targets</h2>")), (200, true));
    let (_, fleet) = body(&urls[1]).await;
    assert!(fleet.contains("probe_success 1"), "{fleet}");
    let (_, failing) = body(&urls[2]).await;
    assert!(
        failing.contains("Result: failure (unauthorized)"),
        "{failing}"
    );
    assert!(
        failing.contains("What to do: check the token of auth \"revoked\""),
        "{failing}"
    );
    // The same probes as the documented lines (the first probe of each target).
    let written = std::fs::read_to_string(&log).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let varying = ["time", "duration_seconds", "data_age_seconds"];
    for doc_line in &documented {
        let field = |pairs: &[(String, String)], k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let target = field(doc_line, "target_name").unwrap();
        let real = written
            .lines()
            .map(logfmt)
            .find(|l| field(l, "target_name").as_deref() == Some(&target))
            .unwrap_or_else(|| panic!("no log line for {target}: {written}"));
        let keys = |p: &[(String, String)]| p.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(doc_line), keys(&real), "{target}: the keys");
        for ((k, want), (_, got)) in doc_line.iter().zip(&real) {
            if !varying.contains(&k.as_str()) {
                assert_eq!(want, got, "{target}: {k}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An image-install listing that never ends: every page brings 1,000 new rows after the id
/// asked for. The fleet has one device.
fn endless_installs(head: &str) -> String {
    if !head.starts_with("GET /v7/image_install") {
        return stub::one_device_fleet(head);
    }
    let after = stub::after_id(head);
    let rows: Vec<String> = (after + 1..=after + 1000)
        .map(|id| format!(r#"{{"id":{id},"device":{{"__id":5}},"installs__image":{{"__id":{}}},"status":"Running","install_date":"2026-01-01T00:00:00Z"}}"#, id % 50 + 1))
        .collect();
    format!(r#"{{"d":[{}]}}"#, rows.join(","))
}

/// `VmHWM` (peak resident size) or `VmRSS` of a process, in bytes.
fn memory(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// The bound of a background read, as the binary holds it: an install listing that never ends
/// fails `over_bound` once it passes a quarter of `api.background_max_bytes` (16 MiB here), the
/// listing stops there (no request after), the probe succeeds all along, and the process's
/// peak resident size grows by less than the whole budget (16 MiB) over its size before.
#[actix_rt::test]
async fn an_endless_install_listing_is_held_within_its_bound() {
    let api = stub::StubApi::start(
        endless_installs,
        Duration::ZERO,
        stub::Connections::KeepAlive,
    );
    let dir = std::env::temp_dir().join(format!("balena-exporter-endless-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(
        &file,
        format!(
            "api:\n  url: {}\n  page_size: 1000\n  background_max_bytes: 16MiB\n  cache_ttl: 0s\nauths:\n  a:\n    token: tok-endless-1\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n",
            api.url
        ),
    )
    .unwrap();
    let exp = start(&[format!("--config.file={}", file.display())]).await;
    let pid = exp.child.id();
    let client = awc::Client::new();
    let get = |path: &str| {
        let url = format!("{}{path}", exp.base);
        let client = client.clone();
        async move {
            let mut r = client.get(url).send().await.unwrap();
            String::from_utf8(r.body().limit(1 << 22).await.unwrap().to_vec()).unwrap()
        }
    };
    get("/metrics").await;
    let before = memory(pid, "VmRSS:");
    let probe = get("/probe?target=t").await;
    assert!(probe.contains("probe_success 1"), "{probe}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let own = parse(&get("/metrics").await);
        let failed = own.find(
            "balena_exporter_background_reads_total",
            &[("read", "services"), ("result", "over_bound")],
        );
        if failed.first().is_some_and(|s| s.value == 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the read never failed over_bound"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let pages = api.answered();
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.answered(), pages, "the listing stopped at its bound");
    let peak = memory(pid, "VmHWM:");
    let grown = peak.saturating_sub(before);
    eprintln!(
        "endless listing: {pages} pages, RSS before {} KiB, peak {} KiB",
        before >> 10,
        peak >> 10
    );
    assert!(
        grown < 16 * 1024 * 1024,
        "peak RSS grew by {} MiB (from {} MiB)",
        grown >> 20,
        before >> 20
    );
    let debug = get("/probe?target=t&debug=true").await;
    assert!(debug.contains("probe_success 1"), "{debug}");
    assert!(
        debug.contains("the read failed: more than ") || debug.contains("failed: more than "),
        "{debug}"
    );
    assert!(
        debug.contains("image install rows (the bound set by api.background_max_bytes)"),
        "{debug}"
    );
    drop(exp);
    api.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The allocator settings of `memory::tune_allocator` are applied first thing (logged at
/// debug), and an operator's own `MALLOC_ARENA_MAX` wins over ours.
#[test]
fn the_allocator_is_tuned_unless_the_environment_tunes_it() {
    let tuned = |env: &[(&str, &str)]| -> Vec<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
            .args(["--log.level=debug", "--config.file=/nonexistent/balena.yml"])
            .env_remove("MALLOC_ARENA_MAX")
            .env_remove("MALLOC_MMAP_THRESHOLD_")
            .env_remove("GLIBC_TUNABLES")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "a missing config file stops it");
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(logfmt)
            .filter(|kv| kv.iter().any(|(k, v)| k == "msg" && v == "allocator tuned"))
            .map(|kv| {
                let get = |key: &str| kv.iter().find(|(k, _)| k == key).unwrap().1.clone();
                format!("{}={}", get("setting"), get("value"))
            })
            .collect()
    };
    assert_eq!(
        tuned(&[]),
        ["MALLOC_MMAP_THRESHOLD_=262144", "MALLOC_ARENA_MAX=2"]
    );
    assert_eq!(
        tuned(&[("MALLOC_ARENA_MAX", "1")]),
        ["MALLOC_MMAP_THRESHOLD_=262144"]
    );
    assert!(tuned(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")]).is_empty());
}
