//! The layer under a target's application, as the API has it: the releases its devices run or
//! should run (host OS releases of the device types' host apps, supervisor releases, the
//! fleet's own releases in use) and the supervisor settings set as configuration variables, at
//! fleet and at device level. Read in the background (`probe::reads::host`), a few listings
//! per target whatever its size: the releases grow with the versions in use, the variables
//! with the devices that have one.

use std::borrow::Cow;

use serde::Deserialize;

use super::keyset::{self, Listing};
use super::model::{NavId, Text};
use super::odata::quote_literal;
use super::{BalenaError, DeviceScope, Session};

/// One release as the host read lists it: enough to match a device's `os_version` to its host
/// OS release the way the API does (`target-hostapp.ts`), to read a supervisor release's
/// version, and to name an application release by its semver.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ReleaseRow<'a> {
    /// Row id (what devices point to).
    #[serde(default)]
    pub id: u64,
    /// The application (fleet, host app or supervisor app) it belongs to.
    #[serde(default)]
    pub belongs_to__application: Option<NavId>,
    /// Commit hash (the `release` label of application releases).
    #[serde(default, borrow)]
    pub commit: Text<'a>,
    /// Build status: `success`, `failed`, `running`, ...
    #[serde(default, borrow)]
    pub status: Text<'a>,
    /// Computed semver (`1.2.3`, `2.80.3+rev1`; `0.0.0` for an unversioned release).
    #[serde(default, borrow)]
    pub semver: Text<'a>,
    /// `major.minor.patch` of `semver`, as the API matches an OS version by them.
    #[serde(default)]
    pub semver_major: Option<u64>,
    /// See `semver_major`.
    #[serde(default)]
    pub semver_minor: Option<u64>,
    /// See `semver_major`.
    #[serde(default)]
    pub semver_patch: Option<u64>,
    /// Prerelease part, `""` when none.
    #[serde(default, borrow)]
    pub semver_prerelease: Text<'a>,
    /// Build metadata, `""` when none (`rev1`).
    #[serde(default, borrow)]
    pub semver_build: Text<'a>,
    /// OS release revision (null: matches any).
    #[serde(default)]
    pub revision: Option<u64>,
    /// OS variant (`prod`, `dev`; `""` for a unified release).
    #[serde(default, borrow)]
    pub variant: Text<'a>,
    /// Lifecycle phase of an OS release: `next`, `current`, `sunset`, `end-of-life`.
    #[serde(default, borrow)]
    pub phase: Text<'a>,
    /// The `version` tag of OS releases from before balenaOS versions were semver
    /// (2019.10.0.dev – 2022.01.0), whose `semver` is `0.0.0`.
    #[serde(default, borrow)]
    pub release_tag: Option<Vec<ReleaseTag<'a>>>,
}

/// `release_tag($select=tag_key,value)`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ReleaseTag<'a> {
    /// `version` or `variant`.
    #[serde(default, borrow)]
    pub tag_key: Cow<'a, str>,
    /// Its value.
    #[serde(default, borrow)]
    pub value: Text<'a>,
}

impl ReleaseRow<'_> {
    /// The value of tag `key`, if the release has it.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.release_tag
            .iter()
            .flatten()
            .find(|t| t.tag_key == key)
            .and_then(|t| t.value.as_deref())
    }
}

/// A device's targets under the application: `device?$select=id,should_be_operated_by__release,
/// should_be_managed_by__release`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Copy, Deserialize, Default)]
pub struct DeviceTargetsRow {
    /// Device row id.
    #[serde(default)]
    pub id: u64,
    /// The host OS release the device should run (a release of its device type's host app).
    #[serde(default)]
    pub should_be_operated_by__release: Option<NavId>,
    /// The supervisor release the device should run.
    #[serde(default)]
    pub should_be_managed_by__release: Option<NavId>,
}

/// Lists the target OS and supervisor release of every device in `scope` that has one, by
/// keyset: read in the background rather than selected by the probe's device listing, where
/// the two navigations cost the real API ~5 % of a 10,000-device page
/// (docs/performance.md, "The host layer"). At most `max_rows` rows.
pub async fn device_targets(
    s: &Session<'_>,
    scope: &DeviceScope,
    max_rows: (usize, &'static str),
    mut on_device: impl FnMut(DeviceTargetsRow),
) -> Result<usize, BalenaError> {
    let listing = Listing {
        endpoint: "device",
        path: "/v7/device",
        filter: format!(
            "{} and (should_be_operated_by__release ne null or should_be_managed_by__release ne null)",
            scope.filter()
        ),
        select: "id,should_be_operated_by__release,should_be_managed_by__release",
        expand: None,
        rows: "device target rows",
        max_rows: Some(max_rows),
    };
    keyset::list(s, &listing, |text, gate| {
        gate.take(text, false, &mut on_device)
    })
    .await
}

/// A configuration variable (`application_config_variable` or `device_config_variable`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ConfigVarRow<'a> {
    /// Row id (paging order).
    #[serde(default)]
    pub id: u64,
    /// The fleet, for a fleet variable.
    #[serde(default)]
    pub application: Option<NavId>,
    /// The device, for a device variable.
    #[serde(default)]
    pub device: Option<NavId>,
    /// `BALENA_SUPERVISOR_…` or `RESIN_SUPERVISOR_…`.
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
    /// The value, as text.
    #[serde(default, borrow)]
    pub value: Text<'a>,
}

const RELEASE_FIELDS: &str = "id,belongs_to__application,commit,status,semver,semver_major,semver_minor,semver_patch,semver_prerelease,semver_build,revision,variant,phase";
const RELEASE_EXPAND: &str = "release_tag($select=tag_key,value;$filter=tag_key eq 'version')";

/// What a listed row of the host read costs while the read runs, at most: the row's own
/// record in the snapshot builder and the listing's record of it.
pub const BYTES_PER_ROW: usize = 160 + keyset::Gate::BYTES_PER_ROW;

/// Lists, in one keyset listing, every release that the devices in `scope` run or should run:
/// every successful release of the host apps their target OS releases belong to (so that a
/// device's `os_version` can be matched to the release it runs, which may be older than its
/// target), their target supervisor releases, and the application releases they run. At most
/// `max_rows` rows.
pub async fn releases(
    s: &Session<'_>,
    scope: &DeviceScope,
    max_rows: (usize, &'static str),
    mut on_release: impl FnMut(ReleaseRow<'_>),
) -> Result<usize, BalenaError> {
    let devices = scope.filter();
    let filter = format!(
        "belongs_to__application/any(a:a/is_host eq true and a/owns__release/any(r:r/should_operate__device/any(d:d/{devices}))) and status eq 'success' \
         or should_operate__device/any(d:d/{devices}) \
         or should_manage__device/any(d:d/{devices}) \
         or is_running_on__device/any(d:d/{devices})"
    );
    let listing = Listing {
        endpoint: "release",
        path: "/v7/release",
        filter,
        select: RELEASE_FIELDS,
        expand: Some(RELEASE_EXPAND),
        rows: "release rows",
        max_rows: Some(max_rows),
    };
    keyset::list(s, &listing, |text, gate| {
        gate.take(text, false, &mut on_release)
    })
    .await
}

/// The supervisor settings the exporter reads, under every name the supervisor takes for them.
pub const SETTING_NAMES: &[&str] = &[
    "BALENA_SUPERVISOR_HARDWARE_METRICS",
    "RESIN_SUPERVISOR_HARDWARE_METRICS",
    "BALENA_SUPERVISOR_LOCAL_MODE",
    "RESIN_SUPERVISOR_LOCAL_MODE",
    "BALENA_SUPERVISOR_OVERRIDE_LOCK",
    "RESIN_SUPERVISOR_OVERRIDE_LOCK",
    "BALENA_OVERRIDE_LOCK",
    "RESIN_OVERRIDE_LOCK",
];

/// Which level a configuration variable is set at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarLevel {
    /// `application_config_variable`: every device of the fleet.
    Fleet,
    /// `device_config_variable`: overrides the fleet's.
    Device,
}

/// Lists the supervisor-setting variables ([`SETTING_NAMES`]) of `level` for the fleets or
/// devices of `scope`, by keyset. At most `max_rows` rows.
pub async fn setting_variables(
    s: &Session<'_>,
    scope: &DeviceScope,
    level: VarLevel,
    max_rows: (usize, &'static str),
    mut on_var: impl FnMut(ConfigVarRow<'_>),
) -> Result<usize, BalenaError> {
    let names: Vec<String> = SETTING_NAMES.iter().map(|n| quote_literal(n)).collect();
    let names = names.join(",");
    let (endpoint, path, owner, rows) = match level {
        VarLevel::Fleet => (
            "application_config_variable",
            "/v7/application_config_variable",
            format!("application/any(a:a/{})", scope.fleet_filter()),
            "fleet configuration variable rows",
        ),
        VarLevel::Device => (
            "device_config_variable",
            "/v7/device_config_variable",
            format!("device/any(d:d/{})", scope.filter()),
            "device configuration variable rows",
        ),
    };
    let select = match level {
        VarLevel::Fleet => "id,application,name,value",
        VarLevel::Device => "id,device,name,value",
    };
    let listing = Listing {
        endpoint,
        path,
        filter: format!("name in ({names}) and {owner}"),
        select,
        expand: None,
        rows,
        max_rows: Some(max_rows),
    };
    keyset::list(s, &listing, |text, gate| {
        gate.take(text, false, &mut on_var)
    })
    .await
}

impl keyset::Keyed for ReleaseRow<'_> {
    fn id(&self) -> u64 {
        self.id
    }
}

impl keyset::Keyed for DeviceTargetsRow {
    fn id(&self) -> u64 {
        self.id
    }
}

impl keyset::Keyed for ConfigVarRow<'_> {
    fn id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_rows_decode_with_their_version_tag() {
        let row = br#"{"id": 7, "belongs_to__application": {"__id": 3}, "semver": "0.0.0", "semver_major": 0, "revision": null, "variant": "", "phase": "end-of-life", "release_tag": [{"tag_key": "version", "value": "2020.7.0"}]}"#;
        let r: ReleaseRow = serde_json::from_slice(row).unwrap();
        assert_eq!(r.id, 7);
        assert_eq!(r.tag("version"), Some("2020.7.0"));
        assert_eq!(r.phase.as_deref(), Some("end-of-life"));
        assert_eq!(r.revision, None);
    }
}
