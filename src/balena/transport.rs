//! How requests reach the API: directly, or through an HTTP proxy (`api.proxy_url`, or the
//! environment's `HTTPS_PROXY`/`HTTP_PROXY` with `api.proxy_from_environment`) as CONNECT
//! tunnels, except for the hosts of `no_proxy`; and over TLS as `api.tls_config` says (a private
//! CA instead of the public roots, a client certificate, the name to verify, or no check at
//! all). Named and read as Prometheus' `http_config` reads them.
//!
//! A [`Transport`] is built when the config is loaded (its files read then, so a reload re-reads
//! them and a bad file is a config error); each worker's awc client is rebuilt only when the
//! transport's settings or files changed ([`Transport::fingerprint`]).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use actix_rt::net::TcpStream;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
use awc::http::Uri;
use base64::Engine as _;
use futures_util::future::LocalBoxFuture;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::files::{pem_certs, pem_key};
use crate::config::{ApiConfig, TlsClientConfig};

/// A proxy: where to connect, and the `Proxy-Authorization` to send (from its URL's
/// user and password).
#[derive(Clone)]
struct Proxy {
    host: String,
    port: u16,
    authorization: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<secret>"),
            )
            .finish()
    }
}

/// The route and TLS of requests to the API.
pub struct Transport {
    proxy: Option<Proxy>,
    no_proxy: Vec<NoProxy>,
    server_name: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    fingerprint: u64,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("proxied", &self.proxy.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            proxy: None,
            no_proxy: Vec::new(),
            server_name: None,
            tls: Arc::new(
                tls_config(public_roots(), None, false).expect("the default TLS config builds"),
            ),
            fingerprint: 0,
        }
    }
}

/// One entry of `no_proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxy {
    /// `*`: no host uses the proxy.
    All,
    /// An address block (`10.0.0.0/8`, or one address).
    Net(IpAddr, u8),
    /// A name and its subdomains (`example.com`, `.example.com`).
    Domain(String),
}

impl Transport {
    /// The transport `api` describes, its files read now. The error names the key.
    pub fn from_config(api: &ApiConfig) -> Result<Self, (String, String)> {
        let (proxy_url, no_proxy) = if api.proxy_from_environment {
            proxy_from_environment(api.url.scheme(), |n| std::env::var(n).ok())
                .map_err(|why| ("api.proxy_from_environment".to_string(), why))?
        } else {
            (api.proxy_url.clone(), api.no_proxy.clone())
        };
        let proxy = proxy_url.as_ref().map(proxy_of).transpose()?;
        let t = &api.tls_config;
        let (tls, files) = tls_of(t)?;
        let mut hash = std::collections::hash_map::DefaultHasher::new();
        (
            proxy_url.as_ref().map(url::Url::as_str),
            &no_proxy,
            t,
            files,
        )
            .hash(&mut hash);
        Ok(Self {
            proxy,
            no_proxy: parse_no_proxy(&no_proxy),
            server_name: t.server_name.clone(),
            tls: Arc::new(tls),
            fingerprint: hash.finish(),
        })
    }

    /// Changes whenever the settings or the contents of their files change.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// An awc connector that routes and secures connections as this transport says.
    pub fn connector(
        &self,
    ) -> awc::Connector<
        impl actix_service::Service<
                ConnectInfo<Uri>,
                Response = Connection<Uri, TcpStream>,
                Error = ConnectError,
            > + Clone,
    > {
        let route = Rc::new(Route {
            proxy: self.proxy.clone(),
            no_proxy: self.no_proxy.clone(),
            server_name: self.server_name.clone(),
        });
        awc::Connector::new()
            .connector(Connect { route })
            .rustls_0_23(self.tls.clone())
    }
}

/// `proxy_url` as a [`Proxy`]: http only (the tunnel to the API is TLS when the API is).
fn proxy_of(url: &url::Url) -> Result<Proxy, (String, String)> {
    let shown = crate::config::shown_url(url);
    let bad = |why: String| ("api.proxy_url".to_string(), why);
    if url.scheme() != "http" {
        return Err(bad(format!(
            "{shown}: only http:// proxies are supported (requests are tunnelled with CONNECT)"
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| bad(format!("{shown}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let authorization = (!url.username().is_empty()).then(|| {
        let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy();
        let password =
            percent_encoding::percent_decode_str(url.password().unwrap_or("")).decode_utf8_lossy();
        let pair = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    });
    Ok(Proxy {
        host,
        port: url.port_or_known_default().unwrap_or(80),
        authorization,
    })
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

/// The rustls client config of `api.tls_config`, and the bytes of its files (for the
/// fingerprint).
fn tls_of(t: &TlsClientConfig) -> Result<(rustls::ClientConfig, Vec<u8>), (String, String)> {
    let key = |k: &str| format!("api.tls_config.{k}");
    let mut files = Vec::new();
    let roots = match &t.ca_file {
        Some(path) => {
            let certs = pem_certs(path).map_err(|e| (key("ca_file"), e))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in &certs {
                files.extend_from_slice(c);
                roots
                    .add(c.clone())
                    .map_err(|e| (key("ca_file"), format!("{}: {e}", path.display())))?;
            }
            roots
        }
        None => public_roots(),
    };
    let client = match (&t.cert_file, &t.key_file) {
        (None, None) => None,
        (Some(cert), Some(k)) => Some(client_identity(cert, k, &mut files, &key)?),
        (Some(_), None) => return Err((key("key_file"), "cert_file needs key_file".to_string())),
        (None, Some(_)) => return Err((key("cert_file"), "key_file needs cert_file".to_string())),
    };
    if let Some(name) = &t.server_name {
        ServerName::try_from(name.as_str()).map_err(|_| {
            (
                key("server_name"),
                format!("{name:?} is not a DNS name or IP"),
            )
        })?;
    }
    let config = tls_config(roots, client, t.insecure_skip_verify).map_err(|e| {
        (
            key("key_file"),
            format!("does not match cert_file or cannot be used: {e}"),
        )
    })?;
    Ok((config, files))
}

type Identity = (
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

fn client_identity(
    cert: &Path,
    key_file: &Path,
    files: &mut Vec<u8>,
    key: &dyn Fn(&str) -> String,
) -> Result<Identity, (String, String)> {
    let certs = pem_certs(cert).map_err(|e| (key("cert_file"), e))?;
    let private = pem_key(key_file).map_err(|e| (key("key_file"), e))?;
    for c in &certs {
        files.extend_from_slice(c);
    }
    files.extend_from_slice(private.secret_der());
    Ok((certs, private))
}

/// The public roots awc uses by default (Mozilla's, bundled).
fn public_roots() -> rustls::RootCertStore {
    actix_tls::connect::rustls_0_23::webpki_roots_cert_store()
}

/// A client config with the ring provider (as the rest of the exporter), HTTP/2 and 1.1; an
/// error only for a client key rustls cannot use.
fn tls_config(
    roots: rustls::RootCertStore,
    client: Option<Identity>,
    insecure: bool,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions");
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        builder.with_root_certificates(roots)
    };
    let mut config = match client {
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
}

fn parse_no_proxy(list: &str) -> Vec<NoProxy> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e == "*" {
                return NoProxy::All;
            }
            if let Some((ip, bits)) = e.split_once('/') {
                if let (Ok(ip), Ok(bits)) = (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
                    return NoProxy::Net(ip, bits);
                }
            }
            let bare = e.trim_start_matches('[');
            let host = match bare.rsplit_once(':') {
                // `host:port` (the port is not compared: one API URL, one port)
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
                _ => bare,
            };
            let host = host.trim_end_matches(']');
            match host.parse::<IpAddr>() {
                Ok(ip) => NoProxy::Net(ip, if ip.is_ipv4() { 32 } else { 128 }),
                Err(_) => NoProxy::Domain(host.trim_start_matches('.').to_ascii_lowercase()),
            }
        })
        .collect()
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width): (u128, u128, u32) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a).into(), u32::from(b).into(), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.into(), b.into(), 128),
        _ => return false,
    };
    let bits = u32::from(bits).min(width);
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (a >> shift) == (b >> shift)
}

/// Where one connection goes.
struct Route {
    proxy: Option<Proxy>,
    no_proxy: Vec<NoProxy>,
    server_name: Option<String>,
}

impl Route {
    /// The proxy for `host`, unless `no_proxy` covers it.
    fn proxy_for(&self, host: &str) -> Option<&Proxy> {
        let proxy = self.proxy.as_ref()?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        let bypass = self.no_proxy.iter().any(|e| match e {
            NoProxy::All => true,
            NoProxy::Net(net, bits) => ip.is_some_and(|ip| in_net(ip, *net, *bits)),
            NoProxy::Domain(d) => host == *d || host.ends_with(&format!(".{d}")),
        });
        (!bypass).then_some(proxy)
    }
}

/// The awc TCP connector: a direct connection, or a CONNECT tunnel through the proxy; the
/// connection then carries `server_name` (when set) as the name TLS checks and sends.
#[derive(Clone)]
struct Connect {
    route: Rc<Route>,
}

impl actix_service::Service<ConnectInfo<Uri>> for Connect {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let route = self.route.clone();
        let (host, port) = (req.hostname().to_string(), req.port());
        let uri = req.request().clone();
        Box::pin(async move {
            let stream = match route.proxy_for(&host) {
                Some(proxy) => tunnel(proxy, &host, port).await?,
                None => {
                    TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
                        .await
                        .map_err(ConnectError::Io)?
                }
            };
            let _ = stream.set_nodelay(true);
            Ok(Connection::new(
                tls_name(uri, route.server_name.as_deref()),
                stream,
            ))
        })
    }
}

/// `uri` with `server_name` as its host: the name rustls sends and checks.
fn tls_name(uri: Uri, server_name: Option<&str>) -> Uri {
    let Some(name) = server_name else {
        return uri;
    };
    let authority = match uri.port_u16() {
        Some(p) => format!("{name}:{p}"),
        None => name.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.authority = authority.parse().ok();
    Uri::from_parts(parts).unwrap_or(uri)
}

/// The largest CONNECT answer head read.
const MAX_PROXY_HEAD: usize = 16 * 1024;

/// A connection to `host:port` through `proxy`: `CONNECT`, then the proxy's `200`.
async fn tunnel(proxy: &Proxy, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let failed = |why: String| ConnectError::Io(std::io::Error::other(why));
    let mut stream = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| {
            failed(format!(
                "cannot reach the proxy {}:{}: {e}",
                proxy.host, proxy.port
            ))
        })?;
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| failed(format!("proxy {}:{}: {e}", proxy.host, proxy.port)))?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte: nothing past the head may be read, it is the API's.
    while !answer.ends_with(b"\r\n\r\n") {
        let n = stream
            .read(&mut byte)
            .await
            .map_err(|e| failed(format!("proxy {}:{}: {e}", proxy.host, proxy.port)))?;
        if n == 0 {
            let how = if answer.is_empty() {
                "without an answer".to_string()
            } else {
                format!("after {} bytes of an unfinished answer head", answer.len())
            };
            return Err(failed(format!(
                "the proxy {}:{} closed the CONNECT to {target} {how}",
                proxy.host, proxy.port
            )));
        }
        if answer.len() >= MAX_PROXY_HEAD {
            return Err(failed(format!(
                "the proxy {}:{} answered the CONNECT to {target} with a head longer than {MAX_PROXY_HEAD} bytes; given up",
                proxy.host, proxy.port
            )));
        }
        answer.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    if status != "200" {
        return Err(failed(format!(
            "the proxy {}:{} answered {status} to CONNECT {target}{}",
            proxy.host,
            proxy.port,
            if status == "407" {
                " (proxy authentication required: user and password in api.proxy_url)"
            } else {
                ""
            }
        )));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
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

    use super::*;

    #[test]
    fn no_proxy_covers_names_subdomains_addresses_and_blocks() {
        let route = |list: &str| Route {
            proxy: Some(Proxy {
                host: "proxy".into(),
                port: 3128,
                authorization: None,
            }),
            no_proxy: parse_no_proxy(list),
            server_name: None,
        };
        let r = route("localhost, .internal.example, 10.0.0.0/8, ::1, api.local:443");
        for (host, proxied) in [
            ("api.balena-cloud.com", true),
            ("localhost", false),
            ("a.internal.example", false),
            ("internal.example", false),
            ("notinternal.example", true),
            ("10.2.3.4", false),
            ("11.2.3.4", true),
            ("[::1]", false),
            ("api.local", false),
        ] {
            assert_eq!(r.proxy_for(host).is_some(), proxied, "{host}");
        }
        assert!(route("*").proxy_for("anything").is_none());
        assert!(route("").proxy_for("anything").is_some());
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

    #[test]
    fn proxy_credentials_become_proxy_authorization() {
        let p = proxy_of(&url::Url::parse("http://ops:s%3Acret@proxy.corp:3128").unwrap()).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(p.authorization.unwrap().trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(decoded, b"ops:s:cret");
        let https = proxy_of(&url::Url::parse("https://proxy.corp").unwrap()).unwrap_err();
        assert!(https.1.contains("only http:// proxies"), "{https:?}");
    }
}
