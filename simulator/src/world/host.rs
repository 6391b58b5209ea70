//! The layer under the fleets' applications, generated as balenaCloud has it: a host app per
//! device type (public, `is_host`, in the organization `balena_os`) whose OS releases are in
//! lifecycle phases, a supervisor app whose releases are the supervisor versions, each
//! device's target OS and supervisor as the API sets them when a device reports its versions
//! (the release its version matches; a newer one when an update was asked for), the OS
//! updater's progress and failures as balenahup reports them, supervisor settings as
//! configuration variables, and device locations.
//!
//! Host rows take ids from [`HOST_IDS`] up, so that the fleets, devices and releases the rest of
//! the generator makes keep the ids they had before this layer existed.

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::spec::Scenario;
use super::World;

/// The first id of every host row (organization, applications, releases, variables).
pub const HOST_IDS: u64 = 1_000_000;

/// The OS releases of every host app: (version as the device reports it after `balenaOS `,
/// phase). `2.80.3+rev1` is a revision: semver build `rev1`, revision 1.
pub const OS_RELEASES: &[(&str, &str)] = &[
    ("2.80.3+rev1", "end-of-life"),
    ("5.3.24", "sunset"),
    ("6.0.13", "sunset"),
    ("6.5.3", "current"),
    ("6.6.0", "next"),
];

/// The supervisor releases.
pub const SUPERVISOR_RELEASES: &[&str] = &["14.11.14", "16.7.9", "17.0.3", "17.1.0"];

/// The OS a device is updated to when its fleet's story or the steady mix updates it.
const OS_TARGET: &str = "6.5.3";
/// The supervisor a device is updated to.
const SUPERVISOR_TARGET: &str = "17.1.0";

/// Where the generated devices are (the `location` tag's cities): latitude, longitude.
const PLACES: [(f64, f64); 6] = [
    (52.52, 13.405),
    (38.722, -9.139),
    (30.267, -97.743),
    (34.694, 135.502),
    (-1.286, 36.817),
    (-23.55, -46.633),
];

/// The host rows made so far, and the ids of their releases.
#[derive(Debug, Default)]
pub struct HostLayer {
    next: u64,
    org: Option<u64>,
    /// device type id → version → OS release id.
    os: HashMap<u64, HashMap<&'static str, u64>>,
    supervisor: HashMap<&'static str, u64>,
}

fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

impl HostLayer {
    fn id(&mut self) -> u64 {
        if self.next == 0 {
            self.next = HOST_IDS;
        }
        self.next += 1;
        self.next
    }

    fn org(&mut self, w: &mut World, now: SystemTime) -> u64 {
        if let Some(o) = self.org {
            return o;
        }
        let o = self.id();
        w.insert(
            "organization",
            json!({"id": o, "name": "balena_os", "handle": "balena_os", "company_name": null,
                   "is_frozen": false, "created_at": iso(now)}),
        );
        self.org = Some(o);
        o
    }

    /// A public application of `balena_os` (a host app when `host`).
    fn app(&mut self, w: &mut World, now: SystemTime, name: &str, dt: u64, host: bool) -> u64 {
        let org = self.org(w, now);
        let id = self.id();
        w.insert(
            "application",
            json!({"id": id, "app_name": name, "slug": format!("balena_os/{name}"),
                   "uuid": format!("{id:032x}"), "organization": {"__id": org},
                   "is_for__device_type": {"__id": dt}, "should_be_running__release": null,
                   "should_track_latest_release": true,
                   "is_of__class": if host { "fleet" } else { "app" }, "is_host": host,
                   "is_archived": false, "is_public": true, "created_at": iso(now)}),
        );
        id
    }

    /// A successful release of `app` with version `version` (`major.minor.patch[+revN]`).
    fn release(&mut self, w: &mut World, app: u64, version: &str, phase: Option<&str>) -> u64 {
        let id = self.id();
        let (core, build) = version.split_once('+').unwrap_or((version, ""));
        let n: Vec<u64> = core.split('.').map(|p| p.parse().unwrap_or(0)).collect();
        let revision = build
            .strip_prefix("rev")
            .and_then(|r| r.parse::<u64>().ok());
        w.insert(
            "release",
            json!({"id": id, "commit": format!("{id:032x}"), "raw_version": version,
                   "semver": version, "status": "success", "belongs_to__application": {"__id": app},
                   "created_at": "2026-01-01T00:00:00.000Z",
                   "semver_major": n[0], "semver_minor": n[1], "semver_patch": n[2],
                   "semver_prerelease": "", "semver_build": build,
                   "revision": if phase.is_some() { revision.unwrap_or(0) } else { 0 },
                   "variant": "", "phase": phase, "known_issue_list": null, "is_final": true,
                   "is_invalidated": false}),
        );
        id
    }

    /// The OS release `version` of device type `dt`'s host app (made with its app on first use).
    pub fn os_release(
        &mut self,
        w: &mut World,
        now: SystemTime,
        dt: (u64, &str),
        version: &str,
    ) -> Option<u64> {
        if !self.os.contains_key(&dt.0) {
            let app = self.app(w, now, dt.1, dt.0, true);
            let mut releases = HashMap::new();
            for (v, phase) in OS_RELEASES {
                releases.insert(*v, self.release(w, app, v, Some(phase)));
            }
            self.os.insert(dt.0, releases);
        }
        self.os[&dt.0].get(version).copied()
    }

    /// The supervisor release `version` (the supervisor app made on first use).
    pub fn supervisor_release(
        &mut self,
        w: &mut World,
        now: SystemTime,
        dt: u64,
        version: &str,
    ) -> Option<u64> {
        if self.supervisor.is_empty() {
            let app = self.app(w, now, "aarch64-supervisor", dt, false);
            for v in SUPERVISOR_RELEASES {
                let id = self.release(w, app, v, None);
                self.supervisor.insert(*v, id);
            }
        }
        self.supervisor.get(version).copied()
    }

    /// A configuration variable of a fleet (`application`) or of a device.
    pub fn variable(&mut self, w: &mut World, owner: (&str, u64), name: &str, value: &str) {
        let id = self.id();
        let (table, field) = match owner.0 {
            "application" => ("application_config_variable", "application"),
            _ => ("device_config_variable", "device"),
        };
        w.insert(
            table,
            json!({"id": id, field: {"__id": owner.1}, "name": name, "value": value}),
        );
    }
}

/// Where device `d` (its fleet's n-th) is: near its `location` tag's city by its IP, and one in
/// ten with a custom location (the city itself), as balenaCloud has them: strings.
fn locate(rng: &mut fastrand::Rng, d: &mut Value, n: usize) {
    let place = PLACES[n % PLACES.len()];
    let jitter = |rng: &mut fastrand::Rng| (rng.f64() - 0.5) / 10.0;
    let (lat, lon) = (place.0 + jitter(rng), place.1 + jitter(rng));
    d["latitude"] = format!("{lat:.4}").into();
    d["longitude"] = format!("{lon:.4}").into();
    d["location"] = Value::Null;
    let custom = rng.u32(0..10) == 0;
    for (field, value) in [("custom_latitude", place.0), ("custom_longitude", place.1)] {
        d[field] = if custom {
            format!("{value:.4}").into()
        } else {
            Value::Null
        };
    }
}

/// What a device's host layer is to be, drawn for its fleet's story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Os {
    /// Runs its target.
    OnTarget,
    /// A newer target, no update under way.
    Pending,
    /// The updater reports progress.
    Updating(u32),
    /// The updater reported failure.
    Failed,
}

/// Sets device `d`'s host layer (its n-th of its fleet): its target OS and supervisor, the
/// OS updater's report, its setting variables and its location.
#[allow(clippy::too_many_arguments)] // the device and its fleet's facts, one argument each
pub fn device(
    host: &mut HostLayer,
    w: &mut World,
    rng: &mut fastrand::Rng,
    now: SystemTime,
    d: &mut Value,
    dt: (u64, &str),
    n: usize,
    scenario: Scenario,
) {
    let story = scenario == Scenario::HostOsUpdate;
    let noisy = scenario == Scenario::Steady;
    let roll = rng.u32(0..1000);
    locate(rng, d, n);
    if story {
        rollout_story(host, w, d, n);
    }
    let Some(version) = d["os_version"]
        .as_str()
        .and_then(|v| v.strip_prefix("balenaOS "))
        .map(str::to_string)
    else {
        return; // never reported a version: no target yet
    };
    let os = draw_os(scenario, &version, n, roll, d);
    let target = if os == Os::OnTarget {
        version.as_str()
    } else {
        OS_TARGET
    };
    d["should_be_operated_by__release"] = host
        .os_release(w, now, dt, target)
        .map_or(Value::Null, |id| json!({"__id": id}));
    report(d, os);
    let supervisor = d["supervisor_version"].as_str().unwrap_or("").to_string();
    let behind = (story && supervisor == "16.7.9")
        || (noisy && supervisor != SUPERVISOR_TARGET && roll % 50 == 7);
    let target = if behind {
        SUPERVISOR_TARGET
    } else {
        supervisor.as_str()
    };
    d["should_be_managed_by__release"] = host
        .supervisor_release(w, now, dt.0, target)
        .map_or(Value::Null, |id| json!({"__id": id}));
    if noisy && d["cpu_usage"].is_null() && d["is_active"] == true && roll % 3 == 0 {
        // The steady mix: some devices without metrics have them switched off.
        let id = d["id"].as_u64().unwrap_or(0);
        host.variable(
            w,
            ("device", id),
            "BALENA_SUPERVISOR_HARDWARE_METRICS",
            "false",
        );
    }
}

/// The host OS rollout story: a third of the fleet still on the end-of-life 2.80.3 (their
/// supervisors behind), the rest on 6.5.3; hardware metrics off on one device in ten (the
/// older variable name).
fn rollout_story(host: &mut HostLayer, w: &mut World, d: &mut Value, n: usize) {
    if n % 3 == 0 && d["os_version"].is_string() {
        d["os_version"] = "balenaOS 2.80.3+rev1".into();
        d["supervisor_version"] = "16.7.9".into();
    } else if d["os_version"].is_string() {
        d["os_version"] = "balenaOS 6.5.3".into();
    }
    if n % 10 == 4 {
        let id = d["id"].as_u64().unwrap_or(0);
        host.variable(
            w,
            ("device", id),
            "RESIN_SUPERVISOR_HARDWARE_METRICS",
            "false",
        );
        for k in ["cpu_usage", "cpu_temp", "memory_usage", "storage_usage"] {
            d[k] = Value::Null;
        }
    }
}

/// The OS update state of a device running `version`: in the rollout story, the old devices
/// pending, three updating and two failed; in the steady mix, now and then one of each; a
/// device being provisioned is never updating its OS.
fn draw_os(scenario: Scenario, version: &str, n: usize, roll: u32, d: &Value) -> Os {
    let busy = d["provisioning_state"] != "" && !d["provisioning_state"].is_null();
    if busy {
        return Os::OnTarget;
    }
    match scenario {
        Scenario::HostOsUpdate if version.starts_with("2.") => match n / 3 {
            1 | 4 => Os::Failed,
            2 | 5 | 7 => Os::Updating([25, 50, 50][n / 3 % 3]),
            _ => Os::Pending,
        },
        Scenario::Steady if version != OS_TARGET && version != "6.6.0" => match roll {
            0..=39 => Os::Pending,
            40..=49 => Os::Updating([25, 50][roll as usize % 2]),
            50..=54 => Os::Failed,
            _ => Os::OnTarget,
        },
        _ => Os::OnTarget,
    }
}

/// What the OS updater reports for `os`, as balenahup writes it.
fn report(d: &mut Value, os: Os) {
    match os {
        Os::Updating(p) => {
            d["provisioning_state"] =
                ["Preparing OS update", "Running OS update"][usize::from(p >= 50)].into();
            d["provisioning_progress"] = p.into();
            d["status"] = "configuring".into();
        }
        Os::Failed => {
            d["provisioning_state"] = "OS update failed".into();
            d["provisioning_progress"] = 100.into();
        }
        Os::OnTarget | Os::Pending => {}
    }
}

/// A fleet's own setting variables, for its story.
pub fn fleet(host: &mut HostLayer, w: &mut World, fleet: u64, scenario: Scenario) {
    if scenario == Scenario::HostOsUpdate {
        // Harmless at fleet level (local mode off), so the device-level variables decide.
        host.variable(
            w,
            ("application", fleet),
            "RESIN_SUPERVISOR_LOCAL_MODE",
            "false",
        );
        host.variable(
            w,
            ("application", fleet),
            "BALENA_SUPERVISOR_OVERRIDE_LOCK",
            "0",
        );
    }
    if scenario == Scenario::Steady && fleet % 4 == 1 {
        host.variable(
            w,
            ("application", fleet),
            "BALENA_SUPERVISOR_OVERRIDE_LOCK",
            "1",
        );
    }
}
