//! Starting from the environment alone, as the older single-gauge Python exporter did: no
//! config file, one token in `BALENA_TOKEN` (or a file named by `BALENA_TOKEN_FILE`), optional
//! `BALENA_API_URL`. The result is an auth named `default`, a target `all` covering every fleet
//! the token can see, the modules `default`, `summary` and `compat`, and any
//! `BALENA_EXPORTER_*` overrides on top. The token becomes a `SecretString` as it is read.

use std::path::PathBuf;

use figment::providers::{Format, Yaml};
use figment::Figment;
use secrecy::SecretString;

use super::load::{env_overrides, figment_error, finish};
use super::{AuthConfig, Config, ConfigError};

/// Where an environment-only config came from (for the log line at start).
pub const ENV_SOURCE: &str = "environment (BALENA_TOKEN)";

/// The non-secret part of an environment-only config.
const BASE: &str = r#"
modules:
  default: { devices: true }
  summary: { devices: false }
  compat: { counts_only: true, legacy_devices_online: true }
targets:
  all: { all: true, auth: default }
"#;

/// Builds the config from the environment; `Ok(None)` when neither `BALENA_TOKEN` nor
/// `BALENA_TOKEN_FILE` is set.
pub fn from_env() -> Result<Option<Config>, ConfigError> {
    let token = std::env::var("BALENA_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(SecretString::from);
    let token_file = std::env::var_os("BALENA_TOKEN_FILE")
        .filter(|f| !f.is_empty())
        .map(PathBuf::from);
    if token.is_none() && token_file.is_none() {
        return Ok(None);
    }
    let mut figment = Figment::new().merge(Yaml::string(BASE));
    if let Ok(url) = std::env::var("BALENA_API_URL") {
        figment = figment.merge(("api.url", url));
    }
    let figment = figment.merge(env_overrides());
    let mut config: Config = figment
        .extract()
        .map_err(|e| super::redact::Secrets::from_env().redact(figment_error(e, ENV_SOURCE)))?;
    config
        .auths
        .entry("default".to_string())
        .or_insert(AuthConfig::new(token, token_file));
    finish(config, ENV_SOURCE, false)
        .map(Some)
        .map_err(|e| super::redact::Secrets::from_env().redact(e))
}

/// The message when there is neither a config file nor a token.
pub fn how_to_start(default_files: &[PathBuf]) -> String {
    let looked: Vec<String> = default_files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    format!(
        "no configuration: --config.file was not given, {} not found, and neither BALENA_TOKEN nor BALENA_TOKEN_FILE is set. Start with one of:\n  \
balena-exporter --config.file=balena-exporter.yml      # targets and tokens in YAML (docs/configuration.md)\n  \
BALENA_TOKEN=<api key> balena-exporter                  # every fleet the token can see, as target \"all\"\n  \
balena-exporter --demo                                  # the built-in balena API simulator, no token",
        looked.join(" or ")
    )
}
