//! Command-line flags, named in the Prometheus exporter family's dotted style.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The exporter's default port (in the exporter range 9100–9999).
pub const DEFAULT_PORT: u16 = 9759;

/// Config files tried, in order, when `--config.file` is not given.
pub const DEFAULT_CONFIG_FILES: &[&str] = &[
    "balena-exporter.yml",
    "/etc/balena-exporter/balena-exporter.yml",
];

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `time=… level=info msg="…" key=value`
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// Prometheus exporter for the balena cloud API: `/probe?target=NAME` answers with the fleet
/// and device metrics of a target named in the config file.
#[derive(Debug, Clone, Parser)]
#[command(name = "balena-exporter", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (YAML); repeat to merge several (each name defined in one file only).
    /// Without it: ./balena-exporter.yml, then /etc/balena-exporter/balena-exporter.yml, then
    /// the environment (BALENA_TOKEN or BALENA_TOKEN_FILE, BALENA_API_URL).
    #[arg(long = "config.file", value_name = "PATH")]
    pub config_file: Vec<PathBuf>,

    /// Validate the configuration, print the result and exit (0 when valid, 1 otherwise).
    #[arg(long = "config.check")]
    pub config_check: bool,

    /// Expand ${VAR} in `token` and `token_file` values (a missing variable is an error).
    #[arg(long = "config.expand-environment-variables")]
    pub expand_env: bool,

    /// Address to listen on (`:PORT` means every interface); repeatable.
    #[arg(
        long = "web.listen-address",
        value_name = "HOST:PORT",
        default_value = ":9759"
    )]
    pub listen: Vec<String>,

    /// Web configuration file (exporter-toolkit format): TLS and basic auth for every path.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,

    /// Answer `/-/healthy` and `/-/ready` without basic auth (TLS still applies): for kubelet
    /// probes, which cannot send credentials without putting them in the pod spec.
    #[arg(long = "web.health-without-auth")]
    pub health_without_auth: bool,

    /// URL under which the exporter is reached (e.g. behind a reverse proxy); its path is the
    /// default route prefix.
    #[arg(long = "web.external-url", value_name = "URL")]
    pub external_url: Option<url::Url>,

    /// Prefix of every route (default: the path of --web.external-url, else /).
    #[arg(long = "web.route-prefix", value_name = "PATH")]
    pub route_prefix: Option<String>,

    /// Probes kept for the landing page and /logs (failures are kept apart, as many again).
    #[arg(long = "history.limit", value_name = "N", default_value_t = 100)]
    pub history_limit: usize,

    /// How often to list the fleets of org and `all` targets (for per-fleet targets on /sd).
    #[arg(long = "discovery.interval", value_name = "DURATION", default_value = "5m", value_parser = parse_interval)]
    pub discovery_interval: Duration,

    /// Subtracted from Prometheus' scrape timeout to leave time to answer.
    #[arg(long = "web.timeout-offset", value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
    pub timeout_offset: Duration,

    /// Only log messages at this level or above (trace, debug, info, warn, error); RUST_LOG wins.
    #[arg(long = "log.level", default_value = "info", value_parser = ["trace", "debug", "info", "warn", "error"])]
    pub log_level: String,

    /// Log format.
    #[arg(long = "log.format", value_enum, default_value = "logfmt")]
    pub log_format: LogFormat,

    /// Run against the built-in balena API simulator with demo fleets: no token needed.
    #[arg(long = "demo")]
    pub demo: bool,

    /// Under `--demo`, probe every target once at start (so the landing page tells each
    /// fleet's story from the first load); `false` leaves that to the first scrapes.
    #[arg(long = "demo.first-probes", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub demo_first_probes: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::duration::parse(s)
        .ok_or_else(|| format!("invalid duration {s:?}; expected e.g. 500ms, 1s, at most 30d"))
}

/// A discovery interval: at least 1s (0s would list fleets in a loop).
fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short; expected at least 1s, e.g. 5m"));
    }
    Ok(d)
}

impl Cli {
    /// The route prefix: `--web.route-prefix`, else the path of `--web.external-url`, else
    /// empty (routes at `/`). Never ends with `/`.
    pub fn route_prefix(&self) -> String {
        let raw = self
            .route_prefix
            .clone()
            .or_else(|| self.external_url.as_ref().map(|u| u.path().to_string()))
            .unwrap_or_default();
        let trimmed = raw.trim_matches('/');
        if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        }
    }
}

/// `:9759` → `0.0.0.0:9759`; anything else as given.
pub fn normalize_listen(addr: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_in_dotted_style() {
        let cli = Cli::try_parse_from([
            "balena-exporter",
            "--config.file=x.yml",
            "--web.listen-address=127.0.0.1:1",
            "--web.listen-address=:2",
            "--log.format=json",
            "--web.timeout-offset=1s",
        ])
        .unwrap();
        assert_eq!(cli.config_file, [PathBuf::from("x.yml")]);
        assert_eq!(cli.listen, ["127.0.0.1:1", ":2"]);
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(cli.timeout_offset, Duration::from_secs(1));
        assert_eq!(normalize_listen(":2"), "0.0.0.0:2");
        assert_eq!(cli.route_prefix(), "");
        let cli =
            Cli::try_parse_from(["x", "--web.external-url=https://h.example/balena/"]).unwrap();
        assert_eq!(cli.route_prefix(), "/balena");
        let cli = Cli::try_parse_from([
            "x",
            "--web.external-url=https://h.example/a",
            "--web.route-prefix=/b/",
        ])
        .unwrap();
        assert_eq!(cli.route_prefix(), "/b");
    }

    #[test]
    fn a_discovery_interval_under_a_second_is_refused() {
        let e = Cli::try_parse_from(["x", "--discovery.interval=0s"]).unwrap_err();
        assert!(e.to_string().contains("expected at least 1s"), "{e}");
        let cli = Cli::try_parse_from(["x", "--discovery.interval=1s"]).unwrap();
        assert_eq!(cli.discovery_interval, Duration::from_secs(1));
    }
}
