//! The `balena-exporter` binary: flags, logging, then [`startup::run`].

use balena_exporter::cli::Cli;
use balena_exporter::{startup, telemetry};
use clap::Parser;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(&cli.log_level, cli.log_format, std::io::stderr);
    match startup::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balena-exporter: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
