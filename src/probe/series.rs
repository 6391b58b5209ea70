//! Turns balena rows into series: per-device samples as pages arrive, and per-fleet
//! aggregates once a fleet's devices are all counted. Pure functions of the data; the probe
//! decides what to fetch, this decides what to write.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::application::{write_application, write_releases, Pairs};
use crate::balena::model::{Device, Fleet};
use crate::config::ModuleConfig;
use crate::exposition::Exposition;
use crate::metrics::{self as m, KNOWN_HEARTBEATS, KNOWN_STATUSES, KNOWN_UPDATE_STATUSES, MIB};

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
        }
    }

    /// Counts one device.
    pub fn add(&mut self, d: &Device) {
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
    }
}

/// Adds one to a counter map without allocating for keys already present.
fn bump(map: &mut BTreeMap<String, u64>, key: Cow<'_, str>) {
    match map.get_mut(key.as_ref()) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.into_owned(), 1);
        }
    }
}

/// The device's `overall_status` as a label value (unknown values kept, sanitised).
fn status_label<'a>(d: &'a Device) -> Cow<'a, str> {
    enum_label(d.overall_status.as_deref(), KNOWN_STATUSES)
}

/// The device's `update_status` as a label value (`none` for null).
pub(super) fn update_status_label<'a>(d: &'a Device) -> Cow<'a, str> {
    match d.update_status.as_deref() {
        None => Cow::Borrowed("none"),
        v => enum_label(v, KNOWN_UPDATE_STATUSES),
    }
}

fn heartbeat_label<'a>(d: &'a Device) -> Cow<'a, str> {
    enum_label(d.api_heartbeat_state.as_deref(), KNOWN_HEARTBEATS)
}

pub(super) fn enum_label<'a>(value: Option<&'a str>, known: &[&str]) -> Cow<'a, str> {
    match value {
        Some(v) if known.contains(&v) => Cow::Borrowed(v),
        Some(v) => Cow::Owned(m::sanitize_enum(v)),
        None => Cow::Borrowed("unknown"),
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
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
    if !module.counts_only {
        out.gauge(m::FLEET_DEVICES, &[("fleet", slug)], s.devices as f64);
    }
    out.gauge(m::FLEET_DEVICES_ONLINE, &[("fleet", slug)], s.online as f64);
    if module.legacy_devices_online {
        out.gauge(
            m::LEGACY_DEVICES_ONLINE,
            &[("fleet_name", &f.app_name)],
            s.online as f64,
        );
    }
    write_releases(out, f);
    if module.counts_only {
        return;
    }
    write_application(out, s, module);
    for (status, n) in &s.status {
        out.gauge(
            m::FLEET_DEVICES_STATUS,
            &[("fleet", slug), ("status", status)],
            *n as f64,
        );
    }
    for (state, n) in &s.heartbeat {
        out.gauge(
            m::FLEET_DEVICES_HEARTBEAT,
            &[("fleet", slug), ("state", state)],
            *n as f64,
        );
    }
    out.gauge(
        m::FLEET_DEVICES_ON_TARGET,
        &[("fleet", slug)],
        s.on_target as f64,
    );
    out.gauge(
        m::FLEET_DEVICES_ONLINE_NOT_ON_TARGET,
        &[("fleet", slug)],
        s.online_not_on_target as f64,
    );
    out.gauge(
        m::FLEET_DEVICES_UNDERVOLTED,
        &[("fleet", slug)],
        s.undervolted as f64,
    );
}

/// The label a device family carries besides `fleet`, `device_uuid` and `device_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// None: the value is the device's.
    Value,
    /// The info labels and the module's tag labels (value 1).
    Info,
    /// `status` (value 1).
    Status,
    /// `state` (value 1).
    Heartbeat,
    /// `status`: the update status (value 1).
    Update,
}

/// One per-device metric family: what it is, the label it adds, and how its value comes from a
/// device row (`None`: no series, as for a null field). A new device metric is a row here,
/// its definition in the catalogue (`metrics.rs`) and its field in the model (`Device`).
#[derive(Debug, Clone, Copy)]
pub struct DeviceFamily {
    /// Name and help.
    pub def: m::MetricDef,
    /// The label it adds.
    pub extra: Extra,
    /// Its value for a device (units converted).
    pub value: fn(&Device<'_>) -> Option<f64>,
}

const fn family(def: m::MetricDef, value: fn(&Device<'_>) -> Option<f64>) -> DeviceFamily {
    DeviceFamily {
        def,
        extra: Extra::Value,
        value,
    }
}

const fn labelled(def: m::MetricDef, extra: Extra) -> DeviceFamily {
    DeviceFamily {
        def,
        extra,
        value: |_| Some(1.0),
    }
}

/// Every per-device family, in the order a device writes them.
pub const DEVICE_FAMILIES: &[DeviceFamily] = &[
    labelled(m::DEVICE_INFO, Extra::Info),
    family(m::DEVICE_ONLINE, |d| d.is_online.map(flag)),
    labelled(m::DEVICE_STATUS, Extra::Status),
    labelled(m::DEVICE_HEARTBEAT, Extra::Heartbeat),
    family(m::DEVICE_LAST_CONNECTIVITY, |d| {
        d.last_connectivity_event
            .as_deref()
            .and_then(parse_timestamp)
    }),
    family(m::DEVICE_CPU, |d| d.cpu_usage.map(|v| v / 100.0)),
    family(m::DEVICE_TEMP, |d| d.cpu_temp),
    family(m::DEVICE_MEM_USED, |d| d.memory_usage.map(|v| v * MIB)),
    family(m::DEVICE_MEM_TOTAL, |d| d.memory_total.map(|v| v * MIB)),
    family(m::DEVICE_STORAGE_USED, |d| d.storage_usage.map(|v| v * MIB)),
    family(m::DEVICE_STORAGE_TOTAL, |d| {
        d.storage_total.map(|v| v * MIB)
    }),
    family(m::DEVICE_UNDERVOLTED, |d| d.is_undervolted.map(flag)),
    family(m::DEVICE_VPN, |d| d.is_connected_to_vpn.map(flag)),
    family(m::DEVICE_ON_TARGET, |d| d.on_target_release().map(flag)),
    family(m::DEVICE_PROGRESS, |d| {
        d.overall_progress.map(|v| v / 100.0)
    }),
    labelled(m::DEVICE_UPDATE_STATUS, Extra::Update),
    family(m::DEVICE_UPDATE_STATUS_TIME, |d| {
        d.last_update_status_event
            .as_deref()
            .and_then(parse_timestamp)
    }),
    family(m::DEVICE_PINNED, |d| {
        Some(flag(d.is_pinned_on__release.is_some()))
    }),
    family(m::DEVICE_HEARTBEAT_CHANGED, |d| {
        d.changed_api_heartbeat_state_on__date
            .as_deref()
            .and_then(parse_timestamp)
    }),
];

/// How many device families there are.
pub const N_FAMILIES: usize = DEVICE_FAMILIES.len();

/// What one device contributes to the series, computed once from its row: identifying
/// labels, info labels, enum labels and one value per family of [`DEVICE_FAMILIES`] (`None`:
/// no series, as for a null field).
#[derive(Debug, Clone)]
pub struct DeviceSeries<'a> {
    /// `fleet` label.
    pub fleet: &'a str,
    /// `device_uuid` label.
    pub uuid: &'a str,
    /// `device_name` label.
    pub name: &'a str,
    /// `device_type`, `os_version`, `os_variant`, `supervisor_version`, `release`.
    pub info: [&'a str; 5],
    /// Tag values, in the order of the module's tag labels.
    pub tags: Vec<&'a str>,
    /// `status` label of `balena_device_status`.
    pub status: Cow<'a, str>,
    /// `state` label of `balena_device_heartbeat`.
    pub heartbeat: Cow<'a, str>,
    /// `status` label of `balena_device_update_status`.
    pub update: Cow<'a, str>,
    /// The value of each family of [`DEVICE_FAMILIES`] (units converted).
    pub values: [Option<f64>; N_FAMILIES],
}

/// Label names of [`DeviceSeries::info`].
const INFO_LABELS: [&str; 5] = [
    "device_type",
    "os_version",
    "os_variant",
    "supervisor_version",
    "release",
];

impl<'a> DeviceSeries<'a> {
    /// The series of device `d` of fleet `fleet`, for the module's tag labels `tags`.
    pub fn of(fleet: &'a str, d: &'a Device<'_>, tags: &[(String, String)]) -> Self {
        Self {
            fleet,
            uuid: d.uuid.as_ref(),
            name: d.name(),
            info: [
                d.device_type(),
                Device::str_of(&d.os_version),
                Device::str_of(&d.os_variant),
                Device::str_of(&d.supervisor_version),
                d.release(),
            ],
            tags: tags.iter().map(|(_, key)| d.tag(key)).collect(),
            status: status_label(d),
            heartbeat: heartbeat_label(d),
            update: update_status_label(d),
            values: std::array::from_fn(|i| (DEVICE_FAMILIES[i].value)(d)),
        }
    }

    /// Hands the device's sample of family number `family` to `write` (nothing when the value
    /// is absent). `tags` are the module's tag labels, as for [`DeviceSeries::of`].
    pub fn sample(
        &self,
        family: usize,
        tags: &[(String, String)],
        write: impl FnOnce(m::MetricDef, &[(&str, &str)], f64),
    ) {
        let Some(value) = self.values[family] else {
            return;
        };
        let DeviceFamily { def, extra, .. } = DEVICE_FAMILIES[family];
        let base = [
            ("fleet", self.fleet),
            ("device_uuid", self.uuid),
            ("device_name", self.name),
        ];
        match extra {
            Extra::Info => {
                let mut labels: Vec<(&str, &str)> = Vec::with_capacity(8 + tags.len());
                labels.extend(base);
                labels.extend(INFO_LABELS.iter().copied().zip(self.info));
                labels.extend(
                    tags.iter()
                        .map(|(l, _)| l.as_str())
                        .zip(self.tags.iter().copied()),
                );
                write(def, &labels, value);
            }
            Extra::Status => {
                let [a, b, c] = base;
                write(def, &[a, b, c, ("status", &self.status)], value);
            }
            Extra::Heartbeat => {
                let [a, b, c] = base;
                write(def, &[a, b, c, ("state", &self.heartbeat)], value);
            }
            Extra::Update => {
                let [a, b, c] = base;
                write(def, &[a, b, c, ("status", &self.update)], value);
            }
            Extra::Value => write(def, &base, value),
        }
    }
}

/// Writes the per-device series of one device.
pub fn write_device(out: &mut Exposition, fleet: &str, d: &Device, tags: &[(String, String)]) {
    let series = DeviceSeries::of(fleet, d, tags);
    for family in 0..DEVICE_FAMILIES.len() {
        series.sample(family, tags, |def, labels, value| {
            out.gauge(def, labels, value)
        });
    }
}

/// ISO-8601 → Unix seconds (fractional).
pub fn parse_timestamp(text: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(json: serde_json::Value) -> Device<'static> {
        let text: &'static str = Box::leak(json.to_string().into_boxed_str());
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn units_are_converted_and_nulls_write_no_series() {
        let d = device(serde_json::json!({
            "id": 1, "uuid": "abc", "device_name": "n", "is_online": true, "cpu_usage": 42,
            "memory_usage": 2, "memory_total": null, "overall_progress": null, "cpu_temp": null,
            "last_connectivity_event": "2026-01-02T03:04:05.678Z",
        }));
        let mut e = Exposition::new();
        write_device(&mut e, "o/f", &d, &[]);
        let mut text = String::new();
        e.render_into(&mut text);
        assert!(text.contains("balena_device_cpu_usage_ratio{fleet=\"o/f\",device_uuid=\"abc\",device_name=\"n\"} 0.42\n"));
        assert!(text.contains("balena_device_memory_usage_bytes{fleet=\"o/f\",device_uuid=\"abc\",device_name=\"n\"} 2097152\n"));
        assert!(text.contains("balena_device_last_connectivity_timestamp_seconds{fleet=\"o/f\",device_uuid=\"abc\",device_name=\"n\"} 1767323045.678\n"));
        let names: Vec<_> = e.names().collect();
        assert!(!names.contains(&"balena_device_memory_total_bytes"));
        assert!(!names.contains(&"balena_device_cpu_temperature_celsius"));
        assert!(!names.contains(&"balena_device_update_progress_ratio"));
    }

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
}
