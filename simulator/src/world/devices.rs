//! One generated device: its row (the steady mix of states, or a story fleet's quiet
//! device), its application state for the fleet's scenario (update status, image installs as
//! the supervisor reports them) and its tags. Part of [`World::generate`](super::World::generate).

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::spec::{hex, iso, Scenario, SERVICES};

const CITIES: &[&str] = &[
    "Berlin",
    "Lisbon",
    "Austin",
    "Osaka",
    "Nairobi",
    "São Paulo",
];

pub(super) fn generate_tags(rng: &mut fastrand::Rng, n: usize) -> Vec<(&'static str, String)> {
    let mut tags = vec![("location", CITIES[n % CITIES.len()].to_string())];
    if n % 3 == 0 {
        tags.push(("Floor #2", format!("wing \"{}\"\nwest\\", rng.u8(1..9))));
    }
    if n % 5 == 0 {
        tags.push(("owner", "ops-team".into()));
    }
    tags
}

/// Long on purpose: a device row as data, then the scenario mix that varies it.
#[allow(clippy::too_many_arguments)] // the row's facts, one argument each
pub(super) fn generate_device(
    rng: &mut fastrand::Rng,
    now: SystemTime,
    id: u64,
    fleet: u64,
    dt: u64,
    releases: &[(u64, String)],
    n: usize,
    quiet: bool,
) -> Value {
    let ago = |secs: u64| Value::from(iso(now - Duration::from_secs(secs)));
    // (vpn, heartbeat, last_connectivity?, provisioning_state, provisioning_progress, download, status, active)
    // A quiet device (of a story fleet: it tells its story alone) is online, powered well and
    // on its fleet's release; the random draws are made all the same, so that the steady
    // fleets' devices stay as they were.
    let roll = rng.u32(0..100);
    let roll = if quiet { 0 } else { roll };
    let os_version = ["balenaOS 6.5.3", "balenaOS 5.3.24", "balenaOS 6.0.13"][rng.usize(0..3)];
    let supervisor = ["17.0.3", "16.7.9", "17.1.0"][rng.usize(0..3)];
    let mut d = json!({
        "id": id, "uuid": hex(rng, 32), "device_name": format!("dev-{n:05}-{}", hex(rng, 4)),
        "note": null, "belongs_to__application": {"__id": fleet}, "is_of__device_type": {"__id": dt},
        "is_online": true, "is_connected_to_vpn": true, "last_connectivity_event": ago(rng.u64(60..86_400)),
        "last_vpn_event": ago(rng.u64(60..86_400)), "api_heartbeat_state": "online",
        "changed_api_heartbeat_state_on__date": ago(rng.u64(60..86_400)), "status": "Idle",
        "update_status": "done", "last_update_status_event": null, "provisioning_state": "", "provisioning_progress": null,
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
    if quiet {
        set(&mut d, "is_undervolted", false.into());
    }
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
        87..=89 => set(&mut d, "api_heartbeat_state", "timeout".into()),
        // Up (heartbeat online) but unreachable: the VPN is down (reduced-functionality).
        90..=91 => set(&mut d, "is_connected_to_vpn", false.into()),
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
    let lag = rng.u32(0..100);
    match if quiet { 100 } else { lag } {
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

/// One image install to generate: (release id, service, status, download progress, age in s).
type InstallSpec = (u64, &'static str, &'static str, Option<u32>, u64);

/// Sets a device's update state for the fleet's scenario and returns its image installs, as a
/// supervisor would have reported them (`PATCH /device/v3/state`): the running release's
/// services, the target's too while an update is under way, an old deleted install now and then.
/// Long on purpose: the scenarios side by side.
pub(super) fn application_state(
    rng: &mut fastrand::Rng,
    now: SystemTime,
    d: &mut Value,
    scenario: Scenario,
    releases: &[(u64, String)],
) -> Vec<InstallSpec> {
    let ago = |secs: u64| Value::from(iso(now - Duration::from_secs(secs)));
    let Some(running) = d["is_running__release"]["__id"].as_u64() else {
        return Vec::new(); // never ran a release: nothing installed
    };
    let target = d["is_pinned_on__release"]["__id"]
        .as_u64()
        .unwrap_or(releases[2].0);
    let online = d["is_online"] == true;
    let roll = rng.u32(0..100);
    // (update_status, seconds since it changed, the target's install status) for a device
    // that moves to the target now.
    let mut updating: Option<(&str, u64, &'static str)> = None;
    match scenario {
        Scenario::Rollout if online && running == target && roll < 35 => {
            d["is_running__release"] = json!({"__id": releases[1].0});
            let (status, inst) = if roll < 25 {
                ("downloading", "Downloading")
            } else {
                ("applying changes", "Installing")
            };
            updating = Some((status, rng.u64(60..1_800), inst));
        }
        Scenario::StuckUpdate if online && running == target && roll < 30 => {
            d["is_running__release"] = json!({"__id": releases[1].0});
            let (status, inst) = if roll < 24 {
                ("downloading", "Downloading")
            } else {
                ("aborted", "Downloaded")
            };
            updating = Some((status, 86_400 * 3 + rng.u64(0..3_600), inst));
        }
        _ => {}
    }
    // A story fleet tells its story alone: the steady mix's noise (an update under way or
    // aborted now and then, a crashed container) is the steady fleets'.
    let noisy = scenario == Scenario::Steady;
    if !noisy && updating.is_none() && d["update_status"] == "downloading" {
        d["update_status"] = "done".into();
        d["status"] = "Idle".into();
        d["download_progress"] = Value::Null;
        d["is_running__release"] = json!({"__id": target});
    }
    let running = d["is_running__release"]["__id"].as_u64().unwrap_or(running);
    if d["update_status"] == "downloading" && updating.is_none() {
        updating = Some(("downloading", rng.u64(60..900), "Downloading"));
    }
    if updating.is_none() && !d["update_status"].is_null() {
        // The steady mix: now and then an update aborted, rejected or just downloaded.
        let status = match rng.u32(0..400) {
            _ if !noisy => "done",
            0..=1 => "aborted",
            2 => "rejected",
            3..=6 => "downloaded",
            _ => "done",
        };
        d["update_status"] = status.into();
        d["last_update_status_event"] = ago(rng.u64(600..86_400 * 20));
    }
    let mut installs = Vec::new();
    for (k, service) in SERVICES.iter().enumerate() {
        let status = match (scenario, rng.u32(0..100)) {
            (Scenario::CrashedService, r) if k == 1 && r < 25 => {
                if r < 15 {
                    "exited"
                } else {
                    "restarting"
                }
            }
            // The steady mix: a crashed container now and then (about one device in 150).
            (_, 0) if rng.u32(0..3) == 0 && noisy => "exited",
            (_, 1) if k == 2 && rng.u32(0..3) == 0 && noisy => "Dead",
            _ => "Running",
        };
        installs.push((running, *service, status, None, 86_400 * 12));
    }
    if let Some((status, since, inst)) = updating {
        d["update_status"] = status.into();
        d["last_update_status_event"] = ago(since);
        let progress = (inst == "Downloading").then(|| rng.u32(5..95));
        if let Some(p) = progress {
            d["status"] = "Downloading".into();
            d["download_progress"] = p.into();
        }
        for service in SERVICES {
            installs.push((target, service, inst, progress, since));
        }
    }
    if rng.u32(0..10) == 0 && running != releases[0].0 {
        installs.push((releases[0].0, SERVICES[0], "deleted", None, 86_400 * 25));
    }
    installs
}
