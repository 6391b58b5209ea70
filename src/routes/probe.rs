//! `/probe?target=NAME[&module=M][&auth=A][&debug=true]`: looks the target up in the config
//! snapshot, computes the deadline, runs the probe against a fresh output, adds the
//! `probe_*` metrics and answers in text format. An upstream failure is HTTP 200 with
//! `probe_success 0`; only a bad request is a 4xx.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{AppState, TEXT_FORMAT};
use crate::balena::{BalenaClient, BalenaError, CallRecord, Session};
use crate::history::ProbeRecord;
use crate::metrics::{self as m, Exposition};
use crate::probe::body::{accepts_gzip, CompressedSeries, TextChunks};
use crate::probe::cache::{CacheKey, Source};
use crate::probe::{self, ProbeData};
use actix_web::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, VARY};
use std::sync::Arc;

/// Deadline used when Prometheus sends no `X-Prometheus-Scrape-Timeout-Seconds` (as blackbox).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The parameters of a `/probe` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeParams {
    /// A key of `targets:`.
    pub target: String,
    /// A key of `modules:`, overriding the target's.
    pub module: Option<String>,
    /// A key of `auths:` the target allows.
    pub auth: Option<String>,
    /// Answer with the debug text instead of metrics.
    pub debug: bool,
}

impl ProbeParams {
    /// Reads the query string; the error is the one-line 400 reason and a bounded label.
    pub fn parse(query: &str) -> Result<Self, (&'static str, String)> {
        let mut p = ProbeParams::default();
        let (mut target, mut module, mut auth) = (None, None, None);
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match k.as_ref() {
                "target" => &mut target,
                "module" => &mut module,
                "auth" => &mut auth,
                "debug" => {
                    p.debug = v == "true" || v == "1";
                    continue;
                }
                _ => continue,
            };
            if slot.is_some() {
                return Err((
                    "repeated_parameter",
                    format!("parameter {k:?} given more than once"),
                ));
            }
            *slot = Some(v.into_owned());
        }
        p.target = target
            .filter(|t| !t.is_empty())
            .ok_or(("missing_target", "Target parameter is missing".to_string()))?;
        p.module = module.filter(|m| !m.is_empty());
        p.auth = auth.filter(|a| !a.is_empty());
        Ok(p)
    }
}

/// The probe deadline: the scrape timeout header minus `offset`, or 120 s without it.
/// Err for a header that is not a number.
pub fn effective_timeout(header: Option<&str>, offset: Duration) -> Result<Duration, String> {
    let scrape = match header {
        None => return Ok(DEFAULT_TIMEOUT.saturating_sub(offset)),
        Some(h) => h
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| format!("invalid X-Prometheus-Scrape-Timeout-Seconds {h:?}"))?,
    };
    if scrape == 0.0 {
        return Ok(DEFAULT_TIMEOUT.saturating_sub(offset));
    }
    let scrape = Duration::from_secs_f64(scrape.min(86_400.0));
    // Leave the offset for the answer, but never less than half the scrape timeout to work with.
    Ok(scrape.saturating_sub(offset).max(scrape / 2))
}

fn bad_request(state: &AppState, reason: &'static str, msg: String) -> HttpResponse {
    state
        .metrics
        .request_errors
        .with_label_values(&[reason])
        .inc();
    HttpResponse::BadRequest()
        .content_type("text/plain; charset=utf-8")
        .body(format!("{msg}\n"))
}

/// The `/probe` handler.
pub async fn probe(
    req: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<BalenaClient>,
) -> HttpResponse {
    let started = Instant::now();
    let params = match ProbeParams::parse(req.query_string()) {
        Ok(p) => p,
        Err((reason, msg)) => return bad_request(&state, reason, msg),
    };
    let config = state.config.snapshot();
    let discovered;
    let target = match config.targets.get(&params.target) {
        Some(t) => t,
        None => match discovered_fleet(&state, &config, &params.target) {
            Some(t) => {
                discovered = t;
                &discovered
            }
            None => {
                return bad_request(
                    &state,
                    "unknown_target",
                    format!("Unknown target {:?}", params.target),
                );
            }
        },
    };
    let module_name = params.module.as_deref().unwrap_or(target.module_name());
    let Some(module) = config.modules.get(module_name) else {
        return bad_request(
            &state,
            "unknown_module",
            format!("Unknown module {module_name:?}"),
        );
    };
    let auth_name = match &params.auth {
        None => target.auth.as_str(),
        Some(a) if *a == target.auth || target.allowed_auths.contains(a) => a.as_str(),
        Some(a) => {
            return bad_request(
                &state,
                "unknown_auth",
                format!("Unknown auth {a:?} for target {:?}", params.target),
            )
        }
    };
    let Some(token) = config.auths.get(auth_name).and_then(|a| a.current()) else {
        return bad_request(
            &state,
            "unknown_auth",
            format!("Unknown auth {auth_name:?}"),
        );
    };
    let header = req
        .headers()
        .get("X-Prometheus-Scrape-Timeout-Seconds")
        .map(|h| h.to_str().unwrap_or("?"));
    let timeout = match effective_timeout(header, state.timeout_offset) {
        Ok(t) => t,
        Err(msg) => return bad_request(&state, "bad_timeout", msg),
    };

    let deadline = started + timeout;
    let session = Session::new(&client, &config.api, auth_name, &token.token, deadline);
    if let Some(why) = &token.kept_because {
        tracing::warn!(auth = auth_name, "token file not used: {why}");
        session.note(format_args!("auth {auth_name}: token file not used: {why}"));
    }
    let key = CacheKey {
        target: params.target.clone(),
        module: module_name.to_string(),
        auth: auth_name.to_string(),
        generation: config.generation,
    };
    let scope = target.scope();
    let rows = probe::FleetRowsAt {
        rows: &state.fleet_rows,
        auth: auth_name,
        generation: config.generation,
        ttl: config.api.fleet_cache_ttl,
    };
    let (result, age, source) = state
        .cache
        .get_or_fetch(key, config.api.cache_ttl, deadline, || async {
            match actix_rt::time::timeout(timeout, probe::fetch(&session, &scope, module, &rows))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(BalenaError::Timeout(timeout)),
            }
        })
        .await;
    match source {
        Source::Cache => state.metrics.cache_hits.with_label_values(&["cache"]).inc(),
        Source::Shared => state
            .metrics
            .cache_hits
            .with_label_values(&["shared"])
            .inc(),
        Source::Fetched => {}
    }
    let duration = started.elapsed();
    let calls = session.calls();
    let outcome = match &result {
        Ok(_) => "success",
        Err(e) => e.reason(),
    };
    let m = &state.metrics;
    m.probes
        .with_label_values(&[&params.target, module_name, outcome])
        .inc();
    m.probe_duration
        .with_label_values(&[module_name])
        .observe(duration.as_secs_f64());
    log_outcome(
        &params.target,
        module_name,
        auth_name,
        &result,
        &calls,
        source,
        age,
        duration,
    );

    let log = probe_log(
        &params.target,
        module_name,
        module,
        &result,
        source,
        age,
        &session.notes(),
    );
    state.history.add(ProbeRecord {
        id: 0,
        time: std::time::SystemTime::now(),
        target: params.target.clone(),
        module: module_name.to_string(),
        result: outcome,
        duration,
        log: log.clone(),
    });

    let mut head = Exposition::new();
    head.gauge(
        m::PROBE_SUCCESS,
        &[],
        if result.is_ok() { 1.0 } else { 0.0 },
    );
    head.gauge(m::PROBE_DURATION, &[], duration.as_secs_f64());
    head.gauge(m::PROBE_TIMEOUT, &[], timeout.as_secs_f64());
    head.gauge(m::PROBE_API_REQUESTS, &[], calls.len() as f64);
    if result.is_ok() {
        head.gauge(m::PROBE_DATA_AGE, &[], age.as_secs_f64());
    }
    let mut head_text = String::with_capacity(2048);
    head.render_into(&mut head_text);
    let empty = CompressedSeries::default();
    let series = result.as_ref().map(|d| &d.series).unwrap_or(&empty);
    // Per-device series kept as values (`compact_cache`) are rendered for this answer.
    let compact = result.as_ref().ok().and_then(|d| d.compact.clone());
    if params.debug {
        let mut text = log;
        text.push_str("\nMetrics that would have been returned:\n");
        text.push_str(&head_text);
        text.push_str(&String::from_utf8_lossy(&series.text()));
        for chunk in compact.iter().flat_map(|c| c.render(64 * 1024)) {
            text.push_str(&chunk);
        }
        return HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(text);
    }
    let accept = req
        .headers()
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let mut resp = HttpResponse::Ok();
    resp.content_type(TEXT_FORMAT)
        .insert_header((VARY, "Accept-Encoding"));
    if let Some(compact) = compact {
        // Rendered and compressed while it is sent: the length is not known ahead.
        let text = compact.render(64 * 1024);
        if accepts_gzip(accept) {
            let parts = series
                .gzip_then(head_text.as_bytes(), text)
                .map(Ok::<_, std::convert::Infallible>);
            return resp
                .insert_header((CONTENT_ENCODING, "gzip"))
                .streaming(futures_util::stream::iter(parts));
        }
        let chunks = std::iter::once(web::Bytes::from(head_text))
            .chain(series.text_chunks(64 * 1024))
            .chain(text.map(web::Bytes::from))
            .map(Ok::<_, std::convert::Infallible>);
        return resp
            .insert_header((CONTENT_ENCODING, "identity"))
            .streaming(futures_util::stream::iter(chunks));
    }
    if accepts_gzip(accept) {
        // Streamed in slices of the cached pieces (megabytes for a large fleet), which every
        // concurrent answer shares instead of copying them.
        let answer = series.gzip_after(head_text.as_bytes());
        let len = answer.len() as u64;
        let parts = futures_util::stream::iter(
            answer
                .into_pieces(ANSWER_CHUNK)
                .map(Ok::<_, std::convert::Infallible>),
        );
        return resp
            .insert_header((CONTENT_ENCODING, "gzip"))
            .body(SizedStream::new(len, parts));
    }
    // Without gzip the text is inflated as it is sent, 64 KiB at a time.
    let len = (head_text.len() + series.len()) as u64;
    let head = futures_util::stream::once(async move { Ok(web::Bytes::from(head_text)) });
    let body = futures_util::StreamExt::chain(head, inflated(series.shared_pieces()));
    resp.insert_header((CONTENT_ENCODING, "identity"))
        .body(SizedStream::new(len, body))
}

/// The slice of an answer written at a time; each connection's write buffer holds about one.
/// Measured with `examples/burst.rs` (1,000 clients, one cached 10,000-device target): peak
/// RSS 68 MiB with gzip and 50 MiB without at 16 KiB, 99 and 132 MiB at 64 KiB
/// (docs/reliability.md).
const ANSWER_CHUNK: usize = 16 * 1024;

/// At most this many answers without gzip inflate at once. Each holds an inflater and a
/// 64 KiB chunk (~140 KB with the connection's buffers): a burst of 1,000 such answers waits
/// its turn here instead of holding hundreds of megabytes.
const MAX_INFLATING: usize = 32;

static INFLATING: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(MAX_INFLATING)));

/// The series' text, inflated 64 KiB at a time once one of [`MAX_INFLATING`] turns is free
/// (the inflater is made only then, and dropped with the turn at the end).
fn inflated(
    pieces: Vec<web::Bytes>,
) -> impl futures_util::Stream<Item = Result<web::Bytes, std::convert::Infallible>> {
    type Turn = (tokio::sync::OwnedSemaphorePermit, TextChunks);
    let start: (Option<Vec<web::Bytes>>, Option<Turn>) = (Some(pieces), None);
    futures_util::stream::unfold(start, |(pieces, turn)| async move {
        let (permit, mut chunks) = match (pieces, turn) {
            (_, Some(turn)) => turn,
            (Some(pieces), None) => (
                INFLATING.clone().acquire_owned().await.ok()?,
                TextChunks::new(pieces, ANSWER_CHUNK),
            ),
            (None, None) => return None,
        };
        let next = chunks.next()?;
        Some((Ok(next), (None, Some((permit, chunks)))))
    })
}

/// `<org or all target>/<fleet slug>`, for a fleet that discovery found under that target:
/// probed as a fleet target with the parent's auth and module.
fn discovered_fleet(
    state: &AppState,
    config: &crate::config::Config,
    name: &str,
) -> Option<crate::config::TargetConfig> {
    let (parent_name, slug) = name.split_once('/')?;
    let parent = config.targets.get(parent_name)?;
    if matches!(parent.scope(), crate::config::Scope::Fleet(_))
        || !state.discovery.knows(parent_name, config.generation, slug)
    {
        return None;
    }
    Some(crate::config::TargetConfig {
        fleet: Some(slug.to_string()),
        org: None,
        all: false,
        ..parent.clone()
    })
}

/// One log line per probe: target, result, duration, upstream calls; the failure reason,
/// endpoint and status when it failed.
#[allow(clippy::too_many_arguments)]
fn log_outcome(
    target: &str,
    module: &str,
    auth: &str,
    result: &Result<Arc<ProbeData>, BalenaError>,
    calls: &[CallRecord],
    source: Source,
    age: Duration,
    duration: Duration,
) {
    match result {
        Ok(data) => tracing::info!(
            target: "balena_exporter::probe",
            target_name = %target, module, result = "success",
            duration_seconds = duration.as_secs_f64(), upstream_calls = calls.len(),
            data_from = ?source, data_age_seconds = age.as_secs_f64(),
            fleets = data.fleets, devices = data.devices, "probe succeeded"
        ),
        Err(e) => {
            let last = calls.last();
            tracing::error!(
                target: "balena_exporter::probe",
                target_name = %target, module, auth, result = "failure",
                reason = e.reason(), error = %e,
                endpoint = last.map(|c| c.endpoint).unwrap_or("-"),
                status = last.and_then(|c| c.status).unwrap_or(0),
                duration_seconds = duration.as_secs_f64(), upstream_calls = calls.len(),
                "probe failed"
            )
        }
    }
}

/// The probe's log as `debug=true` and `/logs` show it: result, upstream requests and log
/// lines (never the Authorization header), and the module.
fn probe_log(
    target: &str,
    module_name: &str,
    module: &crate::config::ModuleConfig,
    result: &Result<Arc<ProbeData>, BalenaError>,
    source: Source,
    age: Duration,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Probe of target {target:?} with module {module_name:?}"
    );
    match result {
        Ok(d) => {
            let _ = writeln!(
                out,
                "Result: success ({} fleets, {} devices)",
                d.fleets, d.devices
            );
        }
        Err(e) => {
            let _ = writeln!(out, "Result: failure ({}): {e}", e.reason());
        }
    }
    let _ = match source {
        Source::Fetched => writeln!(out, "Data: fetched for this probe"),
        Source::Cache => writeln!(
            out,
            "Data: from the cache, {:.1}s old (api.cache_ttl)",
            age.as_secs_f64()
        ),
        Source::Shared => writeln!(
            out,
            "Data: shared with an identical probe's fetch in flight"
        ),
    };
    let _ = writeln!(out, "\nLog (upstream requests and decisions, in order):");
    for n in notes {
        let _ = writeln!(out, "{n}");
    }
    if notes.is_empty() {
        let _ = writeln!(out, "(no upstream request by this probe)");
    }
    let _ = writeln!(
        out,
        "\nModule configuration:\n{}",
        serde_yaml::to_string(module).unwrap_or_default()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_require_one_target() {
        assert_eq!(
            ProbeParams::parse("target=a&module=m")
                .unwrap()
                .module
                .as_deref(),
            Some("m")
        );
        assert_eq!(ProbeParams::parse("").unwrap_err().0, "missing_target");
        assert_eq!(
            ProbeParams::parse("target=").unwrap_err().0,
            "missing_target"
        );
        assert_eq!(
            ProbeParams::parse("target=a&target=b").unwrap_err().0,
            "repeated_parameter"
        );
        assert_eq!(
            ProbeParams::parse("target=x%27%20or%201").unwrap().target,
            "x' or 1"
        );
        assert!(ProbeParams::parse("target=a&debug=true").unwrap().debug);
    }

    #[test]
    fn timeout_follows_the_scrape_header_minus_the_offset() {
        let off = Duration::from_millis(500);
        let cases = [
            (None, Ok(Duration::from_millis(119_500))),
            (Some("0"), Ok(Duration::from_millis(119_500))),
            (Some("10"), Ok(Duration::from_millis(9_500))),
            (Some("2.5"), Ok(Duration::from_millis(2_000))),
            (Some("0.6"), Ok(Duration::from_millis(300))),
        ];
        for (h, want) in cases {
            assert_eq!(effective_timeout(h, off), want, "{h:?}");
        }
        assert!(effective_timeout(Some("ten"), off).is_err());
        assert!(effective_timeout(Some("-1"), off).is_err());
    }
}
