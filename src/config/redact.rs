//! The secrets a config error must never repeat, whatever the slip that put one where a name
//! belongs (`auth: <token>`, a token as a key, a YAML alias of a token used as a fleet, an
//! environment override): every token the config files, their token files and the environment
//! hold is collected before anything is parsed, and every error is cleaned of them before it
//! is returned — to stderr, the log or a `POST /-/reload` answer.
//!
//! Collected: the value of every `token` key at any depth (YAML aliases resolved; found in the
//! text too, so a file that does not parse is covered), the variable a `${VAR}` token names,
//! the contents of every `token_file` that can be read (bounded, as at load), `BALENA_TOKEN`,
//! `BALENA_TOKEN_FILE`'s contents and every `BALENA_EXPORTER_…TOKEN` override.

use std::path::Path;

use super::{files, ConfigError};

/// `text` (a parser's error message) without what it quotes: what stood between its first and
/// its last `"` becomes `"…"` (a value written where a key, a number or a hash belongs can be a
/// token or a password; first to last, so that an escaped quote inside the value hides
/// nothing). The kind of error and where it is stay. Shared by the config loaders' and the
/// balena client's decode errors.
pub fn unquoted_text(text: &str) -> String {
    match (text.find('"'), text.rfind('"')) {
        (Some(first), Some(last)) if first < last => {
            format!("{}\"…\"{}", &text[..first], &text[last + 1..])
        }
        (Some(first), _) => format!("{}…", &text[..first]),
        _ => text.to_string(),
    }
}

/// A token shorter than this is only recognised as a whole quoted value in an error (`"x"`),
/// never inside other text (a token `abc` must not mangle the word `abcde`). Real balena API
/// keys are 32 characters.
const SUBSTRING_MIN: usize = 6;

/// The tokens an error must not contain.
#[derive(Debug, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The tokens of the environment (`BALENA_TOKEN`, `BALENA_TOKEN_FILE`, overrides).
    pub fn from_env() -> Self {
        let mut s = Self::default();
        for (name, value) in std::env::vars_os() {
            let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
                continue;
            };
            if name == "BALENA_TOKEN"
                || (name.starts_with(super::ENV_PREFIX) && name.ends_with("TOKEN"))
            {
                s.add(value);
            }
            if name == "BALENA_TOKEN_FILE"
                || (name.starts_with(super::ENV_PREFIX) && name.ends_with("TOKEN_FILE"))
            {
                s.add_file(Path::new(value));
            }
        }
        s
    }

    /// Adds the tokens of one config file: its parsed value (aliases resolved) and its text.
    pub fn add_yaml(&mut self, text: &str, parsed: Option<&serde_yaml::Value>) {
        if let Some(v) = parsed {
            self.add_value(v);
        }
        self.add_text(text);
    }

    fn add(&mut self, token: &str) {
        let token = token.trim();
        if !token.is_empty() && !self.0.iter().any(|t| t == token) {
            self.0.push(token.to_string());
        }
        // `${VAR}`: the value the variable holds is the token.
        if let Some(var) = token.strip_prefix("${").and_then(|t| t.strip_suffix('}')) {
            if let Ok(value) = std::env::var(var) {
                self.add(&value);
            }
        }
    }

    fn add_file(&mut self, path: &Path) {
        if let Ok(text) = files::read_text(path, super::token_file::MAX_TOKEN_FILE_BYTES) {
            self.add(&text);
        }
    }

    fn add_value(&mut self, v: &serde_yaml::Value) {
        use serde_yaml::Value;
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        (Some("token"), Some(t)) => self.add(t),
                        (Some("token_file"), Some(f)) => self.add_file(Path::new(f)),
                        _ => self.add_value(v),
                    }
                }
            }
            Value::Sequence(items) => items.iter().for_each(|v| self.add_value(v)),
            Value::Tagged(t) => self.add_value(&t.value),
            _ => {}
        }
    }

    /// `token: VALUE` wherever the text has it (an anchor, quotes or a flow mapping around
    /// it), for a file that does not parse.
    fn add_text(&mut self, text: &str) {
        let mut rest = text;
        while let Some(at) = rest.find("token") {
            rest = &rest[at + "token".len()..];
            let Some(value) = rest.trim_start().strip_prefix(':') else {
                continue;
            };
            let mut value = value.trim_start();
            if let Some(anchored) = value.strip_prefix('&') {
                value = anchored
                    .split_once(char::is_whitespace)
                    .map_or("", |(_, v)| v)
                    .trim_start();
            }
            let value = value.trim_start_matches(['"', '\'']);
            let end = value
                .find(|c: char| c.is_whitespace() || "\"',}]#".contains(c))
                .unwrap_or(value.len());
            self.add(&value[..end]);
        }
    }

    /// `e` with every token replaced by `<secret>`.
    pub fn redact(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Read { file, reason } => ConfigError::Read {
                file: self.clean(&file),
                reason: self.clean(&reason),
            },
            ConfigError::Invalid { file, key, msg } => ConfigError::Invalid {
                file: self.clean(&file),
                key: self.clean(&key),
                msg: self.clean(&msg),
            },
        }
    }

    fn clean(&self, text: &str) -> String {
        let mut tokens: Vec<&String> = self.0.iter().collect();
        tokens.sort_by_key(|t| std::cmp::Reverse(t.len()));
        let mut out = text.to_string();
        for t in tokens {
            for quoted in [format!("{t:?}"), format!("`{t}`"), format!("'{t}'")] {
                out = out.replace(&quoted, "<secret>");
            }
            if t.len() >= SUBSTRING_MIN {
                out = out.replace(t.as_str(), "<secret>");
            } else if out.ends_with(&format!(": {t}")) || out == *t {
                out = format!("{}<secret>", &out[..out.len() - t.len()]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(key: &str, msg: &str) -> ConfigError {
        ConfigError::Invalid {
            file: "c.yml".into(),
            key: key.into(),
            msg: msg.into(),
        }
    }

    #[test]
    fn every_token_of_the_file_is_cleaned_from_errors() {
        let text = "auths:\n  a:\n    token: &t cnry-alias-1\n  b: {token: \"cnry-quoted-2\"}\n  c:\n    token: tok\ntargets:\n  t: {fleet: *t, auth: a}\n";
        let parsed: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        let mut s = Secrets::default();
        s.add_yaml(text, Some(&parsed));
        let e = s.redact(invalid(
            "targets.t.fleet",
            "\"cnry-alias-1\" has no '/'; auth \"tok\" and cnry-quoted-2x",
        ));
        assert_eq!(
            e.to_string(),
            "c.yml: targets.t.fleet: <secret> has no '/'; auth <secret> and <secret>x"
        );
        let unparsable = "auths:\n  a:\n    token: &x cnry-broken-3\n  - [\n";
        let mut s = Secrets::default();
        s.add_yaml(unparsable, None);
        let e = s.redact(invalid("(top level)", "near cnry-broken-3 at line 4"));
        assert!(!e.to_string().contains("cnry-broken-3"), "{e}");
    }

    #[test]
    fn quoted_text_is_left_out_even_with_an_escaped_quote_inside() {
        assert_eq!(
            unquoted_text(r#"invalid type: string "pa\"ss", expected a map at line 1"#),
            "invalid type: string \"…\", expected a map at line 1"
        );
        assert_eq!(unquoted_text("unterminated \"secret"), "unterminated …");
        assert_eq!(unquoted_text("no quote"), "no quote");
    }

    #[test]
    fn a_short_token_leaves_other_words_alone() {
        let mut s = Secrets::default();
        s.add("abc");
        let e = s.redact(invalid(
            "targets.t.auth",
            "unknown auth \"abc\"; abcde stays",
        ));
        assert_eq!(
            e.to_string(),
            "c.yml: targets.t.auth: unknown auth <secret>; abcde stays"
        );
    }
}
