//! The `balena-exporter` binary: flags, logging, config, then serve.

use std::path::PathBuf;

use balena_exporter::cli::{Cli, DEFAULT_CONFIG_FILES};
use balena_exporter::config::{self, LoadOptions, SharedConfig};
use balena_exporter::startup::{spawn_sighup_reloader, Application, Settings};
use balena_exporter::{telemetry, web_config};
#[cfg(feature = "demo")]
use balena_simulator::{Simulator, WorldSpec};
use clap::Parser;

/// The `--demo` config, embedded so `--demo` works from any directory.
#[cfg(feature = "demo")]
const DEMO_CONFIG: &str = include_str!("../config/demo.yml");

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(&cli.log_level, cli.log_format, std::io::stderr);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balena-exporter: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
    Ok((config::load(&opts)?, Some(opts)))
}

/// The demo: the simulator on a free loopback port and the embedded config pointing at it.
#[cfg(feature = "demo")]
fn start_demo() -> anyhow::Result<(Simulator, config::Config)> {
    use anyhow::Context as _;
    let sim = Simulator::start(&WorldSpec::demo(), "127.0.0.1:0")
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

/// Long on purpose: the start-up sequence (config, signals, server, stop) read top to bottom;
/// each step is a few lines and needs the ones before it.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut demo = None;
    let config = if cli.demo {
        let (sim, c) = start_demo()?;
        demo = Some(sim);
        SharedConfig::new(c, None)
    } else {
        let (config, opts) = load_config(&cli)?;
        if cli.config_check {
            let source = opts
                .as_ref()
                .map(|o| o.describe())
                .unwrap_or_else(|| config::ENV_SOURCE.to_string());
            println!(
                "{source}: config file is ok ({} targets, {} auths, {} modules)",
                config.targets.len(),
                config.auths.len(),
                config.modules.len()
            );
            return Ok(());
        }
        SharedConfig::new(config, opts)
    };
    let web = match &cli.web_config_file {
        Some(path) => Some(web_config::load(path)?),
        None => None,
    };
    // Signal handlers before the server answers anything: a SIGTERM or SIGHUP that arrives as
    // soon as `/-/ready` does must not meet the default action (the process killed).
    #[cfg(unix)]
    let (term, hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::hangup()).ok(),
        )
    };
    let app = Application::build(Settings {
        config,
        listen: cli.listen.clone(),
        timeout_offset: cli.timeout_offset,
        workers: 0,
        route_prefix: cli.route_prefix(),
        history_limit: cli.history_limit,
        web,
        discovery_interval: Some(cli.discovery_interval),
    })?;
    for addr in app.addrs() {
        tracing::info!(address = %addr, "listening");
    }
    let port = app.port();
    if let Some(first) = app.state().config.snapshot().targets.keys().next() {
        let prefix = cli.route_prefix();
        eprintln!(
            "balena-exporter {} listening on port {port}: open http://localhost:{port}{prefix}/ or http://localhost:{port}{prefix}/probe?target={first}",
            env!("CARGO_PKG_VERSION")
        );
    }
    #[cfg(unix)]
    spawn_sighup_reloader(app.state(), hup);
    // On a stop signal a reload in progress gives up at once (it never holds the stop), then
    // in-flight requests finish.
    let handle = app.handle();
    let state = app.state();
    actix_rt::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        state.stopping.stop();
        handle.stop(true).await;
    });
    #[cfg(unix)]
    {
        let handle = app.handle();
        let state = app.state();
        actix_rt::spawn(async move {
            if let Some(mut term) = term {
                term.recv().await;
                tracing::info!("received SIGTERM, finishing in-flight requests");
                state.stopping.stop();
                handle.stop(true).await;
            }
        });
    }
    app.run_until_stopped().await?;
    #[cfg(feature = "demo")]
    if let Some(sim) = demo {
        sim.stop().await;
    }
    #[cfg(not(feature = "demo"))]
    let _ = demo;
    Ok(())
}
