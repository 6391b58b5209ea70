//! A probe: target → upstream fetch → series. [`run`] is the seam between the `/probe`
//! handler (which owns the request, the deadline and the final encoding) and the balena API.
//!
//! Devices are turned into series page by page as they arrive; fleet aggregates are written
//! once every device of the target has been counted.

pub mod body;
pub mod cache;
pub mod series;

use std::collections::HashMap;
use std::time::Duration;

use crate::balena::{self, BalenaError, DeviceScope, FleetSet, Session};
use crate::config::{ModuleConfig, Scope};
use crate::metrics::Exposition;
use body::CompressedSeries;
use series::{tag_labels, write_device, write_fleet, FleetStats};

/// What a successful fetch produced.
#[derive(Debug, Default)]
pub struct ProbeData {
    /// The target's series (fleet and device metrics) in text format, compressed once so that
    /// every answer served from this fetch shares it.
    pub series: CompressedSeries,
    /// Fleets covered.
    pub fleets: usize,
    /// Devices counted.
    pub devices: usize,
    /// Upstream requests made.
    pub api_requests: usize,
    /// How long the fetch took.
    pub fetch_duration: Duration,
}

/// Fetches a target's data through `session` and builds its series.
pub async fn fetch(
    session: &Session<'_>,
    scope: &Scope,
    module: &ModuleConfig,
) -> Result<ProbeData, BalenaError> {
    let started = std::time::Instant::now();
    let (fleets, devices) = match scope {
        Scope::Fleet(slug) => {
            let fleet = balena::fleet_by_slug(session, slug, module).await?;
            let id = fleet.id;
            (vec![fleet], DeviceScope::Fleet(id))
        }
        Scope::Org(handle) => (
            balena::fleets(session, &FleetSet::Org(handle), module).await?,
            DeviceScope::Org(handle.clone()),
        ),
        Scope::All => (
            balena::fleets(session, &FleetSet::Accessible, module).await?,
            DeviceScope::Accessible,
        ),
    };
    let mut stats: Vec<FleetStats> = fleets.into_iter().map(FleetStats::new).collect();
    let mut out = Exposition::new();
    let mut device_total = 0;
    if module.counts_only {
        for s in &mut stats {
            s.online = s.fleet.online_count.unwrap_or(0);
        }
    } else if !stats.is_empty() {
        let index: HashMap<u64, usize> = stats
            .iter()
            .enumerate()
            .map(|(i, s)| (s.fleet.id, i))
            .collect();
        let tags = tag_labels(module);
        let single = stats.len() == 1;
        balena::devices(session, &devices, module, |d| {
            let i = match d.belongs_to__application.and_then(|f| index.get(&f.id)) {
                Some(i) => *i,
                None if single => 0,
                None => return,
            };
            device_total += 1;
            stats[i].add(&d);
            if module.devices {
                write_device(&mut out, &stats[i].fleet.slug, &d, &tags);
            }
        })
        .await?;
    }
    // Fleet aggregates go first in the output: they are what most dashboards read.
    let mut fleet_series = Exposition::new();
    for s in &stats {
        write_fleet(&mut fleet_series, s, module);
    }
    fleet_series.append(out);
    Ok(ProbeData {
        series: CompressedSeries::from_exposition(&fleet_series),
        fleets: stats.len(),
        devices: device_total,
        api_requests: session.call_count(),
        fetch_duration: started.elapsed(),
    })
}
