//! Host series: the layer under the application, per fleet and per device. A device's row says
//! what it runs (host OS and supervisor versions) and whether the OS updater reports progress
//! or failure; the host snapshot ([`reads::host`]) says what each device should run (its
//! targets, by device id) and which releases those are. Each fleet counts the distinct
//! combinations of its devices ([`HostCombos`], a handful per fleet) as they arrive; once the
//! snapshot is there they are joined with each device's targets ([`Joined`]) and resolved
//! ([`HostCounts::resolve`]).
//!
//! The OS update state of a device, decided in this order:
//! - `failed`: `provisioning_state` is `OS update failed` (balenahup's `report_update_failed`);
//! - `in_progress`: `provisioning_progress` is set (the updater reports 25 % `Preparing OS
//!   update`, 50 % `Running OS update`, … 100 % `Update successful, rebooting` until the
//!   supervisor clears it after the reboot), unless the state is `Post-Provisioning`;
//! - `pending`: a target OS release (`should_be_operated_by__release`) the device does not run
//!   ([`reads::host::Snapshot::os_update_pending`]);
//! - `none`: otherwise (no target OS, or it runs it).

use std::collections::{BTreeMap, HashMap};

use super::reads::host::{DeviceHost, Setting, Settings, Snapshot};
use crate::balena::model::{Device, Fleet};
use crate::exposition::Exposition;
use crate::metrics as m;

/// Every `status` of `balena_fleet_devices_os_update`, in label order (written with zeros).
pub const OS_UPDATE_STATES: [&str; 4] = ["failed", "in_progress", "none", "pending"];

/// Every `phase` of `balena_fleet_devices_os_phase`, in label order (written with zeros).
pub const OS_PHASES: [&str; 5] = ["current", "end-of-life", "next", "sunset", "unknown"];

/// The `provisioning_state` balenahup writes when an OS update fails.
pub const OS_UPDATE_FAILED: &str = "OS update failed";

/// What a device's row alone says of an OS update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reported {
    /// Nothing: `none` or `pending`, which the snapshot decides.
    Quiet,
    /// The updater reports progress.
    InProgress,
    /// The updater reported failure.
    Failed,
}

impl Reported {
    /// What `d`'s row says.
    pub fn of(d: &Device<'_>) -> Self {
        let state = Device::str_of(&d.provisioning_state);
        if state.eq_ignore_ascii_case(OS_UPDATE_FAILED) {
            Reported::Failed
        } else if d.provisioning_progress.is_some()
            && !state.eq_ignore_ascii_case("Post-Provisioning")
        {
            Reported::InProgress
        } else {
            Reported::Quiet
        }
    }
}

/// `balena_device_os_update_progress_ratio`: the updater's progress, while it reports one.
pub fn os_update_progress(d: &Device<'_>) -> Option<f64> {
    (Reported::of(d) == Reported::InProgress)
        .then_some(d.provisioning_progress)
        .flatten()
        .map(|p| p / 100.0)
}

/// One combination of what devices run and report (owned: a fleet keeps a handful). What they
/// should run comes from the host snapshot, by device id ([`Targets`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostKey {
    os_version: String,
    os_variant: String,
    supervisor_version: String,
    reported: Reported,
}

/// Each device counted by a probe: its fleet and its host combination there, by device id
/// (foldhash: 10,000 inserts a probe).
pub type Seen = HashMap<u64, (u32, u32), foldhash::fast::RandomState>;

/// A device's targets: (`should_be_operated_by__release`, `should_be_managed_by__release`).
pub type Targets = (Option<u64>, Option<u64>);

impl HostKey {
    /// The combination of device `d`.
    pub fn of(d: &Device<'_>) -> Self {
        Self {
            os_version: Device::str_of(&d.os_version).to_string(),
            os_variant: Device::str_of(&d.os_variant).to_string(),
            supervisor_version: Device::str_of(&d.supervisor_version).to_string(),
            reported: Reported::of(d),
        }
    }

    fn is(&self, d: &Device<'_>) -> bool {
        self.os_version == Device::str_of(&d.os_version)
            && self.os_variant == Device::str_of(&d.os_variant)
            && self.supervisor_version == Device::str_of(&d.supervisor_version)
            && self.reported == Reported::of(d)
    }

    fn device(&self, (os_target, supervisor_target): Targets) -> DeviceHost<'_> {
        DeviceHost {
            os_target,
            os_version: &self.os_version,
            os_variant: &self.os_variant,
            supervisor_target,
            supervisor_version: &self.supervisor_version,
        }
    }

    /// The OS update state (a label of [`OS_UPDATE_STATES`]) of a device of this combination
    /// with these targets.
    pub fn os_update(&self, targets: Targets, snapshot: &Snapshot) -> &'static str {
        match self.reported {
            Reported::Failed => "failed",
            Reported::InProgress => "in_progress",
            Reported::Quiet if snapshot.os_update_pending(&self.device(targets)) => "pending",
            Reported::Quiet => "none",
        }
    }
}

/// The distinct [`HostKey`]s of a fleet's devices and how many devices have each: found in
/// place, allocating only for a new combination.
#[derive(Debug, Clone, Default)]
pub struct HostCombos(Vec<(HostKey, u64)>);

impl HostCombos {
    /// Counts device `d`; returns its combination's number.
    pub fn add(&mut self, d: &Device<'_>) -> usize {
        match self.0.iter().position(|(k, _)| k.is(d)) {
            Some(i) => {
                self.0[i].1 += 1;
                i
            }
            None => {
                self.0.push((HostKey::of(d), 1));
                self.0.len() - 1
            }
        }
    }

    /// Combination number `i`.
    pub fn key(&self, i: usize) -> &HostKey {
        &self.0[i].0
    }
}

/// A fleet's devices per (combination number, targets): what the host series count, once each
/// device's targets are known.
pub type Joined = HashMap<(u32, Targets), u64>;

/// A fleet's host series, resolved against the snapshot.
#[derive(Debug, Clone, Default)]
pub struct HostCounts {
    /// Devices per OS update state.
    pub os_update: BTreeMap<&'static str, u64>,
    /// Devices per OS phase.
    pub os_phase: BTreeMap<String, u64>,
    /// Devices whose supervisor is behind its target.
    pub supervisor_pending: u64,
    /// Devices per setting in the state that matters, in [`Setting::ALL`] order.
    pub settings: [u64; 3],
    /// Release commit → (semver, build status), for `balena_fleet_release_info`.
    pub releases: BTreeMap<String, (String, String)>,
}

impl HostCounts {
    /// The counts of a fleet of `devices` devices, whose combinations are `combos` and which
    /// have them with the targets `joined` says, whose running releases are `running` (commit →
    /// devices, `none` for unknown), joined with `snapshot`. Settings count the fleet's
    /// variables for every device; [`HostCounts::override_device`] then corrects them for each
    /// device with variables of its own.
    pub fn resolve(
        fleet: &Fleet,
        devices: u64,
        (combos, joined): (&HostCombos, &Joined),
        running: &BTreeMap<String, u64>,
        snapshot: &Snapshot,
    ) -> Self {
        let mut c = HostCounts {
            os_update: OS_UPDATE_STATES.iter().map(|s| (*s, 0)).collect(),
            os_phase: OS_PHASES.iter().map(|s| (s.to_string(), 0)).collect(),
            ..Self::default()
        };
        for (&(combo, targets), n) in joined {
            let key = combos.key(combo as usize);
            *c.os_update
                .entry(key.os_update(targets, snapshot))
                .or_default() += n;
            let phase = snapshot.os_phase(&key.device(targets));
            bump_by(&mut c.os_phase, phase, *n);
            if snapshot.supervisor_pending(&key.device(targets)) {
                c.supervisor_pending += n;
            }
        }
        let own = snapshot.fleet_settings(fleet.id);
        for (i, s) in Setting::ALL.iter().enumerate() {
            if Snapshot::matters(*s, Settings::default(), own) {
                c.settings[i] = devices;
            }
        }
        for commit in running.keys().filter(|c| *c != "none") {
            if let Some((semver, status)) = snapshot.app_release(fleet.id, commit) {
                c.releases
                    .insert(commit.clone(), (semver.to_string(), status.to_string()));
            }
        }
        for r in [fleet.target(), fleet.latest_release()]
            .into_iter()
            .flatten()
        {
            if let Some(commit) = r.commit.as_deref().filter(|c| !c.is_empty()) {
                let text = |v: &Option<String>| v.clone().unwrap_or_default();
                c.releases
                    .entry(commit.to_string())
                    .or_insert_with(|| (text(&r.semver), text(&r.status)));
            }
        }
        c
    }

    /// Corrects the settings for a device of this fleet with variables of its own.
    pub fn override_device(&mut self, device: Settings, fleet: Settings) {
        for (i, s) in Setting::ALL.iter().enumerate() {
            let before = Snapshot::matters(*s, Settings::default(), fleet);
            let after = Snapshot::matters(*s, device, fleet);
            match (before, after) {
                (false, true) => self.settings[i] += 1,
                (true, false) => self.settings[i] = self.settings[i].saturating_sub(1),
                _ => {}
            }
        }
    }
}

fn bump_by(map: &mut BTreeMap<String, u64>, key: &str, n: u64) {
    *map.entry(key.to_string()).or_default() += n;
}

/// Writes a fleet's host series.
pub fn write(out: &mut Exposition, slug: &str, c: &HostCounts) {
    for (status, n) in &c.os_update {
        let labels = [("fleet", slug), ("status", *status)];
        out.gauge(m::FLEET_DEVICES_OS_UPDATE, &labels, *n as f64);
    }
    for (phase, n) in &c.os_phase {
        let labels = [("fleet", slug), ("phase", phase.as_str())];
        out.gauge(m::FLEET_DEVICES_OS_PHASE, &labels, *n as f64);
    }
    out.gauge(
        m::FLEET_DEVICES_SUPERVISOR_UPDATE_PENDING,
        &[("fleet", slug)],
        c.supervisor_pending as f64,
    );
    for (s, n) in Setting::ALL.iter().zip(c.settings) {
        let labels = [("fleet", slug), ("setting", s.label())];
        out.gauge(m::FLEET_DEVICES_SUPERVISOR_SETTING, &labels, n as f64);
    }
    for (commit, (semver, status)) in &c.releases {
        let labels = [
            ("fleet", slug),
            ("release", commit.as_str()),
            ("semver", semver.as_str()),
            ("status", status.as_str()),
        ];
        out.gauge(m::FLEET_RELEASE_INFO, &labels, 1.0);
    }
}

/// The device-level join: each device's own setting variables correct its fleet's counts.
/// `seen`: each device's fleet number and combination.
pub fn join_device_settings(
    counts: &mut [Option<HostCounts>],
    fleets: &[u64],
    seen: &Seen,
    snapshot: &Snapshot,
) {
    for (device, own) in snapshot.device_settings() {
        let Some(&(i, _)) = seen.get(&device) else {
            continue;
        };
        if let Some(c) = counts[i as usize].as_mut() {
            c.override_device(*own, snapshot.fleet_settings(fleets[i as usize]));
        }
    }
}

/// Writes `balena_device_os_update` of one device.
pub fn write_device(out: &mut Exposition, labels: [(&str, &str); 3], status: &str) {
    let [a, b, c] = labels;
    out.gauge(m::DEVICE_OS_UPDATE, &[a, b, c, ("status", status)], 1.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::labels::test_device as device;

    #[test]
    fn the_row_says_failed_and_in_progress_and_the_snapshot_the_rest() {
        let d = |v: serde_json::Value| Reported::of(&device(v));
        assert_eq!(
            d(
                serde_json::json!({"provisioning_state": "OS update failed", "provisioning_progress": 100})
            ),
            Reported::Failed
        );
        assert_eq!(
            d(
                serde_json::json!({"provisioning_state": "Running OS update", "provisioning_progress": 50})
            ),
            Reported::InProgress
        );
        assert_eq!(
            d(
                serde_json::json!({"provisioning_state": "Post-Provisioning", "provisioning_progress": 10})
            ),
            Reported::Quiet
        );
        assert_eq!(d(serde_json::json!({})), Reported::Quiet);
        let p = os_update_progress(&device(
            serde_json::json!({"provisioning_state": "Running OS update", "provisioning_progress": 50}),
        ));
        assert_eq!(p, Some(0.5));
        let mut combos = HostCombos::default();
        let a = device(serde_json::json!({"os_version": "balenaOS 6.5.3"}));
        let b = device(serde_json::json!({"os_version": "balenaOS 6.0.13"}));
        assert_eq!((combos.add(&a), combos.add(&b), combos.add(&a)), (0, 1, 0));
        assert_eq!(combos.0[0].1, 2);
        let unknown_target = (Some(4), None);
        let none = combos
            .key(1)
            .os_update(unknown_target, &Snapshot::default());
        assert_eq!(none, "none", "a target the snapshot does not know");
    }
}
