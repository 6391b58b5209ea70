//! The layer under a target's application, the second background read ([`Host`]): the
//! releases its devices run or should run and the supervisor settings set as configuration
//! variables ([`balena::host`]), kept as a [`Snapshot`] that answers, for a device's row, the
//! questions the fleet series ask: does it run its target OS ([`Snapshot::os_update_pending`]),
//! which lifecycle phase is the OS it runs in ([`Snapshot::os_phase`]), is its supervisor behind
//! its target ([`Snapshot::supervisor_pending`]), what are its effective supervisor settings
//! ([`Snapshot::matters`]), and what is a commit's semver ([`Snapshot::app_release`]).
//!
//! A device's OS is matched to a release as the API does when the device reports it
//! (open-balena-api `target-hostapp.ts`): among the successful releases of the host app its
//! target OS release belongs to, the one whose `major.minor.patch`, prerelease and build are the
//! `os_version`'s (as balena-semver reads `balenaOS 2.80.3+rev1`), whose revision is the
//! version's (or null), and whose variant is the device's `os_variant` (or `""`); OS releases
//! from before balenaOS versions were semver (`semver` `0.0.0`) by their `version` tag.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::LocalBoxFuture;

mod os_version;
mod settings;

pub use os_version::OsVersion;
pub use settings::{Setting, Settings};

use super::{Bounds, Read};
use crate::balena::host::{self as api, ConfigVarRow, DeviceTargetsRow, ReleaseRow, VarLevel};
use crate::balena::{BalenaError, DeviceScope, Session};
use crate::config::ModuleConfig;

/// The host read: modules that list devices, with `host: true`, every `services_interval`.
#[derive(Debug)]
pub struct Host;

impl Read for Host {
    fn name(&self) -> &'static str {
        "host"
    }

    fn interval(&self, module: &ModuleConfig) -> Option<Duration> {
        (module.host && module.devices_listed()).then_some(module.services_interval)
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

/// A release as the snapshot keeps it.
#[derive(Debug, Clone)]
struct Release {
    app: u64,
    commit: String,
    semver: String,
    status: String,
    core: Option<(u64, u64, u64)>,
    prerelease: String,
    build: String,
    revision: Option<u64>,
    variant: String,
    phase: String,
    /// The `version` tag of a release whose semver is `0.0.0`.
    legacy_version: Option<String>,
}

impl Release {
    fn of(r: &ReleaseRow<'_>) -> Self {
        let text = |t: &crate::balena::model::Text<'_>| t.as_deref().unwrap_or("").to_string();
        let core = match (r.semver_major, r.semver_minor, r.semver_patch) {
            (Some(a), Some(b), Some(c)) => Some((a, b, c)),
            _ => None,
        };
        Self {
            app: r.belongs_to__application.map_or(0, |a| a.id),
            commit: text(&r.commit),
            semver: text(&r.semver),
            status: text(&r.status),
            core,
            prerelease: text(&r.semver_prerelease),
            build: text(&r.semver_build),
            revision: r.revision,
            variant: text(&r.variant),
            phase: text(&r.phase),
            legacy_version: (core == Some((0, 0, 0)))
                .then(|| r.tag("version").map(str::to_string))
                .flatten(),
        }
    }

    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + [
                &self.commit,
                &self.semver,
                &self.status,
                &self.prerelease,
                &self.build,
                &self.variant,
                &self.phase,
            ]
            .iter()
            .map(|s| s.capacity())
            .sum::<usize>()
            + self.legacy_version.as_ref().map_or(0, String::capacity)
    }

    /// Whether this OS release is the one a device reporting `os` and `variant` runs (the
    /// API's match, `getOSReleaseResource`). `exact`: the revision is the version's, not null.
    fn runs(&self, os: &OsVersion, raw: &str, variant: &str) -> Option<bool> {
        if self.status != "success" || !(self.variant.is_empty() || self.variant == variant) {
            return None;
        }
        if let Some(legacy) = &self.legacy_version {
            return (*legacy == OsVersion::trimmed(raw)).then_some(true);
        }
        let same = self.core == Some(os.core)
            && self.prerelease == os.prerelease
            && self.build == os.build;
        match (same, self.revision) {
            (false, _) => None,
            (true, None) => Some(false),
            (true, Some(r)) => (r == os.revision.unwrap_or(0)).then_some(true),
        }
    }
}

/// What a device's row says of its host OS, the supervisor and its fleet's releases.
#[derive(Debug, Clone, Copy)]
pub struct DeviceHost<'a> {
    /// `should_be_operated_by__release`.
    pub os_target: Option<u64>,
    /// `os_version`.
    pub os_version: &'a str,
    /// `os_variant`.
    pub os_variant: &'a str,
    /// `should_be_managed_by__release`.
    pub supervisor_target: Option<u64>,
    /// `supervisor_version`.
    pub supervisor_version: &'a str,
}

/// The releases and supervisor settings of a target.
#[derive(Debug)]
pub struct Snapshot {
    releases: HashMap<u64, Release>,
    /// Host app id → its releases' ids (OS matching).
    by_app: HashMap<u64, Vec<u64>>,
    /// Release commit → the ids of the releases with it (one, but for a commit shared by two
    /// fleets' releases).
    by_commit: HashMap<String, Vec<u64>>,
    fleet_settings: HashMap<u64, Settings>,
    device_settings: HashMap<u64, Settings>,
    /// Device id → (target OS release, target supervisor release), for devices with one.
    targets: HashMap<u64, (Option<u64>, Option<u64>)>,
    /// When the read started.
    pub read_at: SystemTime,
}

impl super::Snapshot for Snapshot {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .releases
                .values()
                .map(|r| r.bytes() + 16)
                .sum::<usize>()
            + self
                .by_app
                .values()
                .map(|v| v.capacity() * 8 + 32)
                .sum::<usize>()
            + self
                .by_commit
                .iter()
                .map(|(k, v)| k.capacity() + v.capacity() * 8 + 64)
                .sum::<usize>()
            + (self.fleet_settings.len() + self.device_settings.len())
                * (std::mem::size_of::<Settings>() + 16)
            + self.targets.capacity() * 48
    }

    fn read_at(&self) -> SystemTime {
        self.read_at
    }

    fn summary(&self) -> String {
        format!(
            "{} releases, targets of {} devices, settings of {} fleets and {} devices",
            self.releases.len(),
            self.targets.len(),
            self.fleet_settings.len(),
            self.device_settings.len()
        )
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            releases: HashMap::new(),
            by_app: HashMap::new(),
            by_commit: HashMap::new(),
            fleet_settings: HashMap::new(),
            device_settings: HashMap::new(),
            targets: HashMap::new(),
            read_at: SystemTime::UNIX_EPOCH,
        }
    }
}

impl Snapshot {
    /// Takes one listed release.
    pub fn add_release(&mut self, row: &ReleaseRow<'_>) {
        let r = Release::of(row);
        if r.app != 0 {
            self.by_app.entry(r.app).or_default().push(row.id);
        }
        if !r.commit.is_empty() {
            self.by_commit
                .entry(r.commit.clone())
                .or_default()
                .push(row.id);
        }
        self.releases.insert(row.id, r);
    }

    /// Takes one device's targets.
    pub fn add_targets(&mut self, row: &DeviceTargetsRow) {
        let id = |n: Option<crate::balena::model::NavId>| n.map(|n| n.id);
        self.targets.insert(
            row.id,
            (
                id(row.should_be_operated_by__release),
                id(row.should_be_managed_by__release),
            ),
        );
    }

    /// The targets of `device` (target OS release, target supervisor release).
    pub fn targets(&self, device: u64) -> (Option<u64>, Option<u64>) {
        self.targets.get(&device).copied().unwrap_or_default()
    }

    /// Takes one listed configuration variable.
    pub fn add_variable(&mut self, level: VarLevel, row: &ConfigVarRow<'_>) {
        let (map, owner) = match level {
            VarLevel::Fleet => (&mut self.fleet_settings, row.application),
            VarLevel::Device => (&mut self.device_settings, row.device),
        };
        if let Some(owner) = owner {
            map.entry(owner.id)
                .or_default()
                .set(&row.name, row.value.as_deref());
        }
    }

    /// The OS release a device runs: of its target's host app, the one its `os_version` and
    /// `os_variant` match (a release whose revision is the version's before one whose revision
    /// is null). `None` when it has no target or nothing matches.
    fn running_os(&self, d: &DeviceHost<'_>) -> Option<(u64, &Release)> {
        let target = self.releases.get(&d.os_target?)?;
        let os = OsVersion::parse(d.os_version);
        let mut found = None;
        for id in self.by_app.get(&target.app)? {
            let r = &self.releases[id];
            let matched = match &os {
                Some(os) => r.runs(os, d.os_version, d.os_variant),
                None => r
                    .legacy_version
                    .as_ref()
                    .filter(|v| **v == OsVersion::trimmed(d.os_version))
                    .map(|_| true),
            };
            match matched {
                Some(true) => return Some((*id, r)),
                Some(false) => found = found.or(Some((*id, r))),
                None => {}
            }
        }
        found
    }

    /// Whether the device has a target OS it does not run yet: a target release the snapshot
    /// knows, and an `os_version` that is not that release. A device without a target, or
    /// that has not reported an `os_version`, is not pending.
    pub fn os_update_pending(&self, d: &DeviceHost<'_>) -> bool {
        let Some(target) = d.os_target else {
            return false;
        };
        if d.os_version.is_empty() || !self.releases.contains_key(&target) {
            return false;
        }
        self.running_os(d).map(|(id, _)| id) != Some(target)
    }

    /// The lifecycle phase of the OS release the device runs: `next`, `current`, `sunset`,
    /// `end-of-life` as the release says, `unknown` when no release matches or it has no
    /// phase.
    pub fn os_phase(&self, d: &DeviceHost<'_>) -> &str {
        match self.running_os(d) {
            Some((_, r)) if !r.phase.is_empty() => r.phase.as_str(),
            _ => "unknown",
        }
    }

    /// Whether the device's supervisor is not the version of its target supervisor release
    /// (`major.minor.patch`; a leading `v` ignored). `false` without a target or a reported
    /// version, or when the snapshot does not know the target.
    pub fn supervisor_pending(&self, d: &DeviceHost<'_>) -> bool {
        let (Some(target), false) = (d.supervisor_target, d.supervisor_version.is_empty()) else {
            return false;
        };
        let Some(target) = self.releases.get(&target) else {
            return false;
        };
        let running = OsVersion::parse(d.supervisor_version).map(|v| v.core);
        target.core.is_some() && running != target.core
    }

    /// The semver and build status of the application release with `commit` (fleet `fleet`'s
    /// own first), if the snapshot has it.
    pub fn app_release(&self, fleet: u64, commit: &str) -> Option<(&str, &str)> {
        let ids = self.by_commit.get(commit)?;
        // The fleet's own release with that commit, else another's (a device moved from a
        // fleet runs its old fleet's release until it updates).
        let id = ids
            .iter()
            .find(|id| self.releases[*id].app == fleet)
            .or(ids.first())?;
        let r = &self.releases[id];
        Some((r.semver.as_str(), r.status.as_str()))
    }

    /// The settings set on fleet `fleet` (`None` when none).
    pub fn fleet_settings(&self, fleet: u64) -> Settings {
        self.fleet_settings.get(&fleet).copied().unwrap_or_default()
    }

    /// Devices with a setting variable of their own, and what they set.
    pub fn device_settings(&self) -> impl Iterator<Item = (u64, &Settings)> {
        self.device_settings.iter().map(|(id, s)| (*id, s))
    }

    /// Whether `setting` is in the state that matters for a device whose own variables are
    /// `device` and whose fleet's are `fleet` (the device's override the fleet's; unset means
    /// the supervisor's default: hardware metrics on, local mode off, no lock override).
    pub fn matters(setting: Setting, device: Settings, fleet: Settings) -> bool {
        device
            .get(setting)
            .or(fleet.get(setting))
            .is_some_and(|on| setting.matters_when(on))
    }
}

/// Reads the releases, settings and targets of the devices in `scope`: one release listing, two
/// variable listings and one of the devices' targets, together at most as many rows as
/// `bounds` allow.
pub async fn read(
    s: &Session<'_>,
    scope: &DeviceScope,
    bounds: Bounds,
) -> Result<Snapshot, BalenaError> {
    let mut snapshot = Snapshot {
        read_at: SystemTime::now(),
        ..Snapshot::default()
    };
    let (max, key) = bounds.max_rows(api::BYTES_PER_ROW);
    let taken = api::releases(s, scope, (max, key), |r| snapshot.add_release(&r)).await?;
    let left = max.saturating_sub(taken);
    let taken = api::setting_variables(s, scope, VarLevel::Fleet, (left, key), |v| {
        snapshot.add_variable(VarLevel::Fleet, &v)
    })
    .await?;
    let left = left.saturating_sub(taken);
    let taken = api::setting_variables(s, scope, VarLevel::Device, (left, key), |v| {
        snapshot.add_variable(VarLevel::Device, &v)
    })
    .await?;
    let left = left.saturating_sub(taken);
    api::device_targets(s, scope, (left, key), |t| snapshot.add_targets(&t)).await?;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(
        id: u64,
        app: u64,
        version: (u64, u64, u64),
        rev: Option<u64>,
        phase: &str,
    ) -> ReleaseRow<'static> {
        ReleaseRow {
            id,
            belongs_to__application: Some(crate::balena::model::NavId { id: app }),
            status: Some("success".into()),
            semver_major: Some(version.0),
            semver_minor: Some(version.1),
            semver_patch: Some(version.2),
            semver_prerelease: Some("".into()),
            semver_build: Some(rev.map(|r| format!("rev{r}")).unwrap_or_default().into()),
            revision: rev,
            variant: Some("".into()),
            phase: Some(phase.to_string().into()),
            ..ReleaseRow::default()
        }
    }

    #[test]
    fn a_commit_names_the_fleets_own_release_first() {
        let mut s = Snapshot::default();
        for (id, app, semver) in [(1, 10, "1.0.0"), (2, 20, "2.0.0")] {
            s.add_release(&ReleaseRow {
                id,
                belongs_to__application: Some(crate::balena::model::NavId { id: app }),
                commit: Some("c0ffee".into()),
                semver: Some(semver.into()),
                status: Some("success".into()),
                ..ReleaseRow::default()
            });
        }
        assert_eq!(s.app_release(20, "c0ffee"), Some(("2.0.0", "success")));
        assert_eq!(s.app_release(10, "c0ffee"), Some(("1.0.0", "success")));
        assert_eq!(
            s.app_release(30, "c0ffee").map(|r| r.0),
            Some("1.0.0"),
            "another's"
        );
        assert_eq!(s.app_release(10, "beef"), None);
    }

    #[test]
    fn a_device_runs_the_release_its_version_matches_and_is_pending_below_its_target() {
        let mut s = Snapshot::default();
        s.add_release(&release(1, 9, (2, 80, 3), Some(1), "end-of-life"));
        s.add_release(&release(2, 9, (6, 5, 3), None, "current"));
        s.add_release(&release(3, 8, (6, 5, 3), None, "sunset"));
        let d = |target, os: &'static str| DeviceHost {
            os_target: target,
            os_version: os,
            os_variant: "prod",
            supervisor_target: None,
            supervisor_version: "",
        };
        let old = d(Some(2), "balenaOS 2.80.3+rev1");
        assert!(s.os_update_pending(&old));
        assert_eq!(s.os_phase(&old), "end-of-life");
        let new = d(Some(2), "balenaOS 6.5.3");
        assert!(!s.os_update_pending(&new));
        assert_eq!(
            s.os_phase(&new),
            "current",
            "the target's host app, not app 8"
        );
        assert_eq!(s.os_phase(&d(None, "balenaOS 6.5.3")), "unknown");
        assert_eq!(s.os_phase(&d(Some(2), "balenaOS 2.80.3+rev2")), "unknown");
        assert!(!s.os_update_pending(&d(None, "balenaOS 2.80.3+rev1")));
        assert!(!s.os_update_pending(&d(Some(2), "")));
    }
}
