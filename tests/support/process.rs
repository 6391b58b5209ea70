//! Running the exporter binary as operators do: on a free loopback port, with signals, killed
//! when the test drops it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running exporter process.
pub struct Exporter {
    /// The process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the binary with `args` and waits until it is ready.
pub async fn start(args: &[String]) -> Exporter {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_balena-exporter"))
        .args(args)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = awc::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/-/ready")).send().await.is_err() {
        assert!(Instant::now() < deadline, "exporter did not start");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    Exporter { child, base }
}

/// Sends `sig` (`HUP`, `TERM`) to the process.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// GET `url`: status and body.
pub async fn body(url: &str) -> (u16, String) {
    let mut r = awc::Client::new().get(url).send().await.unwrap();
    let b = r.body().limit(64 << 20).await.unwrap();
    (
        r.status().as_u16(),
        String::from_utf8_lossy(&b).into_owned(),
    )
}
