//! The metric catalogue (every name and HELP text the exporter writes, in one place) and the
//! exporter's own metrics served on `/metrics` (few and long-lived: the `prometheus` crate).
//! Probe output is written by [`crate::exposition`].

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// A metric's name, HELP text and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// Metric name.
    pub name: &'static str,
    /// HELP text: what it is and which API field it comes from.
    pub help: &'static str,
}

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $id:ident = $name:literal, $help:literal; )*) => {
        $( $(#[$doc])* pub const $id: MetricDef = MetricDef { name: $name, help: $help }; )*
        /// Every metric a probe can emit.
        pub const PROBE_METRICS: &[MetricDef] = &[$($id),*];
    };
}

catalogue! {
    /// 1 if the probe fetched the target's data.
    PROBE_SUCCESS = "probe_success", "Whether the probe of the target succeeded (1) or failed (0).";
    /// Wall time of the probe.
    PROBE_DURATION = "probe_duration_seconds", "How long the probe took, in seconds.";
    /// Deadline the probe ran under.
    PROBE_TIMEOUT = "probe_timeout_seconds", "The deadline this probe ran under (scrape timeout minus offset), in seconds.";
    /// Upstream calls made by this probe.
    PROBE_API_REQUESTS = "balena_probe_api_requests", "Requests this probe made to the balena API (0 when served from the cache).";
    /// Age of the data served.
    PROBE_DATA_AGE = "balena_probe_data_age_seconds", "Age of the balena data in this answer, in seconds (0 when fetched for this probe).";
    /// Fleet facts.
    FLEET_INFO = "balena_fleet_info", "Fleet facts as labels (application id, organization handle, default device type, target release commit); always 1.";
    /// Devices in the fleet.
    FLEET_DEVICES = "balena_fleet_devices", "Devices in the fleet.";
    /// Devices with is_online.
    FLEET_DEVICES_ONLINE = "balena_fleet_devices_online", "Devices in the fleet whose is_online is true.";
    /// Devices per overall_status.
    FLEET_DEVICES_STATUS = "balena_fleet_devices_status", "Devices in the fleet per overall_status (every known status, zeros included).";
    /// Devices per api_heartbeat_state.
    FLEET_DEVICES_HEARTBEAT = "balena_fleet_devices_heartbeat", "Devices in the fleet per api_heartbeat_state (every known state, zeros included).";
    /// Devices running their target release.
    FLEET_DEVICES_ON_TARGET = "balena_fleet_devices_on_target_release", "Devices whose running release is the one they should run (pin, else fleet target).";
    /// Online devices that have a target release and run another.
    FLEET_DEVICES_ONLINE_NOT_ON_TARGET = "balena_fleet_devices_online_not_on_target_release", "Online devices that have a target release (pin, else fleet target) and run another: the devices that could update and have not.";
    /// Undervolted devices.
    FLEET_DEVICES_UNDERVOLTED = "balena_fleet_devices_undervolted", "Devices in the fleet reporting under-voltage (is_undervolted).";
    /// Current services per name and status.
    FLEET_SERVICES = "balena_fleet_services", "Current services of the fleet's devices per service name and container status: every install that is not deleted (image_install.status), so a device mid-update counts its old container and its new one, as balena-sdk's current_services lists them.";
    /// When the services were read.
    FLEET_SERVICES_TIMESTAMP = "balena_fleet_services_timestamp_seconds", "When the image installs behind balena_fleet_services were read from the API, Unix seconds: they are re-read in the background once services_interval old, so services lag device states by up to that much.";
    /// Devices per update_status.
    FLEET_DEVICES_UPDATE_STATUS = "balena_fleet_devices_update_status", "Devices in the fleet per update_status (every known value and none, for null, zeros included).";
    /// Devices per running release.
    FLEET_DEVICES_RELEASE = "balena_fleet_devices_release", "Devices in the fleet per running release commit (is_running__release; none when unknown).";
    /// Pinned devices.
    FLEET_DEVICES_PINNED = "balena_fleet_devices_pinned", "Devices in the fleet pinned to a release (is_pinned_on__release set).";
    /// Devices per OS.
    FLEET_DEVICES_OS = "balena_fleet_devices_os", "Devices in the fleet per balenaOS version and variant.";
    /// Devices per supervisor.
    FLEET_DEVICES_SUPERVISOR = "balena_fleet_devices_supervisor", "Devices in the fleet per supervisor version.";
    /// The newest release.
    FLEET_LATEST_RELEASE_INFO = "balena_fleet_latest_release_info", "The fleet's newest release (build) as labels: commit, build status, semver; always 1.";
    /// When the newest release was created.
    FLEET_LATEST_RELEASE_CREATED = "balena_fleet_latest_release_created_timestamp_seconds", "When the fleet's newest release was created (created_at), Unix seconds.";
    /// When the target release was created.
    FLEET_TARGET_RELEASE_CREATED = "balena_fleet_target_release_created_timestamp_seconds", "When the fleet's target release was created (created_at), Unix seconds.";
    /// Devices per host OS update state.
    FLEET_DEVICES_OS_UPDATE = "balena_fleet_devices_os_update", "Devices in the fleet per host OS update state: none (no target OS, or it runs it), pending (a target OS it does not run, no update under way), in_progress (the OS updater reports progress), failed (the updater reported OS update failed).";
    /// Devices per OS lifecycle phase.
    FLEET_DEVICES_OS_PHASE = "balena_fleet_devices_os_phase", "Devices in the fleet per lifecycle phase of the host OS release they run (next, current, sunset, end-of-life; unknown when no release of their host app matches their os_version).";
    /// Devices whose supervisor is behind its target.
    FLEET_DEVICES_SUPERVISOR_UPDATE_PENDING = "balena_fleet_devices_supervisor_update_pending", "Devices in the fleet whose supervisor_version is not the version of their target supervisor release (should_be_managed_by__release).";
    /// Devices per supervisor setting in the state that matters.
    FLEET_DEVICES_SUPERVISOR_SETTING = "balena_fleet_devices_supervisor_setting", "Devices in the fleet whose effective supervisor setting (device configuration variable over the fleet's) is in the state that matters: hardware_metrics_disabled, local_mode, lock_override.";
    /// Releases in use by version.
    FLEET_RELEASE_INFO = "balena_fleet_release_info", "Each release the fleet's devices run, its target release and its newest release, as labels: commit, semver, build status; always 1.";
    /// Compatibility gauge of the older Python exporter.
    LEGACY_DEVICES_ONLINE = "balena_devices_online", "Online devices per fleet, labelled by fleet display name as the older balena Python exporter wrote it.";
    /// Device facts.
    DEVICE_INFO = "balena_device_info", "Device facts as labels (device type, OS version and variant, supervisor version, running release commit, selected tags); always 1.";
    /// is_online.
    DEVICE_ONLINE = "balena_device_online", "Whether the device is online (is_online).";
    /// overall_status.
    DEVICE_STATUS = "balena_device_status", "The device's overall_status as a label; always 1.";
    /// api_heartbeat_state.
    DEVICE_HEARTBEAT = "balena_device_heartbeat", "The device's api_heartbeat_state as a label; always 1.";
    /// last_connectivity_event.
    DEVICE_LAST_CONNECTIVITY = "balena_device_last_connectivity_timestamp_seconds", "Last change of the device's online state (last_connectivity_event), Unix seconds.";
    /// cpu_usage / 100.
    DEVICE_CPU = "balena_device_cpu_usage_ratio", "CPU usage as reported by the supervisor (cpu_usage / 100); coarse and possibly minutes old.";
    /// cpu_temp.
    DEVICE_TEMP = "balena_device_cpu_temperature_celsius", "CPU temperature (cpu_temp), degrees Celsius.";
    /// memory_usage MiB → bytes.
    DEVICE_MEM_USED = "balena_device_memory_usage_bytes", "Memory in use excluding caches (memory_usage, MiB converted to bytes).";
    /// memory_total MiB → bytes.
    DEVICE_MEM_TOTAL = "balena_device_memory_total_bytes", "Total memory (memory_total, MiB converted to bytes).";
    /// storage_usage MiB → bytes.
    DEVICE_STORAGE_USED = "balena_device_storage_usage_bytes", "Storage in use on the data device (storage_usage, MiB converted to bytes).";
    /// storage_total MiB → bytes.
    DEVICE_STORAGE_TOTAL = "balena_device_storage_total_bytes", "Size of the data partition (storage_total, MiB converted to bytes).";
    /// is_undervolted.
    DEVICE_UNDERVOLTED = "balena_device_undervolted", "Whether the device reports under-voltage (is_undervolted).";
    /// VPN connection to balena.
    DEVICE_VPN = "balena_device_vpn_connected", "Whether the device's VPN connection to balena is up (is_connected_to_vpn); online without it, the device is up but unreachable (reduced-functionality).";
    /// Running release = target release.
    DEVICE_ON_TARGET = "balena_device_on_target_release", "Whether the device runs the release it should run (pin, else fleet target).";
    /// overall_progress / 100.
    DEVICE_PROGRESS = "balena_device_update_progress_ratio", "Progress of the current update or provisioning (overall_progress / 100); absent when nothing is in progress.";
    /// update_status.
    DEVICE_UPDATE_STATUS = "balena_device_update_status", "The device's update_status as a label (none when null: supervisors before 16.7); always 1.";
    /// last_update_status_event.
    DEVICE_UPDATE_STATUS_TIME = "balena_device_update_status_timestamp_seconds", "When the device's update_status last changed (last_update_status_event), Unix seconds.";
    /// is_pinned_on__release set.
    DEVICE_PINNED = "balena_device_pinned", "Whether the device is pinned to a release (is_pinned_on__release set).";
    /// changed_api_heartbeat_state_on__date.
    DEVICE_HEARTBEAT_CHANGED = "balena_device_heartbeat_changed_timestamp_seconds", "When the device's api_heartbeat_state last changed (changed_api_heartbeat_state_on__date), Unix seconds: offline since, for an offline device.";
    /// The host OS update state.
    DEVICE_OS_UPDATE = "balena_device_os_update", "The device's host OS update state as a label (none, pending, in_progress, failed; see balena_fleet_devices_os_update); always 1.";
    /// provisioning_progress while an OS update reports it.
    DEVICE_OS_UPDATE_PROGRESS = "balena_device_os_update_progress_ratio", "Progress the host OS updater reports (provisioning_progress / 100); absent when no OS update reports progress.";
    /// Latitude.
    DEVICE_LATITUDE = "balena_device_latitude_degrees", "The device's latitude in degrees: its custom location if set, else the one balenaCloud found from its IP (modules with locations).";
    /// Longitude.
    DEVICE_LONGITUDE = "balena_device_longitude_degrees", "The device's longitude in degrees: its custom location if set, else the one balenaCloud found from its IP (modules with locations).";
    /// A service's status on a device (opt-in).
    DEVICE_SERVICE_STATUS = "balena_device_service_status", "Current installs of each service of the device per container status (modules with device_services): 1, or 2 when an update's new install is in the same status as the old one.";
}

/// Every `update_status` value of API v7, and `none` for null; emitted with zeros.
pub const KNOWN_UPDATE_STATUSES: &[&str] = &[
    "aborted",
    "applying changes",
    "done",
    "downloaded",
    "downloading",
    "none",
    "rejected",
];

/// Every `image_install.status` the v7 model allows (balena.sbvr), as the supervisor writes them.
pub const KNOWN_INSTALL_STATUSES: &[&str] = &[
    "Awaiting handover",
    "Dead",
    "Deleting",
    "Downloaded",
    "Downloading",
    "Handing over",
    "Idle",
    "Installed",
    "Installing",
    "Running",
    "Starting",
    "Stopped",
    "Stopping",
    "Unknown",
    "configuring",
    "deleted",
    "exited",
    "paused",
    "removing",
    "restarting",
];

/// Every `overall_status` value of API v7, emitted with zeros at fleet level.
pub const KNOWN_STATUSES: &[&str] = &[
    "configuring",
    "disconnected",
    "inactive",
    "operational",
    "post-provisioning",
    "reduced-functionality",
    "updating",
];

/// Every `api_heartbeat_state` value.
pub const KNOWN_HEARTBEATS: &[&str] = &["offline", "online", "timeout", "unknown"];

/// Bytes in a MiB: the API reports memory and storage in MiB.
pub const MIB: f64 = 1_048_576.0;

/// An enum value the exporter does not know, kept as a bounded, printable label value.
pub fn sanitize_enum(value: &str) -> String {
    let v: String = value
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == ' ' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() {
        "unknown".into()
    } else {
        v
    }
}

/// The exporter's own metrics, registered in the registry served on `/metrics`.
#[derive(Debug, Clone)]
pub struct ExporterMetrics {
    /// The registry.
    pub registry: Registry,
    /// Probes by target, module and result.
    pub probes: IntCounterVec,
    /// Probe durations by module.
    pub probe_duration: HistogramVec,
    /// Bad `/probe` requests by reason.
    pub request_errors: IntCounterVec,
    /// Upstream requests by auth, endpoint and status code.
    pub upstream_requests: IntCounterVec,
    /// Upstream latency by endpoint.
    pub upstream_duration: HistogramVec,
    /// Requests a probe needed but never sent (no slot in time, or too little time left).
    pub upstream_not_sent: IntCounterVec,
    /// 1 if the last reload succeeded.
    pub reload_success: IntGauge,
    /// When the last successful reload happened.
    pub reload_timestamp: Gauge,
    /// Probes answered from the cache or a shared in-flight fetch.
    pub cache_hits: IntCounterVec,
    /// Compressed series bytes held by the probe cache (set on each `/metrics` scrape).
    pub cache_bytes: IntGauge,
    /// Results held by the probe cache (set on each `/metrics` scrape).
    pub cache_entries: IntGauge,
    /// Background reads (`probe::reads`), by read and result (`success` or the failure's
    /// reason).
    pub background_reads: IntCounterVec,
    /// Bytes held by each read's snapshots (set on each `/metrics` scrape).
    pub background_bytes: IntGaugeVec,
    /// Seconds left of each auth's `Retry-After` hold (set on each `/metrics` scrape; no series
    /// for an auth that is not held).
    pub api_hold: GaugeVec,
}

impl ExporterMetrics {
    /// Registers every self-metric (and the process collector on Linux): one definition a
    /// field, registered where it is made (`register`), so no metric can be defined and not
    /// served.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let build: IntGaugeVec = register(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "balena_exporter_build_info",
                    "Build facts of the running exporter; always 1.",
                ),
                &["version", "revision", "rustc"],
            ),
        );
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("BALENA_EXPORTER_REVISION").unwrap_or("unknown"),
                option_env!("BALENA_EXPORTER_RUSTC").unwrap_or("unknown"),
            ])
            .set(1);
        #[cfg(target_os = "linux")]
        {
            let _ = registry.register(Box::new(process::ProcessMetrics::for_self()));
        }
        let metrics = Self {
            probes: counters(
                r,
                "balena_exporter_probes_total",
                "Probes served, by target, module and result (success or failure reason).",
                &["target", "module", "result"],
            ),
            probe_duration: histograms(
                r,
                "balena_exporter_probe_duration_seconds",
                "Duration of probes, by module.",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
                &["module"],
            ),
            request_errors: counters(
                r,
                "balena_exporter_probe_request_errors_total",
                "Rejected /probe requests (HTTP 400), by reason.",
                &["reason"],
            ),
            upstream_requests: counters(
                r,
                "balena_exporter_upstream_requests_total",
                "Requests to the balena API, by auth name, endpoint and HTTP status code (\"error\" when none came back).",
                &["auth", "endpoint", "code"],
            ),
            upstream_not_sent: counters(
                r,
                "balena_exporter_upstream_requests_not_sent_total",
                "Requests to the balena API a probe needed but never sent: no free slot of the auth's max_concurrency before the deadline, less time left than its requests take, or the auth held by a Retry-After (balena_exporter_api_hold_seconds). Not upstream errors.",
                &["auth", "endpoint"],
            ),
            upstream_duration: histograms(
                r,
                "balena_exporter_upstream_request_duration_seconds",
                "Latency of requests to the balena API, by endpoint.",
                &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                &["endpoint"],
            ),
            reload_success: register(
                r,
                IntGauge::new(
                    "balena_exporter_config_last_reload_successful",
                    "Whether the last configuration reload succeeded.",
                ),
            ),
            reload_timestamp: register(
                r,
                Gauge::new(
                    "balena_exporter_config_last_reload_success_timestamp_seconds",
                    "Time of the last successful configuration reload, Unix seconds.",
                ),
            ),
            cache_hits: counters(
                r,
                "balena_exporter_cache_hits_total",
                "Probes answered without an upstream fetch of their own, by kind (cache or shared in-flight fetch).",
                &["kind"],
            ),
            cache_bytes: register(
                r,
                IntGauge::new(
                    "balena_exporter_cache_bytes",
                    "Compressed series held by the probe cache, in bytes: with per-device series the exporter's largest use of memory (about 0.5 KB per device).",
                ),
            ),
            cache_entries: register(
                r,
                IntGauge::new(
                    "balena_exporter_cache_entries",
                    "Probe results held by the probe cache (target, module, auth).",
                ),
            ),
            background_reads: counters(
                r,
                "balena_exporter_background_reads_total",
                "Background reads (data re-read off the probe path, e.g. read=services: the image installs, every services_interval), by read and result (success, or the failure's reason: over_bound, inconsistent, timeout, rate_limited, ...).",
                &["read", "result"],
            ),
            background_bytes: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "balena_exporter_background_bytes",
                        "Snapshots of a background read held (one per read, API, auth and token, and device scope), in bytes: at most half of api.background_max_bytes in all (services: about 16 bytes per current service of a device).",
                    ),
                    &["read"],
                ),
            ),
            api_hold: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "balena_exporter_api_hold_seconds",
                        "Seconds left until an auth's requests are sent again, after the API answered 429 or 503 with Retry-After (capped by api.max_retry_after); probes meanwhile fail at once with reason rate_limited. No series while an auth is not held.",
                    ),
                    &["auth"],
                ),
            ),
            registry,
        };
        metrics.reload_success.set(1);
        metrics.reload_timestamp.set(unix_now());
        metrics
    }

    /// Records one upstream request.
    pub fn observe_upstream(&self, auth: &str, endpoint: &str, code: &str, duration: Duration) {
        self.upstream_requests
            .with_label_values(&[auth, endpoint, code])
            .inc();
        self.upstream_duration
            .with_label_values(&[endpoint])
            .observe(duration.as_secs_f64());
    }

    /// Records a request that was needed but never sent.
    pub fn observe_not_sent(&self, auth: &str, endpoint: &str) {
        self.upstream_not_sent
            .with_label_values(&[auth, endpoint])
            .inc();
    }

    /// Records a reload outcome.
    pub fn observe_reload(&self, ok: bool) {
        self.reload_success.set(i64::from(ok));
        if ok {
            self.reload_timestamp.set(unix_now());
        }
    }

    /// The registry in text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Registers a new self-metric in `registry` and gives it back (the registry keeps a clone:
/// the metric's handles share one value).
fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<C>,
) -> C {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric names");
    metric
}

/// A registered counter with labels.
fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

/// A registered histogram with labels.
fn histograms(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(registry, HistogramVec::new(opts, labels))
}

impl Default for ExporterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(target_os = "linux")]
mod process {
    //! `process_*` as prometheus' own collector writes them, but `process_cpu_seconds_total`
    //! in the kernel's steps (10 ms) instead of whole seconds: the crate's collector counts
    //! whole seconds (tikv/rust-prometheus#451), so `rate()` of an exporter that uses a few
    //! percent of a core reads 0 most of the time, and the CPU a probe costs cannot be seen.

    use prometheus::core::{Collector, Desc};
    use prometheus::process_collector::ProcessCollector;
    use prometheus::proto::MetricFamily;

    /// The crate's process collector, with the CPU counter made exact.
    pub struct ProcessMetrics(ProcessCollector);

    impl ProcessMetrics {
        /// For this process.
        pub fn for_self() -> Self {
            Self(ProcessCollector::for_self())
        }
    }

    /// The process's user + system CPU, in seconds.
    pub fn cpu_seconds() -> Option<f64> {
        let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
        Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
    }

    impl Collector for ProcessMetrics {
        fn desc(&self) -> Vec<&Desc> {
            self.0.desc()
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let mut families = self.0.collect();
            if let Some(seconds) = cpu_seconds() {
                families
                    .iter_mut()
                    .filter(|f| f.name() == "process_cpu_seconds_total")
                    .flat_map(|f| f.mut_metric().iter_mut())
                    .for_each(|m| m.counter.mut_or_insert_default().set_value(seconds));
            }
            families
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_values_become_bounded_label_values() {
        assert_eq!(sanitize_enum("Weird\"Status\n"), "weird_status_");
    }

    /// `process_cpu_seconds_total` as written on `/metrics`.
    #[cfg(target_os = "linux")]
    fn written_cpu_seconds(metrics: &ExporterMetrics) -> f64 {
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
            .and_then(|v| v.parse().ok())
            .expect("process_cpu_seconds_total written")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_cpu_seconds_are_written_in_fractions_of_a_second() {
        let metrics = ExporterMetrics::new();
        // Spend CPU until the process's count is past a whole second by at least 0.1 s, where
        // whole seconds would be off by that much.
        let mut spent = 0u64;
        while process::cpu_seconds().expect("readable").fract() < 0.1 {
            spent = (0..1_000_000u64).fold(spent, |a, b| std::hint::black_box(a ^ b));
        }
        std::hint::black_box(spent);
        let before = process::cpu_seconds().unwrap();
        let written = written_cpu_seconds(&metrics);
        let after = process::cpu_seconds().unwrap();
        assert!(
            before <= written && written <= after,
            "written {written}, read around it {before}..{after}"
        );
    }
}
