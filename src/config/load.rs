//! Loading: figment (the YAML file, then `BALENA_EXPORTER_`-prefixed environment overrides)
//! into the schema, `${VAR}` expansion, `token_file` reading, and the validation serde cannot
//! do. Every error names the file, the key path and what was expected, on one line, and never
//! repeats a token.

use std::collections::BTreeMap;
use std::path::PathBuf;

use figment::providers::{Env, Format, Yaml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};

use super::files;
use super::redact::Secrets;
use super::token_file::TokenFile;
use super::validate::{invalid, validate};
use super::{Config, ConfigError, DEFAULT_MODULE, ENV_PREFIX};

/// How to load: the files and flags that change loading.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The YAML files, merged in order; a name defined in two of them is an error.
    pub files: Vec<PathBuf>,
    /// Expand `${VAR}` in `token` and `token_file` (a missing variable is an error).
    pub expand_env: bool,
}

impl LoadOptions {
    /// Options for one file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            files: vec![path.into()],
            expand_env: false,
        }
    }

    /// The files as one display string.
    pub fn describe(&self) -> String {
        self.files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Loads every file, overlays the environment, validates and reads token files. Each file is
/// read once (a ConfigMap swapped between two reads cannot mix two versions), as a regular
/// file of at most [`files::MAX_CONFIG_BYTES`], and checked before it is parsed: not empty,
/// flow collections nested at most [`files::MAX_YAML_NESTING`] deep, no duplicate keys. No
/// error repeats a token of the files or the environment (`config/redact.rs`).
pub fn load(opts: &LoadOptions) -> Result<Config, ConfigError> {
    let mut texts = Vec::with_capacity(opts.files.len());
    let mut secrets = Secrets::from_env();
    for file in &opts.files {
        let name = file.display().to_string();
        let text = files::read_text(file, files::MAX_CONFIG_BYTES).map_err(|reason| {
            ConfigError::Read {
                file: name.clone(),
                reason,
            }
        })?;
        // A UTF-8 byte order mark (editors on Windows write one) is not YAML content.
        let text = match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => text,
        };
        let parsed = check_text(&text, &name);
        secrets.add_yaml(&text, parsed.as_ref().ok().and_then(Option::as_ref));
        let parsed = parsed.map_err(|e| secrets.redact(e))?;
        texts.push(FileText {
            path: file.clone(),
            text,
            parsed,
        });
    }
    check_env_is_text()?;
    load_texts(texts, opts).map_err(|e| secrets.redact(e))
}

/// A `BALENA_EXPORTER_…` variable that is not UTF-8 would be skipped by figment without a
/// word: refused, naming the variable (never its value).
fn check_env_is_text() -> Result<(), ConfigError> {
    use std::os::unix::ffi::OsStrExt as _;
    for (name, value) in std::env::vars_os() {
        let Some(rest) = name.as_bytes().strip_prefix(ENV_PREFIX.as_bytes()) else {
            continue;
        };
        let section = rest.split(|b| *b == b'_').next().unwrap_or_default();
        if !["api", "auths", "modules", "targets"]
            .iter()
            .any(|s| section.eq_ignore_ascii_case(s.as_bytes()))
        {
            continue;
        }
        if name.to_str().is_none() || value.to_str().is_none() {
            return Err(invalid(
                "environment",
                name.to_string_lossy(),
                "not UTF-8 text (the value is not shown); set it as UTF-8 or unset it",
            ));
        }
    }
    Ok(())
}

/// [`load`] once every file is read and checked.
fn load_texts(texts: Vec<FileText>, opts: &LoadOptions) -> Result<Config, ConfigError> {
    check_duplicates(&texts)?;
    let mut figment = Figment::new();
    for text in texts {
        figment = figment.merge(text);
    }
    let figment = figment.merge(env_overrides());
    from_figment(figment, &opts.describe(), opts.expand_env)
}

/// A config file's text, read once, given to figment under the file's name (so that errors
/// name the file, as `Yaml::file` would).
struct FileText {
    path: PathBuf,
    text: String,
    /// The text as a YAML value, from the duplicate-key check (None: a syntax error, which
    /// figment's parse reports with its location).
    parsed: Option<serde_yaml::Value>,
}

impl figment::Provider for FileText {
    fn metadata(&self) -> figment::Metadata {
        let mut m = figment::Metadata::named("YAML file");
        m.source = Some(figment::Source::File(self.path.clone()));
        m
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Yaml::string(&self.text).data()
    }
}

/// What a file must be before it is parsed: not empty (an empty file would stop every probe,
/// not configure one), nested no deeper than [`files::MAX_YAML_NESTING`], without duplicate keys.
/// Returns the text as a YAML value when it parses.
fn check_text(text: &str, file: &str) -> Result<Option<serde_yaml::Value>, ConfigError> {
    let has_content = text
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "---");
    if !has_content {
        return Err(invalid(
            file,
            "(top level)",
            "the file is empty; expected at least `targets:` and `auths:`",
        ));
    }
    let depth = files::yaml_flow_depth(text);
    if depth > files::MAX_YAML_NESTING {
        return Err(invalid(
            file,
            "(top level)",
            format!(
                "[ or {{ nested {depth} deep; at most {} levels are read",
                files::MAX_YAML_NESTING
            ),
        ));
    }
    check_yaml(text, file)
}

/// `BALENA_EXPORTER_<SECTION>__...` variables, for the config's own sections only: other
/// variables with the prefix are not config (Kubernetes, for one, sets
/// `BALENA_EXPORTER_SERVICE_HOST` and `BALENA_EXPORTER_PORT` in pods next to a Service named
/// `balena-exporter`) and must not stop the exporter as unknown keys.
pub(super) fn env_overrides() -> Env {
    Env::prefixed(ENV_PREFIX).split("__").filter(|key| {
        let section = key
            .as_str()
            .split(['.', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        ["api", "auths", "modules", "targets"].contains(&section.as_str())
    })
}

/// With several files, each auth, module and target name (and the `api` block) may be
/// defined in one file only: a silent override would be a surprise.
fn check_duplicates(files: &[FileText]) -> Result<(), ConfigError> {
    if files.len() < 2 {
        return Ok(());
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for file in files {
        let name = file.path.display().to_string();
        // Syntax errors are reported by the real parse, with their location.
        let Some(serde_yaml::Value::Mapping(top)) = &file.parsed else {
            continue;
        };
        for (section, value) in top {
            let Some(section) = section.as_str() else {
                continue;
            };
            let keys: Vec<String> = match (section, value) {
                ("api", _) => vec!["api".to_string()],
                ("auths" | "modules" | "targets", serde_yaml::Value::Mapping(m)) => m
                    .keys()
                    .filter_map(|k| k.as_str().map(|k| format!("{section}.{k}")))
                    .collect(),
                _ => continue,
            };
            for key in keys {
                if let Some(first) = seen.insert(key.clone(), name.clone()) {
                    return Err(invalid(
                        &name,
                        key,
                        format!("already defined in {first}; define each name in one file only"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Each named entry (`auths.NAME`, `modules.NAME`, `targets.NAME`) and `api` must be a mapping:
/// serde would read a list (`auths.a: [tok]`) as the fields in order. Names are shown, list
/// items never (under `auths` they may be a token).
fn check_shapes(value: &serde_yaml::Value, file: &str) -> Result<(), ConfigError> {
    let Some(top) = value.as_mapping() else {
        return Ok(()); // "not a mapping" is figment's message, with its location
    };
    let not_a_mapping = |key: String, what: &str| {
        invalid(
            file,
            key,
            format!("expected a mapping of {what}, got a list or a value"),
        )
    };
    if top
        .get("api")
        .is_some_and(|v| !v.is_mapping() && !v.is_null())
    {
        return Err(not_a_mapping("api".into(), "API settings"));
    }
    for (section, what) in [
        ("auths", "token: or token_file:"),
        ("modules", "module settings"),
        ("targets", "fleet:/org:/all: and auth:"),
    ] {
        let Some(entries) = top.get(section).and_then(|v| v.as_mapping()) else {
            continue;
        };
        for (name, entry) in entries {
            if section == "auths" && !entry.is_mapping() {
                // Not named: a slip may have put a token where the auth's name belongs.
                return Err(not_a_mapping("auths.<an auth>".into(), what));
            }
            if entry.is_sequence() {
                let name = name.as_str().unwrap_or("?");
                return Err(not_a_mapping(format!("{section}.{name}"), what));
            }
        }
    }
    Ok(())
}

/// Rejects what the YAML reader behind figment lets through: duplicate keys at any level
/// (strict, as blackbox and snmp exporters are). The message carries serde_yaml's location.
/// Returns the parsed value, or None for another syntax error (figment's parse reports it).
fn check_yaml(text: &str, file: &str) -> Result<Option<serde_yaml::Value>, ConfigError> {
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(value) => check_shapes(&value, file).map(|()| Some(value)),
        Err(e) if e.to_string().contains("duplicate entry") => {
            let msg = e.to_string();
            let (key, msg) = match msg.split_once(": duplicate") {
                Some((path, rest)) => (path.to_string(), format!("duplicate{rest}")),
                None => ("(top level)".to_string(), msg),
            };
            // Under `auths` the duplicated key itself may be a token: not repeated.
            if key == "auths" || key.starts_with("auths.") || msg.contains("auths") {
                return Err(invalid(
                    file,
                    key.split('.').take(2).collect::<Vec<_>>().join("."),
                    "a key is defined twice (not shown: under auths it may hold a token)",
                ));
            }
            Err(invalid(file, key, msg))
        }
        // Other syntax errors are reported by the real parse, with their location.
        Err(_) => Ok(None),
    }
}

/// Loads from YAML text (tests).
pub fn from_yaml_str(yaml: &str, name: &str) -> Result<Config, ConfigError> {
    let secrets = secrets_of(yaml);
    let _ = check_text(yaml, name).map_err(|e| secrets.redact(e))?;
    from_figment(Figment::new().merge(Yaml::string(yaml)), name, false)
        .map_err(|e| secrets.redact(e))
}

/// Loads from YAML text, then the `BALENA_EXPORTER_` environment overrides (`--demo`).
pub fn from_yaml_str_with_env(yaml: &str, name: &str) -> Result<Config, ConfigError> {
    let figment = Figment::new()
        .merge(Yaml::string(yaml))
        .merge(env_overrides());
    from_figment(figment, name, false).map_err(|e| secrets_of(yaml).redact(e))
}

/// The tokens of `yaml` and of the environment.
fn secrets_of(yaml: &str) -> Secrets {
    let mut secrets = Secrets::from_env();
    secrets.add_yaml(yaml, serde_yaml::from_str(yaml).ok().as_ref());
    secrets
}

fn from_figment(figment: Figment, file: &str, expand_env: bool) -> Result<Config, ConfigError> {
    let config: Config = figment.extract().map_err(|e| figment_error(e, file))?;
    finish(config, file, expand_env)
}

/// The steps after parsing: the built-in module, tokens (files read, variables expanded) and
/// validation.
pub(super) fn finish(
    mut config: Config,
    file: &str,
    expand_env: bool,
) -> Result<Config, ConfigError> {
    config
        .modules
        .entry(DEFAULT_MODULE.to_string())
        .or_default();
    resolve_tokens(&mut config, file, expand_env)?;
    validate(&config, file)?;
    config.api.connection =
        super::Connection::resolve(&config.api).map_err(|(key, why)| invalid(file, key, why))?;
    Ok(config)
}

/// Turns a figment error into one line naming the file, key and expectation. Values found
/// under a `token` key are never repeated.
pub(super) fn figment_error(e: figment::Error, file: &str) -> ConfigError {
    use figment::error::Kind;
    let e = e
        .into_iter()
        .next()
        .expect("a figment error holds at least one error");
    let source = e
        .metadata
        .as_ref()
        .and_then(|m| m.source.as_ref())
        .map(|s| match s {
            figment::Source::File(p) => p.display().to_string(),
            other => other.to_string(),
        })
        .unwrap_or_else(|| file.to_string());
    let source = if e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"))
    {
        format!("{file} (environment {ENV_PREFIX}*)")
    } else {
        source
    };
    let key = if e.path.is_empty() {
        "(top level)".to_string()
    } else {
        e.path.join(".")
    };
    // Under `auths` any value may be (or hold) a token: never repeat a value found there.
    let secret_key = e.path.first().is_some_and(|k| k == "auths");
    let msg = match &e.kind {
        Kind::InvalidType(_, expected) if secret_key => format!("expected {expected}"),
        Kind::InvalidValue(_, expected) if secret_key => format!("expected {expected}"),
        Kind::Message(_) if secret_key => "invalid token value".to_string(),
        // Under `auths` a key may be a token written with a slip (`{token:tok-…}` is one
        // key): name the auth, not the key.
        Kind::UnknownField(field, expected) if secret_key => {
            let mut path = e.path.clone();
            if path.last() == Some(field) {
                path.pop();
            }
            return ConfigError::Invalid {
                file: source,
                key: path.join("."),
                msg: format!(
                    "an unknown key (not shown: under auths it may hold a token); expected one of: {}",
                    expected.join(", ")
                ),
            };
        }
        Kind::UnknownField(field, expected) => {
            return ConfigError::Invalid {
                file: source,
                key: join_key(&key, field, e.path.is_empty()),
                msg: format!("unknown key; expected one of: {}", expected.join(", ")),
            }
        }
        Kind::MissingField(field) => {
            return ConfigError::Invalid {
                file: source,
                key: join_key(&key, field, e.path.is_empty()),
                msg: "missing required key".to_string(),
            }
        }
        other => other.to_string(),
    };
    ConfigError::Invalid {
        file: source,
        key,
        msg,
    }
}

fn join_key(parent: &str, field: &str, top: bool) -> String {
    if top {
        field.to_string()
    } else if parent == field || parent.ends_with(&format!(".{field}")) {
        parent.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// Reads `token_file`s, expands `${VAR}`, and checks each auth has exactly one non-empty token.
fn resolve_tokens(config: &mut Config, file: &str, expand_env: bool) -> Result<(), ConfigError> {
    for (name, auth) in config.auths.iter_mut() {
        let key = format!("auths.{name}");
        let mut shown_as = None;
        if !expand_env {
            refuse_unexpanded(auth, file, &key)?;
        }
        if expand_env {
            if let Some(t) = &auth.token {
                let expanded = expand_vars(t.expose_secret())
                    .map_err(|why| invalid(file, format!("{key}.token"), why))?;
                auth.token = Some(SecretString::from(expanded));
            }
            if let Some(p) = &auth.token_file {
                let written = p.display().to_string();
                let expanded = expand_vars(&written)
                    .map_err(|why| invalid(file, format!("{key}.token_file"), why))?;
                if expanded != written {
                    // A variable's value is not shown (it could be a token put there by
                    // mistake): messages name the file as written, `${VAR}` and all.
                    shown_as = Some(format!("the file named by {written}"));
                }
                auth.token_file = Some(PathBuf::from(expanded));
            }
        }
        match (&auth.token, &auth.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    file,
                    key,
                    "set either `token` or `token_file`, not both",
                ))
            }
            (None, None) => return Err(invalid(file, key, "missing `token` or `token_file`")),
            (None, Some(path)) => {
                let opened = TokenFile::open(name, path, shown_as)
                    .map_err(|why| invalid(file, format!("{key}.token_file"), why))?;
                auth.token = Some((*opened.current().token).clone());
                auth.file = Some(std::sync::Arc::new(opened));
            }
            (Some(t), None) => {
                if t.expose_secret().trim().is_empty() {
                    return Err(invalid(
                        file,
                        format!("{key}.token"),
                        "empty token; expected a balena API key",
                    ));
                }
            }
        }
        let token = auth.secret().map(|t| t.expose_secret()).unwrap_or_default();
        if let Some(why) = super::token_file::token_problem(token) {
            return Err(invalid(file, key, why));
        }
    }
    Ok(())
}

/// Without `--config.expand-environment-variables`, `${VAR}` in a token or token file would be
/// used as written — every probe `unauthorized`, with no hint why: refused, naming the flag.
fn refuse_unexpanded(auth: &super::AuthConfig, file: &str, key: &str) -> Result<(), ConfigError> {
    let why = |what: &str| {
        format!(
            "{what} holds `${{...}}`, but variables are expanded only with --config.expand-environment-variables (pass it, or write the value itself)"
        )
    };
    if auth
        .token
        .as_ref()
        .is_some_and(|t| t.expose_secret().contains("${"))
    {
        return Err(invalid(file, format!("{key}.token"), why("the token")));
    }
    if auth
        .token_file
        .as_ref()
        .is_some_and(|p| p.to_string_lossy().contains("${"))
    {
        return Err(invalid(file, format!("{key}.token_file"), why("the path")));
    }
    Ok(())
}

/// Expands `${VAR}` and `$VAR`; `$$` is a literal `$`. Returns the name of a missing variable.
fn expand_vars(input: &str) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, consumed) = if let Some(stripped) = after.strip_prefix('{') {
            match stripped.find('}') {
                Some(end) => (&stripped[..end], end + 2),
                // The text after `${` may be the token itself: never repeated.
                None => return Err("an unclosed ${ (the text after it is not shown)".into()),
            }
        } else if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
            continue;
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        let well_formed = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !well_formed {
            return Err("a ${...} that is not a variable name (not shown)".into());
        }
        out.push_str(
            &std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?,
        );
        rest = &after[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{duration, parse_bytes, ModuleConfig, Scope};
    use super::*;
    use std::time::Duration;

    fn err(yaml: &str) -> String {
        from_yaml_str(yaml, "test.yml").unwrap_err().to_string()
    }

    const GOOD: &str =
        "auths:\n  a:\n    token: tok-123\ntargets:\n  t:\n    fleet: org/app\n    auth: a\n";

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let c = from_yaml_str(GOOD, "x").unwrap();
        assert_eq!(c.api.url.as_str(), "https://api.balena-cloud.com/");
        assert_eq!(c.api.timeout, Duration::from_secs(10));
        assert_eq!(c.api.max_concurrency, 4);
        assert_eq!(c.api.cache_ttl, Duration::from_secs(30));
        assert_eq!(c.api.page_size, 1_000);
        assert_eq!(c.api.max_response_bytes, 256 << 20);
        assert_eq!(c.modules[DEFAULT_MODULE], ModuleConfig::default());
        assert_eq!(c.targets["t"].scope(), Scope::Fleet("org/app".into()));
    }

    // Every rule's one-line error (file, key path, expectation) is held by a fixture of its own:
    // tests/fixtures/bad-configs/ (EXPECTED.tsv), at start and on reload (tests/bad_configs.rs).

    #[test]
    fn a_numeric_token_of_the_wrong_type_is_not_repeated_in_the_error() {
        let e = err("auths:\n  a:\n    token: [987654321]\n");
        assert!(e.contains("auths.a.token"), "{e}");
        assert!(!e.contains("987654321"), "{e}");
    }

    #[test]
    fn redacted_yaml_and_debug_never_show_the_token() {
        let c = from_yaml_str(&GOOD.replace("tok-123", "canary-TOKEN-42"), "x").unwrap();
        let yaml = c.to_redacted_yaml();
        assert!(yaml.contains("token: <secret>"), "{yaml}");
        assert!(!yaml.contains("canary-TOKEN-42"));
        assert!(!format!("{c:?}").contains("canary-TOKEN-42"));
        // And the YAML view loads back as a valid config shape.
        let back: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back["targets"]["t"]["fleet"], "org/app");
    }

    #[test]
    fn env_expansion_reads_variables_and_fails_on_missing_ones() {
        std::env::set_var("BEX_TEST_TOKEN_X", "from-env");
        assert_eq!(expand_vars("${BEX_TEST_TOKEN_X}").unwrap(), "from-env");
        assert_eq!(expand_vars("a$$b").unwrap(), "a$b");
        assert_eq!(
            expand_vars("${NOPE_NOT_SET_42}").unwrap_err(),
            "environment variable NOPE_NOT_SET_42 is not set"
        );
        // What follows a malformed `${` may be the token itself: never repeated.
        for bad in ["${tok-canary-1", "x${tok canary}y", "${9canary}"] {
            let e = expand_vars(bad).unwrap_err();
            assert!(!e.contains("canary"), "{e}");
        }
    }

    /// A byte order mark at the start of a file (Windows editors) is not "a second document".
    #[test]
    fn a_byte_order_mark_is_not_content() {
        let file = std::env::temp_dir().join(format!("balena-bom-{}.yml", std::process::id()));
        std::fs::write(
            &file,
            "\u{feff}auths:\n  a:\n    token: tok\ntargets:\n  t: {fleet: org/app, auth: a}\n",
        )
        .unwrap();
        let c = load(&LoadOptions::file(&file)).unwrap();
        assert_eq!(c.targets.len(), 1);
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn several_files_merge_and_duplicate_names_are_refused() {
        let dir = std::env::temp_dir().join(format!("balena-multi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (
            dir.join("auths.yml"),
            dir.join("targets.yml"),
            dir.join("more.yml"),
        );
        std::fs::write(&a, "auths:\n  a:\n    token: x\n").unwrap();
        std::fs::write(&b, "targets:\n  t:\n    fleet: org/app\n    auth: a\n").unwrap();
        std::fs::write(&c, "targets:\n  t:\n    fleet: org/other\n    auth: a\n").unwrap();
        let opts = |files: Vec<PathBuf>| LoadOptions {
            files,
            expand_env: false,
        };
        let cfg = load(&opts(vec![a.clone(), b.clone()])).unwrap();
        assert_eq!(cfg.targets["t"].auth, "a");
        let e = load(&opts(vec![a, b.clone(), c.clone()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "{}: targets.t: already defined in {}",
                c.display(),
                b.display()
            )),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sizes_and_durations_parse_in_the_documented_forms() {
        assert_eq!(parse_bytes("256MiB"), Some(256 << 20));
        assert_eq!(parse_bytes("10MB"), Some(10_000_000));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("1 parsec"), None);
        assert_eq!(duration::parse("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(duration::parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration::parse("0"), Some(Duration::ZERO));
        assert_eq!(duration::parse("soon"), None);
    }
}
