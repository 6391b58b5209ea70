//! The `balena-exporter` binary: flags, logging, config, then serve.

use anyhow::Context;
use balena_exporter::cli::Cli;
use balena_exporter::config::{self, LoadOptions, SharedConfig};
use balena_exporter::simulator::{Simulator, WorldSpec};
use balena_exporter::startup::{spawn_sighup_reloader, Application, Settings};
use balena_exporter::{telemetry, web_config};
use clap::Parser;

/// The `--demo` config, embedded so `--demo` works from any directory.
const DEMO_CONFIG: &str = include_str!("../config/demo.yml");

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(&cli.log_level, cli.log_format, std::io::stderr);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            eprintln!("balena-exporter: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut demo = None;
    let config = if cli.demo {
        let sim = Simulator::start(&WorldSpec::demo(), "127.0.0.1:0")
            .context("starting the demo simulator")?;
        let yaml = DEMO_CONFIG.replace("http://127.0.0.1:1", &sim.url());
        let c = config::from_yaml_str_with_env(&yaml, "config/demo.yml (embedded)")?;
        tracing::info!(simulator = %sim.url(), "demo mode: using the built-in balena API simulator");
        demo = Some(sim);
        SharedConfig::new(c, None)
    } else {
        let opts = LoadOptions {
            files: cli.config_file.clone(),
            expand_env: cli.expand_env,
        };
        let c = config::load(&opts)?;
        if cli.config_check {
            println!(
                "{}: config file is ok ({} targets, {} auths, {} modules)",
                opts.describe(),
                c.targets.len(),
                c.auths.len(),
                c.modules.len()
            );
            return Ok(());
        }
        SharedConfig::new(c, Some(opts))
    };
    let web = match &cli.web_config_file {
        Some(path) => Some(web_config::load(path)?),
        None => None,
    };
    let app = Application::build(Settings {
        config,
        listen: cli.listen.clone(),
        timeout_offset: cli.timeout_offset,
        workers: 0,
        route_prefix: cli.route_prefix(),
        history_limit: cli.history_limit,
        web,
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
    spawn_sighup_reloader(app.state());
    let handle = app.handle();
    actix_rt::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        handle.stop(true).await;
    });
    #[cfg(unix)]
    {
        let handle = app.handle();
        actix_rt::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                term.recv().await;
                tracing::info!("received SIGTERM, finishing in-flight requests");
                handle.stop(true).await;
            }
        });
    }
    app.run_until_stopped().await?;
    if let Some(sim) = demo {
        sim.stop().await;
    }
    Ok(())
}
