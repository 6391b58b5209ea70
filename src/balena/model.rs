//! Serde types for the balena API responses the exporter reads: only the fields it selects.
//!
//! Every field that the API may return as null is an `Option`, and every field is
//! `#[serde(default)]` so that a module selecting fewer fields decodes with the same types.
//! Navigation properties come back as `{"__id": N}` when not expanded and as arrays when
//! expanded (reference §5).

use serde::Deserialize;

/// The `{"d": [...]}` envelope of every OData collection answer.
#[derive(Debug, Deserialize)]
pub struct Envelope<T> {
    /// The rows.
    pub d: Vec<T>,
}

/// A not-expanded navigation property: `{"__id": 123}`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct NavId {
    /// Id of the row it points to.
    #[serde(rename = "__id")]
    pub id: u64,
}

/// An expanded `…($select=slug)` navigation row (device type, organization handle).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct SlugRow {
    /// Device type slug.
    #[serde(default)]
    pub slug: Option<String>,
    /// Organization handle.
    #[serde(default)]
    pub handle: Option<String>,
}

/// An expanded release: `is_running__release($select=id,commit)`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReleaseRow {
    /// Release row id (compared with `should_be_running__release`).
    #[serde(default)]
    pub id: Option<u64>,
    /// Release commit hash, used as the `release` / `target_release` label.
    #[serde(default)]
    pub commit: Option<String>,
}

/// A device tag from `$expand=device_tag($select=tag_key,value)`.
#[derive(Debug, Clone, Deserialize)]
pub struct TagRow {
    /// Tag key, e.g. `location`.
    pub tag_key: String,
    /// Tag value (free text).
    #[serde(default)]
    pub value: Option<String>,
}

/// A count from `$expand=owns__device/$count(...)`: the API writes the number in place of the
/// navigation array.
pub type Count = u64;

/// A fleet (`application`) row.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Deserialize)]
pub struct Fleet {
    /// Row id; devices point to it with `belongs_to__application`.
    pub id: u64,
    /// Display name (the older Python exporter's `fleet_name` label).
    #[serde(default)]
    pub app_name: String,
    /// `org/app` slug, always lowercase: the `fleet` label.
    #[serde(default)]
    pub slug: String,
    /// `$expand=organization($select=handle)`.
    #[serde(default)]
    pub organization: Option<Vec<SlugRow>>,
    /// `$expand=is_for__device_type($select=slug)`.
    #[serde(default)]
    pub is_for__device_type: Option<Vec<SlugRow>>,
    /// `$expand=should_be_running__release($select=commit)`: the fleet's target release.
    #[serde(default)]
    pub should_be_running__release: Option<Vec<ReleaseRow>>,
    /// `$expand=owns__device/$count($filter=is_online eq true)`: online devices (counts-only
    /// module).
    #[serde(default, rename = "owns__device")]
    pub online_count: Option<Count>,
}

impl Fleet {
    /// The organization handle, or "" when not expanded.
    pub fn organization_handle(&self) -> &str {
        first(&self.organization)
            .and_then(|o| o.handle.as_deref())
            .unwrap_or("")
    }

    /// The fleet's default device type slug, or "".
    pub fn device_type(&self) -> &str {
        first(&self.is_for__device_type)
            .and_then(|o| o.slug.as_deref())
            .unwrap_or("")
    }

    /// The target release commit, or "" when the fleet tracks none.
    pub fn target_release(&self) -> &str {
        first(&self.should_be_running__release)
            .and_then(|r| r.commit.as_deref())
            .unwrap_or("")
    }
}

/// The first element of an expanded to-one navigation.
pub fn first<T>(nav: &Option<Vec<T>>) -> Option<&T> {
    nav.as_ref().and_then(|v| v.first())
}

/// A device row, with exactly the fields [`crate::balena::DEVICE_FIELDS`] selects.
#[derive(Debug, Clone, Deserialize, Default)]
#[allow(non_snake_case)]
pub struct Device {
    /// Row id (paging order).
    #[serde(default)]
    pub id: u64,
    /// Device UUID (32 or 62 hex chars).
    #[serde(default)]
    pub uuid: String,
    /// Display name; may be "" on legacy devices.
    #[serde(default)]
    pub device_name: Option<String>,
    /// Fleet the device belongs to (org and `all` targets map it to a slug).
    #[serde(default)]
    pub belongs_to__application: Option<NavId>,
    /// Legacy online flag, kept equal to `is_connected_to_vpn`.
    #[serde(default)]
    pub is_online: Option<bool>,
    /// `online` / `offline` / `timeout` / `unknown`.
    #[serde(default)]
    pub api_heartbeat_state: Option<String>,
    /// Computed status (only when selected).
    #[serde(default)]
    pub overall_status: Option<String>,
    /// Computed progress in percent, null when nothing is in progress.
    #[serde(default)]
    pub overall_progress: Option<f64>,
    /// balenaOS version string.
    #[serde(default)]
    pub os_version: Option<String>,
    /// `prod` / `dev`.
    #[serde(default)]
    pub os_variant: Option<String>,
    /// Supervisor version.
    #[serde(default)]
    pub supervisor_version: Option<String>,
    /// CPU usage in percent.
    #[serde(default)]
    pub cpu_usage: Option<f64>,
    /// CPU temperature in °C.
    #[serde(default)]
    pub cpu_temp: Option<f64>,
    /// Memory used, MiB.
    #[serde(default)]
    pub memory_usage: Option<f64>,
    /// Memory size, MiB.
    #[serde(default)]
    pub memory_total: Option<f64>,
    /// Storage used, MiB.
    #[serde(default)]
    pub storage_usage: Option<f64>,
    /// Storage size, MiB.
    #[serde(default)]
    pub storage_total: Option<f64>,
    /// Kernel reported under-voltage.
    #[serde(default)]
    pub is_undervolted: Option<bool>,
    /// Last change of `is_online`, ISO-8601.
    #[serde(default)]
    pub last_connectivity_event: Option<String>,
    /// Computed: the pin, else the fleet's target release.
    #[serde(default)]
    pub should_be_running__release: Option<NavId>,
    /// `$expand=is_of__device_type($select=slug)`.
    #[serde(default)]
    pub is_of__device_type: Option<Vec<SlugRow>>,
    /// `$expand=is_running__release($select=id,commit)`.
    #[serde(default)]
    pub is_running__release: Option<Vec<ReleaseRow>>,
    /// `$expand=device_tag($select=tag_key,value)`, only when the module asks for tags.
    #[serde(default)]
    pub device_tag: Option<Vec<TagRow>>,
}

impl Device {
    /// Device type slug, or "".
    pub fn device_type(&self) -> &str {
        first(&self.is_of__device_type)
            .and_then(|o| o.slug.as_deref())
            .unwrap_or("")
    }

    /// Commit of the running release, or "".
    pub fn release(&self) -> &str {
        first(&self.is_running__release)
            .and_then(|r| r.commit.as_deref())
            .unwrap_or("")
    }

    /// Whether the running release is the one the device should run; `None` when unknown.
    pub fn on_target_release(&self) -> Option<bool> {
        let target = self.should_be_running__release?;
        let running = first(&self.is_running__release).and_then(|r| r.id);
        Some(running == Some(target.id))
    }
}

/// `/actor/v1/whoami`: who a token belongs to.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// Actor id.
    pub id: u64,
    /// `user`, `application` or `device`.
    #[serde(default)]
    pub actor_type: String,
    /// Username for user actors.
    #[serde(default)]
    pub username: Option<String>,
}

/// A row selected with `$select=id` only.
#[derive(Debug, Clone, Deserialize)]
pub struct NavIdRow {
    /// Row id.
    pub id: u64,
}
