//! The balena API as the exporter uses it: which requests a probe makes and what they select.
//!
//! A fleet probe is a fleet-row lookup by slug and one device listing (paged past
//! `api.page_size`); an organization probe is an org lookup, its fleets, and the devices of all
//! of them in one listing; an `all` probe lists the fleets the token can access and their
//! devices. An empty lookup is checked with `/actor/v1/whoami`, because the API answers an
//! unknown token as a guest with an empty list instead of a 401.

mod client;
mod error;
mod exchange;
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
}

const FLEET_SELECT: &str = "id,app_name,slug";
const FLEET_EXPAND: &str = "organization($select=handle),is_for__device_type($select=slug),should_be_running__release($select=commit,semver,created_at),owns__release($select=commit,status,semver,created_at;$orderby=created_at desc;$top=1)";

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
    let fields = if module.devices {
        DEVICE_FIELDS
    } else {
        SUMMARY_DEVICE_FIELDS
    };
    let mut expand = vec!["is_running__release($select=id,commit)".to_string()];
    if module.services {
        expand.push(model::SERVICES_EXPAND.to_string());
    }
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

/// Lists devices in pages of at most `api.page_size`, by keyset: `$filter=(<scope>) and id gt
/// <last id>&$orderby=id asc&$top=N`, until a page comes back empty. Each device is handed to
/// `on_device` as soon as its row has arrived: no page is ever held whole.
///
/// Rows must come in ascending id order, as asked: a row repeated (a proxy or a server sending
/// rows twice) is counted once, but a new row out of order, or a uuid on two rows, fails the
/// probe ([`BalenaError::Inconsistent`]): keyset paging over rows out of order skips rows, and
/// two rows of one uuid write duplicate series that Prometheus refuses for the whole scrape.
///
/// A short page does not end the listing: a server that caps `$top` below `page_size` answers
/// short pages that are not the last, so only an empty page is the end (one small request,
/// ~10 ms on the real API whatever the fleet size). Keyset pages cost the same however deep they
/// go (`$skip` costs more per row skipped), and devices created or deleted while the listing
/// runs shift nothing: no device that exists throughout is missed or counted twice.
pub async fn devices(
    s: &Session<'_>,
    scope: &DeviceScope,
    module: &ModuleConfig,
    mut on_device: impl FnMut(Device<'_>),
) -> Result<usize, BalenaError> {
    let (select, expand) = device_query(module);
    let page = s.api().page_size as usize;
    let mut total = 0;
    let mut after: Option<u64> = None;
    let mut seen = Seen::default();
    loop {
        let filter = match after {
            None => scope.filter(),
            Some(id) => format!("({}) and id gt {id}", scope.filter()),
        };
        let q = Query::new()
            .option("$select", select.clone())
            .option("$expand", expand.clone())
            .option("$filter", filter)
            .option("$orderby", "id asc")
            .option("$top", page.to_string());
        let mut rows = stream::RowStream::new();
        let mut last = after;
        let mut page_last = None;
        let mut repeated = 0usize;
        let mut refused = None;
        s.get_streamed("device", "/v7/device", &q.to_wire(), &mut |chunk| {
            rows.feed(chunk, &mut |row| {
                let device = model::decode_device(row)?;
                match seen.take(&device, after, page_last, module.devices) {
                    Ok(Take::Repeat) => repeated += 1,
                    Ok(Take::New) => {
                        page_last = Some(device.id);
                        last = last.max(Some(device.id));
                        on_device(device);
                    }
                    Err(why) => {
                        refused = Some(BalenaError::Inconsistent(why));
                        return Err(stream::StreamError::Invalid("refused".into()));
                    }
                }
                Ok(())
            })
            .map_err(|e| refused.take().unwrap_or_else(|| stream_error(e)))
        })
        .await?;
        let n = rows.finish().map_err(stream_error)?;
        if repeated > 0 {
            s.note(format_args!("{repeated} repeated device rows ignored"));
        }
        total += n - repeated;
        if n == 0 || last == after {
            return Ok(total);
        }
        after = last;
        if n < page {
            s.note(format_args!(
                "a page of {n} rows (asked {page}): asking for rows after id {} to be sure it was the last",
                after.unwrap_or(0)
            ));
        }
    }
}

fn stream_error(e: stream::StreamError) -> BalenaError {
    match e {
        stream::StreamError::Invalid(e) => BalenaError::Decode(e),
        stream::StreamError::Oversized(e) => BalenaError::Oversized(e),
    }
}

/// What a device listing has taken so far: every row id, and each uuid's row (by a hash of
/// it: ~24 bytes a device).
#[derive(Default)]
struct Seen {
    ids: std::collections::HashSet<u64>,
    uuids: std::collections::HashMap<u64, u64>,
    hasher: std::collections::hash_map::RandomState,
}

/// A row of a listing that can be trusted.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    /// A row not seen before: count it.
    New,
    /// The same row again: counted once already.
    Repeat,
}

impl Seen {
    /// Whether to take `device`, the row after `page_last` on a page asked for ids after
    /// `after`; uuids are checked when the module selects them. Else why not (ids only: a
    /// uuid is the API's text and is never quoted).
    fn take(
        &mut self,
        device: &Device<'_>,
        after: Option<u64>,
        page_last: Option<u64>,
        with_uuid: bool,
    ) -> Result<Take, String> {
        use std::hash::BuildHasher as _;
        let id = device.id;
        if self.ids.contains(&id) {
            return Ok(Take::Repeat);
        }
        if let Some(before) = page_last.filter(|l| id < *l).or(after.filter(|a| id <= *a)) {
            return Err(format!(
                "rows out of id order (id {id} after id {before}); paging by id would skip rows"
            ));
        }
        if with_uuid {
            if device.uuid.is_empty() {
                return Err(format!("the row of id {id} has no uuid"));
            }
            let key = self.hasher.hash_one(device.uuid.as_ref());
            if let Some(other) = self.uuids.insert(key, id) {
                return Err(format!(
                    "the rows of ids {other} and {id} have the same uuid"
                ));
            }
        }
        self.ids.insert(id);
        Ok(Take::New)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: u64, uuid: &str) -> Device<'_> {
        Device {
            id,
            uuid: uuid.into(),
            ..Device::default()
        }
    }

    #[test]
    fn a_listing_takes_repeats_once_and_refuses_what_it_cannot_trust() {
        let mut seen = Seen::default();
        assert_eq!(seen.take(&device(1, "a"), None, None, true), Ok(Take::New));
        assert_eq!(
            seen.take(&device(2, "b"), None, Some(1), true),
            Ok(Take::New)
        );
        assert_eq!(
            seen.take(&device(2, "b"), None, Some(2), true),
            Ok(Take::Repeat)
        );
        assert_eq!(
            seen.take(&device(1, "a"), Some(2), None, true),
            Ok(Take::Repeat)
        );
        let reversed = seen.take(&device(0, "z"), None, Some(2), true).unwrap_err();
        assert!(
            reversed.contains("out of id order (id 0 after id 2)"),
            "{reversed}"
        );
        let ignored_filter = seen.take(&device(0, "z"), Some(2), None, true).unwrap_err();
        assert!(
            ignored_filter.contains("out of id order"),
            "{ignored_filter}"
        );
        let twice = seen.take(&device(3, "a"), Some(2), None, true).unwrap_err();
        assert_eq!(twice, "the rows of ids 1 and 3 have the same uuid");
        assert!(!twice.contains("\"a\""), "never quotes the uuid");
        assert_eq!(
            seen.take(&device(4, ""), Some(2), None, false),
            Ok(Take::New)
        );
        assert!(seen.take(&device(5, ""), Some(4), None, true).is_err());
    }
}
