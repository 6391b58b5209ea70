//! An in-process balena API: the `--demo` backend and the upstream of every test.
//!
//! It serves `/v7/{device,application,organization,release,device_type,device_tag}` with
//! keys, `$count`, `$select`, `$filter`, `$expand`, `$orderby`, `$top` and `$skip`, plus
//! `/actor/v1/whoami`, `/user/v1/whoami` and `/ping`, and behaves as the balena API reference
//! describes: guest semantics for unknown tokens, computed fields only when selected, the
//! `{"d":[...]}` envelope, balena's error bodies. Faults (status codes, 429, delays, broken
//! bodies) are injected through [`SimState::faults`]; every request is logged for tests.

mod odata;
mod server;
mod world;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::{dev::ServerHandle, web, App, HttpServer};

pub use odata::{parse_filter, parse_request, Expr, Lit, Malformed};
pub use server::{Fault, FaultRule, LoggedRequest, SimState};
pub use world::{
    overall_status, Caller, FleetSpec, OrgSpec, Row, Scenario, UserSpec, World, WorldSpec, SERVICES,
};

/// A running simulator.
pub struct Simulator {
    /// Data, faults and request log, shared with the server.
    pub state: Arc<SimState>,
    addr: SocketAddr,
    handle: ServerHandle,
}

impl Simulator {
    /// Generates the world and serves it on `listen` (port 0 picks a free port). Must be called
    /// inside an actix runtime (the server is spawned on it).
    pub fn start(spec: &WorldSpec, listen: &str) -> std::io::Result<Self> {
        Self::start_with_tls(spec, listen, None)
    }

    /// Like [`Simulator::start`], serving HTTPS with `tls` when given.
    pub fn start_with_tls(
        spec: &WorldSpec,
        listen: &str,
        tls: Option<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        Self::serve(World::generate(spec), listen, tls)
    }

    /// Serves a world built elsewhere (e.g. [`World::from_dump`]) on `listen`.
    pub fn serve(
        world: World,
        listen: &str,
        tls: Option<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let state = Arc::new(SimState::default());
        *state.world.write().expect("fresh lock") = world;
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(server::dispatch))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1);
        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls)?,
            None => server.listen(listener)?,
        }
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Self {
            state,
            addr,
            handle,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a fault rule (first match wins).
    pub fn inject(&self, rule: FaultRule) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.push(rule);
        }
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.clear();
        }
    }

    /// Runs `f` with the world for reading (ground truth in tests).
    pub fn with_world<T>(&self, f: impl FnOnce(&World) -> T) -> T {
        f(&self.state.world.read().expect("world lock"))
    }

    /// Runs `f` with the world for changing it.
    pub fn with_world_mut<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        f(&mut self.state.world.write().expect("world lock"))
    }

    /// Requests received so far under a path prefix.
    pub fn requests(&self, prefix: &str) -> usize {
        self.state.count_requests(prefix)
    }

    /// Requests a probe makes itself: every `/v7/` request but the background reads' (image
    /// installs and images for services; releases, configuration variables and the devices'
    /// targets for the host layer).
    pub fn probe_requests(&self) -> usize {
        const BACKGROUND: [&str; 5] = [
            "/v7/image",
            "/v7/image_install",
            "/v7/release",
            "/v7/application_config_variable",
            "/v7/device_config_variable",
        ];
        self.requests("/v7/")
            - BACKGROUND.iter().map(|p| self.requests(p)).sum::<usize>()
            - self.target_listings()
    }

    /// Device listings a probe makes (`/v7/device`, not the host read's listing of targets).
    pub fn device_listings(&self) -> usize {
        self.requests("/v7/device") - self.target_listings()
    }

    /// The host read's listings of the devices' targets (`/v7/device` selecting only them).
    fn target_listings(&self) -> usize {
        self.state.log.lock().map_or(0, |log| {
            log.iter()
                .filter(|r| {
                    r.path == "/v7/device"
                        && r.query
                            .contains("$select=id,should_be_operated_by__release")
                })
                .count()
        })
    }

    /// Stops the server.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}
