//! How requests reach the API, resolved at load ([`Connection`]): the proxy (`api.proxy_url`,
//! or the environment's `HTTPS_PROXY`/`HTTP_PROXY` with `api.proxy_from_environment`), the
//! hosts that bypass it, and the TLS material of `api.tls_config` — its files read and parsed
//! then, so a reload re-reads them and a bad file is a config error naming its key. Named and
//! read as Prometheus' `http_config` reads them.
//!
//! These are settings and bytes only: the HTTP client is built from them by
//! `balena::transport`, and each worker rebuilds its client exactly when the [`Connection`] it
//! was built from is no longer equal (derived `Eq`: a new field cannot be forgotten).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::files::{pem_certs, pem_key};
use super::{shown_url, ApiConfig};

/// How requests reach the API; see the module doc.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// The proxy every request goes through (an `http://` URL, perhaps with credentials).
    pub proxy: Option<url::Url>,
    /// Hosts reached without the proxy (`no_proxy` or `NO_PROXY`).
    pub no_proxy: String,
    /// CA certificates that replace the public roots (`tls_config.ca_file`).
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// A client certificate chain and its key (`tls_config.cert_file`, `key_file`).
    pub identity: Option<(Vec<CertificateDer<'static>>, ClientKey)>,
    /// The name TLS sends and checks (`tls_config.server_name`).
    pub server_name: Option<String>,
    /// Accept any certificate (`tls_config.insecure_skip_verify`).
    pub insecure_skip_verify: bool,
}

/// A client certificate's private key: compared by its bytes, never shown.
pub struct ClientKey(pub PrivateKeyDer<'static>);

impl Clone for ClientKey {
    fn clone(&self) -> Self {
        Self(self.0.clone_key())
    }
}

impl PartialEq for ClientKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.secret_der() == other.0.secret_der()
    }
}

impl Eq for ClientKey {}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("proxy", &self.proxy.as_ref().map(shown_url))
            .field("no_proxy", &self.no_proxy)
            .field(
                "ca",
                &self
                    .ca
                    .as_ref()
                    .map(|c| format!("{} certificates", c.len())),
            )
            .field(
                "identity",
                &self
                    .identity
                    .as_ref()
                    .map(|(c, _)| format!("{} certificates and <secret> key", c.len())),
            )
            .field("server_name", &self.server_name)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

impl Connection {
    /// The connection `api` describes: the environment read and the files read and parsed now,
    /// everything a TLS client will refuse checked now. The error names the key.
    pub fn resolve(api: &ApiConfig) -> Result<Self, (String, String)> {
        let (proxy, no_proxy) = if api.proxy_from_environment {
            proxy_from_environment(api.url.scheme(), |n| std::env::var(n).ok())
                .map_err(|why| ("api.proxy_from_environment".to_string(), why))?
        } else {
            (api.proxy_url.clone(), api.no_proxy.clone())
        };
        if let Some(p) = &proxy {
            check_proxy(p)?;
        }
        let t = &api.tls_config;
        let key = |k: &str| format!("api.tls_config.{k}");
        let ca = match &t.ca_file {
            Some(path) => Some(pem_certs(path).map_err(|e| (key("ca_file"), e))?),
            None => None,
        };
        let identity = match (&t.cert_file, &t.key_file) {
            (None, None) => None,
            (Some(cert), Some(k)) => Some(identity(cert, k, &key)?),
            (Some(_), None) => return Err((key("key_file"), "cert_file needs key_file".into())),
            (None, Some(_)) => return Err((key("cert_file"), "key_file needs cert_file".into())),
        };
        if let Some(name) = &t.server_name {
            ServerName::try_from(name.as_str()).map_err(|_| {
                (
                    key("server_name"),
                    format!("{name:?} is not a DNS name or IP"),
                )
            })?;
        }
        let connection = Self {
            proxy,
            no_proxy,
            ca,
            identity,
            server_name: t.server_name.clone(),
            insecure_skip_verify: t.insecure_skip_verify,
        };
        if let (Some(ca), Some(path)) = (&connection.ca, &t.ca_file) {
            let mut roots = rustls::RootCertStore::empty();
            for c in ca {
                roots
                    .add(c.clone())
                    .map_err(|e| (key("ca_file"), format!("{}: {e}", path.display())))?;
            }
        }
        connection.tls().map_err(|e| {
            (
                key("key_file"),
                format!("does not match cert_file or cannot be used: {e}"),
            )
        })?;
        Ok(connection)
    }

    /// The rustls client config: the ring provider (as the rest of the exporter), HTTP/2 and
    /// 1.1; an error only for a client key rustls cannot use (checked at load).
    pub fn tls(&self) -> Result<rustls::ClientConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions");
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            let roots = match &self.ca {
                Some(ca) => {
                    let mut roots = rustls::RootCertStore::empty();
                    for c in ca {
                        roots.add(c.clone())?;
                    }
                    roots
                }
                None => public_roots(),
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match &self.identity {
            Some((certs, key)) => {
                builder.with_client_auth_cert(certs.clone(), key.0.clone_key())?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A proxy URL the tunnel can use: `http://` with a host (the tunnel to the API is TLS when
/// the API is).
fn check_proxy(url: &url::Url) -> Result<(), (String, String)> {
    let shown = shown_url(url);
    let bad = |why: String| ("api.proxy_url".to_string(), why);
    if url.scheme() != "http" {
        return Err(bad(format!(
            "{shown}: only http:// proxies are supported (requests are tunnelled with CONNECT)"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad(format!("{shown}: no host")));
    }
    Ok(())
}

fn identity(
    cert: &Path,
    key_file: &Path,
    key: &dyn Fn(&str) -> String,
) -> Result<(Vec<CertificateDer<'static>>, ClientKey), (String, String)> {
    let certs = pem_certs(cert).map_err(|e| (key("cert_file"), e))?;
    let private = pem_key(key_file).map_err(|e| (key("key_file"), e))?;
    Ok((certs, ClientKey(private)))
}

/// `HTTPS_PROXY` or `HTTP_PROXY` (by the API URL's scheme; lowercase names too) and
/// `NO_PROXY`, as Go's `ProxyFromEnvironment` reads them. A value without a scheme
/// (`proxy:3128`) is read as `http://VALUE`; one that has a scheme but is no URL
/// (`http://[bad`) is an error naming the variable (never its value: it may hold a password).
fn proxy_from_environment(
    scheme: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Option<url::Url>, String), String> {
    let var = |names: &[&'static str]| {
        names
            .iter()
            .find_map(|n| env(n).filter(|v| !v.is_empty()).map(|v| (*n, v)))
    };
    let proxy = if scheme == "https" {
        var(&["HTTPS_PROXY", "https_proxy"])
    } else {
        var(&["HTTP_PROXY", "http_proxy"])
    };
    let proxy = match proxy {
        None => None,
        Some((name, p)) => {
            let text = if p.contains("://") {
                p
            } else {
                format!("http://{p}")
            };
            let url = url::Url::parse(&text)
                .ok()
                .filter(|u| u.has_host())
                .ok_or_else(|| {
                    format!("the environment variable {name} is not a proxy URL (expected http://host:port)")
                })?;
            Some(url)
        }
    };
    let no_proxy = var(&["NO_PROXY", "no_proxy"]).map(|(_, v)| v);
    Ok((proxy, no_proxy.unwrap_or_default()))
}

/// The public roots awc uses by default (Mozilla's, bundled).
fn public_roots() -> rustls::RootCertStore {
    actix_tls::connect::rustls_0_23::webpki_roots_cert_store()
}

/// The handshake-signature checks of a verifier that holds its crypto provider as `self.0`: a
/// verifier that accepts a certificate without checking who issued it still checks that the
/// peer holds its key (the API's `insecure_skip_verify`, the web config's
/// `RequireAnyClientCert`).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    };
}
pub(crate) use signature_checks;

/// `insecure_skip_verify: true`: every certificate is accepted (signatures are still checked).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    crate::config::signature_checks!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_variables_are_read_as_go_reads_them_and_a_bad_one_is_named_not_quoted() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| v.to_string())
            }
        };
        let (url, no) = proxy_from_environment(
            "https",
            env(&[("https_proxy", "proxy:3128"), ("NO_PROXY", "x")]),
        )
        .unwrap();
        assert_eq!(url.unwrap().as_str(), "http://proxy:3128/");
        assert_eq!(no, "x");
        let (url, _) =
            proxy_from_environment("http", env(&[("HTTPS_PROXY", "http://other:1")])).unwrap();
        assert!(url.is_none(), "http:// APIs read HTTP_PROXY only");
        for bad in ["http://[bad", "http://user:hunter2@[bad"] {
            let pairs: &'static [(&'static str, &'static str)] =
                Box::leak(vec![("HTTPS_PROXY", bad)].into_boxed_slice());
            let why = proxy_from_environment("https", env(pairs)).unwrap_err();
            assert_eq!(
                why,
                "the environment variable HTTPS_PROXY is not a proxy URL (expected http://host:port)"
            );
        }
    }

    /// Go's reading of the environment: by the API URL's scheme, a bare `host:port` taken as
    /// `http://host:port`, `NO_PROXY` alongside.
    #[test]
    fn proxies_from_the_environment() {
        let vars = [
            ("HTTPS_PROXY", "proxy.corp:3128"),
            ("http_proxy", "http://other:8080"),
            ("NO_PROXY", "localhost,.corp"),
        ];
        let env = |n: &str| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        let (https, no) = proxy_from_environment("https", env).unwrap();
        assert_eq!(https.unwrap().as_str(), "http://proxy.corp:3128/");
        assert_eq!(no, "localhost,.corp");
        let (http, _) = proxy_from_environment("http", env).unwrap();
        assert_eq!(http.unwrap().as_str(), "http://other:8080/");
    }
}
