//! A target's services, the first background read ([`Services`]): the container status of
//! each device's current services, from a listing of the target's image installs
//! ([`balena::installs`]) and the service name of each image they point to
//! ([`balena::service_names`]), kept as a compact [`Snapshot`] that probes join to their device
//! listing by device id. When it is read again is the [`super::Scheduler`]'s business.
//!
//! A device's *current* services are, per service name, every install that is not `deleted`,
//! as balena-sdk's `current_services` lists them (newest first): during an update the old
//! release's container (`Running`) and the new release's install (`Downloading`, `Installing`…)
//! are both current, so the old container still counts while it runs, and one that dies while
//! the new one downloads is seen. Installs of one service in one status are counted together.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::LocalBoxFuture;

use super::{Bounds, Read};
use crate::balena::keyset::Gate;
use crate::balena::model::InstallRow;
use crate::balena::{self, BalenaError, DeviceScope, Session};
use crate::config::ModuleConfig;
use crate::probe::labels::install_status_label;

/// The services read: modules with `services: true`, every `services_interval`.
#[derive(Debug)]
pub struct Services;

impl Read for Services {
    fn name(&self) -> &'static str {
        "services"
    }

    fn interval(&self, module: &ModuleConfig) -> Option<Duration> {
        (module.services && module.devices_listed()).then_some(module.services_interval)
    }

    fn read<'a>(
        &'a self,
        session: &'a Session<'a>,
        scope: &'a DeviceScope,
        bounds: Bounds,
    ) -> LocalBoxFuture<'a, Result<Arc<dyn super::Snapshot>, BalenaError>> {
        super::boxed(read(session, scope, bounds))
    }
}

/// The current installs of one service of one device in one status: indexes into the
/// snapshot's names and statuses, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    device: u64,
    service: u32,
    status: u32,
    count: u32,
}

/// The current services of every device of a target, sorted by device id (24 bytes each).
#[derive(Debug)]
pub struct Snapshot {
    entries: Vec<Entry>,
    names: Vec<String>,
    statuses: Vec<String>,
    /// When the listing started (the services are at least this recent).
    pub read_at: SystemTime,
    /// Image installs listed (not deleted).
    pub installs: usize,
}

impl super::Snapshot for Snapshot {
    fn bytes(&self) -> usize {
        Snapshot::bytes(self)
    }

    fn read_at(&self) -> SystemTime {
        self.read_at
    }

    fn summary(&self) -> String {
        format!(
            "{} image installs ({} current services)",
            self.installs,
            self.entries.len()
        )
    }
}

impl Snapshot {
    /// The current installs of `device`, as (service name, status label, how many), by
    /// service name then status.
    pub fn of_device(&self, device: u64) -> impl Iterator<Item = (&str, &str, u32)> + '_ {
        let start = self.entries.partition_point(|e| e.device < device);
        self.entries[start..]
            .iter()
            .take_while(move |e| e.device == device)
            .map(|e| {
                (
                    self.names[e.service as usize].as_str(),
                    self.statuses[e.status as usize].as_str(),
                    e.count,
                )
            })
    }

    /// `read_at` in Unix seconds.
    pub fn read_at_unix(&self) -> f64 {
        self.read_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// Bytes held, roughly (`balena_exporter_services_snapshot_bytes`).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self
                .names
                .iter()
                .chain(&self.statuses)
                .map(|s| s.capacity() + std::mem::size_of::<String>())
                .sum::<usize>()
    }
}

/// Distinct strings numbered in order of arrival.
#[derive(Debug, Default)]
struct Interner {
    all: Vec<String>,
    index: HashMap<String, u32>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.all.len() as u32;
        self.all.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// What one listed install costs while the read runs: the row kept until the listing ends, and
/// the listing's own record of it.
pub const BYTES_PER_INSTALL: usize = std::mem::size_of::<Listed>() + Gate::BYTES_PER_ROW;

/// An install as listed, before the installs of each device are counted (24 bytes).
#[derive(Debug, Clone, Copy)]
struct Listed {
    device: u64,
    image: u64,
    status: u32,
}

/// Collects installs as they arrive, then builds the [`Snapshot`].
#[derive(Debug, Default)]
pub struct SnapshotBuilder {
    listed: Vec<Listed>,
    statuses: Interner,
    /// Installs without a device or an image (not counted).
    pub incomplete: usize,
}

impl SnapshotBuilder {
    /// Takes one listed install.
    pub fn add(&mut self, row: &InstallRow<'_>) {
        let (Some(device), Some(image)) = (row.device, row.installs__image) else {
            self.incomplete += 1;
            return;
        };
        self.listed.push(Listed {
            device: device.id,
            image: image.id,
            status: self
                .statuses
                .intern(&install_status_label(row.status.as_deref().unwrap_or(""))),
        });
    }

    /// The images the installs point to, each once, in order.
    pub fn images(&self) -> Vec<u64> {
        let mut images: Vec<u64> = self.listed.iter().map(|l| l.image).collect();
        images.sort_unstable();
        images.dedup();
        images
    }

    /// The snapshot, given each image's service name (`names`): per device, service and
    /// status, the installs. Installs of an image without a service name are left out.
    pub fn finish(self, names: &HashMap<u64, String>, read_at: SystemTime) -> Snapshot {
        let installs = self.listed.len() + self.incomplete;
        let mut services: Vec<&str> = names.values().map(String::as_str).collect();
        services.sort_unstable();
        services.dedup();
        let service_of: HashMap<u64, u32> = names
            .iter()
            .map(|(image, name)| {
                let at = services.binary_search(&name.as_str()).expect("listed name");
                (*image, at as u32)
            })
            .collect();
        let statuses = self.statuses.all;
        let mut keyed: Vec<(u64, u32, &str, u32)> = self
            .listed
            .iter()
            .filter_map(|l| {
                let service = *service_of.get(&l.image)?;
                Some((
                    l.device,
                    service,
                    statuses[l.status as usize].as_str(),
                    l.status,
                ))
            })
            .collect();
        // By device, service name, then status label: the order the series are written in.
        keyed.sort_unstable();
        let mut entries: Vec<Entry> = Vec::new();
        for (device, service, _, status) in keyed {
            match entries.last_mut() {
                Some(last)
                    if (last.device, last.service, last.status) == (device, service, status) =>
                {
                    last.count += 1
                }
                _ => entries.push(Entry {
                    device,
                    service,
                    status,
                    count: 1,
                }),
            }
        }
        entries.shrink_to_fit();
        Snapshot {
            entries,
            names: services.into_iter().map(str::to_string).collect(),
            statuses,
            read_at,
            installs,
        }
    }
}

/// Reads the services of the devices in `scope`: the install listing (at most as many rows as
/// `bounds` allow), then the service names of the images it points to.
pub async fn read(
    s: &Session<'_>,
    scope: &DeviceScope,
    bounds: Bounds,
) -> Result<Snapshot, BalenaError> {
    let read_at = SystemTime::now();
    let mut builder = SnapshotBuilder::default();
    let max_rows = bounds.max_rows(BYTES_PER_INSTALL);
    balena::installs(s, scope, max_rows, |row| builder.add(&row)).await?;
    let names = balena::service_names(s, &builder.images()).await?;
    if builder.incomplete > 0 {
        s.note(format_args!(
            "{} image installs without a device or an image left out",
            builder.incomplete
        ));
    }
    Ok(builder.finish(&names, read_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balena::model::NavId;

    fn install(id: u64, device: u64, image: u64, status: &str, _date: &str) -> InstallRow<'static> {
        InstallRow {
            id,
            device: Some(NavId { id: device }),
            installs__image: Some(NavId { id: image }),
            status: Some(status.to_string().into()),
        }
    }

    #[test]
    fn every_install_not_deleted_is_current_as_the_sdk_counts_them() {
        let names = HashMap::from([
            (10, "main".to_string()),
            (11, "db".to_string()),
            (20, "main".to_string()),
        ]);
        let mut b = SnapshotBuilder::default();
        for row in [
            install(1, 7, 10, "Running", "2026-01-01T00:00:00Z"),
            // The update's install of main: both current, the old container still runs.
            install(2, 7, 20, "Downloading", "2026-01-02T00:00:00Z"),
            install(3, 7, 11, "exited", "2026-01-01T00:00:00Z"),
            install(4, 7, 11, "Running", "2026-01-01T00:00:00Z"),
            install(5, 8, 10, "weird state!", "2026-01-01T00:00:00Z"),
            // An image of no known service.
            install(6, 8, 99, "Running", "2026-01-01T00:00:00Z"),
            // Old and new both running (a handover): one status, counted twice.
            install(7, 9, 10, "Running", "2026-01-01T00:00:00Z"),
            install(8, 9, 20, "Running", "2026-01-02T00:00:00Z"),
        ] {
            b.add(&row);
        }
        b.add(&InstallRow::default());
        assert_eq!(b.images(), vec![10, 11, 20, 99]);
        let s = b.finish(&names, SystemTime::UNIX_EPOCH);
        let of = |d| s.of_device(d).collect::<Vec<_>>();
        assert_eq!(
            of(7),
            vec![
                ("db", "Running", 1),
                ("db", "exited", 1),
                ("main", "Downloading", 1),
                ("main", "Running", 1)
            ]
        );
        assert_eq!(of(8), vec![("main", "weird state_", 1)], "sanitised");
        assert_eq!(of(9), vec![("main", "Running", 2)]);
        assert_eq!(of(10), Vec::<(&str, &str, u32)>::new());
        assert_eq!((s.entries.len(), s.installs), (6, 9));
        assert!(s.bytes() > 6 * 24);
    }
}
