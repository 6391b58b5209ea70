//! Reloads, all of them: `POST /-/reload` in-process (a good file swaps, a bad one is refused
//! with its reason and the old config stays; no file, nothing to reload) and SIGHUP against the
//! binary (the same, plus SIGTERM during a long reload). The reload machinery's own unit tests
//! (one at a time, a timed-out reload never applied, no thread pile-up) are in
//! `src/config/shared.rs`; every bad-config fixture refused on reload is in
//! `tests/bad_configs.rs`.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "support/process.rs"]
mod process;

use std::time::{Duration, Instant};

use balena_simulator::Simulator;
use helpers::*;
use process::*;

/// A good reload swaps the config; a bad one is refused with its reason and the old one stays.
#[actix_rt::test]
async fn reload_swaps_good_configs_and_keeps_the_old_one_on_error() {
    use balena_exporter::config::{self, LoadOptions, SharedConfig};
    use balena_simulator::Simulator;

    let sim = Simulator::start(&world(&[("one", 2), ("two", 3)]), "127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(format!("balena-exporter-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(&file, default_config(&sim.url(), &["one"])).unwrap();
    let opts = LoadOptions::file(&file);
    let app = spawn_config(
        sim,
        SharedConfig::new(config::load(&opts).unwrap(), Some(opts)),
    )
    .await;
    assert_eq!(app.get("/probe?target=two").await.status, 400);

    std::fs::write(&file, default_config(&app.sim.url(), &["one", "two"])).unwrap();
    assert_eq!(app.post("/-/reload").await.status, 200);
    let m = app.probe("target=two").await;
    assert_eq!(
        m.value("balena_fleet_devices", &[("fleet", "acme/two")]),
        3.0
    );

    std::fs::write(
        &file,
        default_config(&app.sim.url(), &["one"]).replace("auth: acme", "auth: nobody"),
    )
    .unwrap();
    let refused = app.post("/-/reload").await;
    assert_eq!(refused.status, 500);
    assert!(
        refused.body.starts_with("failed to reload config: "),
        "{}",
        refused.body
    );
    assert!(
        refused
            .body
            .contains("targets.one.auth: no auth named \"nobody\""),
        "{}",
        refused.body
    );
    // The previous config is still in force.
    assert_eq!(
        app.probe("target=two").await.value("probe_success", &[]),
        1.0
    );
    assert_eq!(app.state.config.snapshot().targets.len(), 2);
    let metrics = parse(&app.get("/metrics").await.body);
    assert_eq!(
        metrics.value("balena_exporter_config_last_reload_successful", &[]),
        0.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

/// With no config file (the environment-only start, or a config given in-process) a reload
/// reads nothing, and says so instead of pretending.
#[actix_rt::test]
async fn a_reload_without_a_file_says_there_is_nothing_to_reload() {
    let app = spawn_app(&[("screens", 2)]).await;
    let answer = app.post("/-/reload").await;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .body
            .starts_with("nothing to reload: the configuration comes from the environment"),
        "{}",
        answer.body
    );
    app.stop().await;
}

/// Under `--demo` the config is the embedded demo file: a reload says that, not "the
/// environment".
#[actix_rt::test]
async fn a_reload_under_demo_names_the_demo_config() {
    let exp = start(&["--demo".to_string()]).await;
    let mut r = awc::Client::new()
        .post(format!("{}/-/reload", exp.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = String::from_utf8(r.body().await.unwrap().to_vec()).unwrap();
    assert_eq!(
        body,
        "nothing to reload: --demo runs the embedded demo configuration (config/demo.yml), read at start; run with --config.file to reload a file\n"
    );
}

/// SIGHUP re-reads the file: a good change applies, a bad one leaves the old config in force.
#[actix_rt::test]
async fn sighup_reloads_and_keeps_the_old_config_on_error() {
    let sim = Simulator::start(&world(&[("one", 2), ("two", 4)]), "127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(format!("balena-exporter-proc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(&file, default_config(&sim.url(), &["one"])).unwrap();
    let exp = start(&[format!("--config.file={}", file.display())]).await;
    assert_eq!(body(&format!("{}/probe?target=two", exp.base)).await.0, 400);

    std::fs::write(&file, default_config(&sim.url(), &["one", "two"])).unwrap();
    signal(&exp.child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = body(&format!("{}/probe?target=two", exp.base)).await;
        if status == 200 {
            assert_eq!(
                parse(&text).value("balena_fleet_devices", &[("fleet", "acme/two")]),
                4.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::write(&file, "targets: [not, a, map]\n").unwrap();
    signal(&exp.child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = body(&format!("{}/metrics", exp.base)).await;
        if parse(&metrics).value("balena_exporter_config_last_reload_successful", &[]) == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "bad reload not reported");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        body(&format!("{}/probe?target=two", exp.base)).await.0,
        200,
        "old config still in force"
    );
    drop(exp);
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM is honoured at once even while a reload is reading a large config (seconds of work
/// here): the reload runs on a thread of its own and gives up when the process stops.
#[actix_rt::test]
async fn sigterm_does_not_wait_for_a_reload() {
    let dir = std::env::temp_dir().join(format!("balena-exporter-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    std::fs::write(
        &file,
        "auths:\n  a:\n    token: tok\ntargets:\n  t: {fleet: org/app, auth: a}\n",
    )
    .unwrap();
    let mut exp = start(&[format!("--config.file={}", file.display())]).await;
    // A config that takes seconds to read and check (45,000 targets, ~1.8 MB).
    let mut big = String::from("auths:\n  a:\n    token: tok\ntargets:\n");
    for i in 0..45_000 {
        big.push_str(&format!("  t{i}: {{fleet: org/app{i}, auth: a}}\n"));
    }
    std::fs::write(&file, big).unwrap();
    signal(&exp.child, "HUP");
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    signal(&exp.child, "TERM");
    let status = loop {
        if let Some(s) = exp.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "did not exit after SIGTERM"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM took {took:?} during a reload"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
