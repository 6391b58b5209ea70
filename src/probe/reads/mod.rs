//! Background reads: data a probe joins to its device listing but that changes slowly and costs
//! more than the listing (a target's services, from its image installs), read off the probe
//! path on a schedule of its own and kept as a [`Snapshot`].
//!
//! One seam for every such read, as vector's HTTP sources share one `call()` and write only
//! what is theirs: a read kind implements [`Read`] (its name, whether and how often a module
//! wants it, the read itself under [`Bounds`]) and is listed in [`READS`]; the [`Scheduler`]
//! owns the rest — freshness, one read at a time per key, retry after a failure, sweeping idle
//! snapshots, the memory budget, the self-metrics (`balena_exporter_background_*{read}`) and the
//! notes a background session leaves for the next probe. A probe gets the [`Snapshots`] of its
//! module's reads and hands them to the series builder, which asks for each by type.
//!
//! Adding a read: one file here implementing [`Read`] and [`Snapshot`], one line in [`READS`];
//! docs/development.md lists the rest (its series, its docs, its tests).

pub mod host;
mod scheduler;
pub mod services;

pub use scheduler::{ReadsAt, Scheduler};

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::LocalBoxFuture;

use crate::balena::{BalenaError, DeviceScope, Session};
use crate::config::ModuleConfig;

/// The key of the setting that bounds background reads.
pub const BOUND_KEY: &str = "api.background_max_bytes";

/// What a read leaves: held until the next read of its key replaces it.
pub trait Snapshot: AsAny + Send + Sync + std::fmt::Debug {
    /// Bytes held, roughly (`balena_exporter_background_bytes`).
    fn bytes(&self) -> usize;
    /// When the read started (the data is at least this recent).
    fn read_at(&self) -> SystemTime;
    /// What it holds, in words, for the probe's notes ("1204 image installs, 3100 current
    /// services").
    fn summary(&self) -> String;
}

/// `as_any` for every `'static` type, so that a [`Snapshot`] can be asked for by type.
pub trait AsAny: Any {
    /// `self` as `Any`.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// What one read may hold while it runs ([`Scheduler`] gives each a share of
/// `api.background_max_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes the read may hold while it runs.
    pub max_bytes: usize,
}

impl Bounds {
    /// The most rows a listing may take when each costs `bytes_per_row` while the read runs,
    /// and the setting that says so (the listing's error names it).
    pub fn max_rows(&self, bytes_per_row: usize) -> (usize, &'static str) {
        (self.max_bytes / bytes_per_row.max(1), BOUND_KEY)
    }
}

/// One kind of background read.
pub trait Read: Sync + 'static {
    /// Its name: the `read` label and the word in notes and logs (`services`).
    fn name(&self) -> &'static str;
    /// How often `module` wants it re-read, or `None` when the module does not use it.
    /// `Some(0s)`: every probe waits for a read of its own.
    fn interval(&self, module: &ModuleConfig) -> Option<Duration>;
    /// The module settings that change what is read (part of the snapshot's key; empty when
    /// none do).
    fn settings(&self, _module: &ModuleConfig) -> String {
        String::new()
    }
    /// The read of `scope` through `session` (its own, with a deadline of its own), holding at
    /// most `bounds`.
    fn read<'a>(
        &'a self,
        session: &'a Session<'a>,
        scope: &'a DeviceScope,
        bounds: Bounds,
    ) -> LocalBoxFuture<'a, Result<Arc<dyn Snapshot>, BalenaError>>;
}

/// A read's future as [`Read::read`] returns it: boxed, its snapshot behind the trait.
pub fn boxed<'a, S: Snapshot + 'static>(
    read: impl std::future::Future<Output = Result<S, BalenaError>> + 'a,
) -> LocalBoxFuture<'a, Result<Arc<dyn Snapshot>, BalenaError>> {
    Box::pin(async move {
        let snapshot: Arc<dyn Snapshot> = Arc::new(read.await?);
        Ok(snapshot)
    })
}

/// Every background read, in the order a probe gets them.
pub static READS: &[&dyn Read] = &[&services::Services, &host::Host];

/// The snapshots one probe got (those its module reads and that exist in time).
#[derive(Debug, Default, Clone)]
pub struct Snapshots(Vec<Arc<dyn Snapshot>>);

impl Snapshots {
    /// The snapshot of type `T`, if the probe got one.
    pub fn get<T: Snapshot>(&self) -> Option<&T> {
        self.0
            .iter()
            .find_map(|s| (**s).as_any().downcast_ref::<T>())
    }

    /// Adds one.
    pub fn push(&mut self, s: Arc<dyn Snapshot>) {
        self.0.push(s);
    }
}
