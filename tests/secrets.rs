//! Tokens never leak: with trace-level logging captured, every endpoint and failure path is
//! exercised and neither the token nor its base64 or URL-encoded forms appear anywhere.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use balena_exporter::cli::LogFormat;
use balena_exporter::config::{self, LoadOptions, SharedConfig};
use balena_simulator::{Fault, FaultRule, Simulator, UserSpec};
use helpers::*;

const GOOD: &str = "sekrit-TOKEN-4b1d8e";
const BAD: &str = "bogus-TOKEN-9c2e71";
/// Written over `BAD`'s token file while the exporter runs (rotation), then broken.
const ROTATED: &str = "rotated-TOKEN-5f3a90";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn forms(token: &str) -> Vec<String> {
    let b64 = |s: &str| {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    vec![
        token.to_string(),
        b64(token),
        b64(&format!("Bearer {token}")),
        url::form_urlencoded::byte_serialize(token.as_bytes()).collect(),
        token.to_lowercase(),
        // a distinctive inner fragment, in case of truncation
        token[4..14].to_string(),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for token in [GOOD, BAD, ROTATED] {
        for form in forms(token) {
            assert!(
                !text.contains(&form),
                "{what} contains a form of a token ({form:?})"
            );
        }
    }
}

/// Every endpoint and failure path, trace-level logs included, is free of tokens.
#[actix_rt::test]
async fn tokens_appear_in_no_log_response_or_error() {
    let capture = Capture::default();
    let writer = capture.clone();
    std::env::remove_var("RUST_LOG");
    balena_exporter::telemetry::init("trace", LogFormat::Logfmt, move || writer.clone());

    let mut spec = world(&[("screens", 30), ("other", 3)]);
    spec.users.push(UserSpec {
        username: "leaky".into(),
        token: GOOD.into(),
        orgs: vec!["acme".into()],
    });
    let sim = Simulator::start(&spec, "127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(format!("balena-exporter-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.yml");
    let token_file = dir.join("bad.token");
    std::fs::write(&token_file, format!("{BAD}\n")).unwrap();
    let yaml = format!(
        concat!(
            "api:\n  url: {}\n  timeout: 2s\nauths:\n  good:\n    token: {}\n  bad:\n    token_file: {}\n",
            "targets:\n  ok: {{fleet: acme/screens, auth: good}}\n  rejected: {{fleet: acme/screens, auth: bad}}\n",
            "  missing: {{fleet: acme/nope, auth: good}}\n  faulty: {{fleet: acme/other, auth: good}}\n",
        ),
        sim.url(),
        GOOD,
        token_file.display()
    );
    std::fs::write(&file, &yaml).unwrap();
    let opts = LoadOptions::file(&file);
    let app = spawn_config(
        sim,
        SharedConfig::new(config::load(&opts).unwrap(), Some(opts)),
    )
    .await;

    let mut responses = Vec::new();
    let faulty_id = app
        .sim
        .with_world(|w| w.fleet("acme/other").unwrap()["id"].as_u64().unwrap());
    for fault in [
        Fault::Status(500),
        Fault::Status(401),
        Fault::MalformedJson,
        Fault::Delay(Duration::from_secs(5)),
    ] {
        app.sim.clear_faults();
        app.sim.inject(
            FaultRule::always("/v7/device", fault.clone())
                .when_query_contains(&format!("eq {faulty_id}&")),
        );
        // The services read, in the background with a session of its own, fails too.
        app.sim.inject(
            FaultRule::always("/v7/image_install", fault)
                .when_query_contains(&format!("eq {faulty_id})")),
        );
        for path in ["/probe?target=faulty", "/probe?target=faulty&debug=true"] {
            let a = app
                .get_with(path, &[("X-Prometheus-Scrape-Timeout-Seconds", "2")])
                .await;
            responses.push((path.to_string(), a.body));
        }
    }
    // The token file is rotated (a new file renamed over it), then broken (a token with a
    // space): both are logged, by auth name, and neither token is written anywhere.
    for text in [format!("{ROTATED}\n"), format!("{ROTATED} x\n")] {
        let tmp = dir.join("bad.token.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &token_file).unwrap();
        for path in [
            "/probe?target=rejected",
            "/probe?target=rejected&debug=true",
        ] {
            responses.push((path.to_string(), app.get(path).await.body));
        }
    }
    std::fs::write(&token_file, format!("{BAD}\n")).unwrap();
    for path in [
        "/probe?target=ok",
        "/probe?target=ok&debug=true",
        "/probe?target=rejected",
        "/probe?target=rejected&debug=true",
        "/probe?target=missing",
        "/probe?target=missing&debug=true",
        "/probe?target=nope",
        "/config",
        "/metrics",
        "/",
    ] {
        let a = app.get(path).await;
        responses.push((path.to_string(), a.body));
    }
    // A reload that fails on a malformed token value, then one that succeeds.
    std::fs::write(
        &file,
        yaml.replace(
            &format!("token: {GOOD}"),
            &format!("token: {{oops: {GOOD}}}"),
        ),
    )
    .unwrap();
    let failed = app.post("/-/reload").await;
    assert_eq!(failed.status, 500);
    assert!(failed.body.contains("auths.good.token"), "{}", failed.body);
    responses.push(("/-/reload (bad)".into(), failed.body));
    std::fs::write(&file, &yaml).unwrap();
    assert_eq!(app.post("/-/reload").await.status, 200);
    let ok = parse(&app.get("/probe?target=ok").await.body);
    assert_eq!(
        ok.value("probe_success", &[]),
        1.0,
        "the good token still works after reloads"
    );

    for (path, body) in &responses {
        assert_clean(path, body);
    }
    // Debug output of every auth in memory.
    let config_debug = format!("{:?}", app.state.config.snapshot());
    assert_clean("Debug of the config", &config_debug);
    app.stop().await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("level=trace") || logs.contains("level=debug"),
        "trace logging was on"
    );
    assert!(logs.contains("probe failed"), "failures were logged");
    assert!(
        logs.contains("msg=\"background read failed; the previous snapshot is kept\"")
            && logs.contains("read=services"),
        "a failed services read was logged, as docs/operations.md quotes it"
    );
    assert!(
        logs.contains("auth=bad") && logs.contains("token file changed"),
        "the rotation was logged by auth name"
    );
    assert!(
        logs.contains("token file not used"),
        "the broken token file was logged"
    );
    assert_clean("trace-level logs", &logs);
    let _ = std::fs::remove_dir_all(&dir);
    reflected_heads_stay_out_of_the_log(&capture, &dir).await;
}

/// An upstream that reflects the `Authorization` header into a malformed `Content-Length`,
/// `Transfer-Encoding` or a header of its own: the HTTP client's decoder, which quotes what it
/// cannot parse at debug and trace, writes nothing of it (telemetry::QUOTES_HEADS), and the
/// probe fails with a reason that quotes nothing either. Token inline and from a file.
async fn reflected_heads_stay_out_of_the_log(capture: &Capture, dir: &std::path::Path) {
    use std::io::{Read, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let auth = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("authorization: ")
                        .or(l.strip_prefix("Authorization: "))
                })
                .unwrap_or("")
                .to_string();
            let reflected = match n % 3 {
                0 => format!("Content-Length: {auth}\r\n"),
                1 => format!("Transfer-Encoding: {auth}\r\n"),
                _ => format!("Content-Length: 1\r\nContent-Length: {auth}\r\n"),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\n{reflected}X-Echo: {auth}\r\n\r\n{{}}"
            );
        }
    });
    std::fs::create_dir_all(dir).unwrap();
    let token_file = dir.join("reflected.token");
    std::fs::write(&token_file, format!("{ROTATED}\n")).unwrap();
    let yaml = format!(
        "api:\n  url: http://127.0.0.1:{port}\n  timeout: 2s\nauths:\n  inline:\n    token: {GOOD}\n  file:\n    token_file: {}\ntargets:\n  a: {{fleet: acme/screens, auth: inline}}\n  b: {{fleet: acme/screens, auth: file}}\n",
        token_file.display()
    );
    let sim = balena_simulator::Simulator::start(&world(&[("screens", 1)]), "127.0.0.1:0").unwrap();
    let app = spawn_config(
        sim,
        SharedConfig::new(config::from_yaml_str(&yaml, "reflect.yml").unwrap(), None),
    )
    .await;
    let before = capture.0.lock().unwrap().len();
    for _ in 0..3 {
        for path in ["/probe?target=a&debug=true", "/probe?target=b&debug=true"] {
            let a = app.get(path).await;
            assert!(
                a.body.contains("probe_success 0"),
                "a malformed answer fails the probe: {}",
                a.body
            );
            assert_clean(path, &a.body);
        }
    }
    app.stop().await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()[before..]).into_owned();
    assert!(logs.contains("probe failed"), "the failures were logged");
    assert_clean("trace-level logs of a reflecting upstream", &logs);
    let _ = std::fs::remove_dir_all(dir);
}
