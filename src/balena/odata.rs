//! OData query building for the balena API: the one place where a value from the config
//! becomes part of a URL.
//!
//! Rules (balena-api reference §3): a string literal has every `'` doubled, is then encoded
//! like JavaScript's `encodeURIComponent`, and is wrapped in single quotes. Query options are
//! joined with `&` in insertion order, and the whole query is then made wire-safe the way a
//! WHATWG URL parser does it (space → `%20`, `'` → `%27`), so the string we send is exactly the
//! string the balena SDK would send. Nothing here uses form encoding (`+` for space).

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters `encodeURIComponent` leaves alone: `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Quotes `value` as an OData string literal as pinejs-client builds it: `'` doubled, then
/// `encodeURIComponent`, then wrapped in `'…'`. Example: `o'brien/app` → `'o''brien%2Fapp'`.
pub fn quote_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    format!("'{}'", utf8_percent_encode(&doubled, URI_COMPONENT))
}

/// Makes a built query string wire-safe as the WHATWG URL parser does for a query:
/// space → `%20`, `'` → `%27`, `"` → `%22`, `<`/`>` → `%3C`/`%3E`, `#` → `%23`; existing
/// `%XX` escapes and `$ , ( ) / : = ;` stay as they are.
pub fn wire_query(built: &str) -> String {
    let mut out = String::with_capacity(built.len() + 16);
    for c in built.chars() {
        match c {
            ' ' => out.push_str("%20"),
            '\'' => out.push_str("%27"),
            '"' => out.push_str("%22"),
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            '#' => out.push_str("%23"),
            _ => out.push(c),
        }
    }
    out
}

/// An OData request being built: a resource path and its options, in insertion order.
#[derive(Debug, Clone, Default)]
pub struct Query {
    options: Vec<(&'static str, String)>,
}

impl Query {
    /// An empty option list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `$name=value` (value already built with [`quote_literal`] where it holds strings).
    pub fn option(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.options.push((name, value.into()));
        self
    }

    /// The query as it goes on the wire (without the leading `?`).
    pub fn to_wire(&self) -> String {
        let built: Vec<String> = self
            .options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        wire_query(&built.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_literal_matches_the_reference_examples() {
        let cases = [
            ("myorg/myapp", "'myorg%2Fmyapp'"),
            ("it's", "'it''s'"),
            ("o'brien/app", "'o''brien%2Fapp'"),
            ("a b+c%", "'a%20b%2Bc%25'"),
            ("x' or 1 eq 1", "'x''%20or%201%20eq%201'"),
            ("#&=?", "'%23%26%3D%3F'"),
            ("grüße", "'gr%C3%BC%C3%9Fe'"),
            ("", "''"),
            ("keep-_.!~*()", "'keep-_.!~*()'"),
        ];
        for (input, expected) in cases {
            assert_eq!(quote_literal(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn wire_form_matches_the_reference_examples() {
        let q = Query::new()
            .option(
                "$filter",
                format!("slug eq {}", quote_literal("o'brien/app")),
            )
            .option("$select", "id");
        assert_eq!(
            q.to_wire(),
            "$filter=slug%20eq%20%27o%27%27brien%2Fapp%27&$select=id"
        );
        assert_eq!(
            wire_query(&format!("x eq {}", quote_literal("a b+c%"))),
            "x%20eq%20%27a%20b%2Bc%25%27"
        );
    }
}
