//! Fleet series: the running counts of each fleet ([`FleetStats`], gathered device by device
//! and joined with the background snapshots), every fleet family written in one place
//! ([`write_fleet`]), and what needs a person's attention, in words ([`attention`]).
//! The conformance oracle has the same shape (`fleet_series` in tests/conformance/balena.py).

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::host::{self, HostCombos, HostCounts};
use super::labels::{
    bump, heartbeat_label, parse_timestamp, status_label, update_status_label, Pairs,
};
use crate::balena::model::{Device, Fleet};
use crate::config::ModuleConfig;
use crate::exposition::Exposition;
use crate::metrics::{self as m, KNOWN_HEARTBEATS, KNOWN_STATUSES, KNOWN_UPDATE_STATUSES};

/// Running counts of one fleet.
#[derive(Debug, Clone)]
pub struct FleetStats {
    /// The fleet row.
    pub fleet: Fleet,
    /// Devices counted.
    pub devices: u64,
    /// `is_online` true.
    pub online: u64,
    /// Per `overall_status` (known values pre-filled with 0).
    pub status: BTreeMap<String, u64>,
    /// Per `api_heartbeat_state`.
    pub heartbeat: BTreeMap<String, u64>,
    /// Running the release they should run.
    pub on_target: u64,
    /// Online, with a target release, running another.
    pub online_not_on_target: u64,
    /// Undervolted.
    pub undervolted: u64,
    /// Current services per (service name, status), from the services snapshot.
    pub services: Pairs,
    /// When the services were read (Unix seconds); `None` when there are none to show.
    pub services_read_at: Option<f64>,
    /// Per `update_status` (known values and `none` pre-filled with 0).
    pub update_status: BTreeMap<String, u64>,
    /// Per running release commit (`none` when unknown).
    pub releases: BTreeMap<String, u64>,
    /// Pinned to a release.
    pub pinned: u64,
    /// Per (os_version, os_variant).
    pub os: Pairs,
    /// Per supervisor version.
    pub supervisor: BTreeMap<String, u64>,
    /// The earliest `last_update_status_event` of a device downloading or applying an update
    /// (Unix seconds; per-device modules select the field).
    pub updating_since: Option<f64>,
    /// The distinct combinations of what the devices run and should run under the application.
    pub hosts: HostCombos,
    /// The host series, once joined with the host snapshot (`None` without one).
    pub host: Option<HostCounts>,
}

impl FleetStats {
    /// Zero counts for a fleet.
    pub fn new(fleet: Fleet) -> Self {
        Self {
            fleet,
            devices: 0,
            online: 0,
            status: KNOWN_STATUSES.iter().map(|s| (s.to_string(), 0)).collect(),
            heartbeat: KNOWN_HEARTBEATS
                .iter()
                .map(|s| (s.to_string(), 0))
                .collect(),
            on_target: 0,
            online_not_on_target: 0,
            undervolted: 0,
            services: Pairs::default(),
            services_read_at: None,
            update_status: KNOWN_UPDATE_STATUSES
                .iter()
                .map(|s| (s.to_string(), 0))
                .collect(),
            releases: BTreeMap::new(),
            pinned: 0,
            os: Pairs::default(),
            supervisor: BTreeMap::new(),
            updating_since: None,
            hosts: HostCombos::default(),
            host: None,
        }
    }

    /// Counts one device; returns the number of its host combination ([`HostCombos`]).
    pub fn add(&mut self, d: &Device) -> usize {
        self.devices += 1;
        self.online += u64::from(d.is_online == Some(true));
        bump(&mut self.status, status_label(d));
        bump(&mut self.heartbeat, heartbeat_label(d));
        let on_target = d.on_target_release();
        self.on_target += u64::from(on_target == Some(true));
        self.online_not_on_target +=
            u64::from(on_target == Some(false) && d.is_online == Some(true));
        self.undervolted += u64::from(d.is_undervolted == Some(true));
        let update = update_status_label(d);
        if matches!(update.as_ref(), "downloading" | "applying changes") {
            if let Some(t) = d
                .last_update_status_event
                .as_deref()
                .and_then(parse_timestamp)
            {
                self.updating_since = Some(self.updating_since.map_or(t, |s| s.min(t)));
            }
        }
        bump(&mut self.update_status, update);
        let release = d.release();
        bump(
            &mut self.releases,
            Cow::Borrowed(if release.is_empty() { "none" } else { release }),
        );
        self.pinned += u64::from(d.is_pinned_on__release.is_some());
        self.os
            .bump(Device::str_of(&d.os_version), Device::str_of(&d.os_variant));
        bump(
            &mut self.supervisor,
            Cow::Borrowed(Device::str_of(&d.supervisor_version)),
        );
        self.hosts.add(d)
    }
}

/// Writes the fleet-level series of one fleet.
pub fn write_fleet(out: &mut Exposition, s: &FleetStats, module: &ModuleConfig) {
    let f = &s.fleet;
    let slug = f.slug.as_str();
    let id = f.id.to_string();
    out.gauge(
        m::FLEET_INFO,
        &[
            ("fleet", slug),
            ("fleet_id", &id),
            ("organization", f.organization_handle()),
            ("device_type", f.device_type()),
            ("target_release", f.target_release()),
        ],
        1.0,
    );
    let one = |out: &mut Exposition, def, n: u64| out.gauge(def, &[("fleet", slug)], n as f64);
    if module.devices_listed() {
        one(out, m::FLEET_DEVICES, s.devices);
    }
    one(out, m::FLEET_DEVICES_ONLINE, s.online);
    if module.legacy_devices_online {
        let labels = [("fleet_name", f.app_name.as_str())];
        out.gauge(m::LEGACY_DEVICES_ONLINE, &labels, s.online as f64);
    }
    write_releases(out, f);
    if !module.devices_listed() {
        return;
    }
    if let Some(read_at) = s.services_read_at {
        out.gauge(m::FLEET_SERVICES_TIMESTAMP, &[("fleet", slug)], read_at);
        let mut services = s.services.clone();
        let names: Vec<String> = services.0.iter().map(|(n, _, _)| n.clone()).collect();
        for name in &names {
            services.ensure(name, "Running");
        }
        pairs(
            out,
            m::FLEET_SERVICES,
            slug,
            ("service", "status"),
            &services,
        );
    }
    counts(
        out,
        m::FLEET_DEVICES_UPDATE_STATUS,
        slug,
        "status",
        &s.update_status,
    );
    counts(out, m::FLEET_DEVICES_RELEASE, slug, "release", &s.releases);
    one(out, m::FLEET_DEVICES_PINNED, s.pinned);
    pairs(
        out,
        m::FLEET_DEVICES_OS,
        slug,
        ("os_version", "os_variant"),
        &s.os,
    );
    let supervisor = &s.supervisor;
    counts(
        out,
        m::FLEET_DEVICES_SUPERVISOR,
        slug,
        "supervisor_version",
        supervisor,
    );
    counts(out, m::FLEET_DEVICES_STATUS, slug, "status", &s.status);
    counts(out, m::FLEET_DEVICES_HEARTBEAT, slug, "state", &s.heartbeat);
    one(out, m::FLEET_DEVICES_ON_TARGET, s.on_target);
    one(
        out,
        m::FLEET_DEVICES_ONLINE_NOT_ON_TARGET,
        s.online_not_on_target,
    );
    one(out, m::FLEET_DEVICES_UNDERVOLTED, s.undervolted);
    if let Some(h) = &s.host {
        host::write(out, slug, h);
    }
}

/// One series of `def` per counted label value (`label`), zeros included.
fn counts(
    out: &mut Exposition,
    def: m::MetricDef,
    slug: &str,
    label: &str,
    counts: &BTreeMap<String, u64>,
) {
    for (value, n) in counts {
        out.gauge(def, &[("fleet", slug), (label, value)], *n as f64);
    }
}

/// One series of `def` per counted pair of label values (`labels`), in label order.
fn pairs(out: &mut Exposition, def: m::MetricDef, slug: &str, labels: (&str, &str), p: &Pairs) {
    for (a, b, n) in p.sorted() {
        out.gauge(
            def,
            &[("fleet", slug), (labels.0, a), (labels.1, b)],
            *n as f64,
        );
    }
}

/// Writes the fleet's release series: the newest build beside the target.
fn write_releases(out: &mut Exposition, f: &Fleet) {
    let slug = f.slug.as_str();
    if let Some(latest) = f.latest_release() {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        out.gauge(
            m::FLEET_LATEST_RELEASE_INFO,
            &[
                ("fleet", slug),
                ("release", &text(&latest.commit)),
                ("status", &text(&latest.status)),
                ("semver", &text(&latest.semver)),
            ],
            1.0,
        );
        if let Some(t) = latest.created_at.as_deref().and_then(parse_timestamp) {
            out.gauge(m::FLEET_LATEST_RELEASE_CREATED, &[("fleet", slug)], t);
        }
    }
    if let Some(t) = f
        .target()
        .and_then(|r| r.created_at.as_deref())
        .and_then(parse_timestamp)
    {
        out.gauge(m::FLEET_TARGET_RELEASE_CREATED, &[("fleet", slug)], t);
    }
}

/// The most lines [`attention`] gives; what it leaves out is counted in a last line.
const MAX_ATTENTION: usize = 6;

/// How bad a finding is: the lower, the earlier it is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Severity {
    /// Containers exited, dead or restarting: the application is down on those devices.
    Crashed,
    /// The newest build failed: no new release can roll out.
    BuildFailed,
    /// Updates aborted or rejected.
    UpdateFailed,
    /// Host OS updates failed.
    OsUpdateFailed,
    /// Updates under way (the longest first).
    Updating,
    /// Devices on an end-of-life host OS.
    EndOfLife,
}

/// What needs a person's attention in these fleets, in words, worst first (crashed services,
/// a failed newest build, updates aborted or rejected, host OS updates failed, updates under
/// way, devices on an end-of-life host OS), at most
/// [`MAX_ATTENTION`] lines and then one that says how many more there are. Empty when all is
/// well (or the module reads none of it).
pub fn attention(stats: &[FleetStats], module: &ModuleConfig) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut found: Vec<(Severity, f64, String)> = Vec::new();
    for s in stats {
        fleet_attention(s, module, now, &mut found);
    }
    found.sort_by(|a, b| {
        (a.0, a.1)
            .partial_cmp(&(b.0, b.1))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let hidden = found.len().saturating_sub(MAX_ATTENTION);
    let mut out: Vec<String> = found
        .into_iter()
        .take(MAX_ATTENTION)
        .map(|(_, _, line)| line)
        .collect();
    if hidden > 0 {
        out.push(format!(
            "… and {hidden} more (the metrics and the dashboard have them all)"
        ));
    }
    out
}

/// One fleet's lines for [`attention`], each with its severity and a rank within it (lower
/// first: more devices, or the longer update).
fn fleet_attention(
    s: &FleetStats,
    module: &ModuleConfig,
    now: f64,
    found: &mut Vec<(Severity, f64, String)>,
) {
    let fleet = &s.fleet.slug;
    if s.services_read_at.is_some() {
        for (service, status, n) in s.services.sorted() {
            if *n > 0 && matches!(status.as_str(), "exited" | "Dead" | "restarting") {
                let line = format!("{fleet}: service {service} {status} on {}", devices(*n));
                found.push((Severity::Crashed, -(*n as f64), line));
            }
        }
    }
    if let Some(r) = s.fleet.latest_release() {
        if matches!(r.status.as_deref(), Some("failed" | "error")) {
            let semver = r.semver.as_deref().unwrap_or("");
            let line = format!("{fleet}: the newest build {semver} failed");
            found.push((Severity::BuildFailed, 0.0, line));
        }
    }
    if !module.devices_listed() {
        return;
    }
    let count = |k: &str| s.update_status.get(k).copied().unwrap_or(0);
    let failed = count("aborted") + count("rejected");
    if failed > 0 {
        let line = format!(
            "{fleet}: the last update of {} was aborted or rejected",
            devices(failed)
        );
        found.push((Severity::UpdateFailed, -(failed as f64), line));
    }
    if let Some(h) = &s.host {
        let failed = h.os_update.get("failed").copied().unwrap_or(0);
        if failed > 0 {
            let line = format!("{fleet}: the host OS update of {} failed", devices(failed));
            found.push((Severity::OsUpdateFailed, -(failed as f64), line));
        }
        let eol = h.os_phase.get("end-of-life").copied().unwrap_or(0);
        if eol > 0 {
            let line = format!("{fleet}: {} on an end-of-life host OS", devices(eol));
            found.push((Severity::EndOfLife, -(eol as f64), line));
        }
    }
    let updating = count("downloading") + count("applying changes") + count("downloaded");
    if updating > 0 {
        let longest = s.updating_since.map(|t| now - t);
        let line = format!(
            "{fleet}: {} updating{}, {} of {} on the target release",
            devices(updating),
            longest
                .map(|secs| format!(" (the longest for {})", ago(secs)))
                .unwrap_or_default(),
            s.on_target,
            s.devices
        );
        found.push((Severity::Updating, -longest.unwrap_or(0.0), line));
    }
}

/// "1 device", "3 devices".
fn devices(n: u64) -> String {
    if n == 1 {
        "1 device".to_string()
    } else {
        format!("{n} devices")
    }
}

/// A time span in the largest unit that fits: "40 min", "5 h", "3 days".
fn ago(secs: f64) -> String {
    let secs = secs.max(0.0) as u64;
    match secs {
        0..=5_399 => format!("{} min", secs.div_ceil(60)),
        5_400..=129_599 => format!("{} h", (secs + 1_800) / 3_600),
        _ => format!("{} days", (secs + 43_200) / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::probe::labels::test_device as device;

    #[test]
    fn unknown_enum_values_are_kept_and_counted() {
        let fleet: Fleet =
            serde_json::from_value(serde_json::json!({"id": 1, "slug": "o/f"})).unwrap();
        let mut s = FleetStats::new(fleet);
        s.add(&device(
            serde_json::json!({"overall_status": "Frozen Solid", "api_heartbeat_state": "online"}),
        ));
        s.add(&device(
            serde_json::json!({"overall_status": "operational"}),
        ));
        assert_eq!(s.status["frozen solid"], 1);
        assert_eq!(s.status["operational"], 1);
        assert_eq!(s.status["updating"], 0);
        assert_eq!(s.heartbeat["unknown"], 1);
        assert_eq!(s.devices, 2);
    }
    #[test]
    fn attention_lists_the_worst_first_and_says_what_it_hides() {
        let fleet = |slug: &str| -> Fleet {
            serde_json::from_value(serde_json::json!({"id": 1, "slug": slug})).unwrap()
        };
        let mut stats = Vec::new();
        for i in 0..4 {
            let mut s = FleetStats::new(fleet(&format!("o/f{i}")));
            s.services_read_at = Some(0.0);
            s.devices = 10;
            *s.update_status.get_mut("downloading").unwrap() = 2;
            *s.update_status.get_mut("aborted").unwrap() = 1;
            s.services.bump("proxy", "Running");
            if i == 3 {
                for _ in 0..4 {
                    s.services.bump("proxy", "exited");
                }
            }
            stats.push(s);
        }
        let lines = attention(&stats, &ModuleConfig::default());
        assert_eq!(lines.len(), 7, "{lines:#?}");
        assert_eq!(
            lines[0], "o/f3: service proxy exited on 4 devices",
            "the worst first"
        );
        assert!(
            lines[1..5]
                .iter()
                .all(|l| l.contains("aborted or rejected")),
            "{lines:#?}"
        );
        assert!(lines[5].contains("updating"), "{lines:#?}");
        assert_eq!(
            lines[6],
            "… and 3 more (the metrics and the dashboard have them all)"
        );
    }

    #[test]
    fn attention_names_failed_host_os_updates_and_end_of_life_devices() {
        let fleet: Fleet =
            serde_json::from_value(serde_json::json!({"id": 1, "slug": "o/routers"})).unwrap();
        let mut s = FleetStats::new(fleet);
        let mut h = HostCounts::default();
        h.os_update.insert("failed", 2);
        h.os_phase.insert("end-of-life".into(), 1);
        s.host = Some(h);
        let lines = attention(&[s.clone()], &ModuleConfig::default());
        assert_eq!(
            lines,
            vec![
                "o/routers: the host OS update of 2 devices failed",
                "o/routers: 1 device on an end-of-life host OS"
            ]
        );
        s.host = None;
        assert!(attention(&[s], &ModuleConfig::default()).is_empty());
    }

    #[test]
    fn spans_read_in_the_largest_unit_that_fits() {
        assert_eq!(ago(30.0), "1 min");
        assert_eq!(ago(1_500.0), "25 min");
        assert_eq!(ago(5_400.0), "2 h");
        assert_eq!(ago(86_400.0 * 3.0 + 600.0), "3 days");
        assert_eq!(ago(-5.0), "0 min");
    }
}
