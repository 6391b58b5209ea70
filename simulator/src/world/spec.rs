//! Generating a world from a [`WorldSpec`]: organizations, fleets, releases and devices with
//! a realistic, seeded mix of statuses, nulls, pins and tags (one device's rows: `devices`;
//! the host layer: `host`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::devices::{application_state, generate_device, generate_tags};
use super::host::{self, HostLayer};
use super::World;

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
    /// What its application is doing (services, updates, builds).
    pub scenario: Scenario,
}

/// What a fleet's application is doing: the steady random mix, or one story a demo tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scenario {
    /// The mix: a few crashed containers, a few updates in progress, a few aborted.
    #[default]
    Steady,
    /// A new target release rolling out: a third of the online devices still run the
    /// previous one, downloading or applying it.
    Rollout,
    /// One service (`proxy`) has exited or keeps restarting on a quarter of the devices.
    CrashedService,
    /// An update stuck for days: devices downloading since three days ago, some aborted.
    StuckUpdate,
    /// The newest build failed (the target stays the last good one).
    FailedBuild,
    /// A host OS rollout: a third of the devices still on an end-of-life balenaOS, updating
    /// to the current one: most pending, three under way, two failed; their supervisors are
    /// behind, and a few devices have hardware metrics switched off.
    HostOsUpdate,
}

/// The services every generated fleet's releases have.
pub const SERVICES: [&str; 3] = ["main", "proxy", "metrics"];

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
            scenario: Scenario::Steady,
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
                        FleetSpec {
                            scenario: Scenario::Rollout,
                            ..FleetSpec::new("shop-screens", 48)
                        },
                        FleetSpec {
                            device_type: "intel-nuc".into(),
                            scenario: Scenario::CrashedService,
                            ..FleetSpec::new("kiosks", 12)
                        },
                        FleetSpec {
                            scenario: Scenario::FailedBuild,
                            ..FleetSpec::new("warehouse-sensors", 2_000)
                        },
                    ],
                },
                OrgSpec {
                    handle: "partner_org".into(),
                    fleets: vec![
                        FleetSpec {
                            device_type: "jetson-nano".into(),
                            scenario: Scenario::StuckUpdate,
                            ..FleetSpec::new("cameras", 150)
                        },
                        FleetSpec::new("gateways", 0),
                        FleetSpec {
                            device_type: "raspberrypi3".into(),
                            scenario: Scenario::HostOsUpdate,
                            ..FleetSpec::new("routers", 30)
                        },
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

pub(super) fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub(super) fn hex(rng: &mut fastrand::Rng, n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
        .collect()
}

impl World {
    /// Generates the world a spec describes. Timestamps are relative to now.
    pub fn generate(spec: &WorldSpec) -> Self {
        let mut g = Generator::new(spec.seed);
        let mut org_ids = HashMap::<String, u64>::new();
        for org in &spec.orgs {
            let oid = g.org(org);
            org_ids.insert(org.handle.clone(), oid);
        }
        let mut w = g.w;
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
}

/// One generation under way: the world so far, its random sequences and its id counters.
struct Generator {
    w: World,
    /// The rows generated first (organizations, fleets, releases, devices, tags).
    rng: fastrand::Rng,
    /// Application state (services, installs, update states) draws from its own sequence,
    /// so that adding it changed none of the device rows generated before it.
    app_rng: fastrand::Rng,
    /// The host layer (OS and supervisor targets, settings, locations) too.
    host_rng: fastrand::Rng,
    host: HostLayer,
    now: SystemTime,
    next_id: HashMap<&'static str, u64>,
    /// Device type slug → its row id (one row per type, made by the first fleet of it).
    device_types: HashMap<String, u64>,
}

/// A fleet's releases, oldest first: (id, commit).
type Releases = Vec<(u64, String)>;

/// (release id, service name) → the id of the release's image of that service.
type Images = HashMap<(u64, &'static str), u64>;

impl Generator {
    fn new(seed: u64) -> Self {
        Self {
            w: World::default(),
            rng: fastrand::Rng::with_seed(seed),
            app_rng: fastrand::Rng::with_seed(seed ^ 0x05e4_1ce5),
            host_rng: fastrand::Rng::with_seed(seed ^ 0x4057_0500),
            host: HostLayer::default(),
            now: SystemTime::now(),
            next_id: HashMap::new(),
            device_types: HashMap::new(),
        }
    }

    /// The next id of `table` (ids start at 1 in every table).
    fn id(&mut self, table: &'static str) -> u64 {
        let n = self.next_id.entry(table).or_insert(0);
        *n += 1;
        *n
    }

    /// `now - secs`, as the API writes a timestamp.
    fn ago(&self, secs: u64) -> String {
        iso(self.now - Duration::from_secs(secs))
    }

    /// An organization and its fleets; its id.
    fn org(&mut self, org: &OrgSpec) -> u64 {
        let oid = self.id("organization");
        let created = self.ago(86_400 * 400);
        self.w.insert(
            "organization",
            json!({
                "id": oid, "name": org.handle, "handle": org.handle, "company_name": null,
                "is_frozen": false, "created_at": created,
            }),
        );
        for fleet in &org.fleets {
            self.fleet(oid, &org.handle, fleet);
        }
        oid
    }

    /// The id of a device type's row, made on first use.
    fn device_type(&mut self, slug: &str) -> u64 {
        if let Some(id) = self.device_types.get(slug) {
            return *id;
        }
        let dtid = self.id("device_type");
        self.w.insert(
            "device_type",
            json!({"id": dtid, "slug": slug, "name": slug}),
        );
        self.device_types.insert(slug.to_string(), dtid);
        dtid
    }

    /// A fleet with its releases, services and images, host layer, and devices.
    fn fleet(&mut self, oid: u64, handle: &str, fleet: &FleetSpec) {
        let dt = self.device_type(&fleet.device_type);
        let fid = self.id("application");
        let slug = format!("{}/{}", handle, fleet.name).to_lowercase();
        let releases = self.releases(fid);
        let target = releases[2].0;
        let uuid = hex(&mut self.rng, 32);
        let created = self.ago(86_400 * 300);
        self.w.insert(
            "application",
            json!({
                "id": fid, "app_name": fleet.name, "slug": slug, "uuid": uuid,
                "organization": {"__id": oid}, "is_for__device_type": {"__id": dt},
                "should_be_running__release": {"__id": target}, "should_track_latest_release": true,
                "is_of__class": "fleet", "is_host": false, "is_archived": false,
                "is_public": fleet.public, "created_at": created,
            }),
        );
        if fleet.scenario == Scenario::FailedBuild {
            let rid = self.id("release");
            let commit = hex(&mut self.app_rng, 32);
            let created = self.ago(3_600 * 5);
            self.w.insert(
                "release",
                json!({
                    "id": rid, "commit": commit, "raw_version": "1.3.0",
                    "semver": "1.3.0", "status": "failed",
                    "belongs_to__application": {"__id": fid},
                    "created_at": created,
                }),
            );
        }
        let images = self.services(fid, &releases);
        self.w.fleet_devices.insert(fid, Vec::new());
        host::fleet(&mut self.host, &mut self.w, fid, fleet.scenario);
        for n in 0..fleet.devices {
            self.device(fleet, fid, dt, &releases, &images, n);
        }
    }

    /// Three successful releases, 1.0.0 to 1.2.0, ten days apart.
    fn releases(&mut self, fid: u64) -> Releases {
        (0..3)
            .map(|i| {
                let rid = self.id("release");
                let commit = hex(&mut self.rng, 32);
                let created = self.ago(86_400 * (30 - 10 * i as u64));
                self.w.insert(
                    "release",
                    json!({
                        "id": rid, "commit": commit, "raw_version": format!("1.{i}.0"),
                        "semver": format!("1.{i}.0"), "status": "success",
                        "belongs_to__application": {"__id": fid},
                        "created_at": created,
                    }),
                );
                (rid, commit)
            })
            .collect()
    }

    /// The fleet's services, and an image of each per release.
    fn services(&mut self, fid: u64, releases: &Releases) -> Images {
        let mut images = Images::new();
        for name in SERVICES {
            let sid = self.id("service");
            let created = self.ago(86_400 * 300);
            self.w.insert(
                "service",
                json!({
                    "id": sid, "application": {"__id": fid}, "service_name": name,
                    "created_at": created,
                }),
            );
            for (rid, _) in releases {
                let iid = self.id("image");
                let location = format!(
                    "registry2.balena-cloud.com/v2/{}",
                    hex(&mut self.app_rng, 32)
                );
                let created = self.ago(86_400 * 30);
                self.w.insert(
                    "image",
                    json!({
                        "id": iid, "is_a_build_of__service": {"__id": sid},
                        "is_stored_at__image_location": location,
                        "status": "success", "created_at": created,
                    }),
                );
                images.insert((*rid, name), iid);
            }
        }
        images
    }

    /// The fleet's device `n`: its row, image installs, host layer and tags.
    fn device(
        &mut self,
        fleet: &FleetSpec,
        fid: u64,
        dt: u64,
        releases: &Releases,
        images: &Images,
        n: usize,
    ) {
        let did = self.id("device");
        let quiet = fleet.scenario != Scenario::Steady;
        let now = self.now;
        let mut row = generate_device(&mut self.rng, now, did, fid, dt, releases, n, quiet);
        let installs =
            application_state(&mut self.app_rng, now, &mut row, fleet.scenario, releases);
        let dt = (dt, fleet.device_type.as_str());
        host::device(
            &mut self.host,
            &mut self.w,
            &mut self.host_rng,
            now,
            &mut row,
            dt,
            n,
            fleet.scenario,
        );
        self.w.insert("device", row);
        for (release, service, status, progress, age) in installs {
            let iid = self.id("image_install");
            let installed = self.ago(age);
            self.w.insert(
                "image_install",
                json!({
                    "id": iid, "device": {"__id": did},
                    "installs__image": {"__id": images[&(release, service)]},
                    "is_provided_by__release": {"__id": release},
                    "status": status, "download_progress": progress,
                    "install_date": installed,
                }),
            );
        }
        for (key, value) in generate_tags(&mut self.rng, n) {
            let tid = self.id("device_tag");
            self.w.insert(
                "device_tag",
                json!({"id": tid, "device": {"__id": did}, "tag_key": key, "value": value}),
            );
        }
    }
}
