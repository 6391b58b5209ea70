//! Device series: one table of per-device families ([`DEVICE_FAMILIES`]), each device's series
//! computed once from its row ([`DeviceSeries`]) and written as it arrives ([`write_device`]),
//! and the opt-in services of each device ([`write_device_services`]).

use std::borrow::Cow;

use super::host::os_update_progress;
use super::labels::{flag, heartbeat_label, parse_timestamp, status_label, update_status_label};
use crate::balena::model::Device;
use crate::exposition::{label_prefix, Exposition};
use crate::metrics::{self as m, MIB};

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
    family(m::DEVICE_OS_UPDATE_PROGRESS, os_update_progress),
    family(m::DEVICE_LATITUDE, |d| d.location().map(|l| l.0)),
    family(m::DEVICE_LONGITUDE, |d| d.location().map(|l| l.1)),
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

    /// The labels every series of the device starts with: `fleet`, `device_uuid`,
    /// `device_name`.
    pub fn base(&self) -> [(&'static str, &'a str); 3] {
        [
            ("fleet", self.fleet),
            ("device_uuid", self.uuid),
            ("device_name", self.name),
        ]
    }

    /// Hands the device's sample of family number `family` to `write` (nothing when the value
    /// is absent), with the labels it carries after [`DeviceSeries::base`]. `tags` are the
    /// module's tag labels, as for [`DeviceSeries::of`].
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
        match extra {
            Extra::Info => {
                let mut labels: Vec<(&str, &str)> = Vec::with_capacity(5 + tags.len());
                labels.extend(INFO_LABELS.iter().copied().zip(self.info));
                labels.extend(
                    tags.iter()
                        .map(|(l, _)| l.as_str())
                        .zip(self.tags.iter().copied()),
                );
                write(def, &labels, value);
            }
            Extra::Status => write(def, &[("status", &self.status)], value),
            Extra::Heartbeat => write(def, &[("state", &self.heartbeat)], value),
            Extra::Update => write(def, &[("status", &self.update)], value),
            Extra::Value => write(def, &[], value),
        }
    }
}

/// Writes the per-device series of one device.
pub fn write_device(out: &mut Exposition, fleet: &str, d: &Device, tags: &[(String, String)]) {
    let series = DeviceSeries::of(fleet, d, tags);
    let prefix = label_prefix(&series.base());
    for family in 0..DEVICE_FAMILIES.len() {
        series.sample(family, tags, |def, extra, value| {
            out.gauge_after(def, &prefix, extra, value)
        });
    }
}

/// Writes the opt-in `balena_device_service_status` of one device: one series per current
/// service and status (as (name, status label, installs)), its status as a label.
pub fn write_device_services<'s>(
    out: &mut Exposition,
    fleet: &str,
    uuid: &str,
    name: &str,
    services: impl Iterator<Item = (&'s str, &'s str, u32)>,
) {
    for (service, status, installs) in services {
        out.gauge(
            m::DEVICE_SERVICE_STATUS,
            &[
                ("fleet", fleet),
                ("device_uuid", uuid),
                ("device_name", name),
                ("service", service),
                ("status", status),
            ],
            f64::from(installs),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::probe::labels::test_device as device;

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
}
