//! A token read from a file and used fresh: rotation without a reload or a restart.
//!
//! On Kubernetes a Secret update swaps the mounted directory's `..data` symlink; nothing tells
//! the process. Like Prometheus with its `*_file` credentials, the exporter looks at the file
//! when it is about to use the token: one `stat` per probe, and a re-read only when the file's
//! identity or contents changed (device, inode, size, modification time). A file that is empty,
//! unreadable, not a regular file, larger than [`MAX_TOKEN_FILE_BYTES`] or changing while it is
//! read never replaces a good token: the previous token stays in use and the probe says why.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

/// A token file larger than this is refused (a real balena API key is 32 characters).
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// A file rewritten in place (same inode: `echo new > file`, an editor, a script that
/// truncates then writes) is adopted only once it has been unchanged this long, so that a file
/// caught half written is never used. A file replaced whole (a new inode: a Kubernetes Secret
/// swap, `mv`) is adopted at once.
pub const SETTLE: Duration = Duration::from_secs(1);

/// What identifies a version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Result<Stamp, String> {
    let meta = super::files::regular_file(path, MAX_TOKEN_FILE_BYTES)?;
    Ok(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// Reads a token file once: a regular file of at most [`MAX_TOKEN_FILE_BYTES`], not empty once
/// trimmed, unchanged while it was read. The error never quotes the file's contents.
fn read(path: &Path) -> Result<(SecretString, Stamp), String> {
    let before = stamp(path)?;
    let bytes = super::files::read_bounded(path, MAX_TOKEN_FILE_BYTES)?;
    if stamp(path)? != before || bytes.len() as u64 != before.len {
        return Err(format!("{} changed while it was read", path.display()));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if let Some(why) = token_problem(token) {
        return Err(format!("{} in {}", why, path.display()));
    }
    Ok((SecretString::from(token.to_string()), before))
}

/// Why a token (already trimmed) can never be a balena API token, in words that quote none of
/// it: the one rule for a token at load, in a file at load and in a file read again after it
/// changed.
pub fn token_problem(token: &str) -> Option<&'static str> {
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Some("the token contains spaces or control characters");
    }
    // balena API keys and session tokens are printable ASCII; anything else (a zero-width
    // space or a non-breaking space pasted with the key) is never accepted by the API and would
    // only show as `unauthorized` on every probe.
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Some("the token contains characters other than printable ASCII (an invisible character pasted with it?)");
    }
    None
}

/// The token of one `token_file`, re-read when the file changes.
#[derive(Debug)]
pub struct TokenFile {
    /// The auth this is the token of: what the log names (never the token, nor by default the
    /// file's contents).
    auth: String,
    path: PathBuf,
    /// How messages name the file, when not by its path (a path from `${VAR}` is not shown).
    shown: Option<String>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stamp: Stamp,
    token: Arc<SecretString>,
}

/// The token to use now, and why it is not the file's current contents (if it is not).
#[derive(Debug, Clone)]
pub struct Current {
    /// The token.
    pub token: Arc<SecretString>,
    /// Set when the file could not be used and the previous token was kept.
    pub kept_because: Option<String>,
}

impl TokenFile {
    /// Reads the file of auth `auth` for the first time (at load or reload): an error is a
    /// config error. `shown`, when set, names the file in every message instead of its path
    /// (a path that came from `${VAR}` is not shown).
    pub fn open(auth: &str, path: &Path, shown: Option<String>) -> Result<Self, String> {
        let name = |why: String| match &shown {
            Some(s) => why.replace(&path.display().to_string(), s),
            None => why,
        };
        let (token, stamp) = read(path).map_err(name)?;
        Ok(Self {
            auth: auth.to_string(),
            path: path.to_path_buf(),
            shown,
            state: Mutex::new(State {
                stamp,
                token: Arc::new(token),
            }),
        })
    }

    /// The token to use now: re-read if the file changed since it was last read.
    pub fn current(&self) -> Current {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let kept_because = match stamp(&self.path) {
            Ok(now) if now == state.stamp => None,
            Ok(now) if rewritten_in_place_just_now(&state.stamp, &now) => Some(format!(
                "{} was rewritten in place less than {}s ago (it may be half written)",
                self.path.display(),
                SETTLE.as_secs()
            )),
            Ok(_) => match read(&self.path) {
                Ok((token, stamp)) => {
                    if token.expose_secret() != state.token.expose_secret() {
                        tracing::info!(auth = %self.auth, "token file changed: using the new token");
                    }
                    *state = State {
                        stamp,
                        token: Arc::new(token),
                    };
                    None
                }
                Err(why) => Some(why),
            },
            Err(why) => Some(why),
        };
        let kept_because = kept_because.map(|why| {
            let why = match &self.shown {
                Some(s) => why.replace(&self.path.display().to_string(), s),
                None => why,
            };
            format!("{why}; keeping the previous token")
        });
        Current {
            token: state.token.clone(),
            kept_because,
        }
    }
}

/// The same file (device and inode) with new contents, modified less than [`SETTLE`] ago.
fn rewritten_in_place_just_now(was: &Stamp, now: &Stamp) -> bool {
    let same_file = was.dev == now.dev && was.ino == now.ino;
    let young = now
        .modified
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age < SETTLE);
    same_file && young
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token file truncated and written in two steps is never used half written: the
    /// previous token stays until the file has been unchanged for [`SETTLE`].
    #[test]
    fn a_file_rewritten_in_place_is_used_once_it_settles() {
        use std::io::Write as _;
        let dir = tmpdir("in-place");
        let path = dir.join("token");
        write(&path, "first-token-0123456789\n");
        let file = TokenFile::open("a", &path, None).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(b"second-to").unwrap();
        let now = file.current();
        assert_eq!(now.token.expose_secret(), "first-token-0123456789");
        assert!(now.kept_because.unwrap().contains("rewritten in place"));
        f.write_all(b"ken-9876543210\n").unwrap();
        assert_eq!(
            file.current().token.expose_secret(),
            "first-token-0123456789"
        );
        // Settled: modified longer ago than SETTLE.
        f.set_modified(SystemTime::now() - SETTLE * 2).unwrap();
        let settled = file.current();
        assert_eq!(settled.token.expose_secret(), "second-token-9876543210");
        assert!(settled.kept_because.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    /// A Kubernetes Secret volume: `token -> ..data/token`, `..data -> ..<version>`.
    fn swap(dir: &Path, version: &str, token: &str) {
        let v = dir.join(version);
        std::fs::create_dir_all(&v).unwrap();
        write(&v.join("token"), token);
        let tmp = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if !dir.join("token").exists() {
            std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("balena-token-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_symlink_swap_is_used_at_once_and_a_bad_file_keeps_the_good_token() {
        let dir = tmpdir("swap");
        swap(&dir, "..v1", "first-token\n");
        let file = TokenFile::open("a", &dir.join("token"), None).unwrap();
        assert_eq!(file.current().token.expose_secret(), "first-token");
        swap(&dir, "..v2", "second-token\n");
        let now = file.current();
        assert_eq!(now.token.expose_secret(), "second-token");
        assert!(now.kept_because.is_none());
        swap(&dir, "..v3", "  \n");
        let now = file.current();
        assert_eq!(now.token.expose_secret(), "second-token");
        let why = now.kept_because.unwrap();
        assert!(
            why.contains("is empty; keeping the previous token"),
            "{why}"
        );
        // A file that cannot be used is described, never quoted; a rotated file is held to the
        // rule a file is held to at load (a zero-width space, a non-breaking space).
        for (bad, said) in [
            ("cnry-secret with a space\n", "spaces or control characters"),
            ("cnry-secret\u{7}\n", "spaces or control characters"),
            ("cnry-secret\u{200b}\n", "other than printable ASCII"),
            ("cnry\u{a0}secret\n", "other than printable ASCII"),
        ] {
            swap(&dir, "..v3b", bad);
            let now = file.current();
            assert_eq!(now.token.expose_secret(), "second-token");
            let why = now.kept_because.unwrap();
            assert!(why.contains(said) && !why.contains("cnry"), "{why}");
            assert!(
                TokenFile::open("a", &dir.join("token"), None).is_err(),
                "refused at load alike"
            );
            std::fs::remove_dir_all(dir.join("..v3b")).unwrap();
        }
        std::fs::remove_file(dir.join("..data")).unwrap();
        let why = file.current().kept_because.unwrap();
        assert!(why.contains("cannot read"), "{why}");
        swap(&dir, "..v4", "third-token");
        assert_eq!(file.current().token.expose_secret(), "third-token");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_small_regular_files_are_read_and_errors_never_quote_them() {
        let dir = tmpdir("kinds");
        assert!(TokenFile::open("a", &dir, None)
            .unwrap_err()
            .contains("not a regular file"));
        let big = dir.join("big");
        write(&big, &"secret-canary ".repeat(10_000));
        let err = TokenFile::open("a", &big, None).unwrap_err();
        assert!(err.contains("more than the 65536 allowed"), "{err}");
        assert!(!err.contains("secret-canary"));
        let bin = dir.join("bin");
        std::fs::write(&bin, [0xff, 0xfe, b's']).unwrap();
        assert!(TokenFile::open("a", &bin, None)
            .unwrap_err()
            .contains("not UTF-8"));
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Refused from its metadata, never opened (opening a FIFO blocks).
            assert!(TokenFile::open("a", &fifo, None)
                .unwrap_err()
                .contains("not a regular file"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
