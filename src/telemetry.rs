//! Logging: a tracing subscriber writing logfmt (the Prometheus family's default) or JSON.
//! The level comes from `--log.level` unless `RUST_LOG` is set.
//!
//! The HTTP libraries' own debug and trace lines are never written, at any level and whatever
//! `RUST_LOG` says ([`QUOTES_HEADS`]): they quote request and response heads as they parse
//! them (actix-http's decoder logs `illegal Content-Length: "<value>"`), and an upstream that
//! reflects the `Authorization` header into a malformed head would put the token in the log.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::cli::LogFormat;

/// Writes `time=… level=… msg=… key=value` lines.
pub struct Logfmt;

struct Fields<'a> {
    out: &'a mut String,
    msg: Option<String>,
}

fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\')
    {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = Some(value.to_string());
        } else {
            self.out
                .push_str(&format!(" {}={}", field.name(), quote(value)));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.msg = Some(text);
        } else {
            self.out
                .push_str(&format!(" {}={}", field.name(), quote(&text)));
        }
    }
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = String::new();
        let mut v = Fields {
            out: &mut fields,
            msg: None,
        };
        event.record(&mut v);
        let msg = v.msg.take().unwrap_or_default();
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        writeln!(
            w,
            "time={time} level={} source={} msg={}{fields}",
            meta.level().as_str().to_lowercase(),
            quote(meta.target()),
            quote(&msg)
        )
    }
}

/// Log targets (crates) whose debug and trace lines can quote an HTTP head, request or
/// response, and so a token: written at info and above only, whatever the level.
pub const QUOTES_HEADS: &[&str] = &["actix_http", "awc", "h2", "actix_tls", "actix_web::client"];

/// Whether a line may be written at all (see [`QUOTES_HEADS`]).
pub fn may_write(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO
        || !QUOTES_HEADS.iter().any(|t| {
            meta.target()
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// Installs the global subscriber writing to `writer`.
pub fn init<W>(level: &str, format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // actix-server's start-up chatter ("starting 2 workers", "starting service") stays out
    // unless asked for with RUST_LOG: the exporter says where it listens itself.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},actix_server=warn")));
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer = match format {
        LogFormat::Logfmt => layer.event_format(Logfmt).boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer.with_filter(filter_fn(may_write)))
        .try_init();
}
