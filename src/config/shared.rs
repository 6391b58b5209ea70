//! The config in force: an `ArcSwap` that probes snapshot at start and reloads replace whole.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{load, Config, ConfigError, LoadOptions};

/// The config in force, swapped whole on reload. Probes take an `Arc` snapshot at start.
#[derive(Debug)]
pub struct SharedConfig {
    current: ArcSwap<Config>,
    options: Option<LoadOptions>,
}

impl SharedConfig {
    /// Wraps a loaded config; `options` says where reloads read from (None: not reloadable).
    pub fn new(config: Config, options: Option<LoadOptions>) -> Self {
        Self {
            current: ArcSwap::from_pointee(config),
            options,
        }
    }

    /// The config in force now.
    pub fn snapshot(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Re-reads the file; on success swaps it in, on failure keeps the old one.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let Some(opts) = &self.options else {
            return Ok(());
        };
        let mut new = load(opts)?;
        new.generation = self.current.load().generation + 1;
        self.current.store(Arc::new(new));
        Ok(())
    }

    /// The config files, if reloadable.
    pub fn files(&self) -> Vec<&Path> {
        self.options
            .iter()
            .flat_map(|o| o.files.iter().map(|f| f.as_path()))
            .collect()
    }
}
