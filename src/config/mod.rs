//! The exporter's configuration: the schema (what each key means, its default), the
//! `<secret>` view served on `/config`, and the serde helpers for durations, sizes and URLs.
//! Loading lives in [`load()`] (`config/load.rs`), the checks serde cannot do in
//! `config/validate.rs`; the reloadable handle is [`SharedConfig`] (`config/shared.rs`); what a
//! load error must never repeat is `config/redact.rs`.
//!
//! Tokens are [`SecretString`] from the moment they are read; a `token_file` is read at load
//! and at every reload, and again whenever the file changes ([`token_file`]): a rotated
//! Kubernetes Secret is in use at the next probe, with no reload.

mod connection;
pub mod duration;
mod env_only;
pub mod files;
mod load;
mod redact;
mod shared;
pub mod token_file;
mod validate;

pub(crate) use connection::signature_checks;
pub use connection::Connection;
pub use env_only::{from_env, how_to_start, ENV_SOURCE};
pub use load::{from_yaml_str, from_yaml_str_with_env, load, LoadOptions};
pub use redact::unquoted_text;
pub use shared::{
    reload_off_thread, reload_within, Fixed, ReloadError, Reloaded, SharedConfig, RELOAD_TIME_LIMIT,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default `api.url`.
pub const DEFAULT_API_URL: &str = "https://api.balena-cloud.com";
/// Name of the module used when neither the target nor the request names one.
pub const DEFAULT_MODULE: &str = "default";
/// Default `api.background_max_bytes`.
pub const DEFAULT_BACKGROUND_MAX_BYTES: usize = 128 * 1024 * 1024;
/// Prefix of the environment overrides (`BALENA_EXPORTER_API__TIMEOUT=5s`).
pub const ENV_PREFIX: &str = "BALENA_EXPORTER_";

/// The whole configuration, as loaded and validated.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach the balena API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Named credentials; targets refer to them by name.
    #[serde(default)]
    pub auths: BTreeMap<String, AuthConfig>,
    /// Named "what to collect" settings; `default` always exists.
    #[serde(default = "default_modules")]
    pub modules: BTreeMap<String, ModuleConfig>,
    /// Named targets: the only values `/probe?target=` accepts.
    #[serde(default)]
    pub targets: BTreeMap<String, TargetConfig>,
    /// Which load this is (0 at start, +1 per successful reload): part of cache keys, so a
    /// reload never serves data fetched under the previous config.
    #[serde(skip)]
    pub generation: u64,
}

/// `api:` block. Its `Debug` shows the URL without user and password.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// API root; `/v7/...` is appended. openBalena and the simulator work too.
    #[serde(deserialize_with = "de_url", serialize_with = "ser_url")]
    pub url: url::Url,
    /// Per upstream request; never beyond the probe deadline.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Upstream requests in flight per auth.
    pub max_concurrency: usize,
    /// Probes of one target within this share one fetch (0 disables the cache).
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
    /// How long a fleet's row (id, name, organization, target release) is reused by fleet
    /// targets, so that a steady-state probe is the device listing alone (0 disables).
    #[serde(with = "duration")]
    pub fleet_cache_ttl: Duration,
    /// Devices per request; larger fleets are paged.
    pub page_size: u32,
    /// Cap on one response body.
    #[serde(deserialize_with = "de_bytes")]
    pub max_response_bytes: usize,
    /// Bound of the probe results held for `cache_ttl` (oldest dropped first; 0 keeps none).
    #[serde(deserialize_with = "de_bytes")]
    pub cache_max_bytes: usize,
    /// Bound of what background reads hold: a quarter for each running read (its listing fails
    /// past it), half for the snapshots kept (least recently used dropped first).
    #[serde(deserialize_with = "de_bytes")]
    pub background_max_bytes: usize,
    /// The longest hold a `Retry-After` (on 429 or 503) puts on an auth's requests.
    #[serde(with = "duration")]
    pub max_retry_after: Duration,
    /// An HTTP proxy for every request to the API (CONNECT tunnels), as Prometheus'
    /// `proxy_url`; user and password, if any, are sent as `Proxy-Authorization`.
    #[serde(
        default,
        deserialize_with = "de_opt_url",
        serialize_with = "ser_opt_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy_url: Option<url::Url>,
    /// Hosts reached without the proxy: comma-separated names (a name covers its
    /// subdomains), IPs and CIDRs, `*` for all.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub no_proxy: String,
    /// Use `HTTPS_PROXY`/`HTTP_PROXY` (by `url`'s scheme) and `NO_PROXY` from the environment.
    pub proxy_from_environment: bool,
    /// TLS to the API: a private CA, a client certificate, the name to verify.
    #[serde(skip_serializing_if = "TlsClientConfig::is_default")]
    pub tls_config: TlsClientConfig,
    /// How requests reach the API, resolved from the keys above at load (the environment and
    /// the files read then).
    #[serde(skip)]
    pub connection: Connection,
}

/// `api.tls_config`, named as Prometheus' `tls_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsClientConfig {
    /// PEM CA certificates that sign the API's certificate (instead of the public roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (with `key_file`), for an API that asks for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name the API's certificate is checked against (and sent as SNI), instead of
    /// `url`'s host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any certificate. For tests of a lab install only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

impl TlsClientConfig {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            url: url::Url::parse(DEFAULT_API_URL).expect("constant URL parses"),
            timeout: Duration::from_secs(10),
            max_concurrency: 4,
            cache_ttl: Duration::from_secs(30),
            fleet_cache_ttl: Duration::from_secs(300),
            page_size: 1_000,
            max_response_bytes: 256 * 1024 * 1024,
            cache_max_bytes: 64 * 1024 * 1024,
            background_max_bytes: DEFAULT_BACKGROUND_MAX_BYTES,
            max_retry_after: Duration::from_secs(1800),
            proxy_url: None,
            no_proxy: String::new(),
            proxy_from_environment: false,
            tls_config: TlsClientConfig::default(),
            connection: Connection::default(),
        }
    }
}

/// `auths.NAME`: a token, inline or from a file. After loading, `token` always holds the value.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The API token (`${VAR}` expanded with `--config.expand-environment-variables`).
    #[serde(default, serialize_with = "ser_secret")]
    pub token: Option<SecretString>,
    /// A file holding the token; re-read when it changes (and on reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The opened `token_file` (after [`load`]).
    #[serde(skip)]
    pub file: Option<Arc<token_file::TokenFile>>,
}

impl AuthConfig {
    /// An auth with an inline token or a token file, as the environment-only start makes it.
    pub fn new(token: Option<SecretString>, token_file: Option<PathBuf>) -> Self {
        Self {
            token,
            token_file,
            file: None,
        }
    }

    /// The token as loaded (present after [`load`]); [`AuthConfig::current`] is the one to use.
    pub fn secret(&self) -> Option<&SecretString> {
        self.token.as_ref()
    }

    /// The token to use now: a `token_file`'s current contents (re-read if the file changed),
    /// else the inline token. `kept_because` says why a changed file was not used.
    pub fn current(&self) -> Option<token_file::Current> {
        match &self.file {
            Some(file) => Some(file.current()),
            None => self.token.as_ref().map(|t| token_file::Current {
                token: Arc::new(t.clone()),
                kept_because: None,
            }),
        }
    }
}

/// The default `services_interval`: services lag device states by up to this much, and the
/// image-install listing is read at most once per interval per target.
pub const DEFAULT_SERVICES_INTERVAL: Duration = Duration::from_secs(300);

/// `modules.NAME`: what a probe collects.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ModuleConfig {
    /// Emit per-device series (`balena_device_*`). Off for the fleet summary only.
    /// Ignored (treated as false) when `counts_only` is set.
    pub devices: bool,
    /// Device tag keys that become `tag_<key>` labels on `balena_device_info`.
    pub device_tags: Vec<String>,
    /// Fetch only device counts per fleet (one request, no device rows).
    pub counts_only: bool,
    /// Also emit `balena_devices_online{fleet_name}` as the older Python exporter did.
    pub legacy_devices_online: bool,
    /// Cache per-device series as values and render them for every answer: ~0.2 KB per device
    /// held instead of ~0.56 KB, for CPU on every answer (large fleets; docs/performance.md).
    pub compact_cache: bool,
    /// Read each device's current services for `balena_fleet_services`: a listing of the
    /// target's image installs of its own, kept as a snapshot and re-read in the background
    /// once it is `services_interval` old, so that a probe does not wait for it
    /// (docs/performance.md, "Application health"). Ignored when `counts_only` is set.
    pub services: bool,
    /// How old the services snapshot may grow before a probe starts reading it again (in the
    /// background: the probe answers with the snapshot it has). `0s` reads services with every
    /// probe, and the probe waits for them.
    #[serde(with = "duration")]
    pub services_interval: Duration,
    /// Also write each service's status on each device (`balena_device_service_status`):
    /// devices × services series, so opt-in. Needs `devices` and `services`.
    pub device_services: bool,
    /// Read the layer under the application for the fleet series of host OS updates, OS
    /// lifecycle phases, supervisor drift, supervisor settings and releases by version: a few
    /// listings of the target's releases and configuration variables, kept as a snapshot
    /// and re-read in the background every `services_interval`, as services are. Ignored when
    /// `counts_only` is set.
    pub host: bool,
    /// Also write each device's location (`balena_device_latitude_degrees`,
    /// `balena_device_longitude_degrees`): balenaCloud only (openBalena has no location
    /// fields, and a probe of a module with `locations: true` fails saying so). Needs
    /// `devices: true`.
    pub locations: bool,
}

impl ModuleConfig {
    /// Whether the module lists devices (every module but `counts_only`).
    pub fn devices_listed(&self) -> bool {
        !self.counts_only
    }

    /// The module as it takes effect: `counts_only` lists no device, so it writes no
    /// per-device series, tags or services whatever the other keys say.
    pub fn effective(&self) -> Self {
        if self.devices_listed() {
            return self.clone();
        }
        Self {
            devices: false,
            device_tags: Vec::new(),
            compact_cache: false,
            services: false,
            device_services: false,
            host: false,
            locations: false,
            ..self.clone()
        }
    }

    /// The label of each `device_tags` key, as (`tag_<sanitised key>`, key), in config order.
    /// Two keys with one label are refused at load ([`load`]): an answer with a label twice
    /// is refused whole by Prometheus.
    pub fn tag_labels(&self) -> Vec<(String, String)> {
        self.device_tags
            .iter()
            .map(|k| (format!("tag_{}", label_name(k)), k.clone()))
            .collect()
    }
}

/// A label name from free text (a tag key): `[a-zA-Z0-9_]`, not starting with a digit or `__`.
pub fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    let out = out.trim_matches('_').to_string();
    if out.is_empty() {
        "_".into()
    } else {
        out
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    /// The hand-written `Debug` of `api:` (it hides URL credentials) shows every key the
    /// config has: a key added to the struct and not to `Debug` fails here.
    #[test]
    fn the_debug_of_the_api_settings_shows_every_key_and_no_secret() {
        let mut api = ApiConfig {
            proxy_url: Some(url::Url::parse("http://ops:cnry-proxy-pass@proxy:3128").unwrap()),
            no_proxy: "x".into(),
            ..ApiConfig::default()
        };
        api.tls_config.server_name = Some("api.example".into());
        api.connection = Connection::resolve(&api).unwrap();
        let shown = format!("{api:?}");
        let keys = serde_yaml::to_value(&api).unwrap();
        let keys = keys.as_mapping().unwrap();
        assert!(keys.len() >= 14, "{keys:?}");
        for key in keys.keys() {
            let key = key.as_str().unwrap();
            assert!(shown.contains(&format!("{key}: ")), "{key} not in {shown}");
        }
        assert!(shown.contains("connection: Connection"), "{shown}");
        assert!(!shown.contains("cnry-proxy-pass"), "{shown}");
    }
}

#[cfg(test)]
mod label_tests {
    use super::label_name;

    #[test]
    fn tag_keys_become_valid_label_names() {
        assert_eq!(label_name("Floor #2"), "floor_2");
        assert_eq!(label_name("location"), "location");
        assert_eq!(label_name("__x__"), "x");
        assert_eq!(label_name("#"), "_");
    }
}

impl Default for ModuleConfig {
    fn default() -> Self {
        Self {
            devices: true,
            device_tags: Vec::new(),
            counts_only: false,
            legacy_devices_online: false,
            compact_cache: false,
            services: true,
            services_interval: DEFAULT_SERVICES_INTERVAL,
            device_services: false,
            host: true,
            locations: false,
        }
    }
}

fn default_modules() -> BTreeMap<String, ModuleConfig> {
    BTreeMap::from([(DEFAULT_MODULE.to_string(), ModuleConfig::default())])
}

/// `targets.NAME`: one fleet, every fleet of an organization, or every fleet the token sees.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawTarget", into = "RawTarget")]
pub struct TargetConfig {
    /// What the target covers.
    pub kind: TargetKind,
    /// Name of an entry in `auths:`.
    pub auth: String,
    /// Module used when the request names none.
    pub module: Option<String>,
    /// Auths that `&auth=` may pick instead of `auth` (off unless listed).
    pub allowed_auths: Vec<String>,
}

/// A target's kind, as written: exactly one of `fleet:`, `org:` or `all: true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// `fleet: org/app`
    Fleet(String),
    /// `org: handle`
    Org(String),
    /// `all: true`
    All,
}

/// `targets.NAME` as written in YAML (the three kind keys side by side), checked into a
/// [`TargetConfig`] with one [`TargetKind`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    /// `org/app` fleet slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
    /// Organization handle: every fleet of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Every fleet the token can access.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Name of an entry in `auths:`.
    pub auth: String,
    /// Module used when the request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Auths that `&auth=` may pick instead of `auth` (off unless listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_auths: Vec<String>,
}

/// What a target covers, after validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One fleet by slug (lowercased, as the SDK does).
    Fleet(String),
    /// Every fleet of an organization handle.
    Org(String),
    /// Every fleet the token can access.
    All,
}

impl TryFrom<RawTarget> for TargetConfig {
    type Error = &'static str;

    fn try_from(raw: RawTarget) -> Result<Self, Self::Error> {
        let kind = match (raw.fleet, raw.org, raw.all) {
            (Some(fleet), None, false) => TargetKind::Fleet(fleet),
            (None, Some(org), false) => TargetKind::Org(org),
            (None, None, true) => TargetKind::All,
            _ => return Err("set exactly one of `fleet: org/app`, `org: handle` or `all: true`"),
        };
        Ok(Self {
            kind,
            auth: raw.auth,
            module: raw.module,
            allowed_auths: raw.allowed_auths,
        })
    }
}

impl From<TargetConfig> for RawTarget {
    fn from(t: TargetConfig) -> Self {
        let (fleet, org, all) = match t.kind {
            TargetKind::Fleet(f) => (Some(f), None, false),
            TargetKind::Org(o) => (None, Some(o), false),
            TargetKind::All => (None, None, true),
        };
        Self {
            fleet,
            org,
            all,
            auth: t.auth,
            module: t.module,
            allowed_auths: t.allowed_auths,
        }
    }
}

impl TargetConfig {
    /// What this target covers (fleet slugs lowercased, as the SDK does).
    pub fn scope(&self) -> Scope {
        match &self.kind {
            TargetKind::Fleet(f) => Scope::Fleet(f.to_lowercase()),
            TargetKind::Org(o) => Scope::Org(o.clone()),
            TargetKind::All => Scope::All,
        }
    }

    /// The module name used when the request names none.
    pub fn module_name(&self) -> &str {
        self.module.as_deref().unwrap_or(DEFAULT_MODULE)
    }
}

/// A config problem: the file, the key path and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file (or a `token_file`) cannot be read; `reason` names it and says why.
    #[error("{file}: {reason}")]
    Read {
        /// The file.
        file: String,
        /// The OS error.
        reason: String,
    },
    /// A key holds something unacceptable.
    #[error("{file}: {key}: {msg}")]
    Invalid {
        /// The config file (or `environment`).
        file: String,
        /// Dotted key path, e.g. `targets.shop.auth`.
        key: String,
        /// What was wrong and what was expected.
        msg: String,
    },
}

impl Config {
    /// The config as YAML with every token shown as `<secret>` (for `/config`).
    pub fn to_redacted_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn ser_secret<S: Serializer>(token: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match token {
        Some(t) if !t.expose_secret().is_empty() => s.serialize_str("<secret>"),
        _ => s.serialize_none(),
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("url", &shown_url(&self.url))
            .field("timeout", &self.timeout)
            .field("max_concurrency", &self.max_concurrency)
            .field("cache_ttl", &self.cache_ttl)
            .field("fleet_cache_ttl", &self.fleet_cache_ttl)
            .field("page_size", &self.page_size)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("cache_max_bytes", &self.cache_max_bytes)
            .field("background_max_bytes", &self.background_max_bytes)
            .field("max_retry_after", &self.max_retry_after)
            .field("proxy_url", &self.proxy_url.as_ref().map(shown_url))
            .field("no_proxy", &self.no_proxy)
            .field("proxy_from_environment", &self.proxy_from_environment)
            .field("tls_config", &self.tls_config)
            .field("connection", &self.connection)
            .finish()
    }
}

/// A URL as it may be shown (on `/config`, in errors): user and password replaced by
/// `<secret>`, since a proxy or an openBalena URL may carry credentials.
pub fn shown_url(url: &url::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut bare = url.clone();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    let text = bare.to_string();
    match text.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://<secret>@{rest}"),
        None => text,
    }
}

fn ser_opt_url<S: Serializer>(url: &Option<url::Url>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_str(&shown_url(u)),
        None => s.serialize_none(),
    }
}

fn de_opt_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<url::Url>, D::Error> {
    de_url(d).map(Some)
}

fn ser_url<S: Serializer>(url: &url::Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&shown_url(url))
}

fn de_url<'de, D: Deserializer<'de>>(d: D) -> Result<url::Url, D::Error> {
    let text = String::deserialize(d)?;
    // The text is not repeated: it may carry a password.
    url::Url::parse(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid URL ({e}); expected e.g. https://api.balena-cloud.com"
        ))
    })
}

/// Parses `256MiB`, `10MB`, `1048576`.
pub fn parse_bytes(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(usize),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Num(n) => Ok(n),
        Raw::Text(t) => parse_bytes(&t).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid size {t:?}; expected e.g. 256MiB, 10MB or a byte count"
            ))
        }),
    }
}
