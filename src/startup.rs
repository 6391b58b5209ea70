//! Builds and runs the server: binds every listen address (port 0 in tests), wires the routes
//! and the per-worker balena client, and handles reloads (SIGHUP and `POST /-/reload`).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;

use crate::config::SharedConfig;
use crate::history::History;
use crate::metrics::ExporterMetrics;
use crate::probe::prober::Prober;
use crate::routes::{self, AppState};
use crate::web_config::{require_basic_auth, BasicAuth, WebConfig};

/// What [`Application::build`] needs.
pub struct Settings {
    /// The loaded config (reloadable when it came from a file).
    pub config: SharedConfig,
    /// Addresses to listen on.
    pub listen: Vec<String>,
    /// Subtracted from the scrape timeout.
    pub timeout_offset: Duration,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// Prefix of every route (`""` or `/something`).
    pub route_prefix: String,
    /// Probes kept in the history.
    pub history_limit: usize,
    /// TLS and basic auth from `--web.config.file`.
    pub web: Option<(WebConfig, Option<rustls::ServerConfig>)>,
    /// How often to list the fleets of org and `all` targets for `/sd` (None: never).
    pub discovery_interval: Option<Duration>,
}

impl Settings {
    /// Settings for tests and embedding: listen on `listen`, defaults for the rest, and no
    /// background discovery (its requests would be counted by tests).
    pub fn new(config: SharedConfig, listen: &str) -> Self {
        Self {
            config,
            listen: vec![listen.to_string()],
            timeout_offset: Duration::from_millis(500),
            workers: 2,
            route_prefix: String::new(),
            history_limit: 100,
            web: None,
            discovery_interval: None,
        }
    }
}

/// A bound, not yet running, exporter.
pub struct Application {
    addrs: Vec<SocketAddr>,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Binds the listeners and builds the server.
    pub fn build(settings: Settings) -> anyhow::Result<Self> {
        let metrics = Arc::new(ExporterMetrics::new());
        let state = web::Data::new(AppState {
            config: Arc::new(settings.config),
            metrics: metrics.clone(),
            timeout_offset: settings.timeout_offset,
            prober: Arc::new(Prober::new(metrics.clone())),
            history: History::new(settings.history_limit),
            discovery: Default::default(),
            stopping: Default::default(),
        });
        spawn_cache_sweeper(state.clone().into_inner());
        if let Some(interval) = settings.discovery_interval {
            crate::discovery::spawn(
                state.discovery.clone(),
                state.config.clone(),
                state.prober.clone(),
                interval,
            );
        }
        let (web_config, tls) = settings.web.unwrap_or_default();
        let basic_auth = web::Data::new(BasicAuth::new(web_config.basic_auth_users.clone()));
        let extra_headers: Vec<(String, String)> = web_config
            .http_server_config
            .iter()
            .flat_map(|h| h.headers.clone())
            .collect();
        let prefix = settings.route_prefix.clone();
        let shared = state.clone();
        let mut server = HttpServer::new(move || {
            let client = shared.prober.client();
            let prefix = prefix.clone();
            let headers = extra_headers
                .iter()
                .fold(middleware::DefaultHeaders::new(), |h, (k, v)| {
                    h.add((k.as_str(), v.as_str()))
                });
            App::new()
                .app_data(shared.clone())
                .app_data(basic_auth.clone())
                .app_data(web::Data::new(client))
                .wrap(middleware::Compress::default())
                .wrap(middleware::from_fn(require_basic_auth))
                .wrap(headers)
                .configure(|cfg| routes(cfg, &prefix))
        })
        .on_connect(no_delay)
        .shutdown_timeout(10)
        .disable_signals();
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let mut addrs = Vec::new();
        for addr in &settings.listen {
            let addr = crate::cli::normalize_listen(addr);
            let listener =
                TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;
            addrs.push(listener.local_addr()?);
            server = match &tls {
                Some(tls) => server.listen_rustls_0_23(listener, tls.clone())?,
                None => server.listen(listener)?,
            };
        }
        Ok(Self {
            addrs,
            server: server.run(),
            state,
        })
    }

    /// The first bound port (the real one when asked for port 0).
    pub fn port(&self) -> u16 {
        self.addrs.first().map(|a| a.port()).unwrap_or(0)
    }

    /// Every bound address.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Shared state (config handle, self-metrics).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until stopped.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// The route table, under `prefix` (`""` for `/`).
fn routes(cfg: &mut web::ServiceConfig, prefix: &str) {
    if !prefix.is_empty() {
        // `/` and `/prefix` lead to `/prefix/`, where the landing page's relative links work.
        for from in ["/", prefix] {
            let target = format!("{prefix}/");
            cfg.route(
                from,
                web::get().to(move || {
                    let target = target.clone();
                    async move {
                        actix_web::HttpResponse::Found()
                            .insert_header(("Location", target))
                            .finish()
                    }
                }),
            );
        }
    }
    cfg.service(
        web::scope(prefix)
            .route("/", web::get().to(routes::landing))
            .route("/probe", web::get().to(routes::probe))
            .route("/probe", web::route().to(get_only))
            .route("/metrics", web::get().to(routes::metrics))
            .route("/config", web::get().to(routes::config))
            .route("/logs", web::get().to(routes::logs))
            .route("/sd", web::get().to(routes::sd))
            .route("/-/healthy", web::get().to(routes::healthy))
            .route("/-/ready", web::get().to(routes::ready))
            .route("/-/reload", web::post().to(routes::reload))
            .route("/-/reload", web::route().to(method_not_allowed)),
    );
}

async fn get_only() -> actix_web::HttpResponse {
    actix_web::HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "GET"))
        .body("Only GET requests allowed\n")
}

async fn method_not_allowed() -> actix_web::HttpResponse {
    actix_web::HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "POST"))
        .body("Only POST requests allowed\n")
}

/// Reloads on every SIGHUP until the process ends. `hup` is made before the server starts
/// (a SIGHUP before the handler exists would end the process).
#[cfg(unix)]
pub fn spawn_sighup_reloader(state: web::Data<AppState>, hup: Option<tokio::signal::unix::Signal>) {
    actix_rt::spawn(async move {
        let Some(mut hup) = hup else {
            tracing::warn!("cannot install the SIGHUP handler; reload with POST /-/reload");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = routes::reload_and_record(&state).await;
        }
    });
}

/// Every second, drops expired probe results and fleet rows, so memory is handed back when
/// probes stop coming (a target removed, a reload that changed every key), not only when the
/// next probe looks.
fn spawn_cache_sweeper(state: Arc<AppState>) {
    actix_rt::spawn(async move {
        let mut tick = actix_rt::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if state.prober.sweep(&state.config.snapshot().api) {
                crate::telemetry::return_freed_memory();
            }
        }
    });
}

/// Sends small writes at once (TCP_NODELAY), as Go's net/http does: a streamed `/probe`
/// answer ends with an 8-byte gzip trailer that Nagle's algorithm would otherwise hold back
/// until the client's delayed ACK, ~40 ms per answer.
fn no_delay(conn: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    use actix_web::rt::net::TcpStream;
    let tcp = conn.downcast_ref::<TcpStream>().or_else(|| {
        conn.downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<TcpStream>>()
            .map(|tls| tls.get_ref().0)
    });
    if let Some(tcp) = tcp {
        let _ = tcp.set_nodelay(true);
    }
}
