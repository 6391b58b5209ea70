//! Builds and runs the server: [`run`] is the start-up sequence of the binary (the config from
//! the flags or the demo, `--config.check`, the web config, the signal handlers, serving),
//! and [`Application::build`] binds every listen address (port 0 in tests), wires the routes
//! and the per-worker balena client. Reload and stop live in [`crate::lifecycle`].

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;

use crate::cli::{Cli, DEFAULT_CONFIG_FILES};
use crate::config::{self, LoadOptions, SharedConfig};
use crate::discovery::Discovery;
use crate::history::History;
use crate::lifecycle::{Lifecycle, Signals};
use crate::metrics::ExporterMetrics;
use crate::probe::prober::Prober;
use crate::routes::{self, AppState};
use crate::web_config::{require_basic_auth, BasicAuth, WebConfig};

/// The `--demo` config, embedded so `--demo` works from any directory.
#[cfg(feature = "demo")]
const DEMO_CONFIG: &str = include_str!("../config/demo.yml");

/// The binary's start-up sequence, read top to bottom: the config (the files given, the first
/// default file, the environment, or the demo), `--config.check`, the web config, the signal
/// handlers (before the server answers anything), then serving until a stop signal.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let (config, demo) = if cli.demo {
        let (sim, c) = start_demo()?;
        (SharedConfig::demo(c), Some(sim))
    } else {
        let (config, opts) = load_config(&cli)?;
        if cli.config_check {
            let source = opts
                .as_ref()
                .map(|o| o.describe())
                .unwrap_or_else(|| config::ENV_SOURCE.to_string());
            println!(
                "{source}: config file is ok ({}, {}, {})",
                routes::count(config.targets.len(), "target"),
                routes::count(config.auths.len(), "auth"),
                routes::count(config.modules.len(), "module")
            );
            return Ok(());
        }
        (SharedConfig::new(config, opts), None)
    };
    let web = match &cli.web_config_file {
        Some(path) => Some(crate::web_config::load(path)?),
        None => None,
    };
    let signals = Signals::install();
    let app = Application::build(Settings {
        config,
        listen: cli.listen.clone(),
        timeout_offset: cli.timeout_offset,
        workers: 0,
        route_prefix: cli.route_prefix(),
        history_limit: cli.history_limit,
        web,
        health_without_auth: cli.health_without_auth,
        discovery_interval: Some(cli.discovery_interval),
    })?;
    for addr in app.addrs() {
        tracing::info!(address = %addr, "listening");
    }
    let banner = banner(&app, &cli.route_prefix(), cli.demo);
    if cli.demo && cli.demo_first_probes && cli.web_config_file.is_none() {
        // The banner comes after the demo's first probes, as the last thing said at start.
        warm_up(&app, &cli.route_prefix(), banner);
    } else {
        eprintln!("{banner}");
    }
    app.serve(signals).await?;
    #[cfg(feature = "demo")]
    if let Some(sim) = demo {
        sim.stop().await;
    }
    #[cfg(not(feature = "demo"))]
    let _ = demo;
    Ok(())
}

/// `--demo` probes every target once as the server starts, through `/probe` as Prometheus
/// would, so that the landing page tells each fleet's story from the first page load (the
/// history, the log and the self-metrics record them as any probe).
fn warm_up(app: &Application, prefix: &str, then_say: String) {
    let Some(addr) = app.addrs().first().copied() else {
        return;
    };
    let ip = match addr.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    let base = format!("http://{}{prefix}", SocketAddr::new(ip, addr.port()));
    let targets: Vec<String> = app
        .state()
        .config
        .snapshot()
        .targets
        .keys()
        .cloned()
        .collect();
    actix_rt::spawn(async move {
        let client = awc::Client::default();
        for target in targets {
            let url = format!("{base}/probe?target={target}");
            let sent = client
                .get(url)
                .insert_header(("X-Prometheus-Scrape-Timeout-Seconds", "10"))
                .send()
                .await;
            if let Ok(mut answer) = sent {
                let _ = answer.body().limit(64 << 20).await;
            }
        }
        eprintln!("{then_say}");
    });
}

/// What to open, said last at start: under `--demo` a short block (the landing page, a fleet,
/// a failing probe explained), else the landing page and the target count.
fn banner(app: &Application, prefix: &str, demo: bool) -> String {
    let base = format!("http://localhost:{}{prefix}", app.port());
    let config = app.state().config.snapshot();
    let version = env!("CARGO_PKG_VERSION");
    if !demo {
        return format!(
            "balena-exporter {version} listening: open {base}/ ({})",
            routes::count(config.targets.len(), "target")
        );
    }
    let pick = |wanted: &str| {
        config
            .targets
            .keys()
            .find(|k| k.as_str() == wanted)
            .or_else(|| config.targets.keys().next())
            .cloned()
            .unwrap_or_default()
    };
    let (fleet, failing) = (pick("kiosks"), pick("broken-token"));
    let lines = [
        format!("balena-exporter {version} is running on its demo: a built-in balena API simulator, no token, no network."),
        format!("  open  {base}/    every target with its last result"),
        format!("  try   {base}/probe?target={fleet}    one fleet's metrics"),
        format!("        {base}/probe?target={failing}&debug=true    a failing probe, explained"),
        "  stop  Ctrl-C".to_string(),
    ];
    format!("\n{}\n", lines.join("\n"))
}

/// The config files given, else the first default file that exists, else the environment.
fn load_config(cli: &Cli) -> anyhow::Result<(config::Config, Option<LoadOptions>)> {
    let files = if cli.config_file.is_empty() {
        DEFAULT_CONFIG_FILES
            .iter()
            .map(PathBuf::from)
            .filter(|f| f.exists())
            .take(1)
            .collect()
    } else {
        cli.config_file.clone()
    };
    if files.is_empty() {
        let defaults: Vec<PathBuf> = DEFAULT_CONFIG_FILES.iter().map(PathBuf::from).collect();
        let config =
            config::from_env()?.ok_or_else(|| anyhow::anyhow!(config::how_to_start(&defaults)))?;
        tracing::info!(
            from = config::ENV_SOURCE,
            "no config file: configured from the environment"
        );
        return Ok((config, None));
    }
    let opts = LoadOptions {
        files,
        expand_env: cli.expand_env,
    };
    let config = config::load(&opts)?;
    // The parse trees of a large file are garbage now: hand their pages back (lifecycle.rs
    // does the same after each reload).
    crate::memory::return_freed_memory();
    Ok((config, Some(opts)))
}

/// The demo: the simulator on a free loopback port and the embedded config pointing at it.
#[cfg(feature = "demo")]
fn start_demo() -> anyhow::Result<(balena_simulator::Simulator, config::Config)> {
    let sim =
        balena_simulator::Simulator::start(&balena_simulator::WorldSpec::demo(), "127.0.0.1:0")
            .context("starting the demo simulator")?;
    let yaml = DEMO_CONFIG.replace("http://127.0.0.1:1", &sim.url());
    let c = config::from_yaml_str_with_env(&yaml, "config/demo.yml (embedded)")?;
    tracing::info!(simulator = %sim.url(), "demo mode: using the built-in balena API simulator");
    Ok((sim, c))
}

/// Without the `demo` feature there is no simulator to run.
#[cfg(not(feature = "demo"))]
fn start_demo() -> anyhow::Result<(std::convert::Infallible, config::Config)> {
    anyhow::bail!(
        "--demo needs the `demo` feature (built in by default; this binary was built without it)"
    )
}

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
    /// `--web.health-without-auth`: the health paths answer without basic auth.
    pub health_without_auth: bool,
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
            health_without_auth: false,
            discovery_interval: None,
        }
    }
}

/// The state every worker shares, with its background tasks started: the cache sweeper, and
/// the discovery of org and `all` targets when asked for.
fn app_state(
    config: SharedConfig,
    timeout_offset: Duration,
    history_limit: usize,
    discovery_interval: Option<Duration>,
) -> web::Data<AppState> {
    let metrics = Arc::new(ExporterMetrics::new());
    let config = Arc::new(config);
    let discovery = Arc::new(Discovery::default());
    let lifecycle = Lifecycle::new(config.clone(), metrics.clone(), discovery.clone());
    let state = web::Data::new(AppState {
        config,
        metrics: metrics.clone(),
        timeout_offset,
        prober: Arc::new(Prober::new(metrics)),
        history: History::new(history_limit),
        discovery,
        lifecycle: Arc::new(lifecycle),
    });
    spawn_cache_sweeper(state.clone().into_inner());
    if let Some(interval) = discovery_interval {
        crate::discovery::spawn(
            state.discovery.clone(),
            state.config.clone(),
            state.prober.clone(),
            interval,
        );
    }
    state
}

/// The web config's basic auth users, with the health paths exempt under
/// `--web.health-without-auth`.
fn basic_auth(web_config: &WebConfig, health_without_auth: bool, prefix: &str) -> BasicAuth {
    let users = BasicAuth::new(web_config.basic_auth_users.clone());
    if !health_without_auth {
        return users;
    }
    users.exempting(vec![
        format!("{prefix}/-/healthy"),
        format!("{prefix}/-/ready"),
    ])
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
        let state = app_state(
            settings.config,
            settings.timeout_offset,
            settings.history_limit,
            settings.discovery_interval,
        );
        let (web_config, tls) = settings.web.unwrap_or_default();
        let basic_auth = web::Data::new(basic_auth(
            &web_config,
            settings.health_without_auth,
            &settings.route_prefix,
        ));
        let rate_limit = web::Data::new(
            web_config
                .rate_limit
                .as_ref()
                .filter(|r| !r.interval.is_zero())
                .map(|r| crate::web_config::rate_limit::RateLimit::new(r.interval, r.burst)),
        );
        let prefix = settings.route_prefix.clone();
        let shared = state.clone();
        let mut server = HttpServer::new(move || {
            let client = shared.prober.client();
            let prefix = prefix.clone();
            let headers = web_config.response_headers();
            App::new()
                .app_data(shared.clone())
                .app_data(basic_auth.clone())
                .app_data(rate_limit.clone())
                .app_data(web::Data::new(client))
                .wrap(middleware::Compress::default())
                .wrap(middleware::from_fn(no_identity_encoding))
                .wrap(middleware::from_fn(require_basic_auth))
                .wrap(middleware::from_fn(
                    crate::web_config::rate_limit::limit_rate,
                ))
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

    /// Serves with the process' signal handlers ([`Lifecycle::handle_signals`]: SIGHUP
    /// reloads, SIGTERM and Ctrl-C stop) until stopped.
    pub async fn serve(self, signals: Signals) -> std::io::Result<()> {
        self.state.lifecycle.handle_signals(signals, self.handle());
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
            .route("/", get().to(routes::landing))
            .route("/probe", get().to(routes::probe))
            .route("/probe", web::route().to(get_only))
            .route("/metrics", get().to(routes::metrics))
            .route("/config", get().to(routes::config))
            .route("/logs", get().to(routes::logs))
            .route("/sd", get().to(routes::sd))
            .route("/-/healthy", get().to(routes::healthy))
            .route("/-/ready", get().to(routes::ready))
            .route("/-/reload", web::post().to(routes::reload))
            .route("/-/reload", web::route().to(method_not_allowed)),
    );
}

/// A route for GET and HEAD (HEAD answers GET's head without the body, as HTTP says).
fn get() -> actix_web::Route {
    use actix_web::guard;
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// `Content-Encoding: identity` tells the compression middleware to leave an answer alone; it
/// is not sent (no encoding is said by no header).
async fn no_identity_encoding(
    req: actix_web::dev::ServiceRequest,
    next: middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    let identity = actix_web::http::header::CONTENT_ENCODING;
    if headers.get(&identity).is_some_and(|v| v == "identity") {
        headers.remove(&identity);
    }
    Ok(res)
}

async fn get_only() -> actix_web::HttpResponse {
    actix_web::HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "GET, HEAD"))
        .body("Only GET requests allowed\n")
}

async fn method_not_allowed() -> actix_web::HttpResponse {
    actix_web::HttpResponse::MethodNotAllowed()
        .insert_header(("Allow", "POST"))
        .body("Only POST requests allowed\n")
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
                crate::memory::return_freed_memory();
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
