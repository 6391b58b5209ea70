//! The simulator's data: organizations, fleets, releases, devices and tags generated from a
//! seed, stored as JSON rows the way pinejs stores them, plus the rules the real API applies
//! when it reads them: who may see what (guest tokens), computed fields (`overall_status`,
//! `overall_progress`, `should_be_running__release`), navigation properties, `$filter`
//! evaluation, `$select`/`$expand` projection and ordering.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::odata::{CmpOp, Expand, Expr, Lit, Options};

/// A JSON row.
pub type Row = Map<String, Value>;

/// The shape of a generated world.
#[derive(Debug, Clone)]
pub struct WorldSpec {
    /// Seed of every random choice: the same spec gives the same world.
    pub seed: u64,
    /// Organizations and their fleets.
    pub orgs: Vec<OrgSpec>,
    /// API tokens and the user each belongs to.
    pub users: Vec<UserSpec>,
}

/// An organization to generate.
#[derive(Debug, Clone)]
pub struct OrgSpec {
    /// Handle, `[a-z0-9_]`.
    pub handle: String,
    /// Its fleets.
    pub fleets: Vec<FleetSpec>,
}

/// A fleet to generate.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// App name (slug is `handle/app_name` lowercased).
    pub name: String,
    /// How many devices.
    pub devices: usize,
    /// Default device type slug.
    pub device_type: String,
    /// Readable by guests.
    pub public: bool,
}

/// A user and the token it authenticates with.
#[derive(Debug, Clone)]
pub struct UserSpec {
    /// Username.
    pub username: String,
    /// The API key that identifies this user.
    pub token: String,
    /// Handles of the organizations the user is a member of.
    pub orgs: Vec<String>,
}

impl FleetSpec {
    /// A private fleet of `devices` Raspberry Pi 4s.
    pub fn new(name: &str, devices: usize) -> Self {
        Self {
            name: name.to_string(),
            devices,
            device_type: "raspberrypi4-64".into(),
            public: false,
        }
    }
}

impl WorldSpec {
    /// The `--demo` world: two organizations, five fleets, one token each.
    pub fn demo() -> Self {
        Self {
            seed: 42,
            orgs: vec![
                OrgSpec {
                    handle: "acme".into(),
                    fleets: vec![
                        FleetSpec::new("shop-screens", 48),
                        FleetSpec {
                            device_type: "intel-nuc".into(),
                            ..FleetSpec::new("kiosks", 12)
                        },
                        FleetSpec::new("warehouse-sensors", 2_000),
                    ],
                },
                OrgSpec {
                    handle: "partner_org".into(),
                    fleets: vec![
                        FleetSpec {
                            device_type: "jetson-nano".into(),
                            ..FleetSpec::new("cameras", 150)
                        },
                        FleetSpec::new("gateways", 0),
                    ],
                },
            ],
            users: vec![
                UserSpec {
                    username: "acme_ops".into(),
                    token: "demo-acme-token".into(),
                    orgs: vec!["acme".into()],
                },
                UserSpec {
                    username: "partner_ops".into(),
                    token: "demo-partner-token".into(),
                    orgs: vec!["partner_org".into()],
                },
            ],
        }
    }
}

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
];
const DEVICE_TYPE_FIELDS: &[&str] = &["id", "slug", "name"];
const DEVICE_TAG_FIELDS: &[&str] = &["id", "device", "tag_key", "value"];

/// Computed fields: returned only when selected.
fn computed(resource: &str) -> &'static [&'static str] {
    match resource {
        "device" => &[
            "overall_status",
            "overall_progress",
            "should_be_running__release",
        ],
        _ => &[],
    }
}

/// Stored fields of a resource, or None for an unknown resource.
fn stored(resource: &str) -> Option<&'static [&'static str]> {
    Some(match resource {
        "device" => DEVICE_FIELDS,
        "application" => APPLICATION_FIELDS,
        "organization" => ORGANIZATION_FIELDS,
        "release" => RELEASE_FIELDS,
        "device_type" => DEVICE_TYPE_FIELDS,
        "device_tag" => DEVICE_TAG_FIELDS,
        _ => return None,
    })
}

/// The resource a forward navigation points to.
fn forward(resource: &str, nav: &str) -> Option<&'static str> {
    Some(match (resource, nav) {
        ("device", "belongs_to__application") => "application",
        ("device", "is_of__device_type") => "device_type",
        (
            "device",
            "is_running__release" | "is_pinned_on__release" | "should_be_running__release",
        ) => "release",
        ("application", "organization") => "organization",
        ("application", "is_for__device_type") => "device_type",
        ("application", "should_be_running__release") => "release",
        ("release", "belongs_to__application") => "application",
        ("device_tag", "device") => "device",
        _ => return None,
    })
}

/// Reverse navigations: (resource, nav) → (target resource, its field pointing back).
fn reverse(resource: &str, nav: &str) -> Option<(&'static str, &'static str)> {
    Some(match (resource, nav) {
        ("application", "owns__device") => ("device", "belongs_to__application"),
        ("application", "owns__release") => ("release", "belongs_to__application"),
        ("organization", "has__application") => ("application", "organization"),
        ("device", "device_tag") => ("device_tag", "device"),
        _ => return None,
    })
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
}

fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn hex(rng: &mut fastrand::Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
        .collect()
}

impl World {
    /// Generates the world a spec describes. Timestamps are relative to now.
    pub fn generate(spec: &WorldSpec) -> Self {
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let now = SystemTime::now();
        let mut w = World::default();
        let mut next_id = HashMap::<&'static str, u64>::new();
        let mut id = |t: &'static str| {
            let n = next_id.entry(t).or_insert(0);
            *n += 1;
            *n
        };
        let mut device_types = HashMap::<String, u64>::new();
        let mut org_ids = HashMap::<String, u64>::new();
        for org in &spec.orgs {
            let oid = id("organization");
            org_ids.insert(org.handle.clone(), oid);
            w.insert(
                "organization",
                json!({
                    "id": oid, "name": org.handle, "handle": org.handle, "company_name": null,
                    "is_frozen": false, "created_at": iso(now - Duration::from_secs(86_400 * 400)),
                }),
            );
            for fleet in &org.fleets {
                let dt = *device_types.entry(fleet.device_type.clone()).or_insert_with(|| {
                    let dtid = id("device_type");
                    w.insert("device_type", json!({"id": dtid, "slug": fleet.device_type, "name": fleet.device_type}));
                    dtid
                });
                let fid = id("application");
                let slug = format!("{}/{}", org.handle, fleet.name).to_lowercase();
                let releases: Vec<(u64, String)> = (0..3)
                    .map(|i| {
                        let rid = id("release");
                        let commit = hex(&mut rng, 32);
                        w.insert("release", json!({
                            "id": rid, "commit": commit, "raw_version": format!("1.{i}.0"),
                            "semver": format!("1.{i}.0"), "status": "success",
                            "belongs_to__application": {"__id": fid},
                            "created_at": iso(now - Duration::from_secs(86_400 * (30 - 10 * i as u64))),
                        }));
                        (rid, commit)
                    })
                    .collect();
                let target = releases[2].0;
                w.insert("application", json!({
                    "id": fid, "app_name": fleet.name, "slug": slug, "uuid": hex(&mut rng, 32),
                    "organization": {"__id": oid}, "is_for__device_type": {"__id": dt},
                    "should_be_running__release": {"__id": target}, "should_track_latest_release": true,
                    "is_of__class": "fleet", "is_host": false, "is_archived": false,
                    "is_public": fleet.public, "created_at": iso(now - Duration::from_secs(86_400 * 300)),
                }));
                w.fleet_devices.insert(fid, Vec::new());
                for n in 0..fleet.devices {
                    let did = id("device");
                    let row = generate_device(&mut rng, now, did, fid, dt, &releases, n);
                    w.insert("device", row);
                    for (key, value) in generate_tags(&mut rng, n) {
                        let tid = id("device_tag");
                        w.insert("device_tag", json!({"id": tid, "device": {"__id": did}, "tag_key": key, "value": value}));
                    }
                }
            }
        }
        for (i, user) in spec.users.iter().enumerate() {
            let uid = i as u64 + 1;
            let orgs = user
                .orgs
                .iter()
                .filter_map(|h| org_ids.get(h).copied())
                .collect();
            w.users.insert(uid, (user.username.clone(), orgs));
            w.tokens.insert(user.token.clone(), uid);
        }
        w
    }

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
            _ => {}
        }
        self.tables.entry(table).or_default().insert(id, row);
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

    /// A row by id.
    pub fn row(&self, table: &str, id: u64) -> Option<&Row> {
        self.tables.get(table)?.get(&id)
    }

    /// A mutable row by id.
    pub fn row_mut(&mut self, table: &str, id: u64) -> Option<&mut Row> {
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

    /// Whether `caller` may read a row of `table` at all (guests may not read devices).
    pub fn check_readable(&self, table: &str, caller: &Caller) -> Result<(), ReadError> {
        match (table, caller) {
            ("device" | "device_tag", Caller::Guest) => Err(ReadError::Unauthorized),
            _ if stored(table).is_none() => Err(ReadError::Unauthorized),
            _ => Ok(()),
        }
    }

    fn visible(&self, table: &str, row: &Row, caller: &Caller) -> bool {
        let member = |oid: Option<u64>| match caller {
            Caller::User { orgs, .. } => oid.is_some_and(|o| orgs.contains(&o)),
            Caller::Guest => false,
        };
        let fleet_visible = |fid: Option<u64>| {
            fid.and_then(|f| self.row("application", f))
                .is_some_and(|f| {
                    member(nav_id(f, "organization"))
                        || (matches!(caller, Caller::Guest) && f["is_public"] == true)
                })
        };
        match table {
            "organization" => member(row["id"].as_u64()),
            "application" => {
                member(nav_id(row, "organization"))
                    || (matches!(caller, Caller::Guest) && row["is_public"] == true)
            }
            "device" => fleet_visible(nav_id(row, "belongs_to__application")),
            "device_tag" => nav_id(row, "device")
                .and_then(|d| self.row("device", d))
                .is_some_and(|d| fleet_visible(nav_id(d, "belongs_to__application"))),
            _ => true,
        }
    }

    /// Candidate row ids for a top-level read (uses the fleet index for the common device filter).
    fn candidates(&self, table: &str, filter: Option<&Expr>) -> Vec<u64> {
        if table == "device" {
            if let Some(Expr::Cmp(CmpOp::Eq, l, r)) = filter {
                if let (Expr::Path(p), Expr::Lit(Lit::Num(n))) = (l.as_ref(), r.as_ref()) {
                    if p.len() == 1 && p[0] == "belongs_to__application" {
                        return self
                            .fleet_devices
                            .get(&(*n as u64))
                            .cloned()
                            .unwrap_or_default();
                    }
                }
            }
        }
        self.tables
            .get(table)
            .map(|t| t.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Reads rows of `table` visible to `caller` that match the options, projected as JSON.
    pub fn read(
        &self,
        table: &'static str,
        key_ids: Option<Vec<u64>>,
        opts: &Options,
        caller: &Caller,
    ) -> Result<Vec<Value>, ReadError> {
        self.check_readable(table, caller)?;
        let ids = self.select_ids(table, key_ids, opts, caller)?;
        ids.iter()
            .map(|id| self.project(table, &self.tables[table][id], opts, caller))
            .collect()
    }

    /// Counts rows for `/$count`.
    pub fn count(
        &self,
        table: &'static str,
        key_ids: Option<Vec<u64>>,
        opts: &Options,
        caller: &Caller,
    ) -> Result<usize, ReadError> {
        self.check_readable(table, caller)?;
        Ok(self.select_ids(table, key_ids, opts, caller)?.len())
    }

    fn select_ids(
        &self,
        table: &'static str,
        key_ids: Option<Vec<u64>>,
        opts: &Options,
        caller: &Caller,
    ) -> Result<Vec<u64>, ReadError> {
        let Some(rows) = self.tables.get(table) else {
            return Ok(Vec::new());
        };
        self.check_fields(table, opts)?;
        let mut ids = Vec::new();
        for id in key_ids.unwrap_or_else(|| self.candidates(table, opts.filter.as_ref())) {
            let Some(row) = rows.get(&id) else { continue };
            if !self.visible(table, row, caller) {
                continue;
            }
            if let Some(f) = &opts.filter {
                if !truthy(&self.eval(table, row, f, &mut Vec::new(), caller)?) {
                    continue;
                }
            }
            ids.push(id);
        }
        self.order(table, &mut ids, &opts.orderby);
        let skip = opts.skip.unwrap_or(0);
        let top = opts.top.unwrap_or(usize::MAX);
        Ok(ids.into_iter().skip(skip).take(top).collect())
    }

    fn order(&self, table: &str, ids: &mut [u64], orderby: &[(String, bool)]) {
        if orderby.is_empty() {
            return;
        }
        let rows = &self.tables[table];
        ids.sort_by(|a, b| {
            for (field, desc) in orderby {
                let va = self.field(table, &rows[a], field);
                let vb = self.field(table, &rows[b], field);
                let ord = cmp_json(&va, &vb);
                if ord != std::cmp::Ordering::Equal {
                    return if *desc { ord.reverse() } else { ord };
                }
            }
            std::cmp::Ordering::Equal
        });
    }

    fn known_field(table: &str, name: &str) -> bool {
        stored(table).is_some_and(|f| f.contains(&name)) || computed(table).contains(&name)
    }

    fn check_fields(&self, table: &str, opts: &Options) -> Result<(), ReadError> {
        for f in opts.select.iter().flatten() {
            if !Self::known_field(table, f) {
                return Err(ReadError::BadField(format!("{table}.{f}")));
            }
            if opts.expand.iter().any(|e| &e.nav == f) {
                return Err(ReadError::BadField(format!(
                    "{table}.{f} is both selected and expanded"
                )));
            }
        }
        for (f, _) in &opts.orderby {
            if !Self::known_field(table, f) {
                return Err(ReadError::BadField(format!("{table}.{f}")));
            }
        }
        for e in &opts.expand {
            let target = forward(table, &e.nav)
                .or_else(|| reverse(table, &e.nav).map(|(t, _)| t))
                .ok_or_else(|| ReadError::BadField(format!("{table}.{}", e.nav)))?;
            self.check_fields(target, &e.options)?;
        }
        Ok(())
    }

    /// A field's value, computing the computed ones.
    fn field(&self, table: &str, row: &Row, name: &str) -> Value {
        match (table, name) {
            ("device", "overall_status") => Value::from(overall_status(row)),
            ("device", "overall_progress") => overall_progress(row),
            ("device", "should_be_running__release") => {
                if !row["is_pinned_on__release"].is_null() {
                    row["is_pinned_on__release"].clone()
                } else {
                    nav_id(row, "belongs_to__application")
                        .and_then(|f| self.row("application", f))
                        .map(|f| f["should_be_running__release"].clone())
                        .unwrap_or(Value::Null)
                }
            }
            _ => row.get(name).cloned().unwrap_or(Value::Null),
        }
    }

    fn project(
        &self,
        table: &str,
        row: &Row,
        opts: &Options,
        caller: &Caller,
    ) -> Result<Value, ReadError> {
        let mut out = Map::new();
        match &opts.select {
            Some(fields) => {
                for f in fields {
                    out.insert(f.clone(), self.field(table, row, f));
                }
            }
            None => {
                for f in stored(table).unwrap_or_default() {
                    if !opts.expand.iter().any(|e| e.nav == *f) {
                        out.insert(f.to_string(), self.field(table, row, f));
                    }
                }
            }
        }
        for e in &opts.expand {
            out.insert(e.nav.clone(), self.expand(table, row, e, caller)?);
        }
        Ok(Value::Object(out))
    }

    fn related(
        &self,
        table: &str,
        row: &Row,
        nav: &str,
        caller: &Caller,
    ) -> Option<(&'static str, Vec<u64>)> {
        if let Some(target) = forward(table, nav) {
            let id = self
                .field(table, row, nav)
                .get("__id")
                .and_then(Value::as_u64);
            return Some((target, id.into_iter().collect()));
        }
        if let Some((target, back)) = reverse(table, nav) {
            let id = row["id"].as_u64()?;
            let ids = match (table, target) {
                ("application", "device") => {
                    self.fleet_devices.get(&id).cloned().unwrap_or_default()
                }
                ("device", "device_tag") => self.device_tags.get(&id).cloned().unwrap_or_default(),
                _ => self
                    .tables
                    .get(target)?
                    .values()
                    .filter(|r| nav_id(r, back) == Some(id))
                    .filter_map(|r| r["id"].as_u64())
                    .collect(),
            };
            return Some((target, ids));
        }
        if (table, nav) == ("application", "is_directly_accessible_by__user") {
            let ids = match caller {
                Caller::User { id, orgs, .. }
                    if nav_id(row, "organization").is_some_and(|o| orgs.contains(&o)) =>
                {
                    vec![*id]
                }
                _ => vec![],
            };
            return Some(("user", ids));
        }
        None
    }

    fn expand(
        &self,
        table: &str,
        row: &Row,
        e: &Expand,
        caller: &Caller,
    ) -> Result<Value, ReadError> {
        let (target, ids) = self
            .related(table, row, &e.nav, caller)
            .ok_or_else(|| ReadError::BadField(format!("{table}.{}", e.nav)))?;
        let mut rows = Vec::new();
        for id in ids {
            let Some(r) = self.row(target, id) else {
                continue;
            };
            if let Some(f) = &e.options.filter {
                if !truthy(&self.eval(target, r, f, &mut Vec::new(), caller)?) {
                    continue;
                }
            }
            rows.push((id, r));
        }
        if e.count {
            return Ok(Value::from(rows.len()));
        }
        let mut ids: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
        self.order(target, &mut ids, &e.options.orderby);
        let projected: Result<Vec<Value>, ReadError> = ids
            .iter()
            .skip(e.options.skip.unwrap_or(0))
            .take(e.options.top.unwrap_or(usize::MAX))
            .map(|id| self.project(target, &self.tables[target][id], &e.options, caller))
            .collect();
        Ok(Value::Array(projected?))
    }

    /// Evaluates a filter expression on one row.
    fn eval(
        &self,
        table: &str,
        row: &Row,
        e: &Expr,
        vars: &mut Vec<(String, &'static str, u64)>,
        caller: &Caller,
    ) -> Result<Value, ReadError> {
        Ok(match e {
            Expr::Lit(l) => lit_json(l),
            Expr::Or(a, b) => Value::Bool(
                truthy(&self.eval(table, row, a, vars, caller)?)
                    || truthy(&self.eval(table, row, b, vars, caller)?),
            ),
            Expr::And(a, b) => Value::Bool(
                truthy(&self.eval(table, row, a, vars, caller)?)
                    && truthy(&self.eval(table, row, b, vars, caller)?),
            ),
            Expr::Not(a) => Value::Bool(!truthy(&self.eval(table, row, a, vars, caller)?)),
            Expr::Cmp(op, a, b) => {
                let (va, vb) = (
                    self.eval(table, row, a, vars, caller)?,
                    self.eval(table, row, b, vars, caller)?,
                );
                let ord = cmp_json(&va, &vb);
                Value::Bool(match op {
                    CmpOp::Eq => va == vb || (va.is_number() && vb.is_number() && ord.is_eq()),
                    CmpOp::Ne => !(va == vb || (va.is_number() && vb.is_number() && ord.is_eq())),
                    CmpOp::Gt => !va.is_null() && !vb.is_null() && ord.is_gt(),
                    CmpOp::Ge => !va.is_null() && !vb.is_null() && ord.is_ge(),
                    CmpOp::Lt => !va.is_null() && !vb.is_null() && ord.is_lt(),
                    CmpOp::Le => !va.is_null() && !vb.is_null() && ord.is_le(),
                })
            }
            Expr::In(a, list) => {
                let v = self.eval(table, row, a, vars, caller)?;
                Value::Bool(list.iter().any(|l| {
                    let lv = lit_json(l);
                    lv == v || (lv.is_number() && v.is_number() && cmp_json(&lv, &v).is_eq())
                }))
            }
            Expr::Path(path) => {
                let (t, r, rest) = self.start(table, row, path, vars)?;
                self.walk(t, r, rest, caller)?
            }
            Expr::Lambda {
                path,
                all,
                var,
                body,
            } => {
                let (t, r, rest) = self.start(table, row, path, vars)?;
                let (last, init) = rest
                    .split_last()
                    .ok_or_else(|| ReadError::BadField(path.join("/")))?;
                let (t, r) = self.walk_rows(t, r, init)?;
                let Some(r) = r else {
                    return Ok(Value::Bool(*all));
                };
                let (target, ids) = self
                    .related(t, r, last, caller)
                    .ok_or_else(|| ReadError::BadField(format!("{t}.{last}")))?;
                let mut result = *all;
                for id in ids {
                    let hit = if target == "user" {
                        let empty = Row::new();
                        truthy(&self.eval(target, &empty, body, vars, caller)?)
                    } else {
                        let Some(r2) = self.row(target, id) else {
                            continue;
                        };
                        vars.push((var.clone(), target, id));
                        let v = self.eval(target, r2, body, vars, caller);
                        vars.pop();
                        truthy(&v?)
                    };
                    if *all && !hit {
                        result = false;
                        break;
                    }
                    if !*all && hit {
                        result = true;
                        break;
                    }
                }
                Value::Bool(result)
            }
        })
    }

    /// Resolves the start of a path: a lambda variable or the current row.
    fn start<'a, 'p>(
        &'a self,
        table: &'a str,
        row: &'a Row,
        path: &'p [String],
        vars: &[(String, &'static str, u64)],
    ) -> Result<(&'a str, &'a Row, &'p [String]), ReadError> {
        if let Some((_, t, id)) = vars.iter().rev().find(|(v, _, _)| *v == path[0]) {
            let r = self
                .row(t, *id)
                .ok_or_else(|| ReadError::BadField(path.join("/")))?;
            return Ok((t, r, &path[1..]));
        }
        Ok((table, row, path))
    }

    /// Follows forward navigations through all segments of `path`.
    fn walk_rows<'a>(
        &'a self,
        mut table: &'a str,
        row: &'a Row,
        path: &[String],
    ) -> Result<(&'a str, Option<&'a Row>), ReadError> {
        let mut row = Some(row);
        for seg in path {
            let target =
                forward(table, seg).ok_or_else(|| ReadError::BadField(format!("{table}.{seg}")))?;
            row = row
                .and_then(|r| {
                    self.field(table, r, seg)
                        .get("__id")
                        .and_then(Value::as_u64)
                })
                .and_then(|id| self.row(target, id));
            table = target;
        }
        Ok((table, row))
    }

    fn walk(
        &self,
        table: &str,
        row: &Row,
        path: &[String],
        _caller: &Caller,
    ) -> Result<Value, ReadError> {
        let Some((last, init)) = path.split_last() else {
            return Ok(row.get("id").cloned().unwrap_or(Value::Null));
        };
        let (t, r) = self.walk_rows(table, row, init)?;
        if !Self::known_field(t, last) {
            return Err(ReadError::BadField(format!("{t}.{last}")));
        }
        let Some(r) = r else { return Ok(Value::Null) };
        let v = self.field(t, r, last);
        Ok(match v.get("__id") {
            Some(id) => id.clone(),
            None => v,
        })
    }

    /// All device ids (for bulk changes in tests and the demo).
    pub fn all_device_ids(&self) -> Vec<u64> {
        self.tables
            .get("device")
            .map(|t| t.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// `{"__id": N}` of a navigation field.
pub fn nav_id(row: &Row, field: &str) -> Option<u64> {
    row.get(field)?.get("__id")?.as_u64()
}

fn truthy(v: &Value) -> bool {
    v.as_bool().unwrap_or(false)
}

fn lit_json(l: &Lit) -> Value {
    match l {
        Lit::Null => Value::Null,
        Lit::Bool(b) => Value::Bool(*b),
        Lit::Num(n) => json!(n),
        Lit::Str(s) => Value::String(s.clone()),
    }
}

fn cmp_json(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Equal)
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Equal,
        (Value::Null, _) => Less,
        (_, Value::Null) => Greater,
        _ => Equal,
    }
}

/// `overall_status` by the server's rules, first match wins (reference §7).
pub fn overall_status(d: &Row) -> &'static str {
    let vpn = d["is_connected_to_vpn"] == true;
    let hb = d["api_heartbeat_state"].as_str().unwrap_or("unknown");
    let hb_on = hb == "online" || hb == "timeout";
    if d["is_active"] == false {
        "inactive"
    } else if d["provisioning_state"] == "Post-Provisioning" {
        "post-provisioning"
    } else if !vpn && d["last_connectivity_event"].is_null() && hb == "unknown" {
        "configuring"
    } else if !vpn && (hb == "offline" || hb == "unknown") {
        "disconnected"
    } else if hb_on && !d["download_progress"].is_null() && d["status"] == "Downloading" {
        "updating"
    } else if !d["provisioning_progress"].is_null() {
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
        "post-provisioning" | "configuring" => d["provisioning_progress"].clone(),
        "updating" => d["download_progress"].clone(),
        _ => d["provisioning_progress"].clone(),
    }
}

const CITIES: &[&str] = &[
    "Berlin",
    "Lisbon",
    "Austin",
    "Osaka",
    "Nairobi",
    "São Paulo",
];

fn generate_tags(rng: &mut fastrand::Rng, n: usize) -> Vec<(&'static str, String)> {
    let mut tags = vec![("location", CITIES[n % CITIES.len()].to_string())];
    if n % 3 == 0 {
        tags.push(("Floor #2", format!("wing \"{}\"\nwest\\", rng.u8(1..9))));
    }
    if n % 5 == 0 {
        tags.push(("owner", "ops-team".into()));
    }
    tags
}

fn generate_device(
    rng: &mut fastrand::Rng,
    now: SystemTime,
    id: u64,
    fleet: u64,
    dt: u64,
    releases: &[(u64, String)],
    n: usize,
) -> Value {
    let ago = |secs: u64| Value::from(iso(now - Duration::from_secs(secs)));
    // (vpn, heartbeat, last_connectivity?, provisioning_state, provisioning_progress, download, status, active)
    let roll = rng.u32(0..100);
    let os_version = ["balenaOS 6.5.3", "balenaOS 5.3.24", "balenaOS 6.0.13"][rng.usize(0..3)];
    let supervisor = ["17.0.3", "16.7.9", "17.1.0"][rng.usize(0..3)];
    let mut d = json!({
        "id": id, "uuid": hex(rng, 32), "device_name": format!("dev-{n:05}-{}", hex(rng, 4)),
        "note": null, "belongs_to__application": {"__id": fleet}, "is_of__device_type": {"__id": dt},
        "is_online": true, "is_connected_to_vpn": true, "last_connectivity_event": ago(rng.u64(60..86_400)),
        "last_vpn_event": ago(rng.u64(60..86_400)), "api_heartbeat_state": "online",
        "changed_api_heartbeat_state_on__date": ago(rng.u64(60..86_400)), "status": "Idle",
        "update_status": "done", "provisioning_state": "", "provisioning_progress": null,
        "download_progress": null, "os_version": os_version,
        "os_variant": if rng.u32(0..10) == 0 { "dev" } else { "prod" },
        "supervisor_version": supervisor,
        "ip_address": format!("192.168.{}.{} 10.0.0.{}", rng.u8(0..255), rng.u8(1..255), rng.u8(1..255)),
        "mac_address": format!("dc:a6:32:{:02x}:{:02x}:{:02x}", rng.u8(..), rng.u8(..), rng.u8(..)),
        "public_address": format!("203.0.113.{}", rng.u8(1..255)),
        "cpu_usage": rng.u32(0..101), "cpu_temp": rng.u32(35..85),
        "memory_usage": rng.u32(200..3500), "memory_total": 3796,
        "storage_block_device": "/dev/mmcblk0", "storage_usage": rng.u32(1000..28000), "storage_total": 29_473,
        "is_undervolted": rng.u32(0..100) < 4, "is_web_accessible": false, "is_active": true,
        "is_running__release": {"__id": releases[2].0}, "is_pinned_on__release": null,
        "created_at": ago(86_400 * rng.u64(2..300)), "modified_at": ago(rng.u64(60..86_400)),
        "latitude": null, "longitude": null, "location": null,
    });
    let set = |d: &mut Value, k: &str, v: Value| d[k] = v;
    match roll {
        0..=69 => {}
        70..=81 => {
            set(&mut d, "is_online", false.into());
            set(&mut d, "is_connected_to_vpn", false.into());
            set(&mut d, "api_heartbeat_state", "offline".into());
        }
        82..=86 => {
            set(&mut d, "status", "Downloading".into());
            set(&mut d, "update_status", "downloading".into());
            set(&mut d, "download_progress", rng.u32(0..100).into());
            set(
                &mut d,
                "is_running__release",
                json!({"__id": releases[1].0}),
            );
        }
        87..=91 => set(&mut d, "api_heartbeat_state", "timeout".into()),
        92..=94 => {
            set(&mut d, "is_online", false.into());
            set(&mut d, "is_connected_to_vpn", false.into());
            set(&mut d, "api_heartbeat_state", "unknown".into());
            set(&mut d, "last_connectivity_event", Value::Null);
            set(&mut d, "last_vpn_event", Value::Null);
            set(&mut d, "is_running__release", Value::Null);
            for k in [
                "cpu_usage",
                "cpu_temp",
                "memory_usage",
                "memory_total",
                "storage_usage",
                "storage_total",
                "os_version",
                "supervisor_version",
                "update_status",
            ] {
                set(&mut d, k, Value::Null);
            }
        }
        95..=96 => {
            set(&mut d, "provisioning_state", "Post-Provisioning".into());
            set(&mut d, "provisioning_progress", rng.u32(50..100).into());
        }
        _ => set(&mut d, "is_active", false.into()),
    }
    // Some devices run with HARDWARE_METRICS off: metrics are null.
    if rng.u32(0..100) < 8 {
        for k in ["cpu_usage", "cpu_temp", "memory_usage", "storage_usage"] {
            set(&mut d, k, Value::Null);
        }
    }
    // A few devices lag behind (old release) or are pinned to it.
    match rng.u32(0..100) {
        0..=4 if !d["is_running__release"].is_null() => set(
            &mut d,
            "is_running__release",
            json!({"__id": releases[0].0}),
        ),
        5..=6 => {
            set(
                &mut d,
                "is_pinned_on__release",
                json!({"__id": releases[1].0}),
            );
            set(
                &mut d,
                "is_running__release",
                json!({"__id": releases[1].0}),
            );
        }
        _ => {}
    }
    d
}

#[cfg(test)]
mod tests {
    use super::super::odata::parse_request;
    use super::*;

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
        assert_eq!(
            w.read("device", None, &Options::default(), &Caller::Guest),
            Err(ReadError::Unauthorized)
        );
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
}
