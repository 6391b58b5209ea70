//! `tls_server_config` of the web config as rustls serves it: every key of exporter-toolkit's
//! (certificate and key from files or inline, client authentication, allowed client SANs, TLS
//! versions, TLS 1.2 cipher suites, curves, whose preference wins), and the certificate, key and
//! client CA **read again when their files change**, without a restart: a new connection gets
//! the new certificate (cert-manager renews into the same Secret, which Kubernetes swaps under
//! the mount). A file checked at most once a second; a changed file that cannot be used is
//! logged and the previous certificate kept.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, SignatureScheme};
use secrecy::ExposeSecret as _;

use super::TlsConfig;
use crate::config::files::{pem_certs, pem_key};

/// What a `tls_server_config` key is wrong about: the key, and why.
type KeyError = (&'static str, String);

/// What changes when a file does: its inode (a file renamed over it, a Kubernetes Secret's
/// symlink swap), its change and modification times and its length (a rewrite in place).
type Stamp = (u64, i64, SystemTime, u64);

/// How often a handshake may look at the files.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A PEM source: a file (read again when it changes), or the text inline in the web config.
#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Inline(Arc<secrecy::SecretString>),
}

impl Pem {
    fn of(file: &Option<PathBuf>, inline: Option<&secrecy::SecretString>) -> Option<Self> {
        match (file, inline) {
            (Some(path), _) => Some(Self::File(path.clone())),
            (None, Some(text)) => Some(Self::Inline(Arc::new(text.clone()))),
            (None, None) => None,
        }
    }

    /// What changes when the file does ([`Stamp`]).
    fn stamp(&self) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt as _;
        match self {
            Self::File(path) => {
                let m = std::fs::metadata(path).ok()?;
                let changed = m.ctime() * 1_000_000_000 + m.ctime_nsec();
                Some((m.ino(), changed, m.modified().ok()?, m.len()))
            }
            Self::Inline(_) => None,
        }
    }

    fn certs(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        use rustls::pki_types::pem::PemObject as _;
        match self {
            Self::File(path) => pem_certs(path),
            Self::Inline(text) => {
                let certs: Vec<_> = CertificateDer::pem_slice_iter(text.expose_secret().as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("inline PEM: {e}"))?;
                if certs.is_empty() {
                    return Err("inline PEM: no certificate found".into());
                }
                Ok(certs)
            }
        }
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, String> {
        use rustls::pki_types::pem::PemObject as _;
        match self {
            Self::File(path) => pem_key(path),
            Self::Inline(text) => PrivateKeyDer::from_pem_slice(text.expose_secret().as_bytes())
                .map_err(|e| format!("inline PEM: no private key ({e})")),
        }
    }
}

/// When to read files again: at most once every [`CHECK_EVERY`], and only when one of them
/// changed since the version in use.
struct Watched {
    files: Vec<Pem>,
    state: Mutex<(Instant, Vec<Option<Stamp>>)>,
}

impl Watched {
    fn new(files: Vec<Pem>) -> Self {
        let stamps = files.iter().map(Pem::stamp).collect();
        Self {
            files,
            state: Mutex::new((Instant::now(), stamps)),
        }
    }

    /// The files' stamps now, if it is time to look and they differ from the version in use.
    fn changed(&self) -> Option<Vec<Option<Stamp>>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.0.elapsed() < CHECK_EVERY {
            return None;
        }
        state.0 = Instant::now();
        let now: Vec<Option<Stamp>> = self.files.iter().map(Pem::stamp).collect();
        (now != state.1).then_some(now)
    }

    /// The files as of `stamps` are in use (a version that could not be used is not: it is
    /// tried again at the next look).
    fn in_use(&self, stamps: Vec<Option<Stamp>>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = stamps;
    }
}

/// The certificate and key, read again when their files change.
pub struct ReloadingCert {
    cert: Pem,
    key: Pem,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    watched: Watched,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadingCert")
    }
}

impl ReloadingCert {
    fn load(
        cert: &Pem,
        key: &Pem,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<CertifiedKey, KeyError> {
        let certs = cert.certs().map_err(|e| ("cert_file", e))?;
        let key = key.key().map_err(|e| ("key_file", e))?;
        let certified = CertifiedKey::from_der(certs, key, provider)
            .map_err(|e| ("key_file", format!("certificate and key do not match: {e}")))?;
        Ok(certified)
    }

    /// Reads them once now (an error names the key), to be read again on change.
    fn new(
        cert: Pem,
        key: Pem,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, KeyError> {
        let first = Self::load(&cert, &key, &provider)?;
        Ok(Self {
            watched: Watched::new(vec![cert.clone(), key.clone()]),
            cert,
            key,
            provider,
            current: ArcSwap::from_pointee(first),
        })
    }

    /// Reads the files again if they changed since the last look (at most once a second).
    fn refresh(&self) {
        let Some(stamps) = self.watched.changed() else {
            return;
        };
        match Self::load(&self.cert, &self.key, &self.provider) {
            Ok(certified) => {
                self.current.store(Arc::new(certified));
                self.watched.in_use(stamps);
                tracing::info!(
                    "web config: the TLS certificate changed on disk; new connections use it"
                );
            }
            Err((key, why)) => {
                // Tried again at the next change (or in a second, if still half written).
                tracing::warn!(
                    key = %format!("tls_server_config.{key}"),
                    error = %why,
                    "web config: the changed TLS certificate cannot be used; keeping the previous one"
                );
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        Some(self.current.load_full())
    }
}

/// Client certificate checks: the policy of `client_auth_type` over the client CA (read again
/// when its file changes), then `client_allowed_sans`.
pub struct ClientAuth {
    ca: Option<Pem>,
    policy: Policy,
    allowed_sans: Vec<ServerName<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    inner: ArcSwap<Arc<dyn ClientCertVerifier>>,
    watched: Watched,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("policy", &self.policy)
            .finish()
    }
}

/// `client_auth_type`, as Go's `tls.ClientAuthType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// A certificate is required, signed by the client CA.
    RequireAndVerify,
    /// A certificate, if given, must be signed by the client CA.
    VerifyIfGiven,
    /// A certificate is required; it is not checked against a CA (only its SANs, when
    /// `client_allowed_sans` is set).
    RequireAny,
}

impl ClientAuth {
    fn verifier(
        ca: Option<&Pem>,
        policy: Policy,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<dyn ClientCertVerifier>, String> {
        if policy == Policy::RequireAny {
            return Ok(Arc::new(AnyClientCert(provider.clone())));
        }
        let ca = ca.ok_or("needs client_ca_file or client_ca")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in ca.certs()? {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if policy == Policy::VerifyIfGiven {
            v = v.allow_unauthenticated();
        }
        let built: Arc<dyn ClientCertVerifier> = v.build().map_err(|e| e.to_string())?;
        Ok(built)
    }

    fn refresh(&self) {
        let Some(ca) = &self.ca else { return };
        let Some(stamps) = self.watched.changed() else {
            return;
        };
        match Self::verifier(Some(ca), self.policy, &self.provider) {
            Ok(v) => {
                self.inner.store(Arc::new(v));
                self.watched.in_use(stamps);
                tracing::info!("web config: the client CA changed on disk; new connections use it");
            }
            Err(why) => tracing::warn!(
                error = %why,
                "web config: the changed client CA cannot be used; keeping the previous one"
            ),
        }
    }

    /// Whether the end-entity certificate names one of `client_allowed_sans` (DNS names and
    /// IP addresses).
    fn san_allowed(&self, end_entity: &CertificateDer<'_>) -> bool {
        if self.allowed_sans.is_empty() {
            return true;
        }
        let Ok(cert) = webpki::EndEntityCert::try_from(end_entity) else {
            return false;
        };
        self.allowed_sans
            .iter()
            .any(|name| cert.verify_is_valid_for_subject_name(name).is_ok())
    }
}

impl ClientCertVerifier for ClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.policy != Policy::VerifyIfGiven
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA can change under us: no hints (a client then offers any certificate it has).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.refresh();
        let verified = self
            .inner
            .load()
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.san_allowed(end_entity) {
            return Err(rustls::Error::General(
                "the client certificate names none of client_allowed_sans".into(),
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.load().supported_verify_schemes()
    }
}

/// `RequireAnyClientCert`: a certificate is required and its signature of the handshake
/// checked; who issued it is not (Go's semantics; with `client_allowed_sans` its names are).
#[derive(Debug)]
struct AnyClientCert(Arc<rustls::crypto::CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    crate::config::signature_checks!();
}

/// A TLS 1.2 cipher suite by its Go name (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`): the ones
/// rustls offers; Go's CBC and RC4 suites are not to be had.
fn suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// A key-exchange group by its Go name (`X25519`, `CurveP256`, `CurveP384`).
fn curve(name: &str) -> Option<&'static dyn rustls::crypto::SupportedKxGroup> {
    use rustls::crypto::ring::kx_group as kx;
    Some(match name {
        "X25519" => kx::X25519,
        "CurveP256" => kx::SECP256R1,
        "CurveP384" => kx::SECP384R1,
        _ => return None,
    })
}

fn version(
    key: &'static str,
    v: Option<&str>,
    default: &'static rustls::SupportedProtocolVersion,
) -> Result<&'static rustls::SupportedProtocolVersion, KeyError> {
    match v {
        None => Ok(default),
        Some("TLS12") => Ok(&rustls::version::TLS12),
        Some("TLS13") => Ok(&rustls::version::TLS13),
        Some(old @ ("TLS10" | "TLS11")) => Err((
            key,
            format!("{old} is not supported (rustls speaks TLS12 and TLS13 only)"),
        )),
        Some(other) => Err((
            key,
            format!("{other:?} is not a TLS version; expected TLS12 or TLS13"),
        )),
    }
}

/// The rustls server config of `t`: an error names the key under `tls_server_config`. The keys
/// are read in the order exporter-toolkit documents them.
pub fn server_config(t: &TlsConfig) -> Result<rustls::ServerConfig, KeyError> {
    let provider = Arc::new(crypto_provider(t)?);
    let versions = protocol_versions(t)?;
    let cert = Pem::of(&t.cert_file, t.cert.as_ref())
        .ok_or(("cert_file", "set cert_file or cert".to_string()))?;
    let key = Pem::of(&t.key_file, t.key.as_ref())
        .ok_or(("key_file", "set key_file or key".to_string()))?;
    let resolver = Arc::new(ReloadingCert::new(cert, key, provider.clone())?);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| ("cipher_suites", e.to_string()))?;
    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let policy = client_policy(auth)?;
    let ca = Pem::of(&t.client_ca_file, t.client_ca.as_ref());
    let allowed_sans = allowed_sans(t, policy)?;
    let builder = match policy {
        None => builder.with_no_client_auth(),
        Some(policy) => {
            let inner = ClientAuth::verifier(ca.as_ref(), policy, &provider).map_err(|e| {
                let key = if ca.is_none() {
                    "client_auth_type"
                } else {
                    "client_ca_file"
                };
                (key, format!("{auth}: {e}"))
            })?;
            builder.with_client_cert_verifier(Arc::new(ClientAuth {
                watched: Watched::new(ca.iter().cloned().collect()),
                ca,
                policy,
                allowed_sans,
                provider: provider.clone(),
                inner: ArcSwap::from_pointee(inner),
            }))
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    // Go's prefer_server_cipher_suites (default true): the server's order wins.
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    Ok(config)
}

/// ring's provider, narrowed to `cipher_suites` (the TLS 1.2 ones named, then TLS 1.3's) and
/// `curve_preferences` when they are set.
fn crypto_provider(t: &TlsConfig) -> Result<rustls::crypto::CryptoProvider, KeyError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !t.cipher_suites.is_empty() {
        let mut suites: Vec<rustls::SupportedCipherSuite> = Vec::new();
        for name in &t.cipher_suites {
            suites.push(suite(name).ok_or_else(|| {
                (
                    "cipher_suites",
                    format!("{name:?} is not offered (TLS 1.2 suites with ECDHE and AES-GCM or ChaCha20-Poly1305 only; TLS 1.3's are always on)"),
                )
            })?);
        }
        // TLS 1.3 suites are not configurable in Go either: kept, after the chosen ones.
        let tls13 = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some())
            .copied();
        provider.cipher_suites = suites.into_iter().chain(tls13).collect();
    }
    if !t.curve_preferences.is_empty() {
        let mut groups = Vec::new();
        for name in &t.curve_preferences {
            groups.push(curve(name).ok_or_else(|| {
                (
                    "curve_preferences",
                    format!("{name:?} is not offered; expected X25519, CurveP256 or CurveP384"),
                )
            })?);
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

/// The TLS versions between `min_version` and `max_version` (1.2 and 1.3 unless set).
fn protocol_versions(
    t: &TlsConfig,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, KeyError> {
    let min = version(
        "min_version",
        t.min_version.as_deref(),
        &rustls::version::TLS12,
    )?;
    let max = version(
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
        return Err(("min_version", "above max_version".into()));
    }
    Ok(versions)
}

/// `client_auth_type` as a policy (`None`: no client certificate asked for).
fn client_policy(auth: &str) -> Result<Option<Policy>, KeyError> {
    match auth {
        "NoClientCert" => Ok(None),
        "RequireAndVerifyClientCert" => Ok(Some(Policy::RequireAndVerify)),
        "VerifyClientCertIfGiven" => Ok(Some(Policy::VerifyIfGiven)),
        "RequireAnyClientCert" => Ok(Some(Policy::RequireAny)),
        "RequestClientCert" => Err((
            "client_auth_type",
            "RequestClientCert asks for a certificate and ignores it: not supported; use VerifyClientCertIfGiven (or RequireAnyClientCert with client_allowed_sans)".into(),
        )),
        other => Err((
            "client_auth_type",
            format!("{other:?} not supported; expected NoClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
        )),
    }
}

/// `client_allowed_sans` as names to match, only with a policy that requires a certificate.
fn allowed_sans(
    t: &TlsConfig,
    policy: Option<Policy>,
) -> Result<Vec<ServerName<'static>>, KeyError> {
    let mut allowed = Vec::new();
    for san in &t.client_allowed_sans {
        let name = ServerName::try_from(san.clone()).map_err(|_| {
            (
                "client_allowed_sans",
                format!("{san:?}: DNS names and IP addresses are matched; e-mail and URI SANs are not supported"),
            )
        })?;
        allowed.push(name);
    }
    if !allowed.is_empty() && !matches!(policy, Some(Policy::RequireAndVerify | Policy::RequireAny))
    {
        return Err((
            "client_allowed_sans",
            "needs client_auth_type RequireAndVerifyClientCert or RequireAnyClientCert (with the others a client may send no certificate)".into(),
        ));
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_auth(allowed: &[&str]) -> ClientAuth {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ClientAuth {
            ca: None,
            policy: Policy::RequireAny,
            allowed_sans: allowed
                .iter()
                .map(|s| ServerName::try_from(s.to_string()).unwrap())
                .collect(),
            inner: ArcSwap::from_pointee(
                ClientAuth::verifier(None, Policy::RequireAny, &provider).unwrap(),
            ),
            provider,
            watched: Watched::new(Vec::new()),
        }
    }

    #[test]
    fn a_client_certificate_must_name_an_allowed_san() {
        let ck = rcgen::generate_simple_self_signed(vec![
            "prometheus.monitoring.svc".into(),
            "10.0.0.7".into(),
        ])
        .unwrap();
        let der = ck.cert.der().clone();
        assert!(client_auth(&[]).san_allowed(&der), "no list: any");
        assert!(client_auth(&["prometheus.monitoring.svc"]).san_allowed(&der));
        assert!(
            client_auth(&["other", "10.0.0.7"]).san_allowed(&der),
            "an IP SAN"
        );
        assert!(!client_auth(&["grafana.monitoring.svc"]).san_allowed(&der));
        let auth = client_auth(&["grafana.monitoring.svc"]);
        let refused = auth
            .verify_client_cert(&der, &[], UnixTime::now())
            .unwrap_err();
        assert!(
            refused.to_string().contains("client_allowed_sans"),
            "{refused}"
        );
    }
}
