//! `--web.config.file`: the Prometheus exporter-toolkit web configuration — TLS (rustls) and
//! HTTP basic auth (bcrypt hashes) for every path, plus extra response headers.
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
//! The file is read once at start; an invalid file stops the exporter with exit 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::files::{pem_certs, pem_key, read_text, MAX_PEM_BYTES};
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
}

/// `tls_server_config`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// `NoClientCert` (default), `RequireAnyClientCert` is not supported,
    /// `VerifyClientCertIfGiven`, `RequireAndVerifyClientCert`.
    #[serde(default)]
    pub client_auth_type: Option<String>,
    /// CA for client certificates.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// `TLS12` (default) or `TLS13`.
    #[serde(default)]
    pub min_version: Option<String>,
    /// `TLS12` or `TLS13` (default).
    #[serde(default)]
    pub max_version: Option<String>,
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

/// `text` with every double-quoted part replaced by `"…"` (an error of the YAML parser quotes
/// the value it refused).
pub fn without_quoted_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else {
            out.push('…');
            return out;
        };
        out.push_str("…\"");
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
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
            let one_line: String = without_quoted_text(&e.to_string())
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
        Some(t) => Some(server_config(path, t)?),
        None => None,
    };
    Ok((config, tls))
}

fn version(
    path: &Path,
    key: &str,
    v: Option<&str>,
    default: &'static rustls::SupportedProtocolVersion,
) -> Result<&'static rustls::SupportedProtocolVersion, WebConfigError> {
    match v {
        None => Ok(default),
        Some("TLS12") => Ok(&rustls::version::TLS12),
        Some("TLS13") => Ok(&rustls::version::TLS13),
        Some(other) => Err(err(
            path,
            format!("tls_server_config.{key}: {other:?} not supported; expected TLS12 or TLS13"),
        )),
    }
}

/// Long on purpose: the TLS options in the order the exporter-toolkit format lists them, each
/// with its own error naming its key; split, the checks would lose that order.
fn server_config(path: &Path, t: &TlsConfig) -> Result<rustls::ServerConfig, WebConfigError> {
    // Each file is read whole first (a regular file of bounded size): `cert_file: /dev/zero`
    // must be an error, not a process growing until it is killed.
    let file_err =
        |key: &'static str| move |e: String| err(path, format!("tls_server_config.{key}: {e}"));
    let certs = pem_certs(&t.cert_file).map_err(file_err("cert_file"))?;
    let key = pem_key(&t.key_file).map_err(file_err("key_file"))?;
    let min = version(
        path,
        "min_version",
        t.min_version.as_deref(),
        &rustls::version::TLS12,
    )?;
    let max = version(
        path,
        "max_version",
        t.max_version.as_deref(),
        &rustls::version::TLS13,
    )?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| {
                (v.version != rustls::ProtocolVersion::TLSv1_2
                    || min.version == rustls::ProtocolVersion::TLSv1_2)
                    && (v.version != rustls::ProtocolVersion::TLSv1_3
                        || max.version == rustls::ProtocolVersion::TLSv1_3)
            })
            .collect();
    if versions.is_empty() {
        return Err(err(
            path,
            "tls_server_config: min_version is above max_version",
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| err(path, format!("tls_server_config: {e}")))?;
    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let builder = match auth {
        "NoClientCert" => builder.with_no_client_auth(),
        "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert" => {
            let ca = t.client_ca_file.as_ref().ok_or_else(|| err(path, format!("tls_server_config.client_auth_type {auth} needs client_ca_file")))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in pem_certs(ca).map_err(file_err("client_ca_file"))? {
                roots.add(c).map_err(|e| err(path, format!("tls_server_config.client_ca_file: {e}")))?;
            }
            let mut v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if auth == "VerifyClientCertIfGiven" {
                v = v.allow_unauthenticated();
            }
            let verifier = v.build().map_err(|e| err(path, format!("tls_server_config.client_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        other => {
            return Err(err(
                path,
                format!("tls_server_config.client_auth_type: {other:?} not supported; expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
            ))
        }
    };
    builder.with_single_cert(certs, key).map_err(|e| {
        err(
            path,
            format!("tls_server_config: certificate and key do not match: {e}"),
        )
    })
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
        ];
        for (yaml, want) in cases {
            std::fs::write(&f, yaml).unwrap();
            let e = load(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("hunter2") && !e.contains('\n'), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
