//! `/probe?target=NAME[&module=M][&auth=A][&debug=true]`, as blackbox_exporter's handler:
//! parse the request against the config snapshot (or answer 400 with one line), hand the
//! resolved target to the [`Prober`](crate::probe::prober::Prober), record the outcome
//! (self-metrics, a log line, the history), and answer — the `probe_*` head and the series in
//! the accepted encoding ([`crate::probe::answer`]), or the debug page. An upstream failure is
//! HTTP 200 with `probe_success 0`; only a bad request is a 4xx.

use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, VARY};
use actix_web::{web, HttpRequest, HttpResponse};

use super::report::record;
use super::AppState;
use crate::balena::BalenaClient;
use crate::exposition::codec::negotiate;
use crate::exposition::{Exposition, TEXT_FORMAT};
use crate::metrics as m;
use crate::probe::answer::{self, Encoding};
use crate::probe::prober::{Outcome, ProbeRequest};

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
    let accept = req
        .headers()
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let encoding = Encoding::of(negotiate(accept));
    let (probe, debug) = match resolve(&req, &state, encoding) {
        Ok(p) => p,
        Err((reason, msg)) => return bad_request(&state, reason, msg),
    };
    let fetched = state.prober.probe(&client, &probe, started).await;
    let duration = started.elapsed();
    let log = record(&state, &probe, &fetched, duration);
    let head = head_text(&probe, &fetched, duration);
    if debug {
        return debug_answer(log, &head, &fetched);
    }
    metrics_answer(encoding, head, &fetched)
}

/// Why a request is refused: the bounded reason (a label of
/// `balena_exporter_probe_request_errors_total`) and the one-line answer.
type BadRequest = (&'static str, String);

/// The request's target (configured, or a fleet discovery found under an org or `all` target),
/// module, auth and deadline, and whether the debug page was asked for; a 400 with one line
/// for anything unknown or malformed.
fn resolve(
    req: &HttpRequest,
    state: &AppState,
    encoding: Encoding,
) -> Result<(ProbeRequest, bool), BadRequest> {
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
    let request = ProbeRequest {
        target_name: params.target,
        config,
        target,
        module_name,
        auth_name,
        token,
        timeout,
        codec: encoding.pieces(),
    };
    Ok((request, params.debug))
}

/// The per-probe metrics (`probe_success`, durations, requests, data age) as text.
fn head_text(probe: &ProbeRequest, f: &Outcome, duration: Duration) -> String {
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
fn debug_answer(log: String, head: &str, f: &Outcome) -> HttpResponse {
    let mut text = log;
    text.push_str("\nMetrics that would have been returned:\n");
    text.push_str(head);
    if let Ok(data) = &f.result {
        text.push_str(&answer::series_text(data));
    }
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(text)
}

/// The metrics, in the encoding the client accepts ([`answer::metrics_body`]).
fn metrics_answer(encoding: Encoding, head: String, f: &Outcome) -> HttpResponse {
    let body = answer::metrics_body(head, f.result.as_deref().ok(), encoding);
    let mut resp = HttpResponse::Ok();
    resp.content_type(TEXT_FORMAT)
        .insert_header((VARY, "Accept-Encoding"))
        .insert_header((CONTENT_ENCODING, body.encoding.header()));
    match body.len {
        Some(len) => resp.body(SizedStream::new(len, body.chunks)),
        None => resp.streaming(body.chunks),
    }
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
