//! The balena data model as the simulator stores it: the tables, each resource's stored and
//! computed fields, and the navigations between resources (forward: a field that holds
//! `{"__id"}`; reverse: the rows of another resource that point back).

/// Which stored fields each resource has (navigation fields hold `{"__id"}` or null).
const DEVICE_FIELDS: &[&str] = &[
    "id",
    "uuid",
    "device_name",
    "note",
    "belongs_to__application",
    "is_of__device_type",
    "is_online",
    "is_connected_to_vpn",
    "last_connectivity_event",
    "last_vpn_event",
    "last_update_status_event",
    "api_heartbeat_state",
    "changed_api_heartbeat_state_on__date",
    "status",
    "update_status",
    "provisioning_state",
    "provisioning_progress",
    "download_progress",
    "os_version",
    "os_variant",
    "supervisor_version",
    "ip_address",
    "mac_address",
    "public_address",
    "cpu_usage",
    "cpu_temp",
    "memory_usage",
    "memory_total",
    "storage_block_device",
    "storage_usage",
    "storage_total",
    "is_undervolted",
    "is_web_accessible",
    "is_active",
    "is_running__release",
    "is_pinned_on__release",
    "created_at",
    "modified_at",
    "latitude",
    "longitude",
    "custom_latitude",
    "custom_longitude",
    "location",
    "should_be_operated_by__release",
    "should_be_managed_by__release",
];
/// Device fields only balenaCloud has: openBalena's model lacks them, and the real API answers
/// a query that names one with 500 and an empty body.
pub const CLOUD_ONLY_DEVICE_FIELDS: &[&str] = &[
    "latitude",
    "longitude",
    "custom_latitude",
    "custom_longitude",
    "location",
];
const APPLICATION_FIELDS: &[&str] = &[
    "id",
    "app_name",
    "slug",
    "uuid",
    "organization",
    "is_for__device_type",
    "should_be_running__release",
    "should_track_latest_release",
    "is_of__class",
    "is_host",
    "is_archived",
    "is_public",
    "created_at",
];
const ORGANIZATION_FIELDS: &[&str] = &[
    "id",
    "name",
    "handle",
    "company_name",
    "is_frozen",
    "created_at",
];
const RELEASE_FIELDS: &[&str] = &[
    "id",
    "commit",
    "raw_version",
    "semver",
    "status",
    "belongs_to__application",
    "created_at",
    "semver_major",
    "semver_minor",
    "semver_patch",
    "semver_prerelease",
    "semver_build",
    "revision",
    "variant",
    "phase",
    "known_issue_list",
    "is_final",
    "is_invalidated",
];
const RELEASE_TAG_FIELDS: &[&str] = &["id", "release", "tag_key", "value"];
const APPLICATION_CONFIG_VARIABLE_FIELDS: &[&str] = &["id", "application", "name", "value"];
const DEVICE_CONFIG_VARIABLE_FIELDS: &[&str] = &["id", "device", "name", "value"];
const SERVICE_FIELDS: &[&str] = &["id", "application", "service_name", "created_at"];
const IMAGE_FIELDS: &[&str] = &[
    "id",
    "is_a_build_of__service",
    "is_stored_at__image_location",
    "status",
    "created_at",
];
const IMAGE_INSTALL_FIELDS: &[&str] = &[
    "id",
    "device",
    "installs__image",
    "is_provided_by__release",
    "status",
    "download_progress",
    "install_date",
];
const DEVICE_TYPE_FIELDS: &[&str] = &["id", "slug", "name"];
const DEVICE_TAG_FIELDS: &[&str] = &["id", "device", "tag_key", "value"];

/// Computed fields: returned only when selected.
pub(super) fn computed(resource: &str) -> &'static [&'static str] {
    match resource {
        "device" => &[
            "overall_status",
            "overall_progress",
            "should_be_running__release",
        ],
        _ => &[],
    }
}

/// Every table the simulator stores, by its resource name: the one list the server's routes
/// and the dump loader read (through [`table`]).
const TABLES: &[&str] = &[
    "organization",
    "application",
    "device",
    "release",
    "device_type",
    "device_tag",
    "service",
    "image",
    "image_install",
    "release_tag",
    "application_config_variable",
    "device_config_variable",
];

/// The table of a resource name (`'static`, as rows are keyed), if the simulator stores it.
pub fn table(name: &str) -> Option<&'static str> {
    TABLES.iter().copied().find(|t| *t == name)
}

/// Stored fields of a resource, or None for an unknown resource.
pub(super) fn stored(resource: &str) -> Option<&'static [&'static str]> {
    Some(match resource {
        "device" => DEVICE_FIELDS,
        "application" => APPLICATION_FIELDS,
        "organization" => ORGANIZATION_FIELDS,
        "release" => RELEASE_FIELDS,
        "device_type" => DEVICE_TYPE_FIELDS,
        "device_tag" => DEVICE_TAG_FIELDS,
        "service" => SERVICE_FIELDS,
        "image" => IMAGE_FIELDS,
        "image_install" => IMAGE_INSTALL_FIELDS,
        "release_tag" => RELEASE_TAG_FIELDS,
        "application_config_variable" => APPLICATION_CONFIG_VARIABLE_FIELDS,
        "device_config_variable" => DEVICE_CONFIG_VARIABLE_FIELDS,
        _ => return None,
    })
}

/// The resource a forward navigation points to.
pub(super) fn forward(resource: &str, nav: &str) -> Option<&'static str> {
    Some(match (resource, nav) {
        ("device", "belongs_to__application") => "application",
        ("device", "is_of__device_type") => "device_type",
        (
            "device",
            "is_running__release"
            | "is_pinned_on__release"
            | "should_be_running__release"
            | "should_be_operated_by__release"
            | "should_be_managed_by__release",
        ) => "release",
        ("release_tag", "release") => "release",
        ("application_config_variable", "application") => "application",
        ("device_config_variable", "device") => "device",
        ("application", "organization") => "organization",
        ("application", "is_for__device_type") => "device_type",
        ("application", "should_be_running__release") => "release",
        ("release", "belongs_to__application") => "application",
        ("device_tag", "device") => "device",
        ("service", "application") => "application",
        ("image", "is_a_build_of__service") => "service",
        ("image_install", "device") => "device",
        ("image_install", "installs__image") => "image",
        ("image_install", "is_provided_by__release") => "release",
        _ => return None,
    })
}

/// Reverse navigations: (resource, nav) → (target resource, its field pointing back).
pub(super) fn reverse(resource: &str, nav: &str) -> Option<(&'static str, &'static str)> {
    Some(match (resource, nav) {
        ("application", "owns__device") => ("device", "belongs_to__application"),
        ("application", "owns__release") => ("release", "belongs_to__application"),
        ("organization", "has__application") => ("application", "organization"),
        ("device", "device_tag") => ("device_tag", "device"),
        ("device", "image_install") => ("image_install", "device"),
        ("application", "service") => ("service", "application"),
        ("release", "release_tag") => ("release_tag", "release"),
        ("release", "should_operate__device") => ("device", "should_be_operated_by__release"),
        ("release", "should_manage__device") => ("device", "should_be_managed_by__release"),
        ("release", "is_running_on__device") => ("device", "is_running__release"),
        ("application", "application_config_variable") => {
            ("application_config_variable", "application")
        }
        ("device", "device_config_variable") => ("device_config_variable", "device"),
        _ => return None,
    })
}
