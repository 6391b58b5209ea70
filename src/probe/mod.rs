//! A probe: target → upstream fetch → series → answer. [`prober::Prober`] is the seam between
//! the `/probe` handler (which owns the request and the HTTP answer) and the balena API: it
//! runs [`fetch`] through the caches; [`answer`] turns the result into every answer form.
//!
//! Devices are turned into series page by page as they arrive ([`device`]); fleet aggregates
//! (`fleet`) are written once every device of the target has been counted, joined with the
//! target's background snapshots (`reads`) by device id.

pub mod answer;
pub mod cache;
pub mod compact;
pub mod device;
pub(crate) mod fleet;
pub(crate) mod host;
pub(crate) mod labels;
pub mod prober;
pub(crate) mod reads;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::balena::model::{Device, Fleet};
use crate::balena::{self, BalenaError, DeviceScope, FleetSet, Session};
use crate::config::{ModuleConfig, Scope};
use crate::exposition::body::CompressedSeries;
use crate::exposition::codec::Codec;
use crate::exposition::Exposition;
use compact::CompactDevices;
use device::{write_device, write_device_services};
use fleet::{write_fleet, FleetStats};
use reads::{services, ReadsAt, Snapshots};

/// A device whose series are written as text, kept for the series written once the background
/// snapshots are joined (its services, its OS update state).
#[derive(Debug)]
struct Named {
    id: u64,
    fleet: u32,
    uuid: String,
    name: String,
    /// Its host combination in its fleet's [`fleet::FleetStats::hosts`].
    host: u32,
}

/// Pending text of one family that is compressed as one piece: large enough to compress well
/// (the deflate window is 32 KiB), small enough that ~13 per-device families of a probe hold
/// under 1 MiB of text at any time.
pub const PACK_THRESHOLD: usize = 64 * 1024;

/// What a successful fetch produced.
#[derive(Debug, Default)]
pub struct ProbeData {
    /// The target's series (fleet and device metrics) in text format, compressed once so that
    /// every answer served from this fetch shares it.
    pub series: CompressedSeries,
    /// Per-device series kept as values (modules with `compact_cache`), rendered for each
    /// answer after `series`.
    pub compact: Option<Arc<CompactDevices>>,
    /// Fleets covered.
    pub fleets: usize,
    /// Devices counted (online devices only when `online_only`).
    pub devices: usize,
    /// A `counts_only` module: `devices` are the fleets' online counts, no device was listed.
    pub online_only: bool,
    /// What needs a person's attention, in words (crashed services, updates under way or
    /// failed, a failed build): the landing and debug pages show it.
    pub attention: Vec<String>,
}

impl ProbeData {
    /// Bytes held by this result (what `api.cache_max_bytes` bounds).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.series.compressed_len()
            + self.compact.as_ref().map_or(0, |c| c.bytes())
    }
}

/// Fetches a target's data through `session` and builds its series, compressed as `codec`
/// pieces; the background snapshots the module reads are got from `reads` beside the device
/// listing.
pub async fn fetch(
    session: &Session<'_>,
    scope: &Scope,
    module: &ModuleConfig,
    rows: &FleetRowsAt<'_>,
    reads: &ReadsAt,
    codec: Codec,
) -> Result<ProbeData, BalenaError> {
    let (fleets, devices) = match scope {
        Scope::Fleet(slug) => {
            let fleet = fleet_row(session, slug, module, rows).await?;
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
    let mut builder = SeriesBuilder::new(fleets, module).compressed_as(codec);
    if !module.devices_listed() {
        builder.use_online_counts();
        return Ok(builder.finish(&Snapshots::default()));
    }
    if builder.is_empty() {
        return Ok(builder.finish(&Snapshots::default()));
    }
    let listing = balena::devices(session, &devices, module, |d| builder.add(&d));
    let snapshots = async { Ok(reads.get(session, &devices, module).await) };
    let (_, snapshots) = tokio::try_join!(listing, snapshots)?;
    Ok(builder.finish(&snapshots))
}

/// The fleet-row cache as one probe sees it: which auth and config generation, for how long.
pub struct FleetRowsAt<'a> {
    /// The shared rows.
    pub rows: &'a cache::FleetRows,
    /// Auth name (rows are per token: another token may not see the fleet).
    pub auth: &'a str,
    /// Config generation.
    pub generation: u64,
    /// `api.fleet_cache_ttl`.
    pub ttl: Duration,
}

/// A fleet's row: from the cache when young enough (never for counts-only modules, whose
/// rows carry live counts), else from the API.
async fn fleet_row(
    session: &Session<'_>,
    slug: &str,
    module: &ModuleConfig,
    at: &FleetRowsAt<'_>,
) -> Result<Fleet, BalenaError> {
    let cacheable = !module.counts_only && !at.ttl.is_zero();
    if cacheable {
        if let Some(f) = at.rows.get(at.auth, slug, at.generation, at.ttl) {
            session.note(format_args!(
                "fleet row of {slug:?} from the cache (api.fleet_cache_ttl)"
            ));
            return Ok(f);
        }
    }
    let fleet = balena::fleet_by_slug(session, slug, module).await?;
    if cacheable {
        at.rows
            .put(at.auth, slug, at.generation, at.ttl, fleet.clone());
    }
    Ok(fleet)
}

/// Builds a target's series from its fleets and then its devices, one at a time: pure, so the
/// benchmarks and tests drive it without HTTP.
pub struct SeriesBuilder<'m> {
    module: &'m ModuleConfig,
    stats: Vec<FleetStats>,
    index: HashMap<u64, usize, foldhash::fast::RandomState>,
    tags: Vec<(String, String)>,
    devices: Exposition,
    compact: Option<CompactDevices>,
    device_total: usize,
    /// Each device counted, its fleet and its host combination there (the background
    /// snapshots' joins).
    seen: host::Seen,
    /// The device ids of `compact`'s rows, in its order (joined with the host snapshot).
    compact_ids: Vec<u64>,
    /// Each device whose series are text, for the per-device series of the joins.
    named: Vec<Named>,
}

impl<'m> SeriesBuilder<'m> {
    /// Starts with the target's fleets.
    pub fn new(fleets: Vec<Fleet>, module: &'m ModuleConfig) -> Self {
        let stats: Vec<FleetStats> = fleets.into_iter().map(FleetStats::new).collect();
        let index = stats
            .iter()
            .enumerate()
            .map(|(i, s)| (s.fleet.id, i))
            .collect();
        let tags = module.tag_labels();
        let compact = (module.compact_cache && module.devices && !module.counts_only).then(|| {
            CompactDevices::new(
                stats.iter().map(|s| s.fleet.slug.clone()).collect(),
                tags.clone(),
            )
        });
        Self {
            module,
            stats,
            index,
            compact,
            tags,
            devices: Exposition::packing(PACK_THRESHOLD, Codec::default()),
            device_total: 0,
            seen: Default::default(),
            compact_ids: Vec::new(),
            named: Vec::new(),
        }
    }

    /// Compresses the series as `codec` pieces (deflate unless told): before any device is
    /// added.
    pub fn compressed_as(mut self, codec: Codec) -> Self {
        assert!(
            self.devices.is_empty(),
            "the codec is chosen before writing"
        );
        self.devices = Exposition::packing(PACK_THRESHOLD, codec);
        self
    }

    /// True when the target has no fleet (nothing to list).
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    /// Counts-only modules: online counts come with the fleet rows.
    pub fn use_online_counts(&mut self) {
        for s in &mut self.stats {
            s.online = s.fleet.online_count.unwrap_or(0);
        }
    }

    /// Counts one device and writes its series (if the module wants them).
    pub fn add(&mut self, d: &Device<'_>) {
        // The listing hands each row once (exact repeats skipped, differing ones refused:
        // balena::keyset); a builder driven by hand (benchmarks, tests) may not: a row seen
        // twice would write duplicate series, which Prometheus rejects.
        if self.seen.contains_key(&d.id) {
            return;
        }
        let i = match d
            .belongs_to__application
            .and_then(|f| self.index.get(&f.id))
        {
            Some(i) => *i,
            None if self.stats.len() == 1 => 0,
            None => return,
        };
        self.device_total += 1;
        let host = self.stats[i].add(d);
        self.seen.insert(d.id, (i as u32, host as u32));
        if let Some(compact) = &mut self.compact {
            compact.push(i, d, host);
            self.compact_ids.push(d.id);
        } else if self.module.devices {
            write_device(&mut self.devices, &self.stats[i].fleet.slug, d, &self.tags);
            if self.module.device_services || self.module.host {
                self.named.push(Named {
                    id: d.id,
                    fleet: i as u32,
                    uuid: d.uuid.to_string(),
                    name: d.name().to_string(),
                    host: host as u32,
                });
            }
        }
    }

    /// Counts each device's current services from `snapshot` (and writes them per device when
    /// the module asks).
    fn join_services(&mut self, snapshot: &services::Snapshot) {
        for (&device, &(i, _)) in &self.seen {
            let stats = &mut self.stats[i as usize];
            for (service, status, installs) in snapshot.of_device(device) {
                stats.services.add(service, status, u64::from(installs));
            }
        }
        for s in &mut self.stats {
            s.services_read_at = Some(snapshot.read_at_unix());
        }
        if !self.module.device_services {
            return;
        }
        for d in &self.named {
            let fleet = &self.stats[d.fleet as usize].fleet.slug;
            let services = snapshot.of_device(d.id);
            write_device_services(&mut self.devices, fleet, &d.uuid, &d.name, services);
        }
    }

    /// Resolves each fleet's host series against `snapshot` (each device's combination joined
    /// with its targets), and writes each device's OS update state (when the module writes
    /// per-device series).
    fn join_host(&mut self, snapshot: &reads::host::Snapshot) {
        let mut joined: Vec<host::Joined> = vec![host::Joined::new(); self.stats.len()];
        for (&device, &(fleet, combo)) in &self.seen {
            let key = (combo, snapshot.targets(device));
            *joined[fleet as usize].entry(key).or_default() += 1;
        }
        let mut counts: Vec<Option<host::HostCounts>> = self
            .stats
            .iter()
            .zip(&joined)
            .map(|(s, joined)| {
                let combos = (&s.hosts, joined);
                let running = &s.releases;
                Some(host::HostCounts::resolve(
                    &s.fleet, s.devices, combos, running, snapshot,
                ))
            })
            .collect();
        let fleets: Vec<u64> = self.stats.iter().map(|s| s.fleet.id).collect();
        host::join_device_settings(&mut counts, &fleets, &self.seen, snapshot);
        for (s, c) in self.stats.iter_mut().zip(counts) {
            s.host = c;
        }
        if !self.module.host {
            return;
        }
        let stats = &self.stats;
        // A device's state depends on its combination and its targets only: a fleet has a
        // handful of those, so each is resolved once (~3 ms of 10,000 devices otherwise).
        let mut states = HashMap::with_hasher(foldhash::fast::RandomState::default());
        let mut state = |fleet: usize, combo: usize, device: u64| {
            let targets = snapshot.targets(device);
            *states
                .entry((fleet, combo, targets))
                .or_insert_with(|| stats[fleet].hosts.key(combo).os_update(targets, snapshot))
        };
        if let Some(compact) = &mut self.compact {
            let ids = &self.compact_ids;
            compact.set_os_updates(|row, fleet, combo| state(fleet, combo, ids[row]));
        }
        for d in &self.named {
            let status = state(d.fleet as usize, d.host as usize, d.id);
            let labels = [
                ("fleet", stats[d.fleet as usize].fleet.slug.as_str()),
                ("device_uuid", d.uuid.as_str()),
                ("device_name", d.name.as_str()),
            ];
            host::write_device(&mut self.devices, labels, status);
        }
    }

    /// The probe's data: the compressed series (fleet aggregates first, joined with the
    /// background `snapshots` the probe got), the per-device values when the module keeps
    /// them compact, and the counts.
    pub fn finish(mut self, snapshots: &Snapshots) -> ProbeData {
        if let Some(snapshot) = snapshots.get::<services::Snapshot>() {
            self.join_services(snapshot);
        }
        if let Some(snapshot) = snapshots.get::<reads::host::Snapshot>() {
            self.join_host(snapshot);
        }
        let mut fleets = Exposition::new();
        for s in &self.stats {
            write_fleet(&mut fleets, s, self.module);
        }
        let attention = fleet::attention(&self.stats, self.module);
        ProbeData {
            series: CompressedSeries::from_expositions(
                self.devices.packing_codec().unwrap_or_default(),
                [fleets, self.devices],
            ),
            compact: self.compact.map(|mut c| {
                c.shrink();
                Arc::new(c)
            }),
            fleets: self.stats.len(),
            devices: if self.module.devices_listed() {
                self.device_total
            } else {
                self.stats.iter().map(|s| s.online as usize).sum()
            },
            online_only: !self.module.devices_listed(),
            attention,
        }
    }
}
