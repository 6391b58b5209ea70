//! The checks serde cannot do once the config is read: values within their ranges, module
//! options that need each other, and the names targets refer to (auths, modules). Each error
//! names the file, the key path and what was expected, on one line ([`invalid`]).

use std::collections::BTreeMap;

use super::{Config, ConfigError, ModuleConfig, TargetKind};

/// A [`ConfigError::Invalid`] of `file` at `key`.
pub(super) fn invalid(file: &str, key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_string(),
        key: key.into(),
        msg: msg.into(),
    }
}

/// `org/fleet`: two non-empty parts without spaces, one `/` between them.
fn is_fleet_slug(slug: &str) -> bool {
    let Some((org, fleet)) = slug.split_once('/') else {
        return false;
    };
    let part = |p: &str| !p.is_empty() && !p.contains('/') && !p.chars().any(char::is_whitespace);
    part(org) && part(fleet)
}

/// Cross-references and values serde cannot check, in key order: `api`, `modules`, `targets`.
/// Each part is a list of independent checks, each with its own key path and message.
pub(super) fn validate(config: &Config, file: &str) -> Result<(), ConfigError> {
    check_api(&config.api, file)?;
    for (name, module) in &config.modules {
        check_module(name, module, file)?;
    }
    for (name, target) in &config.targets {
        check_target(config, name, target, file)?;
    }
    Ok(())
}

/// `api`: a usable URL without credentials, and limits above zero.
fn check_api(api: &super::ApiConfig, file: &str) -> Result<(), ConfigError> {
    if !matches!(api.url.scheme(), "http" | "https") || api.url.host_str().is_none() {
        return Err(invalid(
            file,
            "api.url",
            format!(
                "expected an http(s) URL, got {:?}",
                super::shown_url(&api.url)
            ),
        ));
    }
    if !api.url.username().is_empty() || api.url.password().is_some() {
        return Err(invalid(
            file,
            "api.url",
            "a user or password in the URL is never sent to the API (requests carry the auth's token as a Bearer header): remove it, and put the token under auths",
        ));
    }
    if api.timeout.is_zero() {
        return Err(invalid(file, "api.timeout", "must be greater than 0"));
    }
    if api.proxy_from_environment && api.proxy_url.is_some() {
        return Err(invalid(
            file,
            "api.proxy_from_environment",
            "set either proxy_url or proxy_from_environment, not both",
        ));
    }
    if api.max_concurrency == 0 {
        return Err(invalid(file, "api.max_concurrency", "must be at least 1"));
    }
    if api.page_size == 0 {
        return Err(invalid(file, "api.page_size", "must be at least 1"));
    }
    if api.max_response_bytes < 1024 {
        return Err(invalid(
            file,
            "api.max_response_bytes",
            "must be at least 1KiB",
        ));
    }
    Ok(())
}

/// `modules.NAME`: tag keys that make distinct labels, and options that need each other.
fn check_module(name: &str, module: &ModuleConfig, file: &str) -> Result<(), ConfigError> {
    for tag in &module.device_tags {
        if tag.is_empty() {
            return Err(invalid(
                file,
                format!("modules.{name}.device_tags"),
                "empty tag key",
            ));
        }
    }
    if let Some((a, b, label)) = colliding_tag(module) {
        return Err(invalid(
            file,
            format!("modules.{name}.device_tags"),
            format!("tag keys {a:?} and {b:?} both become the label {label}; keep one"),
        ));
    }
    if module.compact_cache && (!module.devices || module.counts_only) {
        return Err(invalid(
            file,
            format!("modules.{name}.compact_cache"),
            "compact_cache keeps per-device series, so it needs devices: true and no counts_only",
        ));
    }
    if module.device_services
        && (!module.devices || !module.services || module.counts_only || module.compact_cache)
    {
        return Err(invalid(
            file,
            format!("modules.{name}.device_services"),
            "device_services writes per-device service series, so it needs devices: true, services: true, no counts_only and no compact_cache",
        ));
    }
    if module.locations && (!module.devices || module.counts_only) {
        return Err(invalid(
            file,
            format!("modules.{name}.locations"),
            "locations writes per-device series, so it needs devices: true and no counts_only",
        ));
    }
    if module.counts_only && !module.device_tags.is_empty() {
        return Err(invalid(
            file,
            format!("modules.{name}.device_tags"),
            "counts_only fetches no device rows, so it cannot have device_tags",
        ));
    }
    Ok(())
}

/// `targets.NAME`: a printable name, a fleet slug or organization, and auths and a module
/// that exist.
fn check_target(
    config: &Config,
    name: &str,
    target: &super::TargetConfig,
    file: &str,
) -> Result<(), ConfigError> {
    let key = format!("targets.{name}");
    if name.is_empty() || name.chars().any(|c| c.is_control()) {
        return Err(invalid(
            file,
            key,
            "target names must be non-empty printable text",
        ));
    }
    match &target.kind {
        TargetKind::Fleet(fleet) if !is_fleet_slug(fleet) => {
            return Err(invalid(
                file,
                format!("{key}.fleet"),
                format!("expected a fleet slug like `myorg/myfleet`, got {fleet:?}"),
            ));
        }
        TargetKind::Org(org) if org.trim().is_empty() => {
            return Err(invalid(
                file,
                format!("{key}.org"),
                "empty organization handle",
            ));
        }
        _ => {}
    }
    for auth in std::iter::once(&target.auth).chain(&target.allowed_auths) {
        if !config.auths.contains_key(auth) {
            return Err(invalid(
                file,
                format!("{key}.auth"),
                format!(
                    "no auth named {auth:?} in `auths:` (have: {})",
                    names(&config.auths)
                ),
            ));
        }
    }
    if !config.modules.contains_key(target.module_name()) {
        return Err(invalid(
            file,
            format!("{key}.module"),
            format!(
                "no module named {:?} in `modules:` (have: {})",
                target.module_name(),
                names(&config.modules)
            ),
        ));
    }
    Ok(())
}

fn names<V>(map: &BTreeMap<String, V>) -> String {
    if map.is_empty() {
        "none".to_string()
    } else {
        map.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// The first two `device_tags` keys that become one label (`Location` and `location`, `a-b`
/// and `a_b`, or a key listed twice), with that label.
fn colliding_tag(module: &ModuleConfig) -> Option<(String, String, String)> {
    let mut seen = BTreeMap::<String, String>::new();
    for (label, key) in module.tag_labels() {
        if let Some(first) = seen.get(&label) {
            return Some((first.clone(), key, label));
        }
        seen.insert(label, key);
    }
    None
}
