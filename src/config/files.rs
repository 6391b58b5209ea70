//! Reading the files the exporter is given (config files, token files, the web config and its
//! certificates) without trusting them: only regular files (a FIFO, a device or a directory is
//! refused from its metadata, never opened: opening a FIFO blocks, `/dev/zero` never ends), of
//! at most a given size, read once. Errors name the file and never quote its contents.

use std::io::Read;
use std::path::Path;

/// A config file larger than this is refused.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// A web config, certificate or key file larger than this is refused.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// YAML flow collections (`[`, `{`) nested deeper than this are refused before parsing: the
/// parser's time grows with the square of the depth (100,000 levels cost 83 s of CPU).
pub const MAX_YAML_NESTING: usize = 64;

/// The metadata of `path` (links followed) if it is a regular file of at most `max` bytes.
pub fn regular_file(path: &Path, max: u64) -> Result<std::fs::Metadata, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > max {
        return Err(format!(
            "{} is {} bytes, more than the {max} allowed",
            path.display(),
            meta.len()
        ));
    }
    Ok(meta)
}

/// The contents of a regular file of at most `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = regular_file(path, max)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "{} grew past {max} bytes while it was read",
            path.display()
        ));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text(path: &Path, max: u64) -> Result<String, String> {
    String::from_utf8(read_bounded(path, max)?)
        .map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// The PEM certificates of a file of at most [`MAX_PEM_BYTES`]: at least one.
pub fn pem_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = read_bounded(path, MAX_PEM_BYTES)?;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// The PEM private key of a file of at most [`MAX_PEM_BYTES`].
pub fn pem_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = read_bounded(path, MAX_PEM_BYTES)?;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: no private key ({e})", path.display()))
}

/// An upper bound of the deepest nesting of YAML flow collections in `text`, in one linear
/// pass that quoting cannot fool: the larger of two counts.
///
/// - As YAML reads it: `[` and `{` outside comments and quoted scalars, where a quote opens a
///   scalar only where a token can start (after whitespace, `[`, `{`, `,`, or — inside a flow
///   collection — `:`), as in libyaml. A quote inside a plain scalar (`zz: a"`) opens nothing.
/// - Blind to quoting and comments: every `[`/`{` against every `]`/`}`. A scan that misreads
///   where a quoted scalar starts can hide brackets from the first count; it cannot hide them
///   from this one, and the only way to lower this one (closing brackets inside quotes) is
///   seen by the first.
///
/// A quoted string holding more than [`MAX_YAML_NESTING`] unbalanced `[` is refused too.
pub fn yaml_flow_depth(text: &str) -> usize {
    yaml_depth_as_parsed(text).max(depth_ignoring_quotes(text))
}

fn depth_ignoring_quotes(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Where a YAML token can start after `prev`, at flow depth `depth`.
fn token_may_start(prev: u8, depth: usize) -> bool {
    matches!(prev, b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',') || (prev == b':' && depth > 0)
}

fn yaml_depth_as_parsed(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut max) = (0usize, 0usize);
    let mut prev = b'\n';
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let opens = token_may_start(prev, depth);
        match b {
            b'#' if prev.is_ascii_whitespace() => {
                i = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |n| i + n);
                prev = b'\n';
                continue;
            }
            b'"' if opens => i = end_of_double_quoted(bytes, i + 1),
            b'\'' if opens => i = end_of_single_quoted(bytes, i + 1),
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = bytes.get(i).copied().unwrap_or(b);
        i += 1;
    }
    max
}

/// The index of the `"` that closes a double-quoted scalar whose text starts at `from`.
fn end_of_double_quoted(bytes: &[u8], mut from: usize) -> usize {
    while let Some(n) = memchr::memchr2(b'"', b'\\', &bytes[from.min(bytes.len())..]) {
        let at = from + n;
        if bytes[at] == b'"' {
            return at;
        }
        from = at + 2;
    }
    bytes.len()
}

/// The index of the `'` that closes a single-quoted scalar (`''` is a quote inside it).
fn end_of_single_quoted(bytes: &[u8], mut from: usize) -> usize {
    while let Some(n) = memchr::memchr(b'\'', &bytes[from.min(bytes.len())..]) {
        let at = from + n;
        if bytes.get(at + 1) != Some(&b'\'') {
            return at;
        }
        from = at + 2;
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("balena-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_bounded(&dir, 10)
            .unwrap_err()
            .contains("not a regular file"));
        assert!(read_bounded(Path::new("/dev/zero"), 10)
            .unwrap_err()
            .contains("not a regular file"));
        let f = dir.join("f");
        std::fs::write(&f, "0123456789abc").unwrap();
        let err = read_bounded(&f, 10).unwrap_err();
        assert!(
            err.contains("13 bytes, more than the 10 allowed") && !err.contains("0123"),
            "{err}"
        );
        assert_eq!(read_bounded(&f, 13).unwrap(), b"0123456789abc");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flow_depth_reads_quotes_and_comments_as_yaml_does() {
        assert_eq!(yaml_flow_depth("a: [1, {b: [2]}]\n"), 3);
        assert_eq!(
            yaml_depth_as_parsed("a: '[[[['\nb: \"{{{\\\"{\"  # [[[[\n"),
            0
        );
        assert_eq!(yaml_flow_depth("a: it's [x]\n"), 1);
        assert_eq!(yaml_flow_depth("a: [\"]\", [\"]\", [x]]]\n"), 3);
        assert_eq!(yaml_flow_depth(&"[".repeat(100_000)), 100_000);
    }

    /// Every trick tried to hide nesting from the scan; each is a file YAML reads as nested
    /// 100 deep (checked with the parser where it stays cheap: serde_yaml's own recursion
    /// limit is 128).
    #[test]
    fn quoting_cannot_hide_nesting() {
        let deep = format!("{}x{}", "[".repeat(100), "]".repeat(100));
        let close_in_quotes = format!("{}x{}", "[\"]\",".repeat(100), "]".repeat(100));
        for (trick, text) in [
            (
                "a quote inside a plain scalar",
                format!("zz: a\"\nm: {deep}\n"),
            ),
            ("a quote after a word", format!("zz: it\"s\nm: {deep}\n")),
            (
                "a single quote after a word",
                format!("zz: it's\nm: {deep}\n"),
            ),
            (
                "a quote in a block scalar",
                format!("zz: |\n  \"\nm: {deep}\n"),
            ),
            ("a quote in a comment", format!("# \"\nm: {deep}\n")),
            (
                "a quote after a colon in block context",
                format!("zz: a:\"\nm: {deep}\n"),
            ),
            (
                "closing brackets inside quotes",
                format!("m: {close_in_quotes}\n"),
            ),
            ("both", format!("zz: a\"\nm: {close_in_quotes}\n")),
            ("an unclosed quote", format!("zz: \"\\\"\nm: {deep}\n")),
        ] {
            assert!(
                yaml_flow_depth(&text) >= 100,
                "{trick}: {}",
                yaml_flow_depth(&text)
            );
        }
    }
}
