//! The simulator's OData reader: turns a request's path and query into a [`Request`]
//! (resource, key, `$select`, `$filter`, `$expand`, `$orderby`, `$top`, `$skip`) the way the
//! pinejs odata-parser does, including its quirks (reference §3): `$` may come as `%24`,
//! spaces as ` `, `%20` or `+` outside quotes, `'` as `%27`, `''` inside a literal is one `'`
//! and the literal is then percent-decoded once, and `$orderby` without a direction is `desc`.
//! Anything it cannot read is a [`Malformed`] error, which the server answers with 400.

use percent_encoding::percent_decode_str;

/// A request the simulator could not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

/// A literal value in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number.
    Num(f64),
    /// A quoted string, decoded.
    Str(String),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// eq
    Eq,
    /// ne
    Ne,
    /// gt
    Gt,
    /// ge
    Ge,
    /// lt
    Lt,
    /// le
    Le,
}

/// A `$filter` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `a or b`
    Or(Box<Expr>, Box<Expr>),
    /// `a and b`
    And(Box<Expr>, Box<Expr>),
    /// `not a`
    Not(Box<Expr>),
    /// `a eq b` and friends.
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    /// `a in ('x','y')`
    In(Box<Expr>, Vec<Lit>),
    /// A field path, possibly through navigations or starting at a lambda variable.
    Path(Vec<String>),
    /// `nav/any(v: body)` or `nav/all(v: body)`.
    Lambda {
        /// The navigation path.
        path: Vec<String>,
        /// `all` rather than `any`.
        all: bool,
        /// The bound variable.
        var: String,
        /// The condition.
        body: Box<Expr>,
    },
    /// A literal.
    Lit(Lit),
}

/// One `$expand` item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expand {
    /// Navigation name.
    pub nav: String,
    /// `nav/$count`
    pub count: bool,
    /// Nested options.
    pub options: Options,
}

/// Query options of a request (or of an expand).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// `$select`
    pub select: Option<Vec<String>>,
    /// `$filter`
    pub filter: Option<Expr>,
    /// `$expand`
    pub expand: Vec<Expand>,
    /// `$orderby`: (field, descending)
    pub orderby: Vec<(String, bool)>,
    /// `$top`
    pub top: Option<usize>,
    /// `$skip`
    pub skip: Option<usize>,
}

/// A row key in the path: `(123)` or `(slug='x')`.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    /// `(123)`
    Id(u64),
    /// `(field='value')`
    Field(String, Lit),
}

/// A parsed OData GET.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Resource name, e.g. `device`.
    pub resource: String,
    /// Optional key.
    pub key: Option<Key>,
    /// `/$count` on the resource.
    pub count: bool,
    /// Options.
    pub options: Options,
}

/// Parses the path after `/v7/` and the raw query string.
pub fn parse_request(path: &str, query: &str) -> Result<Request, Malformed> {
    let bad = || Malformed(path.to_string());
    let path = decode_outside_quotes(path).map_err(|_| bad())?;
    let (head, count) = match path.strip_suffix("/$count") {
        Some(h) => (h.to_string(), true),
        None => (path.clone(), false),
    };
    let (resource, key) = match head.find('(') {
        Some(open) => {
            let inner = head[open + 1..].strip_suffix(')').ok_or_else(bad)?;
            (head[..open].to_string(), Some(parse_key(inner)?))
        }
        None => (head, None),
    };
    if resource.is_empty()
        || !resource
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(bad());
    }
    let mut options = Options::default();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = percent_decode_str(name).decode_utf8().map_err(|_| bad())?;
        set_option(&mut options, &name, value)?;
    }
    Ok(Request {
        resource,
        key,
        count,
        options,
    })
}

fn parse_key(inner: &str) -> Result<Key, Malformed> {
    let tokens = tokenize(inner)?;
    match tokens.as_slice() {
        [Tok::Num(n)] if *n >= 0.0 && n.fract() == 0.0 => Ok(Key::Id(*n as u64)),
        [Tok::Ident(f), Tok::Ident(eq), lit] if eq == "=" => {
            Ok(Key::Field(f.clone(), token_lit(lit)?))
        }
        _ => Err(Malformed(inner.to_string())),
    }
}

fn set_option(options: &mut Options, name: &str, value: &str) -> Result<(), Malformed> {
    let bad = || Malformed(format!("{name}={value}"));
    match name {
        "$select" => {
            let text = decode_outside_quotes(value)?;
            options.select = Some(text.split(',').map(|s| s.trim().to_string()).collect());
            if options
                .select
                .as_ref()
                .is_some_and(|s| s.iter().any(|f| f.is_empty()))
            {
                return Err(bad());
            }
        }
        "$filter" => options.filter = Some(parse_filter(value)?),
        "$expand" => options.expand = parse_expand(value)?,
        "$orderby" => {
            let text = decode_outside_quotes(value)?;
            for item in text.split(',') {
                let mut words = item.split_whitespace();
                let field = words.next().ok_or_else(bad)?.to_string();
                let desc = match words.next() {
                    None | Some("desc") => true,
                    Some("asc") => false,
                    Some(_) => return Err(bad()),
                };
                options.orderby.push((field, desc));
            }
        }
        "$top" => options.top = Some(value.parse().map_err(|_| bad())?),
        "$skip" => options.skip = Some(value.parse().map_err(|_| bad())?),
        "$format" | "apikey" => {}
        n if n.starts_with('$') => return Err(bad()),
        _ => {}
    }
    Ok(())
}

/// Splits at `sep` outside parentheses and quotes.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_expand(raw: &str) -> Result<Vec<Expand>, Malformed> {
    // Normalise only the apostrophes so that split_top sees quotes; the nested options are
    // parsed by set_option with the rest of their raw encoding.
    let text = raw
        .replace("%27", "'")
        .replace("%24", "$")
        .replace("%28", "(")
        .replace("%29", ")");
    let mut out = Vec::new();
    for item in split_top(&text, ',') {
        let item = item.trim();
        let (head, inner) = match item.find('(') {
            Some(open) => (
                &item[..open],
                Some(
                    item[open + 1..]
                        .strip_suffix(')')
                        .ok_or_else(|| Malformed(item.to_string()))?,
                ),
            ),
            None => (item, None),
        };
        let (nav, count) = match head.strip_suffix("/$count") {
            Some(n) => (n, true),
            None => (head, false),
        };
        if nav.is_empty() || !nav.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Malformed(item.to_string()));
        }
        let mut options = Options::default();
        if let Some(inner) = inner {
            for opt in split_top(inner, ';') {
                let (name, value) = opt
                    .split_once('=')
                    .ok_or_else(|| Malformed(opt.to_string()))?;
                set_option(&mut options, name, value)?;
            }
        }
        out.push(Expand {
            nav: nav.to_string(),
            count,
            options,
        });
    }
    Ok(out)
}

/// Decodes `%XX` and `+` outside quoted literals (used for paths, `$select`, `$orderby`).
fn decode_outside_quotes(raw: &str) -> Result<String, Malformed> {
    let plus = raw.replace('+', " ");
    percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| Malformed(raw.to_string()))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Open,
    Close,
    Comma,
    Colon,
    Slash,
}

/// Tokenises a raw (still URL-encoded) filter.
/// Long on purpose: one match over the OData lexical forms.
fn tokenize(raw: &str) -> Result<Vec<Tok>, Malformed> {
    let bad = || Malformed(raw.to_string());
    // Apostrophes may arrive encoded; a literal `%` in a value is always `%25`, so this is safe.
    let text = raw.replace("%27", "'");
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // Decodes one outside-quote character at i: returns (char, width).
    let outside = |i: usize| -> Result<(char, usize), Malformed> {
        match bytes[i] {
            b'+' => Ok((' ', 1)),
            b'%' => {
                let hex = text.get(i + 1..i + 3).ok_or_else(bad)?;
                let b = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
                if !b.is_ascii() {
                    return Err(bad());
                }
                Ok((b as char, 3))
            }
            b => Ok((b as char, 1)),
        }
    };
    while i < bytes.len() {
        let (c, w) = outside(i)?;
        match c {
            ' ' => i += w,
            '(' => {
                out.push(Tok::Open);
                i += w;
            }
            ')' => {
                out.push(Tok::Close);
                i += w;
            }
            ',' => {
                out.push(Tok::Comma);
                i += w;
            }
            ':' => {
                out.push(Tok::Colon);
                i += w;
            }
            '/' => {
                out.push(Tok::Slash);
                i += w;
            }
            '=' => {
                out.push(Tok::Ident("=".into()));
                i += w;
            }
            '\'' => {
                i += w;
                let mut lit = String::new();
                loop {
                    let &b = bytes.get(i).ok_or_else(bad)?;
                    if b == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            lit.push_str("%27");
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    let ch = text[i..].chars().next().ok_or_else(bad)?;
                    lit.push(ch);
                    i += ch.len_utf8();
                }
                let decoded = percent_decode_str(&lit).decode_utf8().map_err(|_| bad())?;
                out.push(Tok::Str(decoded.into_owned()));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += w;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                let n: f64 = text[start..i].parse().map_err(|_| bad())?;
                out.push(Tok::Num(n));
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == '$' => {
                let mut ident = String::new();
                while i < bytes.len() {
                    let (c, w) = outside(i)?;
                    if c.is_ascii_alphanumeric() || c == '_' || c == '$' {
                        ident.push(c);
                        i += w;
                    } else {
                        break;
                    }
                }
                out.push(Tok::Ident(ident));
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn token_lit(t: &Tok) -> Result<Lit, Malformed> {
    match t {
        Tok::Str(s) => Ok(Lit::Str(s.clone())),
        Tok::Num(n) => Ok(Lit::Num(*n)),
        Tok::Ident(i) if i == "null" => Ok(Lit::Null),
        Tok::Ident(i) if i == "true" => Ok(Lit::Bool(true)),
        Tok::Ident(i) if i == "false" => Ok(Lit::Bool(false)),
        other => Err(Malformed(format!("{other:?}"))),
    }
}

/// Parses a raw `$filter` value.
pub fn parse_filter(raw: &str) -> Result<Expr, Malformed> {
    let tokens = tokenize(raw)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        raw,
    };
    let e = p.or()?;
    if p.pos != p.tokens.len() {
        return Err(p.bad());
    }
    Ok(e)
}

struct Parser<'a> {
    tokens: Vec<Tok>,
    pos: usize,
    raw: &'a str,
}

impl Parser<'_> {
    fn bad(&self) -> Malformed {
        Malformed(self.raw.to_string())
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, t: Tok) -> Result<(), Malformed> {
        if self.next() == Some(t) {
            Ok(())
        } else {
            Err(self.bad())
        }
    }

    fn word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(i)) if i == w)
    }

    fn or(&mut self) -> Result<Expr, Malformed> {
        let mut left = self.and()?;
        while self.word("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, Malformed> {
        let mut left = self.unary()?;
        while self.word("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, Malformed> {
        if self.word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, Malformed> {
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Tok::Ident(w)) => match w.as_str() {
                "eq" => Some(CmpOp::Eq),
                "ne" => Some(CmpOp::Ne),
                "gt" => Some(CmpOp::Gt),
                "ge" => Some(CmpOp::Ge),
                "lt" => Some(CmpOp::Lt),
                "le" => Some(CmpOp::Le),
                "in" => {
                    self.pos += 1;
                    self.expect(Tok::Open)?;
                    let mut lits = Vec::new();
                    loop {
                        let t = self.next().ok_or_else(|| self.bad())?;
                        lits.push(token_lit(&t)?);
                        match self.next() {
                            Some(Tok::Comma) => continue,
                            Some(Tok::Close) => break,
                            _ => return Err(self.bad()),
                        }
                    }
                    return Ok(Expr::In(Box::new(left), lits));
                }
                _ => None,
            },
            _ => None,
        };
        match op {
            Some(op) => {
                self.pos += 1;
                let right = self.operand()?;
                Ok(Expr::Cmp(op, Box::new(left), Box::new(right)))
            }
            None => Ok(left),
        }
    }

    fn operand(&mut self) -> Result<Expr, Malformed> {
        match self.next().ok_or_else(|| self.bad())? {
            Tok::Open => {
                let e = self.or()?;
                self.expect(Tok::Close)?;
                Ok(e)
            }
            Tok::Str(s) => Ok(Expr::Lit(Lit::Str(s))),
            Tok::Num(n) => Ok(Expr::Lit(Lit::Num(n))),
            Tok::Ident(w) if w == "null" => Ok(Expr::Lit(Lit::Null)),
            Tok::Ident(w) if w == "true" => Ok(Expr::Lit(Lit::Bool(true))),
            Tok::Ident(w) if w == "false" => Ok(Expr::Lit(Lit::Bool(false))),
            Tok::Ident(first) if is_name(&first) => {
                let mut path = vec![first];
                while self.peek() == Some(&Tok::Slash) {
                    self.pos += 1;
                    let Some(Tok::Ident(seg)) = self.next() else {
                        return Err(self.bad());
                    };
                    if (seg == "any" || seg == "all") && self.peek() == Some(&Tok::Open) {
                        self.pos += 1;
                        let Some(Tok::Ident(var)) = self.next() else {
                            return Err(self.bad());
                        };
                        self.expect(Tok::Colon)?;
                        let body = self.or()?;
                        self.expect(Tok::Close)?;
                        return Ok(Expr::Lambda {
                            path,
                            all: seg == "all",
                            var,
                            body: Box::new(body),
                        });
                    }
                    if !is_name(&seg) {
                        return Err(self.bad());
                    }
                    path.push(seg);
                }
                if self.peek() == Some(&Tok::Open) {
                    // Functions (contains, tolower...) are not simulated.
                    return Err(self.bad());
                }
                Ok(Expr::Path(path))
            }
            _ => Err(self.bad()),
        }
    }
}

fn is_name(w: &str) -> bool {
    !w.is_empty()
        && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !["eq", "ne", "gt", "ge", "lt", "le", "and", "or", "not", "in"].contains(&w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &[&str]) -> Box<Expr> {
        Box::new(Expr::Path(p.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn the_wire_and_readable_forms_parse_to_the_same_filter() {
        let expected = Expr::Or(
            Box::new(Expr::Cmp(
                CmpOp::Eq,
                path(&["slug"]),
                Box::new(Expr::Lit(Lit::Str("o'brien/app".into()))),
            )),
            Box::new(Expr::Cmp(
                CmpOp::Eq,
                path(&["uuid"]),
                Box::new(Expr::Lit(Lit::Str("x y+z".into()))),
            )),
        );
        for raw in [
            "slug eq 'o''brien%2Fapp' or uuid eq 'x%20y+z'",
            "slug%20eq%20%27o%27%27brien%2Fapp%27%20or%20uuid%20eq%20%27x%20y+z%27",
            "slug+eq+'o''brien%2Fapp'+or+uuid+eq+'x%20y+z'",
        ] {
            assert_eq!(parse_filter(raw).unwrap(), expected, "{raw}");
        }
    }

    #[test]
    fn lambdas_and_in_lists_parse() {
        let e = parse_filter("belongs_to__application/any(a:a/organization/any(o:o/handle eq 'acme')) and id in (1,2)").unwrap();
        let Expr::And(l, r) = e else { panic!() };
        assert!(matches!(*l, Expr::Lambda { ref var, .. } if var == "a"));
        assert_eq!(
            *r,
            Expr::In(path(&["id"]), vec![Lit::Num(1.0), Lit::Num(2.0)])
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for raw in [
            "slug eq",
            "slug eq 'unterminated",
            "(a eq 1",
            "a eq 1)",
            "contains(a,'x')",
            "a %ZZ b",
            "a eq 1 b",
        ] {
            assert!(parse_filter(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn requests_with_keys_counts_and_options_parse() {
        let r = parse_request("organization(handle='my%5Forg')", "%24select=id").unwrap();
        assert_eq!(r.resource, "organization");
        assert_eq!(
            r.key,
            Some(Key::Field("handle".into(), Lit::Str("my_org".into())))
        );
        assert_eq!(r.options.select, Some(vec!["id".to_string()]));
        let r = parse_request(
            "device/$count",
            "$filter=is_online eq true&$top=5&$skip=10&$orderby=id",
        )
        .unwrap();
        assert!(r.count);
        assert_eq!(r.options.top, Some(5));
        assert_eq!(
            r.options.orderby,
            vec![("id".to_string(), true)],
            "no direction means desc"
        );
        let r = parse_request(
            "device",
            "$expand=is_of__device_type($select=slug),device_tag($select=tag_key,value;$filter=tag_key%20eq%20'a,b')",
        )
        .unwrap();
        assert_eq!(r.options.expand.len(), 2);
        assert_eq!(
            r.options.expand[1].options.select,
            Some(vec!["tag_key".into(), "value".into()])
        );
        assert!(parse_request("device", "$top=-1").is_err());
        assert!(parse_request("device", "$top=ten").is_err());
        let r = parse_request(
            "application",
            "$expand=owns__device/$count($filter=is_online eq true)",
        )
        .unwrap();
        assert!(r.options.expand[0].count);
    }
}
