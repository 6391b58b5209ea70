//! What the measuring examples share: a one-organization simulator world, an exporter started
//! as a process of its own (so its memory is measured apart from the load) on a free loopback
//! port, and reading that process' memory.

#![allow(dead_code)] // each example uses part of it

pub mod floor;

use std::path::{Path, PathBuf};
use std::time::Duration;

use balena_simulator::{FleetSpec, OrgSpec, UserSpec, WorldSpec};

/// A world of one organization `org` with `fleets` (name, devices) and one user whose token
/// is `token`.
pub fn world(org: &str, fleets: &[(&str, usize)], token: &str) -> WorldSpec {
    WorldSpec {
        seed: 5,
        orgs: vec![OrgSpec {
            handle: org.into(),
            fleets: fleets.iter().map(|(n, d)| FleetSpec::new(n, *d)).collect(),
        }],
        users: vec![UserSpec {
            username: "ops".into(),
            token: token.into(),
            orgs: vec![org.into()],
        }],
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// An exporter process serving `yaml`; killed (and its config removed) when dropped.
pub struct Exporter {
    /// Its process.
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
}

impl Exporter {
    /// Starts the exporter (`$EXPORTER_BIN`, else the release build, `cargo build --release`)
    /// on `yaml` with `--log.level=level` (its log shown with `EXPORTER_LOG=1`) and waits until
    /// it is ready.
    pub async fn start(yaml: &str, level: &str, client: &awc::Client) -> Self {
        let bin = std::env::var_os("EXPORTER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/balena-exporter")
            });
        let dir = std::env::temp_dir().join(format!(
            "balena-example-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yml");
        std::fs::write(&file, yaml).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(&bin)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--log.level={level}"))
            .stderr(if std::env::var_os("EXPORTER_LOG").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (build it first)", bin.display()));
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if client.get(format!("{base}/-/ready")).send().await.is_ok() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            base,
            port,
            dir,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
