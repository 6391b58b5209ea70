//! The way out to the API, through the real client: an HTTP CONNECT proxy on loopback (with
//! proxy authentication, and `no_proxy` going around it), and an API whose certificate is
//! signed by a private CA made here (`tls_config.ca_file`, `server_name`, a client
//! certificate the API requires, `insecure_skip_verify`), alone and through the proxy; a
//! reload re-reads the CA file; `/config` shows it all without the proxy's password.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use balena_exporter::config::{self, LoadOptions, SharedConfig};
use balena_exporter::web_config;
use balena_simulator::Simulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// A CONNECT proxy on a loopback port: tunnels to any target, optionally asking for
/// `Proxy-Authorization`; counts the tunnels and keeps what they asked for.
struct ConnectProxy {
    url: String,
    tunnels: Arc<AtomicUsize>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    async fn start(required_authorization: Option<String>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tunnels = Arc::new(AtomicUsize::new(0));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (t, a) = (tunnels.clone(), asked.clone());
        actix_rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (t, a, auth) = (t.clone(), a.clone(), required_authorization.clone());
                actix_rt::spawn(tunnel(client, t, a, auth));
            }
        });
        Self {
            url,
            tunnels,
            asked,
        }
    }

    fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }
}

async fn tunnel(
    mut client: tokio::net::TcpStream,
    tunnels: Arc<AtomicUsize>,
    asked: Arc<Mutex<Vec<String>>>,
    required_authorization: Option<String>,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    asked.lock().unwrap().push(head.clone());
    let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
    if !head.starts_with("CONNECT ") {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await;
        return;
    }
    if let Some(auth) = required_authorization {
        if !head.contains(&format!("Proxy-Authorization: {auth}\r\n")) {
            let _ = client
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
                .await;
            return;
        }
    }
    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    tunnels.fetch_add(1, Ordering::SeqCst);
    let _ = client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

fn basic(user_password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("balena-egress-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The exporter on `yaml` (a file, so that it can be reloaded) against `sim`.
async fn spawn_file(sim: Simulator, dir: &Path, yaml: &str) -> TestApp {
    let file = dir.join("config.yml");
    std::fs::write(&file, yaml).unwrap();
    let opts = LoadOptions::file(&file);
    let cfg = config::load(&opts).unwrap_or_else(|e| panic!("{e}"));
    spawn_config(sim, SharedConfig::new(cfg, Some(opts))).await
}

fn config_with(url: &str, api_extra: &str) -> String {
    default_config(url, &["screens"]).replace(
        "  timeout: 5s\n",
        &format!("  timeout: 5s\n  cache_ttl: 0s\n  fleet_cache_ttl: 0s\n{api_extra}"),
    )
}

async fn result(app: &TestApp) -> String {
    let debug = app.get("/probe?target=screens&debug=true").await.body;
    debug
        .lines()
        .find(|l| l.starts_with("Result:"))
        .unwrap_or("")
        .to_string()
        + "\n"
        + &debug
}

#[actix_rt::test]
async fn probes_go_through_a_connect_proxy_and_no_proxy_goes_around_it() {
    let proxy = ConnectProxy::start(Some(basic("ops:pr0xy-pass"))).await;
    let sim = Simulator::start(&world(&[("screens", 3)]), "127.0.0.1:0").unwrap();
    let sim_url = sim.url();
    let with_proxy = proxy.url.replace("http://", "http://ops:pr0xy-pass@");
    let dir = temp_dir("proxy");
    let app = spawn_file(
        sim,
        &dir,
        &config_with(&sim_url, &format!("  proxy_url: {with_proxy}\n")),
    )
    .await;
    let first = result(&app).await;
    assert!(first.starts_with("Result: success"), "{first}");
    let tunnels = proxy.tunnels();
    assert!(tunnels >= 1, "no tunnel: {first}");
    let sim_authority = sim_url.trim_start_matches("http://");
    let asked = proxy.asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .all(|h| h.starts_with(&format!("CONNECT {sim_authority} HTTP/1.1\r\n"))),
        "{asked:?}"
    );
    let shown = app.get("/config").await.body;
    assert!(shown.contains("proxy_url:"), "{shown}");
    assert!(!shown.contains("pr0xy-pass"), "{shown}");

    // no_proxy covers the API's address: straight there, the proxy sees nothing more.
    std::fs::write(
        dir.join("config.yml"),
        config_with(
            &sim_url,
            &format!("  proxy_url: {with_proxy}\n  no_proxy: localhost,127.0.0.0/8\n"),
        ),
    )
    .unwrap();
    assert_eq!(app.post("/-/reload").await.status, 200);
    let direct = result(&app).await;
    assert!(direct.starts_with("Result: success"), "{direct}");
    assert_eq!(proxy.tunnels(), tunnels, "no_proxy went through the proxy");

    // A wrong password: the proxy's 407, said plainly; the password is not.
    std::fs::write(
        dir.join("config.yml"),
        config_with(
            &sim_url,
            &format!(
                "  proxy_url: {}\n",
                proxy.url.replace("http://", "http://ops:wr0ng-pass@")
            ),
        ),
    )
    .unwrap();
    assert_eq!(app.post("/-/reload").await.status, 200);
    let refused = result(&app).await;
    assert!(
        refused.starts_with("Result: failure (transport)"),
        "{refused}"
    );
    assert!(refused.contains("answered 407 to CONNECT"), "{refused}");
    assert!(!refused.contains("wr0ng-pass"), "{refused}");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA, a server certificate for `api.balena.test` and a client certificate it signed, as
/// files in `dir`: (ca, server cert, server key, client cert, client key).
fn private_ca(dir: &Path, tag: &str) -> [PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        (params.signed_by(&key, &ca, &ca_key).unwrap(), key)
    };
    let (server, server_key) = leaf(
        vec!["api.balena.test".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(vec!["exporter".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let files = [
        (format!("{tag}-ca.pem"), ca.pem()),
        (format!("{tag}-server.pem"), server.pem()),
        (format!("{tag}-server.key"), server_key.serialize_pem()),
        (format!("{tag}-client.pem"), client.pem()),
        (format!("{tag}-client.key"), client_key.serialize_pem()),
    ];
    files.map(|(name, text)| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    })
}

/// The simulator over TLS with the CA's server certificate, requiring a client certificate
/// the CA signed.
fn tls_simulator(dir: &Path, [ca, cert, key, _, _]: &[PathBuf; 5]) -> (Simulator, String) {
    let web = dir.join("sim-web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            cert.display(),
            key.display(),
            ca.display()
        ),
    )
    .unwrap();
    let (_, tls) = web_config::load(&web).unwrap();
    let sim = Simulator::start_with_tls(&world(&[("screens", 3)]), "127.0.0.1:0", tls).unwrap();
    let url = sim.url().replace("http://", "https://");
    (sim, url)
}

fn tls_keys(ca: &Path, client: Option<(&Path, &Path)>, extra: &str) -> String {
    let mut t = format!(
        "  tls_config:\n    ca_file: {}\n    server_name: api.balena.test\n",
        ca.display()
    );
    if let Some((cert, key)) = client {
        t.push_str(&format!(
            "    cert_file: {}\n    key_file: {}\n",
            cert.display(),
            key.display()
        ));
    }
    t + extra
}

#[actix_rt::test]
async fn an_api_signed_by_a_private_ca_with_client_certificates() {
    let dir = temp_dir("private-ca");
    let files = private_ca(&dir, "good");
    let [ca, _, _, client_cert, client_key] = &files;
    let (sim, url) = tls_simulator(&dir, &files);
    let client = Some((client_cert.as_path(), client_key.as_path()));
    let app = spawn_file(sim, &dir, &config_with(&url, &tls_keys(ca, client, ""))).await;
    let ok = result(&app).await;
    assert!(ok.starts_with("Result: success"), "{ok}");
    let m = app.probe("target=screens").await;
    assert_eq!(
        m.value("balena_fleet_devices", &[("fleet", "acme/screens")]),
        3.0
    );
    let shown = app.get("/config").await.body;
    assert!(shown.contains("server_name: api.balena.test"), "{shown}");
    assert!(
        shown.contains(&format!("ca_file: {}", ca.display())),
        "{shown}"
    );

    let rewrite = |yaml: String| {
        std::fs::write(dir.join("config.yml"), yaml).unwrap();
    };
    // The API asks for a client certificate: without one, the handshake fails.
    rewrite(config_with(&url, &tls_keys(ca, None, "")));
    assert_eq!(app.post("/-/reload").await.status, 200);
    let no_client = result(&app).await;
    assert!(
        no_client.starts_with("Result: failure (transport)"),
        "{no_client}"
    );
    // Another CA: the API's certificate is not trusted.
    let other = private_ca(&dir, "other");
    rewrite(config_with(&url, &tls_keys(&other[0], client, "")));
    assert_eq!(app.post("/-/reload").await.status, 200);
    let untrusted = result(&app).await;
    assert!(
        untrusted.starts_with("Result: failure (transport)"),
        "{untrusted}"
    );
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "{untrusted}"
    );
    // insecure_skip_verify accepts it.
    rewrite(config_with(
        &url,
        &tls_keys(&other[0], client, "    insecure_skip_verify: true\n"),
    ));
    assert_eq!(app.post("/-/reload").await.status, 200);
    let insecure = result(&app).await;
    assert!(insecure.starts_with("Result: success"), "{insecure}");
    // A reload re-reads the CA file: the right CA written over the other one's file.
    rewrite(config_with(&url, &tls_keys(&other[0], client, "")));
    assert_eq!(app.post("/-/reload").await.status, 200);
    assert!(result(&app).await.starts_with("Result: failure"));
    std::fs::copy(ca, &other[0]).unwrap();
    assert_eq!(app.post("/-/reload").await.status, 200);
    let reread = result(&app).await;
    assert!(reread.starts_with("Result: success"), "{reread}");
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_rt::test]
async fn a_private_ca_api_through_the_proxy() {
    let proxy = ConnectProxy::start(None).await;
    let dir = temp_dir("ca-proxy");
    let files = private_ca(&dir, "good");
    let [ca, _, _, client_cert, client_key] = &files;
    let (sim, url) = tls_simulator(&dir, &files);
    let client = Some((client_cert.as_path(), client_key.as_path()));
    let api = format!("  proxy_url: {}\n{}", proxy.url, tls_keys(ca, client, ""));
    let app = spawn_file(sim, &dir, &config_with(&url, &api)).await;
    let ok = result(&app).await;
    assert!(ok.starts_with("Result: success"), "{ok}");
    assert!(proxy.tunnels() >= 1);
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad transport settings are config errors naming the key.
#[test]
fn bad_transport_settings_are_refused_by_key() {
    let dir = temp_dir("bad-transport");
    let base = "auths:\n  a:\n    token: tok\ntargets:\n  t: {fleet: org/app, auth: a}\n";
    for (api, want) in [
        (
            "api:\n  proxy_url: https://proxy.corp:3128\n".to_string(),
            "api.proxy_url: https://proxy.corp:3128/: only http:// proxies are supported",
        ),
        (
            "api:\n  proxy_url: http://proxy:3128\n  proxy_from_environment: true\n".to_string(),
            "api.proxy_from_environment: set either proxy_url or proxy_from_environment",
        ),
        (
            format!("api:\n  tls_config:\n    ca_file: {}\n", dir.join("missing.pem").display()),
            "api.tls_config.ca_file: cannot read",
        ),
        (
            format!("api:\n  tls_config:\n    cert_file: {}\n", dir.join("c.pem").display()),
            "api.tls_config.key_file: cert_file needs key_file",
        ),
        (
            "api:\n  tls_config:\n    server_name: \"not a name\"\n".to_string(),
            "api.tls_config.server_name: \"not a name\" is not a DNS name or IP",
        ),
        (
            "api:\n  tls_config:\n    verify: false\n".to_string(),
            "api.tls_config.verify: unknown key; expected one of: ca_file, cert_file, key_file, server_name, insecure_skip_verify",
        ),
    ] {
        let err = config::from_yaml_str(&format!("{api}{base}"), "t.yml").unwrap_err();
        assert!(err.to_string().contains(want), "{api}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A proxy whose CONNECT answer head never ends (20 KiB of header lines) is reported as that,
/// not as a proxy that closed without an answer.
#[actix_rt::test]
async fn a_connect_answer_head_past_its_cap_is_named_as_such() {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let mut head = b"HTTP/1.1 200 Connection established\r\n".to_vec();
            for i in 0..1000 {
                head.extend_from_slice(format!("X-Filler-{i}: 0123456789\r\n").as_bytes());
            }
            let _ = conn.write_all(&head);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    let sim = Simulator::start(&world(&[("screens", 2)]), "127.0.0.1:0").unwrap();
    let dir = temp_dir("long-connect-head");
    let url = sim.url().replace("127.0.0.1", "localhost");
    let app = spawn_file(
        sim,
        &dir,
        &config_with(&url, &format!("  proxy_url: {proxy}\n")),
    )
    .await;
    let r = result(&app).await;
    assert!(r.starts_with("Result: failure (transport)"), "{r}");
    assert!(
        r.contains("answered the CONNECT to localhost:")
            && r.contains("with a head longer than 16384 bytes"),
        "{r}"
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A redirect is never followed (the token would go with it): a 302 to another host fails the
/// probe with the other origin named, and nothing is sent there.
#[actix_rt::test]
async fn a_cross_origin_redirect_is_not_followed_and_named() {
    use std::io::{Read as _, Write as _};
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = elsewhere.local_addr().unwrap().port();
    elsewhere.set_nonblocking(true).unwrap();
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", api.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in api.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 302 Found\r\nLocation: http://localhost:{other}/v7/application?steal=1\r\nContent-Length: 0\r\n\r\n"
            );
        }
    });
    let sim = Simulator::start(&world(&[("screens", 2)]), "127.0.0.1:0").unwrap();
    let dir = temp_dir("redirect");
    let app = spawn_file(sim, &dir, &config_with(&url, "")).await;
    let r = result(&app).await;
    assert!(r.starts_with("Result: failure (transport)"), "{r}");
    assert!(
        r.contains(&format!(
            "HTTP 302: a redirect to another host, http://localhost:{other} (not followed"
        )),
        "{r}"
    );
    assert!(
        !r.contains("steal"),
        "no path or query of the Location: {r}"
    );
    assert!(
        elsewhere.accept().is_err(),
        "nothing was sent to the other host"
    );
    app.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
