//! The connections to the API, built from the [`Connection`] the config resolved at load:
//! directly, or through an HTTP proxy as CONNECT tunnels, except for the hosts of `no_proxy`;
//! and over TLS with the material and name the connection carries. Each worker builds its awc
//! client with [`Transport::new`] and keeps it while the config's connection is equal to the one
//! it was built from (`balena::client`).

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use actix_rt::net::TcpStream;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection as TlsConnection};
use awc::http::Uri;
use base64::Engine as _;
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::Connection;

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
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("proxied", &self.proxy.is_some())
            .field("server_name", &self.server_name)
            .finish()
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
    /// The transport of `connection` (checked at load: an error here is a TLS key rustls
    /// cannot use, which the load refused already).
    pub fn new(connection: &Connection) -> Result<Self, rustls::Error> {
        Ok(Self {
            proxy: connection.proxy.as_ref().map(proxy_of),
            no_proxy: parse_no_proxy(&connection.no_proxy),
            server_name: connection.server_name.clone(),
            tls: Arc::new(connection.tls()?),
        })
    }

    /// An awc connector that routes and secures connections as this transport says.
    pub fn connector(
        &self,
    ) -> awc::Connector<
        impl actix_service::Service<
                ConnectInfo<Uri>,
                Response = TlsConnection<Uri, TcpStream>,
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

/// A proxy URL (checked at load: `http://` with a host) as a [`Proxy`].
fn proxy_of(url: &url::Url) -> Proxy {
    let host = url
        .host_str()
        .unwrap_or_default()
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
    Proxy {
        host,
        port: url.port_or_known_default().unwrap_or(80),
        authorization,
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
    type Response = TlsConnection<Uri, TcpStream>;
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
            Ok(TlsConnection::new(
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

    #[test]
    fn proxy_credentials_become_proxy_authorization() {
        let p = proxy_of(&url::Url::parse("http://ops:s%3Acret@proxy.corp:3128").unwrap());
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(p.authorization.unwrap().trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(decoded, b"ops:s:cret");
    }
}
