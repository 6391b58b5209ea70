//! The simulator's data: organizations, fleets, releases, devices and tags generated from a
//! seed, stored as JSON rows the way pinejs stores them, plus the rules the real API applies
//! when it reads them: who may see what (guest tokens), computed fields (`overall_status`,
//! `overall_progress`, `should_be_running__release`), navigation properties, `$filter`
//! evaluation, `$select`/`$expand` projection and ordering. The tables, their fields and
//! navigations are in `schema`; generation from a seed in `spec` and `host`; reading in `query`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use super::odata::{Expr, Options};
use serde_json::{Map, Value};

/// A JSON row.
pub type Row = Map<String, Value>;

mod devices;
mod host;
mod query;
mod schema;
mod spec;

use schema::{computed, forward, reverse, stored};
pub use schema::{table, CLOUD_ONLY_DEVICE_FIELDS};
pub use spec::{FleetSpec, OrgSpec, Scenario, UserSpec, WorldSpec, SERVICES};

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token, or one the API does not know: the built-in guest.
    Guest,
    /// A user (by row id) and the organizations it belongs to.
    User {
        /// User id.
        id: u64,
        /// Actor id (whoami `id`).
        actor: u64,
        /// Username.
        username: String,
        /// Organization ids.
        orgs: HashSet<u64>,
    },
}

/// Errors that the server turns into HTTP answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// 401, empty body.
    Unauthorized,
    /// 400 for a field or navigation that does not exist.
    BadField(String),
}

/// The generated data and the indexes the server reads it with.
#[derive(Debug, Clone, Default)]
pub struct World {
    tables: HashMap<&'static str, BTreeMap<u64, Row>>,
    /// token → user row id
    tokens: HashMap<String, u64>,
    /// user id → (username, org ids)
    users: HashMap<u64, (String, HashSet<u64>)>,
    /// fleet id → device ids (kept in id order)
    fleet_devices: HashMap<u64, Vec<u64>>,
    /// device id → tag ids
    device_tags: HashMap<u64, Vec<u64>>,
    /// device id → image install ids
    device_installs: HashMap<u64, Vec<u64>>,
    /// The model of openBalena, not balenaCloud: no device locations (a query naming one is
    /// refused as the real API refuses it). Worlds loaded from a real open-balena-api are.
    pub openbalena: bool,
    /// Reverse navigations without an index of their own, built on first use.
    reverse: ReverseIndex,
}

/// `(table, field) → (id it points to → ids of the rows pointing)`, for the reverse
/// navigations the fixed indexes above do not cover (`release/should_operate__device`,
/// `application/owns__release`, …). Without it a nested lambda scans a whole table per row
/// (the host read's release filter took over a second on the demo in a debug build, and the
/// simulator's two workers queued every other request behind it). Built on first use under a
/// read lock, dropped by every write ([`World::insert`], [`World::remove`], [`World::row_mut`]).
#[derive(Debug, Default)]
struct ReverseIndex(Mutex<HashMap<(&'static str, &'static str), Pointing>>);

/// Id pointed at → ids of the rows pointing at it.
type Pointing = HashMap<u64, Vec<u64>>;

impl Clone for ReverseIndex {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl ReverseIndex {
    fn clear(&mut self) {
        self.0.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl World {
    /// Inserts or replaces a row (keeps the fleet and tag indexes).
    pub fn insert(&mut self, table: &'static str, row: Value) {
        let Value::Object(row) = row else { return };
        let id = row["id"].as_u64().unwrap_or_default();
        match table {
            "device" => {
                if let Some(f) = nav_id(&row, "belongs_to__application") {
                    let list = self.fleet_devices.entry(f).or_default();
                    if let Err(pos) = list.binary_search(&id) {
                        list.insert(pos, id);
                    }
                }
            }
            "device_tag" => {
                if let Some(d) = nav_id(&row, "device") {
                    self.device_tags.entry(d).or_default().push(id);
                }
            }
            "image_install" => {
                if let Some(d) = nav_id(&row, "device") {
                    self.device_installs.entry(d).or_default().push(id);
                }
            }
            _ => {}
        }
        self.reverse.clear();
        self.tables.entry(table).or_default().insert(id, row);
    }

    /// A world from rows as the balena API returns them, and users with their tokens: how the
    /// conformance suite (tests/conformance) loads the data of a seeded open-balena-api, so
    /// that both servers can be asked the same questions about the same data.
    ///
    /// `{"tables": {"organization": [row, ...], "application": [...], "device": [...],
    /// "release": [...], "device_type": [...], "device_tag": [...]},
    ///  "users": [{"username": "...", "token": "...", "orgs": ["handle", ...]}]}`;
    /// navigation fields as `{"__id": N}`, as the API writes them.
    pub fn from_dump(dump: &Value) -> Result<Self, String> {
        let mut w = World {
            openbalena: true,
            ..World::default()
        };
        let tables = dump["tables"].as_object().ok_or("no \"tables\" object")?;
        for (name, rows) in tables {
            let table = table(name).ok_or_else(|| format!("unknown table {name:?}"))?;
            for row in rows.as_array().ok_or(format!("{name}: not an array"))? {
                if row["id"].as_u64().is_none() {
                    return Err(format!("{name}: a row without a numeric id"));
                }
                // Fields the real model lacks (e.g. `is_active`, `is_public`) read as null.
                let mut row = row.clone();
                if let Value::Object(fields) = &mut row {
                    for f in stored(table).unwrap_or_default() {
                        fields.entry(f.to_string()).or_insert(Value::Null);
                    }
                }
                w.insert(table, row);
            }
        }
        for user in dump["users"].as_array().into_iter().flatten() {
            let field = |k: &str| user[k].as_str().ok_or(format!("user without {k:?}"));
            let orgs: Vec<&str> = user["orgs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            w.add_user(field("username")?, field("token")?, &orgs);
        }
        Ok(w)
    }

    /// Rotates a user's API key: `old` stops working (it reads as a guest, as a revoked key
    /// does) and `new` belongs to the same user. Returns whether `old` was known.
    pub fn replace_token(&mut self, old: &str, new: &str) -> bool {
        match self.tokens.remove(old) {
            Some(uid) => {
                self.tokens.insert(new.to_string(), uid);
                true
            }
            None => false,
        }
    }

    /// Removes a row (a device also from the fleet index). Returns whether it was there.
    pub fn remove(&mut self, table: &'static str, id: u64) -> bool {
        self.reverse.clear();
        let Some(row) = self.tables.get_mut(table).and_then(|t| t.remove(&id)) else {
            return false;
        };
        if table == "device" {
            if let Some(list) =
                nav_id(&row, "belongs_to__application").and_then(|f| self.fleet_devices.get_mut(&f))
            {
                list.retain(|d| *d != id);
            }
        }
        true
    }

    /// The highest id of a table (0 when empty), for creating rows.
    pub fn max_id(&self, table: &str) -> u64 {
        self.tables
            .get(table)
            .and_then(|t| t.keys().last().copied())
            .unwrap_or(0)
    }

    /// Who a token belongs to.
    pub fn caller(&self, token: Option<&str>) -> Caller {
        match token.and_then(|t| self.tokens.get(t)) {
            Some(&uid) => {
                let (username, orgs) = &self.users[&uid];
                Caller::User {
                    id: uid,
                    actor: 1000 + uid,
                    username: username.clone(),
                    orgs: orgs.clone(),
                }
            }
            None => Caller::Guest,
        }
    }

    /// Adds a token for a new user who is a member of the given organizations.
    pub fn add_user(&mut self, username: &str, token: &str, org_handles: &[&str]) {
        let uid = self.users.len() as u64 + 1;
        let orgs = org_handles
            .iter()
            .filter_map(|h| self.find("organization", "handle", h))
            .collect();
        self.users.insert(uid, (username.into(), orgs));
        self.tokens.insert(token.into(), uid);
    }

    /// Id of the first row whose string `field` equals `value`.
    pub fn find(&self, table: &str, field: &str, value: &str) -> Option<u64> {
        self.tables
            .get(table)?
            .values()
            .find(|r| r.get(field).and_then(Value::as_str) == Some(value))
            .and_then(|r| r["id"].as_u64())
    }

    /// Every row of a table, in id order (ground truth for tests).
    pub fn rows(&self, table: &str) -> Vec<&Row> {
        self.tables
            .get(table)
            .map(|t| t.values().collect())
            .unwrap_or_default()
    }

    /// The ids of the rows of `target` whose `back` field points at `id`, in id order.
    fn pointing(&self, target: &'static str, back: &'static str, id: u64) -> Vec<u64> {
        let mut cache = self.reverse.0.lock().unwrap_or_else(|e| e.into_inner());
        let index = cache.entry((target, back)).or_insert_with(|| {
            let mut index = Pointing::new();
            for (rid, r) in self.tables.get(target).into_iter().flatten() {
                if let Some(to) = nav_id(r, back) {
                    index.entry(to).or_default().push(*rid);
                }
            }
            index
        });
        index.get(&id).cloned().unwrap_or_default()
    }

    /// A row by id.
    pub fn row(&self, table: &str, id: u64) -> Option<&Row> {
        self.tables.get(table)?.get(&id)
    }

    /// A mutable row by id.
    pub fn row_mut(&mut self, table: &str, id: u64) -> Option<&mut Row> {
        self.reverse.clear();
        self.tables.get_mut(table)?.get_mut(&id)
    }

    /// The fleet row with this slug.
    pub fn fleet(&self, slug: &str) -> Option<&Row> {
        self.row("application", self.find("application", "slug", slug)?)
    }

    /// Slugs of every fleet, in id order.
    pub fn fleet_slugs(&self) -> Vec<String> {
        self.tables
            .get("application")
            .map(|t| {
                t.values()
                    .filter(|r| r.get("is_host") != Some(&Value::Bool(true)))
                    .filter(|r| {
                        matches!(
                            r.get("is_of__class").and_then(Value::as_str),
                            None | Some("fleet")
                        )
                    })
                    .filter_map(|r| r["slug"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Device rows of a fleet, in id order, with computed fields filled in (ground truth for tests).
    pub fn devices_of(&self, slug: &str) -> Vec<Row> {
        let Some(fid) = self.find("application", "slug", slug) else {
            return Vec::new();
        };
        self.fleet_devices
            .get(&fid)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let mut row = self.row("device", *id)?.clone();
                for f in computed("device") {
                    let v = self.field("device", &row, f);
                    row.insert(f.to_string(), v);
                }
                Some(row)
            })
            .collect()
    }

    /// Ids of a fleet's devices.
    pub fn device_ids(&self, slug: &str) -> Vec<u64> {
        self.find("application", "slug", slug)
            .and_then(|fid| self.fleet_devices.get(&fid).cloned())
            .unwrap_or_default()
    }

    /// Image install rows of a device, each with its `service_name` added (from its image's
    /// service), deleted ones included.
    pub fn installs_of(&self, device_id: u64) -> Vec<Row> {
        self.device_installs
            .get(&device_id)
            .into_iter()
            .flatten()
            .filter_map(|i| self.row("image_install", *i))
            .map(|r| {
                let mut r = r.clone();
                let name = nav_id(&r, "installs__image")
                    .and_then(|i| self.row("image", i))
                    .and_then(|i| nav_id(i, "is_a_build_of__service"))
                    .and_then(|s| self.row("service", s))
                    .map(|s| s["service_name"].clone())
                    .unwrap_or(Value::Null);
                r.insert("service_name".into(), name);
                r
            })
            .collect()
    }

    /// Tags (key, value) of a device.
    pub fn tags_of(&self, device_id: u64) -> Vec<(String, String)> {
        self.device_tags
            .get(&device_id)
            .into_iter()
            .flatten()
            .filter_map(|t| self.row("device_tag", *t))
            .map(|r| {
                (
                    r["tag_key"].as_str().unwrap_or_default().to_string(),
                    r["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Sets (or adds) a device's tag.
    pub fn set_tag(&mut self, device_id: u64, key: &str, value: &str) {
        let existing = self
            .device_tags
            .get(&device_id)
            .into_iter()
            .flatten()
            .copied()
            .find(|t| {
                self.row("device_tag", *t)
                    .is_some_and(|r| r["tag_key"] == key)
            });
        match existing.and_then(|t| self.row_mut("device_tag", t)) {
            Some(row) => {
                row.insert("value".into(), Value::from(value));
            }
            None => {
                let id = self
                    .tables
                    .get("device_tag")
                    .and_then(|t| t.keys().last().copied())
                    .unwrap_or(0)
                    + 1;
                self.insert(
                    "device_tag",
                    serde_json::json!({"id": id, "device": {"__id": device_id}, "tag_key": key, "value": value}),
                );
            }
        }
    }

    /// Whether `caller` may run this read at all. A guest (no token, or one the API does not
    /// know) gets 401 on devices, their tags and image installs and on organizations (services
    /// and images answer 200 with those of public fleets), and on fleet queries that reach an
    /// organization, devices or the user relation (by `$filter` or `$expand`); a fleet query on
    /// the fleet's own fields answers 200 with the rows a guest may see (public fleets). This
    /// is what open-balena-api answers (tests/conformance holds the simulator to it).
    pub fn check_readable(
        &self,
        table: &str,
        opts: &Options,
        caller: &Caller,
    ) -> Result<(), ReadError> {
        match (table, caller) {
            (
                "device"
                | "device_tag"
                | "image_install"
                | "organization"
                | "device_config_variable"
                | "application_config_variable",
                Caller::Guest,
            ) => Err(ReadError::Unauthorized),
            ("application" | "release", Caller::Guest) if reaches_guarded(opts) => {
                Err(ReadError::Unauthorized)
            }
            _ if stored(table).is_none() => Err(ReadError::Unauthorized),
            _ => Ok(()),
        }
    }

    fn visible(&self, table: &str, row: &Row, caller: &Caller) -> bool {
        let member = |oid: Option<u64>| match caller {
            Caller::User { orgs, .. } => oid.is_some_and(|o| orgs.contains(&o)),
            Caller::Guest => false,
        };
        // A public fleet (balena's host and supervisor apps) is everyone's to read.
        let fleet_visible = |fid: Option<u64>| {
            fid.and_then(|f| self.row("application", f))
                .is_some_and(|f| member(nav_id(f, "organization")) || f["is_public"] == true)
        };
        match table {
            "organization" => member(row["id"].as_u64()),
            "application" => member(nav_id(row, "organization")) || row["is_public"] == true,
            "application_config_variable" => fleet_visible(nav_id(row, "application")),
            "device_config_variable" => nav_id(row, "device")
                .and_then(|d| self.row("device", d))
                .is_some_and(|d| fleet_visible(nav_id(d, "belongs_to__application"))),
            "release_tag" => nav_id(row, "release")
                .and_then(|r| self.row("release", r))
                .is_some_and(|r| fleet_visible(nav_id(r, "belongs_to__application"))),
            "device" => fleet_visible(nav_id(row, "belongs_to__application")),
            "device_tag" | "image_install" => nav_id(row, "device")
                .and_then(|d| self.row("device", d))
                .is_some_and(|d| fleet_visible(nav_id(d, "belongs_to__application"))),
            "service" | "release" => fleet_visible(
                nav_id(row, "application").or_else(|| nav_id(row, "belongs_to__application")),
            ),
            "image" => nav_id(row, "is_a_build_of__service")
                .and_then(|s| self.row("service", s))
                .is_some_and(|s| fleet_visible(nav_id(s, "application"))),
            _ => true,
        }
    }
}

/// Navigations a guest may not follow from a fleet or a release: the real API's guest role has
/// no permission on them (organizations, devices, users), so a query that touches one, at any
/// depth of its lambdas, is refused as a whole (401).
const GUARDED_NAVS: &[&str] = &[
    "organization",
    "owns__device",
    "is_directly_accessible_by__user",
    "should_operate__device",
    "should_manage__device",
    "is_running_on__device",
];

/// Whether a query's `$filter` or `$expand` touches a [`GUARDED_NAVS`] navigation.
fn reaches_guarded(opts: &Options) -> bool {
    fn in_expr(e: &Expr) -> bool {
        match e {
            Expr::Or(a, b) | Expr::And(a, b) | Expr::Cmp(_, a, b) => in_expr(a) || in_expr(b),
            Expr::Not(a) | Expr::In(a, _) => in_expr(a),
            // Any segment: inside a lambda a path starts with its variable (`r/should_operate__device`).
            Expr::Path(p) => p.iter().any(|n| GUARDED_NAVS.contains(&n.as_str())),
            Expr::Lambda { path, body, .. } => {
                path.iter().any(|n| GUARDED_NAVS.contains(&n.as_str())) || in_expr(body)
            }
            Expr::Lit(_) => false,
        }
    }
    opts.filter.as_ref().is_some_and(in_expr)
        || opts
            .expand
            .iter()
            .any(|e| GUARDED_NAVS.contains(&e.nav.as_str()) || reaches_guarded(&e.options))
}

/// `{"__id": N}` of a navigation field.
pub fn nav_id(row: &Row, field: &str) -> Option<u64> {
    row.get(field)?.get("__id")?.as_u64()
}

/// A field of a row, null when the row has no such field (rows loaded from the real API lack
/// the fields its model does not have, e.g. `is_active`).
fn get<'a>(d: &'a Row, field: &str) -> &'a Value {
    d.get(field).unwrap_or(&Value::Null)
}

/// `overall_status` by the server's rules, first match wins (reference §7).
pub fn overall_status(d: &Row) -> &'static str {
    let vpn = get(d, "is_connected_to_vpn") == true;
    let hb = get(d, "api_heartbeat_state").as_str().unwrap_or("unknown");
    let hb_on = hb == "online" || hb == "timeout";
    if get(d, "is_active") == false {
        "inactive"
    } else if get(d, "provisioning_state") == "Post-Provisioning" {
        "post-provisioning"
    } else if !vpn && get(d, "last_connectivity_event").is_null() && hb == "unknown" {
        "configuring"
    } else if !vpn && (hb == "offline" || hb == "unknown") {
        "disconnected"
    } else if hb_on && !get(d, "download_progress").is_null() && get(d, "status") == "Downloading" {
        "updating"
    } else if !get(d, "provisioning_progress").is_null() {
        "configuring"
    } else if hb == "timeout" || (vpn && hb != "online") || (!vpn && hb == "online") {
        "reduced-functionality"
    } else {
        "operational"
    }
}

fn overall_progress(d: &Row) -> Value {
    match overall_status(d) {
        "inactive" | "disconnected" => Value::Null,
        "post-provisioning" | "configuring" => get(d, "provisioning_progress").clone(),
        "updating" => get(d, "download_progress").clone(),
        _ => get(d, "provisioning_progress").clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::odata::{parse_request, Options};
    use super::*;
    use serde_json::json;

    fn world() -> World {
        World::generate(&WorldSpec::demo())
    }

    fn user(w: &World) -> Caller {
        w.caller(Some("demo-acme-token"))
    }

    #[test]
    fn generation_is_deterministic_and_sized_by_the_spec() {
        let (a, b) = (world(), world());
        assert_eq!(a.devices_of("acme/shop-screens").len(), 48);
        let ua: Vec<_> = a
            .devices_of("acme/kiosks")
            .iter()
            .map(|d| d["uuid"].clone())
            .collect();
        let ub: Vec<_> = b
            .devices_of("acme/kiosks")
            .iter()
            .map(|d| d["uuid"].clone())
            .collect();
        assert_eq!(ua, ub);
    }

    #[test]
    fn computed_fields_come_only_when_selected() {
        let w = world();
        let req = parse_request("device", "$filter=belongs_to__application eq 1").unwrap();
        let rows = w.read("device", None, &req.options, &user(&w)).unwrap();
        assert!(rows[0].get("overall_status").is_none());
        let req = parse_request(
            "device",
            "$select=id,overall_status&$filter=belongs_to__application eq 1",
        )
        .unwrap();
        let rows = w.read("device", None, &req.options, &user(&w)).unwrap();
        assert!(rows[0]["overall_status"].is_string());
        assert_eq!(rows[0].as_object().unwrap().len(), 2);
    }

    #[test]
    fn guests_get_401_on_devices_and_nothing_on_private_fleets() {
        let w = world();
        let req = parse_request("application", "$filter=slug eq 'acme%2Fkiosks'").unwrap();
        assert!(w
            .read("application", None, &req.options, &Caller::Guest)
            .unwrap()
            .is_empty());
        assert_eq!(
            w.read("application", None, &req.options, &user(&w))
                .unwrap()
                .len(),
            1
        );
        let other = w.caller(Some("demo-partner-token"));
        assert!(w
            .read("application", None, &req.options, &other)
            .unwrap()
            .is_empty());
        for table in ["device", "device_tag", "image_install", "organization"] {
            assert_eq!(
                w.read(table, None, &Options::default(), &Caller::Guest),
                Err(ReadError::Unauthorized),
                "{table}"
            );
        }
        for table in ["image", "service"] {
            assert!(w
                .read(table, None, &Options::default(), &Caller::Guest)
                .is_ok());
        }
    }

    #[test]
    fn navigation_filters_expands_and_counts_work() {
        let w = world();
        let c = user(&w);
        let req = parse_request(
            "application",
            "$select=slug&$filter=organization/any(o:o/handle eq 'acme')&$orderby=slug asc&$expand=owns__device/$count($filter=is_online eq true),organization($select=handle)",
        )
        .unwrap();
        let rows = w.read("application", None, &req.options, &c).unwrap();
        let slugs: Vec<_> = rows.iter().map(|r| r["slug"].as_str().unwrap()).collect();
        assert_eq!(
            slugs,
            ["acme/kiosks", "acme/shop-screens", "acme/warehouse-sensors"]
        );
        let online = w
            .devices_of("acme/kiosks")
            .iter()
            .filter(|d| d["is_online"] == true)
            .count();
        assert_eq!(rows[0]["owns__device"], online);
        assert_eq!(rows[0]["organization"][0]["handle"], "acme");
        let req = parse_request(
            "device",
            "$select=id&$filter=belongs_to__application/any(a:a/slug eq 'acme%2Fkiosks')",
        )
        .unwrap();
        assert_eq!(w.read("device", None, &req.options, &c).unwrap().len(), 12);
        let req = parse_request("device", "$select=id&$filter=belongs_to__application/any(a:a/is_directly_accessible_by__user/any(u:1 eq 1))").unwrap();
        assert_eq!(
            w.read("device", None, &req.options, &c).unwrap().len(),
            48 + 12 + 2000
        );
        let req = parse_request(
            "device",
            "$select=id&$orderby=id asc&$top=5&$skip=10&$filter=belongs_to__application eq 3",
        )
        .unwrap();
        let ids: Vec<_> = w
            .read("device", None, &req.options, &c)
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids.len(), 5);
        assert!(ids.windows(2).all(|p| p[0] < p[1]));
        let req = parse_request("device", "$select=nope").unwrap();
        assert!(matches!(
            w.read("device", None, &req.options, &c),
            Err(ReadError::BadField(_))
        ));
    }

    #[test]
    fn keyset_pages_read_by_id_are_the_rows_a_full_sort_finds() {
        let w = world();
        let c = user(&w);
        let fleet = w.devices_of("acme/warehouse-sensors")[0]["belongs_to__application"]["__id"]
            .as_u64()
            .unwrap();
        let ids = |query: &str| -> Vec<u64> {
            let req = parse_request("device", query).unwrap();
            w.read("device", None, &req.options, &c)
                .unwrap()
                .iter()
                .map(|r| r["id"].as_u64().unwrap())
                .collect()
        };
        let all = ids(&format!(
            "$select=id&$filter=belongs_to__application eq {fleet}"
        ));
        let (lowest, middle) = (all.iter().min().unwrap(), all[all.len() / 2]);
        for filter in [
            format!("(belongs_to__application eq {fleet}) and id gt {middle}"),
            format!("id gt {middle}.5 and (belongs_to__application eq {fleet})"),
            format!(
                "(belongs_to__application eq {fleet}) and id gt {}",
                lowest - 1
            ),
            format!(
                "(belongs_to__application eq {fleet}) and (id gt {middle} or is_online eq true)"
            ),
            format!("(belongs_to__application eq {fleet}) and id gt 99999999"),
        ] {
            for (top, skip) in [("&$top=100", ""), ("&$top=7", "&$skip=3"), ("", "")] {
                // Ordering by id then uuid (ids are unique) takes the general sort.
                let page = ids(&format!(
                    "$select=id&$filter={filter}&$orderby=id asc{top}{skip}"
                ));
                let sorted = ids(&format!(
                    "$select=id&$filter={filter}&$orderby=id asc,uuid asc{top}{skip}"
                ));
                assert_eq!(page, sorted, "{filter} {top} {skip}");
                let desc = ids(&format!(
                    "$select=id&$filter={filter}&$orderby=id desc{top}{skip}"
                ));
                let desc_sorted = ids(&format!(
                    "$select=id&$filter={filter}&$orderby=id desc,uuid asc{top}{skip}"
                ));
                assert_eq!(desc, desc_sorted, "{filter} desc {top} {skip}");
            }
        }
        assert!(ids(&format!(
            "$select=id&$filter=(belongs_to__application eq {fleet}) and id gt {middle}&$orderby=id asc&$top=100"
        ))
        .iter()
        .all(|id| *id > middle));
    }

    #[test]
    fn overall_status_follows_the_first_matching_rule() {
        let base = json!({"is_active": true, "provisioning_state": "", "is_connected_to_vpn": true,
            "last_connectivity_event": "x", "api_heartbeat_state": "online", "download_progress": null,
            "status": "Idle", "provisioning_progress": null});
        let with = |k: &str, v: Value| {
            let mut d = base.clone();
            d[k] = v;
            d.as_object().unwrap().clone()
        };
        assert_eq!(overall_status(base.as_object().unwrap()), "operational");
        assert_eq!(overall_status(&with("is_active", false.into())), "inactive");
        assert_eq!(
            overall_status(&with("api_heartbeat_state", "timeout".into())),
            "reduced-functionality"
        );
        let mut off = with("is_connected_to_vpn", false.into());
        off.insert("api_heartbeat_state".into(), "offline".into());
        assert_eq!(overall_status(&off), "disconnected");
        off.insert("api_heartbeat_state".into(), "unknown".into());
        off.insert("last_connectivity_event".into(), Value::Null);
        assert_eq!(overall_status(&off), "configuring");
    }

    #[test]
    fn reverse_navigations_follow_every_write() {
        let mut w = world();
        let c = user(&w);
        let fleet = w.find("application", "slug", "acme/kiosks").unwrap();
        let device = w.devices_of("acme/kiosks")[0]["id"].as_u64().unwrap();
        let releases: Vec<u64> = w
            .rows("release")
            .iter()
            .filter(|r| nav_id(r, "belongs_to__application") == Some(fleet))
            .filter_map(|r| r["id"].as_u64())
            .take(2)
            .collect();
        let operating = |w: &World| -> Vec<u64> {
            let q = format!("$select=id&$filter=should_operate__device/any(d:d/id eq {device})");
            let req = parse_request("release", &q).unwrap();
            let rows = w.read("release", None, &req.options, &c).unwrap();
            rows.iter().filter_map(|r| r["id"].as_u64()).collect()
        };
        let point = |w: &mut World, release: u64| {
            let row = w.row_mut("device", device).unwrap();
            row.insert(
                "should_be_operated_by__release".into(),
                json!({ "__id": release }),
            );
        };
        point(&mut w, releases[0]);
        assert_eq!(operating(&w), [releases[0]]);
        point(&mut w, releases[1]);
        assert_eq!(operating(&w), [releases[1]], "row_mut drops the index");
        let row = Value::Object(w.row("device", device).unwrap().clone());
        assert!(w.remove("device", device));
        assert_eq!(operating(&w), Vec::<u64>::new(), "remove drops the index");
        w.insert("device", row);
        assert_eq!(operating(&w), [releases[1]], "insert drops the index");
    }
}
