//! Label values and the parsing under them, shared by the fleet and device series and the
//! background reads: enum values as label values, timestamps, counters of label pairs. A leaf:
//! it imports nothing of the probe.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::balena::model::Device;
use crate::metrics::{
    self as m, KNOWN_HEARTBEATS, KNOWN_INSTALL_STATUSES, KNOWN_STATUSES, KNOWN_UPDATE_STATUSES,
};

/// Counts per pair of label values: a fleet has few distinct pairs (services × statuses, OS
/// versions × variants), so a short list searched in place, allocating only for a new pair.
#[derive(Debug, Clone, Default)]
pub struct Pairs(pub Vec<(String, String, u64)>);

impl Pairs {
    /// Adds one to the pair's count.
    pub fn bump(&mut self, a: &str, b: &str) {
        self.add(a, b, 1);
    }

    /// Adds `n` to the pair's count.
    pub fn add(&mut self, a: &str, b: &str, n: u64) {
        match self.0.iter_mut().find(|(x, y, _)| x == a && y == b) {
            Some((_, _, c)) => *c += n,
            None => self.0.push((a.to_string(), b.to_string(), n)),
        }
    }

    /// Makes sure the pair is there, with 0 if it was not.
    pub fn ensure(&mut self, a: &str, b: &str) {
        if !self.0.iter().any(|(x, y, _)| x == a && y == b) {
            self.0.push((a.to_string(), b.to_string(), 0));
        }
    }

    /// The pairs in label order.
    pub fn sorted(&self) -> Vec<&(String, String, u64)> {
        let mut v: Vec<_> = self.0.iter().collect();
        v.sort();
        v
    }
}

/// A container status as a label value: the known ones as balena writes them (`Running`,
/// `exited`), others sanitised.
pub fn install_status_label(status: &str) -> Cow<'_, str> {
    if status.is_empty() {
        return Cow::Borrowed("Unknown");
    }
    enum_label(Some(status), KNOWN_INSTALL_STATUSES)
}

/// Adds one to a counter map without allocating for keys already present.
pub fn bump(map: &mut BTreeMap<String, u64>, key: Cow<'_, str>) {
    match map.get_mut(key.as_ref()) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.into_owned(), 1);
        }
    }
}

/// The device's `overall_status` as a label value (unknown values kept, sanitised).
pub fn status_label<'a>(d: &'a Device) -> Cow<'a, str> {
    enum_label(d.overall_status.as_deref(), KNOWN_STATUSES)
}

/// The device's `update_status` as a label value (`none` for null).
pub fn update_status_label<'a>(d: &'a Device) -> Cow<'a, str> {
    match d.update_status.as_deref() {
        None => Cow::Borrowed("none"),
        v => enum_label(v, KNOWN_UPDATE_STATUSES),
    }
}

pub fn heartbeat_label<'a>(d: &'a Device) -> Cow<'a, str> {
    enum_label(d.api_heartbeat_state.as_deref(), KNOWN_HEARTBEATS)
}

pub fn enum_label<'a>(value: Option<&'a str>, known: &[&str]) -> Cow<'a, str> {
    match value {
        Some(v) if known.contains(&v) => Cow::Borrowed(v),
        Some(v) => Cow::Owned(m::sanitize_enum(v)),
        None => Cow::Borrowed("unknown"),
    }
}

/// 1 for true, 0 for false.
pub fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// ISO-8601 → Unix seconds (fractional).
pub fn parse_timestamp(text: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64())
}

/// A device row from JSON, for the tests of the series modules.
#[cfg(test)]
pub(crate) fn test_device(json: serde_json::Value) -> Device<'static> {
    let text: &'static str = Box::leak(json.to_string().into_boxed_str());
    serde_json::from_str(text).unwrap()
}
