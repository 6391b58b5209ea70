//! What a fleet's application is doing, from the rows the probe already has: services by
//! container status, update states, releases, pins, OS and supervisor versions, the newest build
//! beside the target — as series, and in words for the landing and debug pages
//! ([`attention`]).

use std::borrow::Cow;

use super::series::{enum_label, parse_timestamp, FleetStats};
use crate::balena::model::Fleet;
use crate::config::ModuleConfig;
use crate::exposition::Exposition;
use crate::metrics::{self as m, KNOWN_INSTALL_STATUSES};

/// Counts per pair of label values: a fleet has few distinct pairs (services × statuses, OS
/// versions × variants), so a short list searched in place, allocating only for a new pair.
#[derive(Debug, Clone, Default)]
pub struct Pairs(pub Vec<(String, String, u64)>);

impl Pairs {
    /// Adds one to the pair's count.
    pub fn bump(&mut self, a: &str, b: &str) {
        match self.0.iter_mut().find(|(x, y, _)| x == a && y == b) {
            Some((_, _, n)) => *n += 1,
            None => self.0.push((a.to_string(), b.to_string(), 1)),
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
pub(super) fn install_status_label(status: &str) -> Cow<'_, str> {
    if status.is_empty() {
        return Cow::Borrowed("Unknown");
    }
    enum_label(Some(status), KNOWN_INSTALL_STATUSES)
}

/// Writes the fleet's release series: the newest build beside the target.
pub(super) fn write_releases(out: &mut Exposition, f: &Fleet) {
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

/// Writes what the fleet runs: services by status, update states, releases, pins, OS and
/// supervisor versions in use.
pub(super) fn write_application(out: &mut Exposition, s: &FleetStats, module: &ModuleConfig) {
    let slug = s.fleet.slug.as_str();
    if let Some(read_at) = s.services_read_at.filter(|_| module.services) {
        out.gauge(m::FLEET_SERVICES_TIMESTAMP, &[("fleet", slug)], read_at);
        let mut services = s.services.clone();
        let names: Vec<String> = services.0.iter().map(|(n, _, _)| n.clone()).collect();
        for name in &names {
            services.ensure(name, "Running");
        }
        for (service, status, n) in services.sorted() {
            out.gauge(
                m::FLEET_SERVICES,
                &[("fleet", slug), ("service", service), ("status", status)],
                *n as f64,
            );
        }
    }
    for (status, n) in &s.update_status {
        out.gauge(
            m::FLEET_DEVICES_UPDATE_STATUS,
            &[("fleet", slug), ("status", status)],
            *n as f64,
        );
    }
    for (release, n) in &s.releases {
        out.gauge(
            m::FLEET_DEVICES_RELEASE,
            &[("fleet", slug), ("release", release)],
            *n as f64,
        );
    }
    out.gauge(m::FLEET_DEVICES_PINNED, &[("fleet", slug)], s.pinned as f64);
    for (version, variant, n) in s.os.sorted() {
        out.gauge(
            m::FLEET_DEVICES_OS,
            &[
                ("fleet", slug),
                ("os_version", version),
                ("os_variant", variant),
            ],
            *n as f64,
        );
    }
    for (version, n) in &s.supervisor {
        out.gauge(
            m::FLEET_DEVICES_SUPERVISOR,
            &[("fleet", slug), ("supervisor_version", version)],
            *n as f64,
        );
    }
}

/// The most lines [`attention`] gives (the first fleets' first findings).
const MAX_ATTENTION: usize = 6;

/// What needs a person's attention in these fleets, in words, worst first within a fleet:
/// services exited, dead or restarting; a newest build that failed; updates aborted or
/// rejected; updates under way. Empty when all is well (or the module reads none of it).
pub fn attention(stats: &[FleetStats], module: &ModuleConfig) -> Vec<String> {
    let mut out = Vec::new();
    let devices = |n: u64| {
        if n == 1 {
            "1 device".to_string()
        } else {
            format!("{n} devices")
        }
    };
    for s in stats {
        let fleet = &s.fleet.slug;
        if module.services {
            for (service, status, n) in s.services.sorted() {
                if *n > 0 && matches!(status.as_str(), "exited" | "Dead" | "restarting") {
                    out.push(format!(
                        "{fleet}: service {service} {status} on {}",
                        devices(*n)
                    ));
                }
            }
        }
        if let Some(r) = s.fleet.latest_release() {
            if matches!(r.status.as_deref(), Some("failed" | "error")) {
                let semver = r.semver.as_deref().unwrap_or("");
                out.push(format!("{fleet}: the newest build {semver} failed"));
            }
        }
        if module.counts_only {
            continue;
        }
        let count = |k: &str| s.update_status.get(k).copied().unwrap_or(0);
        let failed = count("aborted") + count("rejected");
        if failed > 0 {
            out.push(format!(
                "{fleet}: the last update of {} was aborted or rejected",
                devices(failed)
            ));
        }
        let updating = count("downloading") + count("applying changes") + count("downloaded");
        if updating > 0 {
            let longest = s.updating_since.map(|t| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                format!(" (the longest for {})", ago(now - t))
            });
            out.push(format!(
                "{fleet}: {} updating{}, {} of {} on the target release",
                devices(updating),
                longest.unwrap_or_default(),
                s.on_target,
                s.devices
            ));
        }
    }
    out.truncate(MAX_ATTENTION);
    out
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

/// Writes the opt-in `balena_device_service_status` of one device: one series per current
/// service (as (name, status label)), its status as a label.
pub fn write_device_services<'s>(
    out: &mut Exposition,
    fleet: &str,
    uuid: &str,
    name: &str,
    services: impl Iterator<Item = (&'s str, &'s str)>,
) {
    for (service, status) in services {
        out.gauge(
            m::DEVICE_SERVICE_STATUS,
            &[
                ("fleet", fleet),
                ("device_uuid", uuid),
                ("device_name", name),
                ("service", service),
                ("status", status),
            ],
            1.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_in_the_largest_unit_that_fits() {
        assert_eq!(ago(30.0), "1 min");
        assert_eq!(ago(1_500.0), "25 min");
        assert_eq!(ago(5_400.0), "2 h");
        assert_eq!(ago(86_400.0 * 3.0 + 600.0), "3 days");
        assert_eq!(ago(-5.0), "0 min");
    }
}
