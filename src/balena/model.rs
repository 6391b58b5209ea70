//! Serde types for the balena API responses the exporter reads: only the fields it selects.
//!
//! Every field that the API may return as null is an `Option`, and every field is
//! `#[serde(default)]` so that a module selecting fewer fields decodes with the same types.
//! Navigation properties come back as `{"__id": N}` when not expanded and as arrays when
//! expanded (reference §5).

use std::borrow::Cow;

use super::keyset::Keyed;
use super::stream::{self, RowStream, StreamError};
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

/// A release as the fleet row expands it: the target (`should_be_running__release`) and the
/// newest build (`owns__release`, newest first, one row). Never `build_log` (up to 1 MB).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct FleetRelease {
    /// Commit hash: the `release` label.
    #[serde(default)]
    pub commit: Option<String>,
    /// Build status: `running`, `success`, `failed`, `error`, `cancelled`, `interrupted`.
    #[serde(default)]
    pub status: Option<String>,
    /// Computed `semver` (`1.2.3`, `0.0.0` for an unversioned release).
    #[serde(default)]
    pub semver: Option<String>,
    /// When the release was created, ISO-8601.
    #[serde(default)]
    pub created_at: Option<String>,
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
    /// `$expand=should_be_running__release($select=commit,status,semver,created_at)`: the fleet's
    /// target release.
    #[serde(default)]
    pub should_be_running__release: Option<Vec<FleetRelease>>,
    /// `$expand=owns__release($select=commit,status,semver,created_at;$orderby=created_at
    /// desc;$top=1)`: the newest build, whatever its status.
    #[serde(default)]
    pub owns__release: Option<Vec<FleetRelease>>,
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

    /// The newest release (build) of the fleet, if it has any.
    pub fn latest_release(&self) -> Option<&FleetRelease> {
        first(&self.owns__release)
    }

    /// The target release row, if the fleet has one.
    pub fn target(&self) -> Option<&FleetRelease> {
        first(&self.should_be_running__release)
    }

    /// The longest of the strings that become label values, in bytes: checked against the
    /// string cap as device rows are ([`super::stream::MAX_STRING_BYTES`]).
    pub fn longest_label_value(&self) -> usize {
        let latest = self.latest_release();
        let field = |f: fn(&FleetRelease) -> &Option<String>| {
            latest.and_then(|r| f(r).as_deref()).unwrap_or("")
        };
        [
            self.app_name.as_str(),
            &self.slug,
            self.organization_handle(),
            self.device_type(),
            self.target_release(),
            field(|r| &r.commit),
            field(|r| &r.status),
            field(|r| &r.semver),
        ]
        .iter()
        .map(|s| s.len())
        .max()
        .unwrap_or(0)
    }
}

/// The first element of an expanded to-one navigation.
pub fn first<T>(nav: &Option<Vec<T>>) -> Option<&T> {
    nav.as_ref().and_then(|v| v.first())
}

/// A string borrowed from the response body when it has no escapes (the common case).
pub type Text<'a> = Option<Cow<'a, str>>;

/// Serde reads `Option<Cow<str>>` as owned even with `borrow`; this borrows when it can.
fn borrowed<'de: 'a, 'a, D: serde::Deserializer<'de>>(d: D) -> Result<Text<'a>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

/// The first row of an expanded to-one navigation (`[row]`, or `[]` when it points nowhere),
/// without collecting the array: a device row has two, and a `Vec` each was a fifth of the
/// allocations of a page's decode (`benches/pipeline.rs`). Rows after the first (a to-one
/// navigation has none) are decoded as strictly and dropped.
fn first_row<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<NavRow<'a>>, D::Error> {
    struct First<'a>(std::marker::PhantomData<NavRow<'a>>);
    impl<'de: 'a, 'a> serde::de::Visitor<'de> for First<'a> {
        type Value = Option<NavRow<'a>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of rows, or null")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_seq(self)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let first = seq.next_element::<NavRow<'a>>()?;
            while seq.next_element::<NavRow<'a>>()?.is_some() {}
            Ok(first)
        }
    }
    d.deserialize_option(First(std::marker::PhantomData))
}

/// An expanded navigation row of a device: `is_of__device_type($select=slug)` or
/// `is_running__release($select=id,commit)`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct NavRow<'a> {
    /// Row id.
    #[serde(default)]
    pub id: Option<u64>,
    /// Device type slug.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub slug: Text<'a>,
    /// Release commit.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub commit: Text<'a>,
}

/// A device tag from `$expand=device_tag($select=tag_key,value)`.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceTag<'a> {
    /// Tag key, e.g. `location`.
    #[serde(borrow)]
    pub tag_key: Cow<'a, str>,
    /// Tag value (free text).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub value: Text<'a>,
}

/// Device fields every device-listing module selects: the fields of [`Device`] (kept next to
/// it, so a new device field is one change here).
pub const DEVICE_FIELDS: &[&str] = &[
    "id",
    "uuid",
    "device_name",
    "belongs_to__application",
    "is_online",
    "api_heartbeat_state",
    "overall_status",
    "overall_progress",
    "os_version",
    "os_variant",
    "supervisor_version",
    "cpu_usage",
    "cpu_temp",
    "memory_usage",
    "memory_total",
    "storage_usage",
    "storage_total",
    "is_undervolted",
    "is_connected_to_vpn",
    "last_connectivity_event",
    "should_be_running__release",
    "update_status",
    "last_update_status_event",
    "is_pinned_on__release",
    "changed_api_heartbeat_state_on__date",
    "provisioning_state",
    "provisioning_progress",
];

/// Device fields a module with `locations: true` selects too: balenaCloud has them, openBalena
/// does not (it answers 500 to a `$select` of them).
pub const LOCATION_FIELDS: &[&str] = &[
    "latitude",
    "longitude",
    "custom_latitude",
    "custom_longitude",
];

/// Device fields a summary module (no per-device series) needs.
pub const SUMMARY_DEVICE_FIELDS: &[&str] = &[
    "id",
    "belongs_to__application",
    "is_online",
    "api_heartbeat_state",
    "overall_status",
    "is_undervolted",
    "should_be_running__release",
    "update_status",
    "is_pinned_on__release",
    "os_version",
    "os_variant",
    "supervisor_version",
    "provisioning_state",
    "provisioning_progress",
];

/// One row of the image-install listing (`image_install`, [`super::INSTALL_FIELDS`]).
#[allow(non_snake_case)]
#[derive(Debug, Clone, Deserialize, Default)]
pub struct InstallRow<'a> {
    /// Row id (paging order).
    #[serde(default)]
    pub id: u64,
    /// The device it is installed on.
    #[serde(default)]
    pub device: Option<NavId>,
    /// The image installed: a build of one service.
    #[serde(default)]
    pub installs__image: Option<NavId>,
    /// Container status as the supervisor reports it (`Running`, `exited`, `Downloading`, ...).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub status: Text<'a>,
}

impl Keyed for InstallRow<'_> {
    fn id(&self) -> u64 {
        self.id
    }
}

/// An image with its service's name:
/// `$select=id&$expand=is_a_build_of__service($select=service_name)`.
#[allow(non_snake_case)]
#[derive(Debug, Clone, Deserialize)]
pub struct ImageRow {
    /// Row id (what installs point to).
    pub id: u64,
    /// The service the image is a build of.
    #[serde(default)]
    pub is_a_build_of__service: Option<Vec<ServiceName>>,
}

/// `is_a_build_of__service($select=service_name)`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ServiceName {
    /// The service's name in the release's compose file.
    #[serde(default)]
    pub service_name: Option<String>,
}

impl ImageRow {
    /// The service's name, if the API said.
    pub fn service_name(&self) -> Option<&str> {
        first(&self.is_a_build_of__service).and_then(|s| s.service_name.as_deref())
    }
}

/// A device row, with exactly the fields [`DEVICE_FIELDS`] selects. Strings
/// borrow from the response body: a page of devices is decoded one row at a time without
/// copying it.
#[derive(Debug, Clone, Deserialize, Default)]
#[allow(non_snake_case)]
pub struct Device<'a> {
    /// Row id (paging order).
    #[serde(default)]
    pub id: u64,
    /// Device UUID (32 or 62 hex chars).
    #[serde(default, borrow)]
    pub uuid: Cow<'a, str>,
    /// Display name; may be "" on legacy devices.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub device_name: Text<'a>,
    /// Fleet the device belongs to (org and `all` targets map it to a slug).
    #[serde(default)]
    pub belongs_to__application: Option<NavId>,
    /// Legacy online flag, kept equal to `is_connected_to_vpn`.
    #[serde(default)]
    pub is_online: Option<bool>,
    /// `online` / `offline` / `timeout` / `unknown`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub api_heartbeat_state: Text<'a>,
    /// Computed status (only when selected).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub overall_status: Text<'a>,
    /// Computed progress in percent, null when nothing is in progress.
    #[serde(default)]
    pub overall_progress: Option<f64>,
    /// balenaOS version string.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub os_version: Text<'a>,
    /// `prod` / `dev`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub os_variant: Text<'a>,
    /// Supervisor version.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub supervisor_version: Text<'a>,
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
    /// The device's VPN connection to balena is up.
    #[serde(default)]
    pub is_connected_to_vpn: Option<bool>,
    /// Last change of `is_online`, ISO-8601.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub last_connectivity_event: Text<'a>,
    /// Computed: the pin, else the fleet's target release.
    #[serde(default)]
    pub should_be_running__release: Option<NavId>,
    /// `$expand=is_of__device_type($select=slug)`: its one row.
    #[serde(default, borrow, deserialize_with = "first_row")]
    pub is_of__device_type: Option<NavRow<'a>>,
    /// `$expand=is_running__release($select=id,commit)`: its one row.
    #[serde(default, borrow, deserialize_with = "first_row")]
    pub is_running__release: Option<NavRow<'a>>,
    /// `$expand=device_tag($select=tag_key,value)`, only when the module asks for tags.
    #[serde(default, borrow)]
    pub device_tag: Option<Vec<DeviceTag<'a>>>,
    /// `rejected`, `downloading`, `downloaded`, `applying changes`, `aborted`, `done`; null
    /// before supervisor 16.7.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub update_status: Text<'a>,
    /// When `update_status` last changed, ISO-8601.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub last_update_status_event: Text<'a>,
    /// The release the device is pinned to, if any.
    #[serde(default)]
    pub is_pinned_on__release: Option<NavId>,
    /// When `api_heartbeat_state` last changed, ISO-8601.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub changed_api_heartbeat_state_on__date: Text<'a>,
    /// What the device last said it is doing beyond its application: `Post-Provisioning`, or
    /// the host OS updater's `Running OS update`, `OS update failed` (balenahup).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub provisioning_state: Text<'a>,
    /// Progress of that, in percent (null when nothing is reported).
    #[serde(default)]
    pub provisioning_progress: Option<f64>,
    /// balenaCloud's location from the device's IP, degrees (a string).
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub latitude: Text<'a>,
    /// See `latitude`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub longitude: Text<'a>,
    /// A location a user set, degrees (a string): wins over the IP's.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub custom_latitude: Text<'a>,
    /// See `custom_latitude`.
    #[serde(default, borrow, deserialize_with = "borrowed")]
    pub custom_longitude: Text<'a>,
}

fn text<'s>(t: &'s Text<'_>) -> &'s str {
    t.as_deref().unwrap_or("")
}

impl Device<'_> {
    /// Device type slug, or "".
    pub fn device_type(&self) -> &str {
        self.is_of__device_type
            .as_ref()
            .map(|o| text(&o.slug))
            .unwrap_or("")
    }

    /// Commit of the running release, or "".
    pub fn release(&self) -> &str {
        self.is_running__release
            .as_ref()
            .map(|r| text(&r.commit))
            .unwrap_or("")
    }

    /// Display name, or "".
    pub fn name(&self) -> &str {
        text(&self.device_name)
    }

    /// A string field as `&str` ("" when null).
    pub fn str_of<'s>(field: &'s Text<'_>) -> &'s str {
        text(field)
    }

    /// Value of a tag, or "".
    pub fn tag(&self, key: &str) -> &str {
        self.device_tag
            .iter()
            .flatten()
            .find(|t| t.tag_key == key)
            .map(|t| text(&t.value))
            .unwrap_or("")
    }

    /// Whether the running release is the one the device should run; `None` when unknown.
    pub fn on_target_release(&self) -> Option<bool> {
        let target = self.should_be_running__release?;
        let running = self.is_running__release.as_ref().and_then(|r| r.id);
        Some(running == Some(target.id))
    }

    /// Where the device is, as (latitude, longitude) in degrees: the custom location when a
    /// user set one, else the one balenaCloud found from the device's IP; `None` when neither
    /// is a pair of numbers in range.
    pub fn location(&self) -> Option<(f64, f64)> {
        let pair = |lat: &Text<'_>, lon: &Text<'_>| {
            let lat: f64 = lat.as_deref()?.trim().parse().ok()?;
            let lon: f64 = lon.as_deref()?.trim().parse().ok()?;
            ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
        };
        pair(&self.custom_latitude, &self.custom_longitude)
            .or_else(|| pair(&self.latitude, &self.longitude))
    }
}

impl Keyed for Device<'_> {
    fn id(&self) -> u64 {
        self.id
    }

    /// Per-device series are keyed by the uuid.
    fn unique(&self) -> Option<&str> {
        Some(&self.uuid)
    }
}

/// Decodes one whole device row (strings borrowed from `row` where they need no unescaping).
/// The text is checked to be UTF-8 once, after which serde reads it as a `&str` and skips the
/// check it would make string by string from bytes (`from_slice`): a fifth of the decode of a
/// 10,000-device page (`benches/pipeline.rs`, docs/performance.md).
pub fn decode_device(row: &[u8]) -> Result<Device<'_>, StreamError> {
    serde_json::from_str(stream::utf8(row)?)
        .map_err(|e| StreamError::Invalid(super::error::unquoted(&e)))
}

/// Decodes a whole `{"d": [...]}` body one device at a time, handing each to `on_row` without
/// collecting them (the same decoder the probe runs on a page).
pub fn for_each_device(
    body: &[u8],
    mut on_row: impl FnMut(Device<'_>),
) -> Result<usize, StreamError> {
    let mut rows = RowStream::new();
    rows.feed(body, &mut |text| {
        let Some((device, row)) = stream::one_row::<Device<'_>>(text)? else {
            return Ok(None);
        };
        on_row(device);
        Ok(Some(row.len()))
    })?;
    rows.finish()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_decode_one_at_a_time_borrowing_plain_strings() {
        let body = br#"{"__count": 2, "d": [
            {"id": 1, "uuid": "aa", "device_name": "plain", "is_running__release": [{"id": 9, "commit": "c0ffee"}], "should_be_running__release": {"__id": 9}},
            {"id": 2, "uuid": "bb", "device_name": "with \"quotes\"\n", "overall_status": null, "device_tag": [{"tag_key": "k", "value": "v"}]}
        ]}"#;
        let mut seen = Vec::new();
        let n = for_each_device(body, |d| {
            seen.push((
                d.id,
                d.name().to_string(),
                matches!(d.device_name, Some(Cow::Borrowed(_))),
                d.on_target_release(),
                d.tag("k").to_string(),
            ))
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(seen[0], (1, "plain".into(), true, Some(true), "".into()));
        assert_eq!(
            seen[1],
            (2, "with \"quotes\"\n".into(), false, None, "v".into())
        );
        assert!(for_each_device(br#"{"x": []}"#, |_| {}).is_err(), "no d");
        assert!(
            for_each_device(br#"{"d": [{"id": 1}"#, |_| {}).is_err(),
            "truncated"
        );
        assert!(
            for_each_device(br#"{"d": []} trailing"#, |_| {}).is_err(),
            "trailing garbage"
        );
        let bad = for_each_device(b"{\"d\": [{\"id\": 1, \"uuid\": \"a\xffb\"}]}", |_| {});
        assert_eq!(
            bad.unwrap_err().to_string(),
            "row 1: invalid UTF-8 at byte 20 of the row",
            "refused, and nothing of the row quoted"
        );
    }
}
