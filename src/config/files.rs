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

/// The deepest nesting of YAML flow collections in `text`, counting `[` and `{` outside quoted
/// scalars and comments (an upper bound is all that is needed).
pub fn yaml_flow_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    let mut prev = '\n';
    while let Some(c) = chars.next() {
        match c {
            '#' if prev.is_whitespace() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                prev = '\n';
                continue;
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' if !prev.is_alphanumeric() => {
                while let Some(c) = chars.next() {
                    if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    max
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
    fn flow_depth_ignores_quotes_and_comments() {
        assert_eq!(yaml_flow_depth("a: [1, {b: [2]}]\n"), 3);
        assert_eq!(yaml_flow_depth("a: '[[[['\nb: \"{{{\\\"{\"  # [[[[\n"), 0);
        assert_eq!(yaml_flow_depth("a: it's [x]\n"), 1);
        assert_eq!(yaml_flow_depth(&"[".repeat(100_000)), 100_000);
    }
}
