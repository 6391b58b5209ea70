//! Fleet discovery for organization and `all` targets: which fleets each covers, refreshed
//! in the background (every `--discovery.interval` and after every reload), so that `/sd` can
//! list one target per fleet (`<target>/<fleet slug>`) and `/probe` can probe each on its own.
//! A fleet name from a request is accepted only if discovery found it: a request never makes
//! the exporter look up a slug it chose.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::balena::{BalenaClient, FleetSet};
use crate::config::{Scope, SharedConfig};
use crate::probe::prober::Prober;

/// A fleet found under an org or `all` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredFleet {
    /// `org/app` slug.
    pub slug: String,
    /// Display name.
    pub app_name: String,
}

/// What discovery knows, per target, for one config generation.
#[derive(Debug, Default)]
pub struct Discovery {
    fleets: RwLock<BTreeMap<String, (u64, Vec<DiscoveredFleet>)>>,
    refresh: Notify,
}

impl Discovery {
    /// The fleets of a target found under config `generation`, if discovered.
    pub fn fleets_of(&self, target: &str, generation: u64) -> Option<Vec<DiscoveredFleet>> {
        let map = self.fleets.read().unwrap_or_else(|e| e.into_inner());
        map.get(target)
            .filter(|(g, _)| *g == generation)
            .map(|(_, f)| f.clone())
    }

    /// Whether `slug` was discovered under `target`.
    pub fn knows(&self, target: &str, generation: u64, slug: &str) -> bool {
        self.fleets_of(target, generation)
            .is_some_and(|fleets| fleets.iter().any(|f| f.slug == slug))
    }

    /// Asks the background task to refresh now (after a reload).
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    fn store(&self, target: &str, generation: u64, fleets: Vec<DiscoveredFleet>) {
        let mut map = self.fleets.write().unwrap_or_else(|e| e.into_inner());
        map.insert(target.to_string(), (generation, fleets));
    }
}

/// Runs discovery now, then every `interval` and after every reload, until the process ends.
/// Must be called inside an actix runtime (the awc client is not `Send`).
/// It gets only what it needs: the fleets it fills, the config, and the prober.
pub fn spawn(
    discovery: Arc<Discovery>,
    config: Arc<SharedConfig>,
    prober: Arc<Prober>,
    interval: Duration,
) {
    actix_rt::spawn(async move {
        let client = prober.client();
        loop {
            refresh_once(&discovery, &config, &prober, &client).await;
            let _ = actix_rt::time::timeout(interval, discovery.refresh.notified()).await;
        }
    });
}

async fn refresh_once(
    discovery: &Discovery,
    config: &SharedConfig,
    prober: &Prober,
    client: &BalenaClient,
) {
    let config = config.snapshot();
    for (name, target) in &config.targets {
        let scope = target.scope();
        let set = match &scope {
            Scope::Org(handle) => FleetSet::Org(handle),
            Scope::All => FleetSet::Accessible,
            Scope::Fleet(_) => continue,
        };
        let Some(token) = config.auths.get(&target.auth).and_then(|a| a.current()) else {
            continue;
        };
        match prober
            .fleets(client, &config, &target.auth, &token, &set)
            .await
        {
            Ok(fleets) => {
                let found: Vec<DiscoveredFleet> = fleets
                    .into_iter()
                    .map(|f| DiscoveredFleet {
                        slug: f.slug,
                        app_name: f.app_name,
                    })
                    .collect();
                tracing::debug!(target_name = %name, fleets = found.len(), "discovered fleets");
                discovery.store(name, config.generation, found);
            }
            Err(e) => {
                tracing::warn!(target_name = %name, reason = e.reason(), error = %e, "fleet discovery failed; keeping the previous list")
            }
        }
    }
}
