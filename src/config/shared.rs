//! The config in force: an `ArcSwap` that probes snapshot at start and reloads replace whole,
//! one reload at a time.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{load, Config, ConfigError, LoadOptions};

/// The config in force, swapped whole on reload. Probes take an `Arc` snapshot at start.
#[derive(Debug)]
pub struct SharedConfig {
    current: ArcSwap<Config>,
    options: Option<LoadOptions>,
    /// Held for a whole reload: two reloads never interleave (each config gets its own
    /// generation, and the last one read is the one in force).
    reloading: Mutex<()>,
}

/// What a successful [`SharedConfig::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files were read and the new config is in force.
    Swapped,
    /// There is no config file (the environment-only start): nothing was read. Token files
    /// are re-read when they change, without a reload.
    NoFile,
}

impl SharedConfig {
    /// Wraps a loaded config; `options` says where reloads read from (None: not reloadable).
    pub fn new(config: Config, options: Option<LoadOptions>) -> Self {
        Self {
            current: ArcSwap::from_pointee(config),
            options,
            reloading: Mutex::new(()),
        }
    }

    /// The config in force now.
    pub fn snapshot(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Re-reads the files; on success swaps the new config in, on failure keeps the old one.
    /// Blocks while another reload runs. Reads files: call it off the HTTP workers
    /// (`startup::reload` does, with a time limit).
    pub fn reload(&self) -> Result<Reloaded, ConfigError> {
        let Some(opts) = &self.options else {
            return Ok(Reloaded::NoFile);
        };
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut new = load(opts)?;
        new.generation = self.current.load().generation + 1;
        self.current.store(Arc::new(new));
        Ok(Reloaded::Swapped)
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

/// Tells a reload in progress that the process is stopping (SIGTERM must not wait for it).
#[derive(Debug, Default)]
pub struct Stopping {
    flag: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Stopping {
    /// Marks the process as stopping and wakes every reload that waits.
    pub fn stop(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        let notified = self.notify.notified();
        if !self.flag.load(std::sync::atomic::Ordering::SeqCst) {
            notified.await;
        }
    }
}

/// Why a reload did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid or unreadable; the old one stays.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Reading took longer than [`RELOAD_TIME_LIMIT`]; the old config stays.
    #[error("reading the configuration took more than {}s; the previous configuration stays", RELOAD_TIME_LIMIT.as_secs())]
    TimedOut,
    /// The process is stopping.
    #[error("the exporter is stopping")]
    Stopping,
    /// No thread could be started to read the files.
    #[error("cannot start the reload: {0}")]
    Thread(String),
}

/// Reloads `config`'s files on a thread of its own (never an HTTP worker or the runtime),
/// within [`RELOAD_TIME_LIMIT`], one reload at a time; gives up at once when `stopping` says
/// the process is stopping.
pub async fn reload_off_thread(
    config: Arc<SharedConfig>,
    stopping: &Stopping,
) -> Result<Reloaded, ReloadError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("config-reload".into())
        .spawn(move || {
            let _ = tx.send(config.reload());
        })
        .map_err(|e| ReloadError::Thread(e.to_string()))?;
    tokio::select! {
        r = rx => r.map_err(|_| ReloadError::Thread("the reload thread ended without an answer".into()))
            .and_then(|r| r.map_err(ReloadError::from)),
        _ = tokio::time::sleep(RELOAD_TIME_LIMIT) => Err(ReloadError::TimedOut),
        _ = stopping.wait() => Err(ReloadError::Stopping),
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
        assert_eq!(env_only.reload().unwrap(), Reloaded::NoFile);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
