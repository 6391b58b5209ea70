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
use crate::exposition::body::{accepts_gzip, CompressedSeries, TextChunks};
use crate::exposition::Exposition;
use crate::history::ProbeRecord;
use crate::metrics as m;
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

/// The `/probe` handler, as blackbox_exporter's: resolve the request (or answer 400), fetch
/// through the cache, record the outcome, answer.
pub async fn probe(
    req: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<BalenaClient>,
) -> HttpResponse {
    let started = Instant::now();
    let probe = match resolve(&req, &state) {
        Ok(p) => p,
        Err((reason, msg)) => return bad_request(&state, reason, msg),
    };
    let fetched = fetch(&probe, &state, &client, started).await;
    let duration = started.elapsed();
    let log = record(&state, &probe, &fetched, duration);
    let head = head_text(&probe, &fetched, duration);
    if probe.params.debug {
        return debug_answer(log, &head, &fetched);
    }
    let accept = req
        .headers()
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    metrics_answer(accept, head, &fetched)
}

/// Why a request is refused: the bounded reason (a label of
/// `balena_exporter_probe_request_errors_total`) and the one-line answer.
type BadRequest = (&'static str, String);

/// A `/probe` request resolved against the config in force: target, module, auth and token,
/// and the time it may take.
struct Resolved {
    params: ProbeParams,
    config: Arc<crate::config::Config>,
    target: crate::config::TargetConfig,
    module_name: String,
    auth_name: String,
    token: crate::config::token_file::Current,
    timeout: Duration,
}

impl Resolved {
    fn module(&self) -> &crate::config::ModuleConfig {
        &self.config.modules[&self.module_name]
    }
}

/// The request's target (configured, or a fleet discovery found under an org or `all` target),
/// module, auth and deadline; a 400 with one line for anything unknown or malformed.
fn resolve(req: &HttpRequest, state: &AppState) -> Result<Resolved, BadRequest> {
    let params = ProbeParams::parse(req.query_string())?;
    let config = state.config.snapshot();
    let target = match config.targets.get(&params.target) {
        Some(t) => t.clone(),
        None => discovered_fleet(state, &config, &params.target).ok_or_else(|| {
            let msg = format!("Unknown target {:?}", params.target);
            ("unknown_target", msg)
        })?,
    };
    let module_name = params
        .module
        .clone()
        .unwrap_or_else(|| target.module_name().to_string());
    if !config.modules.contains_key(&module_name) {
        let msg = format!("Unknown module {module_name:?}");
        return Err(("unknown_module", msg));
    }
    let auth_name = match &params.auth {
        None => target.auth.clone(),
        Some(a) if *a == target.auth || target.allowed_auths.contains(a) => a.clone(),
        Some(a) => {
            let msg = format!("Unknown auth {a:?} for target {:?}", params.target);
            return Err(("unknown_auth", msg));
        }
    };
    let token = config
        .auths
        .get(&auth_name)
        .and_then(|a| a.current())
        .ok_or_else(|| {
            let msg = format!("Unknown auth {auth_name:?}");
            ("unknown_auth", msg)
        })?;
    let header = req
        .headers()
        .get("X-Prometheus-Scrape-Timeout-Seconds")
        .map(|h| h.to_str().unwrap_or("?"));
    let timeout =
        effective_timeout(header, state.timeout_offset).map_err(|msg| ("bad_timeout", msg))?;
    Ok(Resolved {
        params,
        config,
        target,
        module_name,
        auth_name,
        token,
        timeout,
    })
}

/// What a probe got: the data (or why not), its age and origin, and this probe's upstream
/// calls and log lines.
struct Fetched {
    result: Result<Arc<ProbeData>, BalenaError>,
    age: Duration,
    source: Source,
    calls: Vec<CallRecord>,
    notes: Vec<String>,
}

/// The target's data through the cache (a young result, a fetch in flight, or a new fetch
/// bounded by the deadline).
async fn fetch(
    probe: &Resolved,
    state: &AppState,
    client: &BalenaClient,
    started: Instant,
) -> Fetched {
    let (config, auth) = (&probe.config, probe.auth_name.as_str());
    let deadline = started + probe.timeout;
    let session = Session::new(client, &config.api, auth, &probe.token.token, deadline);
    if let Some(why) = &probe.token.kept_because {
        tracing::warn!(auth, "token file not used: {why}");
        session.note(format_args!("auth {auth}: token file not used: {why}"));
    }
    let key = CacheKey {
        target: probe.params.target.clone(),
        module: probe.module_name.clone(),
        auth: auth.to_string(),
        generation: config.generation,
    };
    let scope = probe.target.scope();
    let rows = probe::FleetRowsAt {
        rows: &state.fleet_rows,
        auth,
        generation: config.generation,
        ttl: config.api.fleet_cache_ttl,
    };
    let timeout = probe.timeout;
    let work = probe::fetch(&session, &scope, probe.module(), &rows);
    state.cache.set_max_bytes(config.api.cache_max_bytes);
    let (result, age, source) = state
        .cache
        .get_or_fetch(key, config.api.cache_ttl, deadline, || async {
            actix_rt::time::timeout(timeout, work)
                .await
                .unwrap_or(Err(BalenaError::Timeout(timeout)))
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
    Fetched {
        result,
        age,
        source,
        calls: session.calls(),
        notes: session.notes(),
    }
}

/// Records the probe (self-metrics, one log line, the history) and returns its log text.
fn record(state: &AppState, probe: &Resolved, f: &Fetched, duration: Duration) -> String {
    let (target, module) = (probe.params.target.as_str(), probe.module_name.as_str());
    let outcome = match &f.result {
        Ok(_) => "success",
        Err(e) => e.reason(),
    };
    let m = &state.metrics;
    m.probes.with_label_values(&[target, module, outcome]).inc();
    m.probe_duration
        .with_label_values(&[module])
        .observe(duration.as_secs_f64());
    log_outcome(probe, f, duration);
    let log = probe_log(target, module, probe.module(), f);
    state.history.add(ProbeRecord {
        id: 0,
        time: std::time::SystemTime::now(),
        target: target.to_string(),
        module: module.to_string(),
        result: outcome,
        duration,
        log: log.clone(),
    });
    log
}

/// The per-probe metrics (`probe_success`, durations, requests, data age) as text.
fn head_text(probe: &Resolved, f: &Fetched, duration: Duration) -> String {
    let mut head = Exposition::new();
    let ok = f.result.is_ok();
    head.gauge(m::PROBE_SUCCESS, &[], if ok { 1.0 } else { 0.0 });
    head.gauge(m::PROBE_DURATION, &[], duration.as_secs_f64());
    head.gauge(m::PROBE_TIMEOUT, &[], probe.timeout.as_secs_f64());
    head.gauge(m::PROBE_API_REQUESTS, &[], f.calls.len() as f64);
    if ok {
        head.gauge(m::PROBE_DATA_AGE, &[], f.age.as_secs_f64());
    }
    let mut text = String::with_capacity(2048);
    head.render_into(&mut text);
    text
}

/// `debug=true`: the probe's log, then the metrics that would have been returned.
fn debug_answer(log: String, head: &str, f: &Fetched) -> HttpResponse {
    let mut text = log;
    text.push_str("\nMetrics that would have been returned:\n");
    text.push_str(head);
    if let Ok(data) = &f.result {
        text.push_str(&String::from_utf8_lossy(&data.series.text()));
        for chunk in data.compact.iter().flat_map(|c| c.render(64 * 1024)) {
            text.push_str(&chunk);
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(text)
}

/// The metrics, in the encoding the client accepts: gzip answers stream the cached compressed
/// series after a per-request head; others are inflated as they are sent. Per-device series
/// kept as values (`compact_cache`) are rendered and compressed for each answer.
fn metrics_answer(accept: Option<&str>, head: String, f: &Fetched) -> HttpResponse {
    let empty = CompressedSeries::default();
    let series = f.result.as_ref().map(|d| &d.series).unwrap_or(&empty);
    let compact = f.result.as_ref().ok().and_then(|d| d.compact.clone());
    let gzip = accepts_gzip(accept);
    let mut resp = HttpResponse::Ok();
    resp.content_type(TEXT_FORMAT)
        .insert_header((VARY, "Accept-Encoding"))
        .insert_header((CONTENT_ENCODING, if gzip { "gzip" } else { "identity" }));
    match (compact, gzip) {
        // Rendered and compressed while it is sent: the length is not known ahead.
        (Some(compact), true) => {
            let parts = series.gzip_then(head.as_bytes(), compact.render(64 * 1024));
            resp.streaming(futures_util::stream::iter(
                parts.map(Ok::<_, std::convert::Infallible>),
            ))
        }
        (Some(compact), false) => {
            let chunks = std::iter::once(web::Bytes::from(head))
                .chain(series.text_chunks(64 * 1024))
                .chain(compact.render(64 * 1024).map(web::Bytes::from))
                .map(Ok::<_, std::convert::Infallible>);
            resp.streaming(futures_util::stream::iter(chunks))
        }
        // Slices of the cached pieces (megabytes for a large fleet), which every concurrent
        // answer shares instead of copying them.
        (None, true) => {
            let answer = series.gzip_after(head.as_bytes());
            let len = answer.len() as u64;
            let parts = answer
                .into_pieces(ANSWER_CHUNK)
                .map(Ok::<_, std::convert::Infallible>);
            resp.body(SizedStream::new(len, futures_util::stream::iter(parts)))
        }
        (None, false) => {
            let len = (head.len() + series.len()) as u64;
            let head = futures_util::stream::once(async move { Ok(web::Bytes::from(head)) });
            let body = futures_util::StreamExt::chain(head, inflated(series.shared_pieces()));
            resp.body(SizedStream::new(len, body))
        }
    }
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
        kind: crate::config::TargetKind::Fleet(slug.to_string()),
        ..parent.clone()
    })
}

/// One log line per probe: target, result, duration, upstream calls; the failure reason,
/// endpoint and status when it failed.
fn log_outcome(probe: &Resolved, f: &Fetched, duration: Duration) {
    let (target, module) = (&probe.params.target, probe.module_name.as_str());
    let calls = &f.calls;
    match &f.result {
        Ok(data) => tracing::info!(
            target: "balena_exporter::probe",
            target_name = %target, module, result = "success",
            duration_seconds = duration.as_secs_f64(), upstream_calls = calls.len(),
            data_from = ?f.source, data_age_seconds = f.age.as_secs_f64(),
            fleets = data.fleets, devices = data.devices, "probe succeeded"
        ),
        Err(e) => {
            let last = calls.last();
            tracing::error!(
                target: "balena_exporter::probe",
                target_name = %target, module, auth = probe.auth_name.as_str(), result = "failure",
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
    f: &Fetched,
) -> String {
    let (result, source, age, notes) = (&f.result, f.source, f.age, &f.notes);
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
