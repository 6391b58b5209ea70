//! `--web.config.file`: the Prometheus exporter-toolkit web configuration, every key of it —
//! TLS (rustls, [`tls`]: certificates read again when their files change), HTTP basic auth
//! (bcrypt hashes) for every path, extra response headers, a rate limit ([`rate_limit`]). A
//! web config written for node_exporter loads; the few values rustls cannot honour are
//! refused at load with a reason naming the key (docs/operations.md lists them).
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/balena-exporter/tls.crt
//!   key_file: /etc/balena-exporter/tls.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional; needs client_ca_file
//!   client_ca_file: /etc/balena-exporter/ca.crt
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...                          # htpasswd -nBC 10 "" | tr -d ':\n'
//! http_server_config:
//!   headers: { X-Frame-Options: deny }
//! ```
//!
//! The file is read at start (an invalid file stops the exporter with exit 1); the certificate,
//! key and client CA files it names are read again whenever they change.

pub mod rate_limit;
pub mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::files::{read_text, MAX_PEM_BYTES};
use serde::Deserialize;

/// The whole web config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// TLS for the listeners.
    #[serde(default)]
    pub tls_server_config: Option<TlsConfig>,
    /// user → bcrypt hash.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
    /// Extra headers.
    #[serde(default)]
    pub http_server_config: Option<HttpServerConfig>,
    /// A token bucket over every request.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

/// `rate_limit`: one request every `interval`, `burst` at once (exporter-toolkit's token
/// bucket over every request); an interval of 0 turns it off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Time between two requests, as a duration (`100ms`, `1s`); `0` turns the limit off.
    #[serde(default, with = "crate::config::duration")]
    pub interval: std::time::Duration,
    /// Requests allowed at once.
    #[serde(default)]
    pub burst: u32,
}

/// `tls_server_config`, as exporter-toolkit documents it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain file.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The certificate chain inline (PEM), instead of `cert_file`.
    #[serde(default)]
    pub cert: Option<secrecy::SecretString>,
    /// The private key inline (PEM), instead of `key_file`.
    #[serde(default)]
    pub key: Option<secrecy::SecretString>,
    /// `NoClientCert` (default), `RequireAnyClientCert`, `VerifyClientCertIfGiven`,
    /// `RequireAndVerifyClientCert`; `RequestClientCert` is refused (it ignores the
    /// certificate it asks for).
    #[serde(default)]
    pub client_auth_type: Option<String>,
    /// CA for client certificates.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// The client CA inline (PEM), instead of `client_ca_file`.
    #[serde(default)]
    pub client_ca: Option<secrecy::SecretString>,
    /// Client certificate names (DNS names, IP addresses) of which one must be in the
    /// certificate.
    #[serde(default)]
    pub client_allowed_sans: Vec<String>,
    /// `TLS12` (default) or `TLS13`.
    #[serde(default)]
    pub min_version: Option<String>,
    /// `TLS12` or `TLS13` (default).
    #[serde(default)]
    pub max_version: Option<String>,
    /// TLS 1.2 cipher suites by Go name; TLS 1.3's are always on.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// Whether the server's order of `cipher_suites` wins (default true).
    #[serde(default)]
    pub prefer_server_cipher_suites: Option<bool>,
    /// Key-exchange groups by Go name, in preference order.
    #[serde(default)]
    pub curve_preferences: Vec<String>,
}

impl WebConfig {
    /// The middleware that adds `http_server_config.headers` to every response. Never panics
    /// on a config that [`load`] accepted (every name and value was checked there).
    pub fn response_headers(&self) -> actix_web::middleware::DefaultHeaders {
        self.http_server_config
            .iter()
            .flat_map(|h| &h.headers)
            .fold(actix_web::middleware::DefaultHeaders::new(), |h, (k, v)| {
                h.add((k.as_str(), v.as_str()))
            })
    }
}

/// `http_server_config`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// HTTP/2 is offered over TLS (ALPN), as the exporter toolkit does by default; `false` is
    /// refused (it cannot be turned off here).
    #[serde(default)]
    pub http2: Option<bool>,
    /// Headers added to every response (the exporter-toolkit's security headers).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A web config problem.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {msg}")]
pub struct WebConfigError {
    file: String,
    msg: String,
}

fn err(file: &Path, msg: impl Into<String>) -> WebConfigError {
    WebConfigError {
        file: file.display().to_string(),
        msg: msg.into(),
    }
}

const ALLOWED_HEADERS: &[&str] = &[
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
];

/// A response header of `http_server_config.headers`: an allowed name, and a value that can be
/// sent (visible ASCII and spaces: a newline or NUL would make every response fail to build).
/// The value is never quoted back.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    if !ALLOWED_HEADERS.iter().any(|a| a.eq_ignore_ascii_case(name)) {
        return Err(format!(
            "http_server_config.headers.{}: not allowed; expected one of {}",
            name.escape_debug(),
            ALLOWED_HEADERS.join(", ")
        ));
    }
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
        && actix_web::http::header::HeaderValue::from_str(value).is_ok();
    if !ok {
        return Err(format!(
            "http_server_config.headers.{name}: not a valid header value (expected visible ASCII and spaces, not empty; no newline or control character)"
        ));
    }
    Ok(())
}

/// Reads and validates a web config file (certificates loaded, hashes checked).
pub fn load(path: &Path) -> Result<(WebConfig, Option<rustls::ServerConfig>), WebConfigError> {
    let text = read_text(path, MAX_PEM_BYTES).map_err(|e| err(path, e))?;
    let config: WebConfig = if text.trim().is_empty() {
        WebConfig::default()
    } else {
        // Through a generic value first: it refuses a key given twice (a user listed twice
        // would otherwise keep only its last hash, silently).
        // The parser's messages quote the value they refused (`invalid type: string "…"`),
        // which can be a password written where a hash belongs: quoted text is left out.
        let refused = |e: serde_yaml::Error| {
            let one_line: String = crate::config::unquoted_text(&e.to_string())
                .chars()
                .flat_map(|c| {
                    let escaped: Vec<char> = if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        vec![c]
                    };
                    escaped
                })
                .collect();
            err(path, one_line)
        };
        serde_yaml::from_str::<serde_yaml::Value>(&text).map_err(refused)?;
        serde_yaml::from_str(&text).map_err(refused)?
    };
    if config.http_server_config.as_ref().and_then(|h| h.http2) == Some(false) {
        return Err(err(
            path,
            "http_server_config.http2: false is not supported: HTTP/2 is offered over TLS (ALPN)",
        ));
    }
    for (user, hash) in &config.basic_auth_users {
        if user.is_empty() || user.contains(':') {
            return Err(err(
                path,
                format!("basic_auth_users: {user:?} cannot be a user name (empty, or holds ':', which Basic auth uses to end the name)"),
            ));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(err(
                path,
                format!("basic_auth_users.{user}: not a bcrypt hash (use htpasswd -nBC 10)"),
            ));
        }
    }
    if let Some(h) = &config.http_server_config {
        for (name, value) in &h.headers {
            check_header(name, value).map_err(|why| err(path, why))?;
        }
    }
    let tls = match &config.tls_server_config {
        Some(t) => {
            for (file, inline, key) in [
                (t.cert_file.is_some(), t.cert.is_some(), "cert"),
                (t.key_file.is_some(), t.key.is_some(), "key"),
                (
                    t.client_ca_file.is_some(),
                    t.client_ca.is_some(),
                    "client_ca",
                ),
            ] {
                if file && inline {
                    return Err(err(
                        path,
                        format!("tls_server_config.{key}: set {key}_file or {key}, not both"),
                    ));
                }
            }
            let config = tls::server_config(t)
                .map_err(|(key, why)| err(path, format!("tls_server_config.{key}: {why}")))?;
            Some(config)
        }
        None => None,
    };
    Ok((config, tls))
}

pub use crate::basic_auth::{require_basic_auth, BasicAuth};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_web_configs_are_refused_with_the_key() {
        let dir = std::env::temp_dir().join(format!("balena-webcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("web.yml");
        let cases = [
            (
                "basic_auth_users:\n  u: plaintext\n",
                "basic_auth_users.u: not a bcrypt hash",
            ),
            (
                "tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n",
                "tls_server_config.cert_file: cannot read /nope.crt",
            ),
            (
                "tls_server_config:\n  cert_file: /dev/zero\n  key_file: /dev/zero\n",
                "tls_server_config.cert_file: /dev/zero is not a regular file",
            ),
            ("bogus: 1\n", "unknown field `bogus`"),
            (
                "basic_auth_users:\n  u: $2y$10$abcdefghijklmnopqrstuu5fW9x8r1QF0Bx1V2y3z4A5b6C7d8E9f\n  u: $2y$10$abcdefghijklmnopqrstuu5fW9x8r1QF0Bx1V2y3z4A5b6C7d8E9f\n",
                "duplicate entry",
            ),
            (
                "basic_auth_users:\n  'a:b': $2y$10$abcdefghijklmnopqrstuu5fW9x8r1QF0Bx1V2y3z4A5b6C7d8E9f\n",
                "cannot be a user name",
            ),
            (
                "http_server_config:\n  http2: false\n",
                "http2: false is not supported",
            ),
            (
                "http_server_config:\n  headers:\n    X-Evil: 1\n",
                "http_server_config.headers.X-Evil: not allowed",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: \"deny\\nX-Injected: 1\"\n",
                "http_server_config.headers.X-Frame-Options: not a valid header value",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: \"deny\\0\"\n",
                "http_server_config.headers.X-Frame-Options: not a valid header value",
            ),
            (
                "http_server_config:\n  headers:\n    X-Frame-Options: \"\"\n",
                "http_server_config.headers.X-Frame-Options: not a valid header value",
            ),
            (
                "basic_auth_users: \"prom:hunter2-password\"\n",
                "basic_auth_users: invalid type: string \"…\"",
            ),
            (
                "tls_server_config:\n  cert_file: /a\n  cert: x\n  key_file: /b\n",
                "tls_server_config.cert: set cert_file or cert, not both",
            ),
            ("rate_limit:\n  interval: 10\n", "a duration needs a unit"),
        ];
        for (yaml, want) in cases {
            std::fs::write(&f, yaml).unwrap();
            let e = load(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("hunter2") && !e.contains('\n'), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A certificate, its key and a CA on disk (rcgen), and the web config lines naming them.
    fn pki(dir: &Path) -> String {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("tls.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), ck.key_pair.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), ck.cert.pem()).unwrap();
        format!(
            "  cert_file: {d}/tls.crt\n  key_file: {d}/tls.key\n  client_ca_file: {d}/ca.crt\n",
            d = dir.display()
        )
    }

    /// A web config written for node_exporter, every key of exporter-toolkit's, loads.
    #[test]
    fn every_exporter_toolkit_key_is_taken() {
        let dir = std::env::temp_dir().join(format!("balena-webcfg-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = pki(&dir);
        let f = dir.join("web.yml");
        let full = format!(
            "tls_server_config:\n{files}  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: [prometheus.monitoring.svc, 10.0.0.7]\n  min_version: TLS12\n  max_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305]\n  prefer_server_cipher_suites: false\n  curve_preferences: [X25519, CurveP256, CurveP384]\nhttp_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n    Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n  prometheus: $2y$10$abcdefghijklmnopqrstuu5fW9x8r1QF0Bx1V2y3z4A5b6C7d8E9f\nrate_limit:\n  interval: 100ms\n  burst: 20\n"
        );
        std::fs::write(&f, &full).unwrap();
        let (web, tls) = load(&f).unwrap_or_else(|e| panic!("{e}"));
        let tls = tls.expect("TLS");
        assert!(
            !tls.ignore_client_order,
            "prefer_server_cipher_suites: false"
        );
        let rate = web.rate_limit.unwrap();
        assert_eq!((rate.interval.as_millis(), rate.burst), (100, 20));
        // Inline PEM instead of files, and RequireAnyClientCert.
        let cert = std::fs::read_to_string(dir.join("tls.crt")).unwrap();
        let key = std::fs::read_to_string(dir.join("tls.key")).unwrap();
        let indent = |t: &str| t.lines().map(|l| format!("    {l}\n")).collect::<String>();
        std::fs::write(
            &f,
            format!(
                "tls_server_config:\n  cert: |\n{}  key: |\n{}  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [prometheus]\n",
                indent(&cert),
                indent(&key)
            ),
        )
        .unwrap();
        let (web, tls) = load(&f).unwrap_or_else(|e| panic!("{e}"));
        assert!(tls.is_some());
        assert!(
            !format!("{web:?}").contains("PRIVATE KEY"),
            "the inline key is never shown"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What rustls cannot honour is refused at load, in one line naming the key.
    #[test]
    fn what_cannot_be_honoured_is_refused_by_key() {
        let dir = std::env::temp_dir().join(format!("balena-webcfg-no-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = pki(&dir);
        let f = dir.join("web.yml");
        for (extra, want) in [
            ("  min_version: TLS10\n", "tls_server_config.min_version: TLS10 is not supported"),
            ("  client_auth_type: RequestClientCert\n", "tls_server_config.client_auth_type: RequestClientCert asks for a certificate and ignores it"),
            ("  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n", "tls_server_config.cipher_suites: \"TLS_RSA_WITH_AES_128_CBC_SHA\" is not offered"),
            ("  curve_preferences: [CurveP521]\n", "tls_server_config.curve_preferences: \"CurveP521\" is not offered"),
            ("  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: [\"ops@example.com\"]\n", "tls_server_config.client_allowed_sans: \"ops@example.com\": DNS names and IP addresses are matched"),
            ("  client_allowed_sans: [prometheus]\n", "tls_server_config.client_allowed_sans: needs client_auth_type RequireAndVerifyClientCert or RequireAnyClientCert"),
        ] {
            std::fs::write(&f, format!("tls_server_config:\n{files}{extra}")).unwrap();
            let e = load(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
