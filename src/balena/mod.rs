//! The balena API as the exporter uses it: which requests a probe makes and what they select.
//!
//! A fleet probe is a fleet-row lookup by slug and one device listing (paged past
//! `api.page_size`); an organization probe is an org lookup, its fleets, and the devices of all
//! of them in one listing; an `all` probe lists the fleets the token can access and their
//! devices. An empty lookup is checked with `/actor/v1/whoami`, because the API answers an
//! unknown token as a guest with an empty list instead of a 401. Services are a listing of
//! their own ([`installs`], then [`service_names`] for the images they point to), read less
//! often than devices (`probe::services`).

mod client;
mod error;
mod exchange;
pub mod host;
pub mod keyset;
pub mod limit;
pub mod model;
pub mod odata;
pub mod stream;
pub mod transport;

pub use client::{parse_retry_after, BalenaClient, CallRecord, Session};
pub use error::{BalenaError, GaveUp};
pub use limit::AuthLimits;

use model::{Actor, Device, Envelope, Fleet};
pub use model::{DEVICE_FIELDS, SUMMARY_DEVICE_FIELDS};
use odata::{quote_literal, Query};

use crate::config::ModuleConfig;

/// Which devices a listing covers.
#[derive(Debug, Clone)]
pub enum DeviceScope {
    /// `belongs_to__application eq ID`
    Fleet(u64),
    /// Every fleet of an organization handle (lowercased when sent, as balena's handles are).
    Org(String),
    /// Every fleet the token can access.
    Accessible,
}

impl DeviceScope {
    fn filter(&self) -> String {
        match self {
            Self::Fleet(id) => format!("belongs_to__application eq {id}"),
            Self::Org(handle) => format!(
                "belongs_to__application/any(a:a/organization/any(o:o/handle eq {}))",
                quote_literal(&handle.to_lowercase())
            ),
            Self::Accessible => {
                "belongs_to__application/any(a:a/is_directly_accessible_by__user/any(dau:1 eq 1))"
                    .into()
            }
        }
    }

    /// The same scope as a filter of fleets (`application` rows).
    fn fleet_filter(&self) -> String {
        match self {
            Self::Fleet(id) => format!("id eq {id}"),
            Self::Org(handle) => format!(
                "organization/any(o:o/handle eq {})",
                quote_literal(&handle.to_lowercase())
            ),
            Self::Accessible => "is_directly_accessible_by__user/any(dau:1 eq 1)".into(),
        }
    }
}

const FLEET_SELECT: &str = "id,app_name,slug";
const FLEET_EXPAND: &str = "organization($select=handle),is_for__device_type($select=slug),should_be_running__release($select=commit,status,semver,created_at),owns__release($select=commit,status,semver,created_at;$orderby=created_at desc;$top=1)";

fn fleet_expand(module: &ModuleConfig) -> String {
    if module.counts_only {
        format!("{FLEET_EXPAND},owns__device/$count($filter=is_online eq true)")
    } else {
        FLEET_EXPAND.to_string()
    }
}

/// Checks a token: `Ok(actor)` when valid, `Unauthorized` on 401.
pub async fn whoami(s: &Session<'_>) -> Result<Actor, BalenaError> {
    s.get_json("whoami", "/actor/v1/whoami", "").await
}

/// Tells "not found" from "bad token" after an empty lookup.
async fn not_found(s: &Session<'_>, kind: &'static str, name: &str) -> BalenaError {
    s.note(format_args!(
        "{kind} {name:?} not in the answer: checking the token with whoami"
    ));
    match whoami(s).await {
        Ok(actor) => {
            s.note(format_args!(
                "the token is valid ({} {}): the {kind} does not exist or this token cannot see it",
                actor.actor_type,
                actor.username.as_deref().unwrap_or("")
            ));
            BalenaError::NotFound {
                kind,
                name: name.to_string(),
            }
        }
        Err(e) => {
            s.note(format_args!(
                "whoami failed: {e}; an unknown token reads as a guest"
            ));
            e
        }
    }
}

/// The fleet row of `slug` (lowercased), with org handle, device type and target release.
pub async fn fleet_by_slug(
    s: &Session<'_>,
    slug: &str,
    module: &ModuleConfig,
) -> Result<Fleet, BalenaError> {
    let q = Query::new()
        .option(
            "$filter",
            format!("slug eq {}", quote_literal(&slug.to_lowercase())),
        )
        .option("$select", FLEET_SELECT)
        .option("$expand", fleet_expand(module));
    let rows = fleet_rows(s, &q).await?;
    match rows.d.len() {
        1 => Ok(rows.d.into_iter().next().expect("one row")),
        0 => Err(not_found(s, "fleet", slug).await),
        n => Err(BalenaError::Decode(format!(
            "{n} fleets match slug {slug:?}"
        ))),
    }
}

/// The fleet rows a query answers, each string that becomes a label value within the string
/// cap (as in device rows).
async fn fleet_rows(s: &Session<'_>, q: &Query) -> Result<Envelope<Fleet>, BalenaError> {
    let rows: Envelope<Fleet> = s
        .get_json("application", "/v7/application", &q.to_wire())
        .await?;
    if let Some(at) = rows
        .d
        .iter()
        .position(|f| f.longest_label_value() > stream::MAX_STRING_BYTES)
    {
        return Err(BalenaError::Oversized(format!(
            "fleet row {}: a string longer than {} bytes (the cap of a string, and so of a label value)",
            at + 1,
            stream::MAX_STRING_BYTES
        )));
    }
    Ok(rows)
}

/// Which fleets an organization or `all` target covers.
#[derive(Debug, Clone)]
pub enum FleetSet<'a> {
    /// Every fleet of the organization with this handle.
    Org(&'a str),
    /// Every fleet the token can access.
    Accessible,
}

/// The fleets of a set, ordered by slug, in one request. Organization handles, like fleet
/// slugs, are lowercase on balena: a handle is lowercased before it is sent. An empty answer is checked (org
/// lookup, then whoami) so that an empty or unknown organization and a rejected token are told
/// apart; only the empty case costs the extra requests.
pub async fn fleets(
    s: &Session<'_>,
    set: &FleetSet<'_>,
    module: &ModuleConfig,
) -> Result<Vec<Fleet>, BalenaError> {
    let filter = match set {
        FleetSet::Org(handle) => format!(
            "organization/any(o:o/handle eq {})",
            quote_literal(&handle.to_lowercase())
        ),
        FleetSet::Accessible => "is_directly_accessible_by__user/any(dau:1 eq 1)".to_string(),
    };
    let q = Query::new()
        .option("$filter", filter)
        .option("$select", FLEET_SELECT)
        .option("$expand", fleet_expand(module))
        .option("$orderby", "slug asc");
    let rows = fleet_rows(s, &q).await?;
    if rows.d.is_empty() {
        match set {
            FleetSet::Org(handle) => {
                let path = format!(
                    "/v7/organization(handle={})",
                    quote_literal(&handle.to_lowercase())
                );
                let orgs: Envelope<model::NavIdRow> =
                    s.get_json("organization", &path, "$select=id").await?;
                if orgs.d.is_empty() {
                    return Err(not_found(s, "organization", handle).await);
                }
            }
            FleetSet::Accessible => {
                whoami(s).await?;
            }
        }
    }
    Ok(rows.d)
}

/// The `$select`/`$expand` a module needs for device rows.
pub fn device_query(module: &ModuleConfig) -> (String, String) {
    let mut fields = if module.devices {
        DEVICE_FIELDS.to_vec()
    } else {
        SUMMARY_DEVICE_FIELDS.to_vec()
    };
    if module.locations && module.devices {
        fields.extend(model::LOCATION_FIELDS);
    }
    let mut expand = vec!["is_running__release($select=id,commit)".to_string()];
    if module.devices {
        expand.push("is_of__device_type($select=slug)".into());
        if !module.device_tags.is_empty() {
            let keys: Vec<String> = module
                .device_tags
                .iter()
                .map(|k| quote_literal(k))
                .collect();
            expand.push(format!(
                "device_tag($select=tag_key,value;$filter=tag_key in ({}))",
                keys.join(",")
            ));
        }
    }
    (fields.join(","), expand.join(","))
}

/// Lists devices in pages of at most `api.page_size`, by keyset ([`keyset`]): each device is
/// handed to `on_device` as soon as its row has arrived. Uuids are checked to be unique when
/// the module selects them (per-device series are keyed by them).
pub async fn devices(
    s: &Session<'_>,
    scope: &DeviceScope,
    module: &ModuleConfig,
    mut on_device: impl FnMut(Device<'_>),
) -> Result<usize, BalenaError> {
    let (select, expand) = device_query(module);
    let listing = keyset::Listing {
        endpoint: "device",
        path: "/v7/device",
        filter: scope.filter(),
        select: &select,
        expand: Some(&expand),
        rows: "device rows",
        max_rows: None,
    };
    let listed = keyset::list(s, &listing, |text, gate| {
        gate.take(text, module.devices, &mut on_device)
    })
    .await;
    match listed {
        // openBalena's model has no location fields: it answers a `$select` of them with 500
        // (and a stricter server with 400). Say which setting asked for them.
        Err(BalenaError::Status { status }) if module.locations && matches!(status, 400 | 500) => {
            Err(BalenaError::Unsupported(format!(
                "the API refused the device listing with the location fields (HTTP {status}): `locations: true` in this module needs balenaCloud (openBalena has no device locations); set locations: false"
            )))
        }
        other => other,
    }
}

/// The `$select` of the image-install listing: the device, the image (a build of one
/// service) and the container status (every install not deleted is current: when each was
/// made does not matter).
pub const INSTALL_FIELDS: &str = "id,device,installs__image,status";

/// Lists the image installs of the devices in `scope` that are not `deleted` (as balena-sdk's
/// `getCurrentServiceDetailsPineExpand` filters them), by keyset, each handed to `on_install`
/// as it arrives. The installs are filtered by the device's fleet (`device/any(...)`), not by
/// the service's: a device moved from another fleet keeps its installs until it updates.
/// At most `max_rows` rows are taken ([`keyset::Listing::max_rows`]).
pub async fn installs(
    s: &Session<'_>,
    scope: &DeviceScope,
    max_rows: (usize, &'static str),
    mut on_install: impl FnMut(model::InstallRow<'_>),
) -> Result<usize, BalenaError> {
    let listing = keyset::Listing {
        endpoint: "image_install",
        path: "/v7/image_install",
        filter: format!("device/any(d:d/{}) and status ne 'deleted'", scope.filter()),
        select: INSTALL_FIELDS,
        expand: None,
        rows: "image install rows",
        max_rows: Some(max_rows),
    };
    keyset::list(s, &listing, |text, gate| {
        gate.take(text, false, &mut on_install)
    })
    .await
}

/// Image ids per request of [`service_names`]: ~12 bytes each in the URL, well under the
/// URL length proxies accept.
const IMAGES_PER_REQUEST: usize = 100;

/// The service name of each image in `images` (the images the installs point to): a few
/// rows, as many as the releases in use times their services.
pub async fn service_names(
    s: &Session<'_>,
    images: &[u64],
) -> Result<std::collections::HashMap<u64, String>, BalenaError> {
    let mut out = std::collections::HashMap::with_capacity(images.len());
    for chunk in images.chunks(IMAGES_PER_REQUEST) {
        let ids: Vec<String> = chunk.iter().map(u64::to_string).collect();
        let q = Query::new()
            .option("$select", "id")
            .option("$expand", "is_a_build_of__service($select=service_name)")
            .option("$filter", format!("id in ({})", ids.join(",")));
        let rows: Envelope<model::ImageRow> =
            s.get_json("image", "/v7/image", &q.to_wire()).await?;
        for image in rows.d {
            if let Some(name) = image.service_name() {
                if name.len() > stream::MAX_STRING_BYTES {
                    return Err(BalenaError::Oversized(format!(
                        "the service name of image {}: longer than {} bytes (the cap of a label value)",
                        image.id,
                        stream::MAX_STRING_BYTES
                    )));
                }
                out.insert(image.id, name.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_are_filtered_by_the_devices_fleet() {
        let f = format!(
            "device/any(d:d/{})",
            DeviceScope::Org("Acme".into()).filter()
        );
        assert_eq!(
            f,
            "device/any(d:d/belongs_to__application/any(a:a/organization/any(o:o/handle eq 'acme')))"
        );
    }
}
