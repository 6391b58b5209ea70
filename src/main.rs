//! The `balena-exporter` binary: the allocator's settings, flags, logging, then
//! [`startup::run`].

use balena_exporter::cli::Cli;
use balena_exporter::{memory, startup, telemetry};
use clap::Parser;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let tuned = memory::tune_allocator();
    let cli = Cli::parse();
    telemetry::init(&cli.log_level, cli.log_format, std::io::stderr);
    for s in tuned {
        tracing::debug!(setting = s.env, value = s.value, "allocator tuned");
    }
    match startup::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("balena-exporter: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
