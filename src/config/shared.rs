//! The config in force: an `ArcSwap` that probes snapshot at start and reloads replace whole,
//! one reload at a time; and [`reload_off_thread`], the reload that SIGHUP and `POST
//! /-/reload` run: on a thread of its own, within a time limit, and never applied once its
//! caller was told it failed.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{load, Config, ConfigError, LoadOptions};

/// The config in force, swapped whole on reload. Probes take an `Arc` snapshot at start.
#[derive(Debug)]
pub struct SharedConfig {
    current: ArcSwap<Config>,
    options: Option<LoadOptions>,
    /// Where the config came from when there are no files to re-read.
    fixed: Fixed,
    /// Held for a whole reload: two reloads never interleave (each config gets its own
    /// generation, and the last one read is the one in force).
    reloading: Mutex<()>,
    /// Held by the one reload thread that may exist ([`reload_off_thread`]); reloads asked
    /// meanwhile wait for it without a thread of their own.
    reload_thread: Arc<tokio::sync::Mutex<()>>,
}

/// One reload's fate, decided once: applied by its thread, or abandoned by its caller (timed
/// out, or the process stopping). An abandoned reload is never applied.
#[derive(Debug, Default)]
struct Ticket(AtomicU8);

const PENDING: u8 = 0;
const APPLIED: u8 = 1;
const ABANDONED: u8 = 2;

impl Ticket {
    /// The reload may be applied (and now will be): false if it was abandoned.
    fn apply(&self) -> bool {
        self.0
            .compare_exchange(PENDING, APPLIED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Abandons the reload: false if it was already applied.
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(PENDING, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// What a successful [`SharedConfig::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files were read and the new config is in force.
    Swapped,
    /// There is no config file (the environment-only start, or `--demo`): nothing was read.
    /// Token files are re-read when they change, without a reload.
    NoFile(Fixed),
}

/// Where a config without files comes from: what a reload says it could not re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixed {
    /// `BALENA_TOKEN` / `BALENA_TOKEN_FILE` and the other variables, read at start.
    Environment,
    /// `--demo`: the embedded `config/demo.yml`.
    Demo,
}

impl Fixed {
    /// One sentence for the operator who asked for a reload.
    pub fn nothing_to_reload(self) -> &'static str {
        match self {
            Fixed::Environment => "nothing to reload: the configuration comes from the environment, read at start; BALENA_TOKEN_FILE is re-read when it changes",
            Fixed::Demo => "nothing to reload: --demo runs the embedded demo configuration (config/demo.yml), read at start; run with --config.file to reload a file",
        }
    }
}

impl SharedConfig {
    /// Wraps a loaded config; `options` says where reloads read from (None: not reloadable).
    pub fn new(config: Config, options: Option<LoadOptions>) -> Self {
        Self {
            current: ArcSwap::from_pointee(config),
            options,
            fixed: Fixed::Environment,
            reloading: Mutex::new(()),
            reload_thread: Arc::default(),
        }
    }

    /// The `--demo` config: never reloaded.
    pub fn demo(config: Config) -> Self {
        Self {
            fixed: Fixed::Demo,
            ..Self::new(config, None)
        }
    }

    /// The config in force now.
    pub fn snapshot(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Re-reads the files; on success swaps the new config in, on failure keeps the old one.
    /// Blocks while another reload runs. Reads files: call it off the HTTP workers
    /// ([`reload_off_thread`] does, with a time limit).
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        self.reload_unless_abandoned(&Ticket::default())
            .expect("a fresh ticket is never abandoned")
    }

    /// [`SharedConfig::reload`], applied only if `ticket` was not abandoned meanwhile (None
    /// then: nothing changed).
    fn reload_unless_abandoned(&self, ticket: &Ticket) -> Option<Result<Reloaded, ConfigError>> {
        let Some(opts) = &self.options else {
            return Some(Ok(Reloaded::NoFile(self.fixed)));
        };
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut new = match load(opts) {
            Ok(new) => new,
            Err(e) => return Some(Err(e)),
        };
        if !ticket.apply() {
            return None;
        }
        new.generation = self.current.load().generation + 1;
        self.current.store(Arc::new(new));
        Some(Ok(Reloaded::Swapped))
    }

    /// The config files, if reloadable.
    pub fn files(&self) -> Vec<&Path> {
        self.options
            .iter()
            .flat_map(|o| o.files.iter().map(|f| f.as_path()))
            .collect()
    }
}

/// The longest a reload may spend reading and checking files before it is given up (a file
/// on a hung network mount, say). Files are regular and size-capped, so a healthy reload takes
/// milliseconds.
pub const RELOAD_TIME_LIMIT: Duration = Duration::from_secs(10);

/// Why a reload did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid or unreadable; the old one stays.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Reading took longer than [`RELOAD_TIME_LIMIT`]; the old config stays, and the reload
    /// is never applied later.
    #[error("reading the configuration took more than {}s; the previous configuration stays (that reload is abandoned, never applied later)", RELOAD_TIME_LIMIT.as_secs())]
    TimedOut,
    /// An earlier reload was still reading its files for the whole time limit.
    #[error("an earlier reload was still reading the files after {}s; the previous configuration stays", RELOAD_TIME_LIMIT.as_secs())]
    Busy,
    /// The process is stopping.
    #[error("the exporter is stopping")]
    Stopping,
    /// No thread could be started to read the files.
    #[error("cannot start the reload: {0}")]
    Thread(String),
}

/// Reloads `config`'s files on a thread of its own (never an HTTP worker or the runtime),
/// within [`RELOAD_TIME_LIMIT`]; gives up at once when `stopping` resolves (the process is
/// stopping). See [`reload_within`].
pub async fn reload_off_thread(
    config: Arc<SharedConfig>,
    stopping: impl Future<Output = ()>,
) -> Result<Reloaded, ReloadError> {
    reload_within(config, stopping, RELOAD_TIME_LIMIT).await
}

/// The reload of [`reload_off_thread`] within `limit`. At most one reload thread exists: a
/// reload asked while one runs (or while an abandoned one is still stuck reading) waits for
/// it without a thread, within the same limit. A reload given up on (timed out, stopping) is
/// never applied afterwards, so what the caller was told — and the reload metrics — stay true.
pub async fn reload_within(
    config: Arc<SharedConfig>,
    stopping: impl Future<Output = ()>,
    limit: Duration,
) -> Result<Reloaded, ReloadError> {
    tokio::pin!(stopping);
    let until = tokio::time::Instant::now() + limit;
    let gate = config.reload_thread.clone();
    let permit = tokio::select! {
        p = tokio::time::timeout_at(until, gate.lock_owned()) => p.map_err(|_| ReloadError::Busy)?,
        _ = &mut stopping => return Err(ReloadError::Stopping),
    };
    let ticket = Arc::new(Ticket::default());
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    {
        let ticket = ticket.clone();
        std::thread::Builder::new()
            .name("config-reload".into())
            .spawn(move || {
                let _one_thread = permit;
                if let Some(outcome) = config.reload_unless_abandoned(&ticket) {
                    let _ = tx.send(outcome);
                }
            })
            .map_err(|e| ReloadError::Thread(e.to_string()))?;
    }
    let answer = |r: Result<Result<Reloaded, ConfigError>, _>| {
        r.map_err(|_| ReloadError::Thread("the reload thread ended without an answer".into()))
            .and_then(|r| r.map_err(ReloadError::from))
    };
    tokio::select! {
        r = &mut rx => answer(r),
        _ = tokio::time::sleep_until(until) => {
            if ticket.abandon() {
                Err(ReloadError::TimedOut)
            } else {
                answer(rx.await) // applied just now: say so
            }
        }
        _ = &mut stopping => {
            ticket.abandon();
            Err(ReloadError::Stopping)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reloads from many threads at once: each gets a generation of its own (none lost, none
    /// shared), because only one runs at a time.
    #[test]
    fn concurrent_reloads_run_one_at_a_time() {
        let dir = std::env::temp_dir().join(format!("balena-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yml");
        std::fs::write(
            &file,
            "auths:\n  a:\n    token: tok\ntargets:\n  t: {fleet: org/app, auth: a}\n",
        )
        .unwrap();
        let opts = LoadOptions::file(&file);
        let shared = Arc::new(SharedConfig::new(load(&opts).unwrap(), Some(opts)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        assert_eq!(shared.reload().unwrap(), Reloaded::Swapped);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(shared.snapshot().generation, 40);
        let env_only = SharedConfig::new(shared.snapshot().as_ref().clone(), None);
        assert_eq!(
            env_only.reload().unwrap(),
            Reloaded::NoFile(Fixed::Environment)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn reload_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .filter(|name| name.trim() == "config-reload")
                    .count()
            })
            .unwrap_or(0)
    }

    /// A reload that outlived its time limit is abandoned: its thread ends without applying
    /// it, reloads asked meanwhile get no thread of their own, and a reload in time applies.
    #[tokio::test]
    async fn a_reload_that_timed_out_is_never_applied() {
        let dir = std::env::temp_dir().join(format!("balena-slow-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yml");
        let mut yaml = String::from("auths:\n  a:\n    token: tok\ntargets:\n");
        for i in 0..5_000 {
            yaml.push_str(&format!("  t{i}: {{fleet: org/app{i}, auth: a}}\n"));
        }
        std::fs::write(&file, yaml).unwrap();
        let opts = LoadOptions::file(&file);
        let shared = Arc::new(SharedConfig::new(load(&opts).unwrap(), Some(opts)));
        let never = || std::future::pending::<()>();
        let quick = Duration::from_millis(1);
        let timed_out = reload_within(shared.clone(), never(), quick).await;
        assert!(
            matches!(timed_out, Err(ReloadError::TimedOut)),
            "{timed_out:?}"
        );
        for _ in 0..5 {
            let meanwhile = reload_within(shared.clone(), never(), quick).await;
            assert!(matches!(meanwhile, Err(ReloadError::Busy)), "{meanwhile:?}");
        }
        assert!(reload_threads() <= 1, "{} reload threads", reload_threads());
        // The abandoned reload's thread ends; its config was read but never applied.
        drop(shared.reload_thread.clone().lock_owned().await);
        assert_eq!(shared.snapshot().generation, 0);
        let in_time = reload_within(shared.clone(), never(), Duration::from_secs(60)).await;
        assert_eq!(in_time.unwrap(), Reloaded::Swapped);
        assert_eq!(shared.snapshot().generation, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
