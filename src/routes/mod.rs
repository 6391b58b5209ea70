//! The HTTP surface: one file per endpoint group, and the state handlers share.

mod config;
mod health;
mod landing;
mod logs;
mod metrics;
mod probe;
mod reload;
mod report;
mod sd;

pub use self::config::config;
pub use health::{healthy, ready};
pub use landing::landing;
pub use logs::logs;
pub use metrics::metrics;
pub use probe::{effective_timeout, probe, ProbeParams};
pub use reload::reload;
pub use report::{count, took};
pub use sd::sd;

use std::sync::Arc;
use std::time::Duration;

use crate::config::SharedConfig;
use crate::discovery::Discovery;
use crate::history::History;
use crate::metrics::ExporterMetrics;
use crate::probe::prober::Prober;

/// State shared by every worker (plain data; the awc client is per worker).
#[derive(Debug)]
pub struct AppState {
    /// The config in force.
    pub config: Arc<SharedConfig>,
    /// Self-metrics.
    pub metrics: Arc<ExporterMetrics>,
    /// Subtracted from the scrape timeout to leave time for the answer.
    pub timeout_offset: Duration,
    /// Probes, the caches and the upstream cap they share.
    pub prober: Arc<Prober>,
    /// Recent probes for the landing page and `/logs`.
    pub history: History,
    /// Fleets found under org and `all` targets.
    pub discovery: Arc<Discovery>,
    /// Reload and stop ([`crate::lifecycle`]).
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
}
