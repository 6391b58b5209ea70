//! Operations parity with the Prometheus exporter family: `/sd`, `debug=true`, history and
//! `/logs`, the route prefix, and `--web.config.file` (basic auth, TLS).

use std::collections::BTreeMap;
use std::sync::Arc;

use balena_exporter::config::{self, SharedConfig};
use balena_exporter::startup::Settings;
use balena_exporter::web_config::{self, WebConfig};
use balena_simulator::Simulator;

use crate::helpers::*;

/// `/sd` lists every configured target with its module as `__param_module`.
#[actix_rt::test]
async fn sd_lists_every_target_with_its_module() {
    let app = spawn_with(world(&[("one", 1), ("two", 1)]), |url| {
        format!(
            "{}    module: summary\nmodules:\n  summary:\n    devices: false\n",
            default_config(url, &["one", "two"])
        )
    })
    .await;
    let a = app.get("/sd").await;
    assert_eq!(a.status, 200);
    let groups: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["targets"], serde_json::json!(["one"]));
    assert_eq!(groups[0]["labels"]["__param_module"], "default");
    assert_eq!(groups[1]["targets"], serde_json::json!(["two"]));
    assert_eq!(groups[1]["labels"]["__param_module"], "summary");
    assert_eq!(
        groups[1]["labels"]["__meta_balena_target_covers"],
        "acme/two"
    );
    app.stop().await;
}

/// `debug=true` shows the requests made, the decisions taken and the metrics, never a token.
#[actix_rt::test]
async fn debug_output_explains_a_failed_probe() {
    let app = spawn_with(world(&[("screens", 3)]), |url| {
        default_config(url, &["screens"]).replace("fleet: acme/screens", "fleet: acme/missing")
    })
    .await;
    let a = app.get("/probe?target=screens&debug=true").await;
    assert_eq!(a.status, 200);
    assert!(a.content_type.starts_with("text/plain"));
    let body = a.body;
    assert!(body.contains("Result: failure (not_found)"), "{body}");
    assert!(
        body.contains("GET /v7/application?$filter=slug%20eq%20%27acme%2Fmissing%27"),
        "{body}"
    );
    assert!(body.contains("GET /actor/v1/whoami -> 200"), "{body}");
    assert!(body.contains("the token is valid (user ops)"), "{body}");
    assert!(
        body.contains("Metrics that would have been returned:\n"),
        "{body}"
    );
    let metrics = parse(
        body.split("Metrics that would have been returned:\n")
            .nth(1)
            .unwrap(),
    );
    assert_eq!(metrics.value("probe_success", &[]), 0.0);
    assert!(!body.contains(TOKEN) && !body.to_lowercase().contains("authorization"));
    app.stop().await;
}

/// The landing page shows every target's last result in words (a failure with its reason and
/// what to do, naming the auth; a cached answer marked as cached), the recent probes, and
/// `/logs` serves their logs by id or target.
#[actix_rt::test]
async fn history_is_shown_and_logs_are_served() {
    let app = spawn_with(world(&[("screens", 3)]), |url| {
        format!(
            "{}  lost:\n    fleet: acme/missing\n    auth: acme\n  idle:\n    fleet: acme/screens\n    auth: acme\n",
            default_config(url, &["screens"])
        )
    })
    .await;
    app.probe("target=screens").await;
    app.probe("target=screens").await; // from the cache
    app.probe("target=lost").await;
    let landing = app.get("/").await.body;
    let row = |name: &str| {
        landing
            .lines()
            .find(|l| l.starts_with(&format!("<tr><td>{name}</td>")))
            .unwrap_or_else(|| panic!("no row for {name}: {landing}"))
            .to_string()
    };
    let screens = row("screens");
    assert!(
        screens.contains("<td class=\"ok\">success: 1 fleet, 3 devices"),
        "{screens}"
    );
    assert!(screens.contains("<td>cached, "), "{screens}");
    assert!(screens.contains("logs?id=2"), "the newest probe: {screens}");
    let lost = row("lost");
    assert!(
        lost.contains(
            "<td class=\"failed\">failure (not_found): fleet &quot;acme/missing&quot; not found"
        ),
        "{lost}"
    );
    assert!(
        lost.contains("that auth &quot;acme&quot; can see it"),
        "{lost}"
    );
    assert!(row("idle").contains("not probed yet"));
    // The recent probes: newest first, the cached one said as such, the fetched one timed.
    let recent: Vec<&str> = landing
        .lines()
        .filter(|l| l.starts_with("<tr class="))
        .collect();
    assert_eq!(recent.len(), 3, "{landing}");
    assert!(recent[0].contains("failure (not_found)"), "{}", recent[0]);
    assert!(recent[1].contains("cached, "), "{}", recent[1]);
    assert!(recent[2].contains("fetched in "), "{}", recent[2]);
    assert!(
        !landing.contains("Fetched")
            && !landing.contains("Cache {")
            && !landing.contains("1 fleets")
    );
    let by_id = app.get("/logs?id=1").await;
    assert_eq!(by_id.status, 200);
    assert!(
        by_id
            .body
            .contains("Result: success: 1 fleet, 3 devices\nData: fetched for this probe\n"),
        "{}",
        by_id.body
    );
    // By target: its newest probe (the cached one).
    let by_target = app.get("/logs?target=screens&module=default").await;
    assert_eq!(by_target.body, app.get("/logs?id=2").await.body);
    assert!(
        by_target.body.contains("Data: from the cache, "),
        "{}",
        by_target.body
    );
    assert_eq!(app.get("/logs").await.status, 400);
    assert_eq!(app.get("/logs?id=1&target=screens").await.status, 400);
    assert_eq!(app.get("/logs?id=99").await.status, 404);
    app.stop().await;
}

/// Every route moves under `--web.route-prefix`; the bare root redirects there.
#[actix_rt::test]
async fn routes_live_under_the_route_prefix() {
    let sim = Simulator::start(&world(&[("screens", 2)]), "127.0.0.1:0").unwrap();
    let cfg = config::from_yaml_str(&default_config(&sim.url(), &["screens"]), "t.yml").unwrap();
    let mut settings = Settings::new(SharedConfig::new(cfg, None), "127.0.0.1:0");
    settings.route_prefix = "/balena".into();
    let app = spawn_settings(sim, settings).await;
    let m = app.probe_path("/balena/probe?target=screens").await;
    assert_eq!(m.value("probe_success", &[]), 1.0);
    assert_eq!(app.get("/balena/metrics").await.status, 200);
    assert_eq!(app.get("/balena/-/healthy").await.status, 200);
    assert_eq!(app.get("/probe?target=screens").await.status, 404);
    let root = app.get_no_redirect("/").await;
    assert_eq!((root.0, root.1.as_str()), (302, "/balena/"));
    app.stop().await;
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("balena-exporter-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Basic auth from the web config guards every path, `/probe` included.
#[actix_rt::test]
async fn basic_auth_guards_every_path() {
    let sim = Simulator::start(&world(&[("screens", 2)]), "127.0.0.1:0").unwrap();
    let cfg = config::from_yaml_str(&default_config(&sim.url(), &["screens"]), "t.yml").unwrap();
    let hash = bcrypt::hash("letmein", 4).unwrap();
    let web = WebConfig {
        basic_auth_users: BTreeMap::from([("prom".to_string(), hash)]),
        ..Default::default()
    };
    let mut settings = Settings::new(SharedConfig::new(cfg, None), "127.0.0.1:0");
    settings.web = Some((web, None));
    let app = spawn_settings(sim, settings).await;
    for path in [
        "/probe?target=screens",
        "/metrics",
        "/config",
        "/",
        "/-/healthy",
        "/sd",
    ] {
        let a = app.get(path).await;
        assert_eq!(a.status, 401, "{path}");
    }
    let good = format!("Basic {}", base64_encode("prom:letmein"));
    let bad = format!("Basic {}", base64_encode("prom:nope"));
    assert_eq!(
        app.get_with("/metrics", &[("Authorization", &bad)])
            .await
            .status,
        401
    );
    let a = app
        .get_with("/probe?target=screens", &[("Authorization", &good)])
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(parse(&a.body).value("probe_success", &[]), 1.0);
    app.stop().await;
}

/// Twenty concurrent first requests with the right password from one source, right after
/// start: all answered 200 (they wait for the one bcrypt instead of being turned away).
#[actix_rt::test]
async fn concurrent_first_requests_with_the_right_password_all_get_in() {
    let sim = Simulator::start(&world(&[("screens", 2)]), "127.0.0.1:0").unwrap();
    let cfg = config::from_yaml_str(&default_config(&sim.url(), &["screens"]), "t.yml").unwrap();
    let web = WebConfig {
        basic_auth_users: BTreeMap::from([("prom".to_string(), bcrypt::hash("pw", 6).unwrap())]),
        ..Default::default()
    };
    let mut settings = Settings::new(SharedConfig::new(cfg, None), "127.0.0.1:0");
    settings.web = Some((web, None));
    let app = spawn_settings(sim, settings).await;
    let good = format!("Basic {}", base64_encode("prom:pw"));
    let header = [("Authorization", good.as_str())];
    let answers =
        futures_util::future::join_all((0..20).map(|_| app.get_with("/metrics", &header))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![200; 20]);
    app.stop().await;
}

/// `--web.health-without-auth`: the two health paths answer without credentials (for kubelet
/// probes), every other path still needs them.
#[actix_rt::test]
async fn health_without_auth_exempts_only_the_health_paths() {
    let sim = Simulator::start(&world(&[("screens", 2)]), "127.0.0.1:0").unwrap();
    let cfg = config::from_yaml_str(&default_config(&sim.url(), &["screens"]), "t.yml").unwrap();
    let web = WebConfig {
        basic_auth_users: BTreeMap::from([("prom".to_string(), bcrypt::hash("pw", 4).unwrap())]),
        ..Default::default()
    };
    let mut settings = Settings::new(SharedConfig::new(cfg, None), "127.0.0.1:0");
    settings.web = Some((web, None));
    settings.health_without_auth = true;
    let app = spawn_settings(sim, settings).await;
    assert_eq!(app.get("/-/healthy").await.status, 200);
    assert_eq!(app.get("/-/ready").await.status, 200);
    for path in [
        "/metrics",
        "/probe?target=screens",
        "/config",
        "/",
        "/-/healthy/x",
    ] {
        assert_eq!(app.get(path).await.status, 401, "{path}");
    }
    app.stop().await;
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The exporter (one fleet `screens` of 2 devices) serving with the web config `yaml`, written
/// to `dir/web.yml` and loaded as `--web.config.file` loads it.
async fn spawn_with_web_config(dir: &std::path::Path, yaml: &str) -> TestApp {
    let web_file = dir.join("web.yml");
    std::fs::write(&web_file, yaml).unwrap();
    let web = web_config::load(&web_file).unwrap_or_else(|e| panic!("{e}"));
    let sim = Simulator::start(&world(&[("screens", 2)]), "127.0.0.1:0").unwrap();
    let cfg = config::from_yaml_str(&default_config(&sim.url(), &["screens"]), "t.yml").unwrap();
    let mut settings = Settings::new(SharedConfig::new(cfg, None), "127.0.0.1:0");
    settings.web = Some(web);
    spawn_settings(sim, settings).await
}

/// A web config serving TLS from `cert` and `key`.
fn tls_files(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
        cert.display(),
        key.display()
    )
}

fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key, ck.cert.der().to_vec())
}

/// TLS from the web config: a client that trusts the certificate gets metrics over HTTPS.
#[actix_rt::test]
async fn tls_from_the_web_config_serves_https() {
    let dir = temp_dir("tls");
    let (cert, key, der) = self_signed(&dir);
    let app = spawn_with_web_config(&dir, &tls_files(&cert, &key)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::new(tls)))
        .finish();
    let https = app.address.replace("http://", "https://");
    let mut resp = client
        .get(format!("{https}/probe?target=screens"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.body().await.unwrap();
    assert_eq!(
        parse(std::str::from_utf8(&body).unwrap()).value("probe_success", &[]),
        1.0
    );
    // Plain HTTP to the TLS port does not get metrics.
    assert!(awc::Client::new()
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .map(|r| r.status().as_u16() != 200)
        .unwrap_or(true));
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client speaks TLS to an https API URL and verifies the certificate: a self-signed one
/// fails the probe with a transport error (and no token is sent in clear).
#[actix_rt::test]
async fn an_https_api_with_an_untrusted_certificate_fails_the_probe() {
    let dir = temp_dir("upstream-tls");
    let (cert, key, _) = self_signed(&dir);
    std::fs::write(
        dir.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let (_, tls) = web_config::load(&dir.join("web.yml")).unwrap();
    let sim = Simulator::start_with_tls(&world(&[("screens", 2)]), "127.0.0.1:0", tls).unwrap();
    let url = sim.url().replace("http://", "https://");
    let cfg = config::from_yaml_str(&default_config(&url, &["screens"]), "t.yml").unwrap();
    let app = spawn_config(sim, SharedConfig::new(cfg, None)).await;
    let debug = app.get("/probe?target=screens&debug=true").await.body;
    assert!(debug.contains("Result: failure (transport)"), "{debug}");
    assert!(debug.to_lowercase().contains("certificate"), "{debug}");
    assert_eq!(
        app.sim.requests("/"),
        0,
        "no request reached the API handler"
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Kubernetes-style rotation while probing: the Secret volume's `..data` symlink is swapped
/// to a new token after the old one was revoked upstream. The next probe uses the new token,
/// with no reload; an empty token file later never replaces it, and the probe says why.
#[actix_rt::test]
async fn a_rotated_token_file_is_used_at_the_next_probe_without_a_reload() {
    let dir = temp_dir("rotation");
    let swap = |version: &str, token: &str| {
        let v = dir.join(version);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("acme"), token).unwrap();
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if std::fs::symlink_metadata(dir.join("acme")).is_err() {
            std::os::unix::fs::symlink("..data/acme", dir.join("acme")).unwrap();
        }
    };
    swap("..2026_11_26_01", &format!("{TOKEN}\n"));
    let file = dir.join("acme");
    let app = spawn_with(world(&[("screens", 4)]), |url| {
        default_config(url, &["screens"])
            .replace(
                &format!("    token: {TOKEN}\n"),
                &format!("    token_file: {}\n", file.display()),
            )
            .replace("  timeout: 5s\n", "  timeout: 5s\n  cache_ttl: 0s\n")
    })
    .await;
    let ok = |m: &Samples| m.value("probe_success", &[]);
    assert_eq!(ok(&app.probe("target=screens").await), 1.0);

    // The key is rotated in balena: the old one is revoked at once.
    let new_token = "rotated-token-7d1e";
    app.sim
        .with_world_mut(|w| assert!(w.replace_token(TOKEN, new_token)));
    assert_eq!(
        ok(&app.probe("target=screens").await),
        0.0,
        "old key revoked"
    );
    assert_eq!(app.probes_total("screens", "unauthorized").await, 1.0);

    // Kubernetes updates the Secret volume: the next probe uses the new key, no reload.
    swap("..2026_11_26_02", &format!("{new_token}\n"));
    let m = app.probe("target=screens").await;
    assert_eq!(ok(&m), 1.0);
    assert_eq!(
        m.value("balena_fleet_devices", &[("fleet", "acme/screens")]),
        4.0
    );
    let metrics = parse(&app.get("/metrics").await.body);
    assert_eq!(
        metrics.value("balena_exporter_config_last_reload_successful", &[]),
        1.0
    );

    // A broken update (an empty file) keeps the good key, and the probe says why.
    swap("..2026_11_26_03", "\n");
    let answer = app.get("/probe?target=screens&debug=true").await;
    assert!(answer.body.contains("probe_success 1"), "{}", answer.body);
    assert!(
        answer.body.contains("is empty; keeping the previous token"),
        "{}",
        answer.body
    );
    assert!(!answer.body.contains(new_token), "the token never shows");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The certificate a new TLS connection to `addr` is served (a blocking handshake, trusting
/// `trusted`).
fn served_certificate(addr: &str, trusted: &[Vec<u8>]) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = std::net::TcpStream::connect(addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    tls.conn.peer_certificates().unwrap()[0].to_vec()
}

/// A certificate renewed on disk (files swapped, as cert-manager and a Kubernetes Secret mount
/// do) is served to the next connection, without a restart; a half-written pair (the new
/// certificate with the old key) keeps the old certificate until the key follows.
#[actix_rt::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = temp_dir("tls-rotate");
    let (cert, key, first) = self_signed(&dir);
    let app = spawn_with_web_config(&dir, &tls_files(&cert, &key)).await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let new_dir = dir.join("renewed");
    std::fs::create_dir_all(&new_dir).unwrap();
    let (new_cert, new_key, second) = self_signed(&new_dir);
    let trusted = vec![first.clone(), second.clone()];
    let served = |addr: String, trusted: Vec<Vec<u8>>| {
        actix_rt::task::spawn_blocking(move || served_certificate(&addr, &trusted))
    };
    assert_eq!(served(addr.clone(), trusted.clone()).await.unwrap(), first);
    // The certificate first, its key a moment later: meanwhile the old pair is kept.
    std::fs::rename(&new_cert, &cert).unwrap();
    actix_rt::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        served(addr.clone(), trusted.clone()).await.unwrap(),
        first,
        "a certificate without its key is not used"
    );
    std::fs::rename(&new_key, &key).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = served(addr.clone(), trusted.clone()).await.unwrap();
        if now == second {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the renewed certificate was never served"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rate_limit` of the web config: a burst, then 429 with `Retry-After` until a token returns.
#[actix_rt::test]
async fn the_web_config_rate_limit_answers_429_past_its_burst() {
    let dir = temp_dir("rate-limit");
    let app = spawn_with_web_config(&dir, "rate_limit:\n  interval: 1s\n  burst: 2\n").await;
    assert_eq!(app.get("/-/healthy").await.status, 200);
    assert_eq!(app.get("/metrics").await.status, 200);
    let client = awc::Client::new();
    let limited = client
        .get(format!("{}/probe?target=screens", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status().as_u16(), 429);
    assert_eq!(limited.headers().get("retry-after").unwrap(), "1");
    actix_rt::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.get("/-/healthy").await.status, 200, "a token came back");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
