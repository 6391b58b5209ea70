//! The upstream HTTP client: one awc `Client` per actix worker, a per-probe [`Session`] that
//! carries the token, the deadline and the call log, and the request mechanics every call
//! shares (timeouts from the deadline, the per-auth concurrency cap, `Retry-After` on 429,
//! the body size cap, typed errors, self-metrics).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix_web::http::header::{HeaderValue, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::error::{BalenaError, GaveUp};
use super::exchange::{self, Event};
use super::limit::{AuthLimits, Priority, Slot};
use super::transport::Transport;
use crate::config::{ApiConfig, Connection};
use crate::metrics::ExporterMetrics;

/// The per-worker client. Cheap to build; not `Send` (awc). Its awc client follows the
/// config's connection (proxy, TLS): rebuilt when a reload changed it (the [`Connection`]
/// is no longer equal), kept (with its pooled connections) otherwise.
#[derive(Clone)]
pub struct BalenaClient {
    http: std::rc::Rc<RefCell<Option<(Connection, awc::Client)>>>,
    metrics: Arc<ExporterMetrics>,
    limits: Arc<AuthLimits>,
}

impl BalenaClient {
    /// A client; the awc client is made at the first request.
    pub fn new(metrics: Arc<ExporterMetrics>, limits: Arc<AuthLimits>) -> Self {
        Self {
            http: Default::default(),
            metrics,
            limits,
        }
    }

    /// The awc client for `connection`, over rustls with no default timeout (each call gets
    /// its own); an error only for TLS material the load refused already.
    fn http(&self, connection: &Connection) -> Result<awc::Client, BalenaError> {
        let mut slot = self.http.borrow_mut();
        if let Some((built_from, client)) = slot.as_ref() {
            if built_from == connection {
                return Ok(client.clone());
            }
        }
        let transport = Transport::new(connection)
            .map_err(|e| BalenaError::Transport(format!("api.tls_config: {e}")))?;
        let client = awc::Client::builder()
            .connector(transport.connector())
            .add_default_header((
                "User-Agent",
                concat!("balena-exporter/", env!("CARGO_PKG_VERSION")),
            ))
            .add_default_header((
                "X-Balena-Client",
                concat!("balena-exporter/", env!("CARGO_PKG_VERSION")),
            ))
            .disable_timeout()
            // A redirect is never followed: the token would go with it, perhaps to another
            // host. The 3xx is the answer, and the error names where it pointed.
            .disable_redirects()
            .finish();
        *slot = Some((connection.clone(), client.clone()));
        Ok(client)
    }
}

/// The largest answer held whole (fleet, organization and whoami lookups): 10,000 fleets with
/// their expansions take ~3 MB, so this leaves a wide margin and still bounds what a wrong or
/// hostile answer can make the exporter hold.
pub const MAX_HELD_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A request answered 429 this many times in a row (each waited for as asked) is given up.
const MAX_RATE_LIMITED: usize = 10;

/// One upstream call as recorded for `debug=true` and the probe log (never the token).
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// Bounded endpoint name: `application`, `device`, `organization`, `whoami`.
    pub endpoint: &'static str,
    /// Path and query as sent.
    pub url: String,
    /// HTTP status, when one came back.
    pub status: Option<u16>,
    /// Time from send to body read.
    pub duration: Duration,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Everything one probe needs to talk to the API.
pub struct Session<'a> {
    client: &'a BalenaClient,
    api: &'a ApiConfig,
    auth_name: &'a str,
    token: &'a SecretString,
    deadline: Instant,
    started: Instant,
    calls: RefCell<Vec<CallRecord>>,
    notes: RefCell<Vec<String>>,
    background: bool,
}

impl<'a> Session<'a> {
    /// A session for one probe; `deadline` bounds every call.
    pub fn new(
        client: &'a BalenaClient,
        api: &'a ApiConfig,
        auth_name: &'a str,
        token: &'a SecretString,
        deadline: Instant,
    ) -> Self {
        Self {
            client,
            api,
            auth_name,
            token,
            deadline,
            started: Instant::now(),
            calls: RefCell::new(Vec::new()),
            notes: RefCell::new(Vec::new()),
            background: false,
        }
    }

    /// This session as a background read's: its requests wait behind every probe's, on a slot
    /// budget of their own, and their times do not feed the probes' estimate
    /// ([`super::limit`]).
    pub fn background(mut self) -> Self {
        self.background = true;
        self
    }

    /// The API settings in force for this probe.
    pub fn api(&self) -> &ApiConfig {
        self.api
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.borrow().clone()
    }

    /// Adds a line to this probe's log (shown by `debug=true` and `/logs`).
    pub fn note(&self, msg: impl std::fmt::Display) {
        let at = self.started.elapsed().as_secs_f64();
        self.notes.borrow_mut().push(format!("{at:>8.3}s {msg}"));
    }

    /// This probe's log lines.
    pub fn notes(&self) -> Vec<String> {
        self.notes.borrow().clone()
    }

    /// Number of calls made so far.
    pub fn call_count(&self) -> usize {
        self.calls.borrow().len()
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// GETs `path?query` and decodes JSON, honouring the deadline, the cap and 429s.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &str,
    ) -> Result<T, BalenaError> {
        let body = self.get_body(endpoint, path, query).await?;
        if body.is_empty() {
            return Err(BalenaError::Decode(super::error::EMPTY_BODY.into()));
        }
        serde_json::from_slice(&body).map_err(|e| BalenaError::Decode(super::error::unquoted(&e)))
    }

    /// GETs `path?query` and returns the raw body of a 2xx answer, held whole: at most
    /// `MAX_HELD_BODY_BYTES` (or `api.max_response_bytes` if smaller). Device listings, the
    /// only large answers, are streamed instead ([`Session::get_streamed`]).
    pub async fn get_body(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &str,
    ) -> Result<actix_web::web::Bytes, BalenaError> {
        let limit = MAX_HELD_BODY_BYTES.min(self.api.max_response_bytes);
        let mut body = actix_web::web::BytesMut::new();
        self.get_streamed(endpoint, path, query, &mut |chunk| {
            if body.len() + chunk.len() > limit {
                return Err(BalenaError::TooLarge { limit });
            }
            body.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(body.freeze())
    }

    /// GETs `path?query` and hands the body of a 2xx answer to `sink` chunk by chunk as it
    /// arrives (a sink error ends the request with that error). Only a 2xx body reaches the
    /// sink, so a 429 retried after `Retry-After` never feeds it twice.
    pub async fn get_streamed(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), BalenaError>,
    ) -> Result<(), BalenaError> {
        let base = self.api.url.as_str().trim_end_matches('/');
        let url = if query.is_empty() {
            format!("{base}{path}")
        } else {
            format!("{base}{path}?{query}")
        };
        let shown = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        let mut retried = false;
        let mut rate_limited = 0;
        loop {
            let started = Instant::now();
            let result = self.send_once(&url, &mut *sink).await;
            self.record(endpoint, &shown, &result, started.elapsed());
            match result {
                Ok(()) => return Ok(()),
                Err(Failure {
                    error:
                        BalenaError::RateLimited {
                            retry_after: Some(wait),
                            gave_up: None,
                        },
                    ..
                }) if wait < self.remaining() => {
                    rate_limited += 1;
                    if rate_limited >= MAX_RATE_LIMITED {
                        return Err(BalenaError::RateLimited {
                            retry_after: Some(wait),
                            gave_up: Some(GaveUp::Repeated(rate_limited)),
                        });
                    }
                    tracing::debug!(
                        endpoint,
                        wait_seconds = wait.as_secs_f64(),
                        "rate limited; retrying after Retry-After"
                    );
                    actix_rt::time::sleep(wait).await;
                }
                // A connection the API had closed (a pooled keep-alive connection, an HTTP/1.0
                // server): nothing came back, nothing was read, and these GETs are idempotent.
                Err(Failure {
                    sent: true,
                    status: None,
                    body_started: false,
                    error: BalenaError::Transport(_),
                }) if !retried && !self.remaining().is_zero() => {
                    retried = true;
                    self.note("the connection closed before an answer: retrying once");
                }
                Err(Failure {
                    error:
                        BalenaError::RateLimited {
                            retry_after: Some(wait),
                            gave_up: None,
                        },
                    ..
                }) => {
                    return Err(BalenaError::RateLimited {
                        retry_after: Some(wait),
                        gave_up: Some(GaveUp::TimeLeft),
                    })
                }
                Err(f) => return Err(f.error),
            }
        }
    }

    /// A slot of the auth's cap, taken before the deadline and with enough time left for what
    /// the probe still needs ([`super::limit`]), and the time left; else why not.
    async fn take_slot(&self) -> Result<(Slot, Duration), Failure> {
        let remaining = self.remaining();
        if remaining.is_zero() {
            return Err(Failure::not_sent(BalenaError::NotSent(
                "the probe's deadline had passed".into(),
            )));
        }
        if let Some((left, until)) = self.client.limits.held(self.auth_name) {
            return Err(Failure::not_sent(BalenaError::RateLimited {
                retry_after: Some(left),
                gave_up: Some(GaveUp::Held(until)),
            }));
        }
        let cap = self.api.max_concurrency;
        let limit = self.client.limits.get(self.auth_name, cap);
        let priority = if self.background {
            Priority::Background
        } else if self.call_count() > 0 {
            Priority::Continuing
        } else {
            Priority::Starting
        };
        let slot = actix_rt::time::timeout(remaining, limit.acquire(priority))
            .await
            .map_err(|_| {
                Failure::not_sent(BalenaError::NotSent(format!(
                    "no free slot of the auth's {cap} (api.max_concurrency) within {:.3}s",
                    remaining.as_secs_f64()
                )))
            })?;
        // A probe's first request starts a fetch of at least two (a page and the end page, or a
        // lookup and a page): it needs time for two, a later request for itself.
        let left = self.remaining();
        let requests_needed = match priority {
            Priority::Starting => 2,
            Priority::Continuing => 1,
            // A background read has a deadline of its own, and no estimate to keep to.
            Priority::Background => 0,
        };
        if let Some(expected) = limit
            .too_late(left, requests_needed)
            .filter(|_| requests_needed > 0)
        {
            drop(slot);
            let why = format!(
                "{:.3}s left, and what this probe still needs takes ~{:.3}s while other requests of the auth are in flight",
                left.as_secs_f64(),
                expected.as_secs_f64()
            );
            return Err(Failure::not_sent(BalenaError::NotSent(why)));
        }
        Ok((slot, left))
    }

    /// A 429 or 503 with `Retry-After`: holds every request of the auth until then (at most
    /// `api.max_retry_after`), so that no probe, discovery or background read knocks again
    /// before the API said it may.
    fn hold_if_asked(&self, status: u16, retry_after: Option<&HeaderValue>) {
        if !matches!(status, 429 | 503) {
            return;
        }
        let Some(wait) = retry_after
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
        else {
            return;
        };
        let max = self.api.max_retry_after;
        let hold = wait.min(max);
        if hold.is_zero() {
            return;
        }
        self.client.limits.hold(self.auth_name, hold);
        let capped = if wait > max {
            format!(" (asked {:.0}s; api.max_retry_after)", wait.as_secs_f64())
        } else {
            String::new()
        };
        self.note(format_args!(
            "HTTP {status} with Retry-After: every request of auth {} held for {:.0}s{capped}",
            self.auth_name,
            hold.as_secs_f64()
        ));
        tracing::warn!(
            auth = self.auth_name,
            status,
            hold_seconds = hold.as_secs_f64().round(),
            "the API asked to wait (Retry-After): the auth's requests are held"
        );
    }

    /// Records one call: a line of the probe's log, the call list, and the self-metrics
    /// (requests never sent apart from upstream answers).
    fn record(
        &self,
        endpoint: &'static str,
        shown: &str,
        result: &Result<(), Failure>,
        duration: Duration,
    ) {
        let (status, error) = match result {
            Ok(_) => (Some(200), None),
            Err(f) => (f.status, Some(f.error.to_string())),
        };
        let not_sent = matches!(result, Err(f) if !f.sent);
        let outcome = match (not_sent, status) {
            (true, _) => "not sent".to_string(),
            (false, Some(s)) => s.to_string(),
            (false, None) => "no answer".to_string(),
        };
        let detail = error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        self.note(format_args!(
            "GET {shown} -> {outcome} in {:.3}s{detail}",
            duration.as_secs_f64()
        ));
        self.calls.borrow_mut().push(CallRecord {
            endpoint,
            url: shown.to_string(),
            status,
            duration,
            error,
        });
        let metrics = &self.client.metrics;
        if not_sent {
            metrics.observe_not_sent(self.auth_name, endpoint);
        } else {
            let code = status.map_or_else(|| "error".to_string(), |s| s.to_string());
            metrics.observe_upstream(self.auth_name, endpoint, &code, duration);
        }
    }

    /// One HTTP exchange: the body of a 2xx answer into `sink`, else what went wrong. A request
    /// is sent only with a slot of the auth's cap and enough time left to finish
    /// ([`super::limit`]); it runs as a task that keeps the slot until the API is done with it
    /// ([`super::exchange`]), so a probe that stops reading at its deadline loses nothing.
    async fn send_once(
        &self,
        url: &str,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), BalenaError>,
    ) -> Result<(), Failure> {
        let (slot, left) = self.take_slot().await?;
        let timeout = self.api.timeout.min(left);
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
            .map_err(|_| {
                Failure::not_sent(BalenaError::Transport(
                    "the token is not a valid header value".into(),
                ))
            })?;
        auth.set_sensitive(true);
        let request = self
            .client
            .http(&self.api.connection)
            .map_err(Failure::not_sent)?
            .get(url)
            .insert_header((AUTHORIZATION, auth));
        let mut answer =
            exchange::start(request, slot, self.api.timeout, self.api.max_response_bytes);
        let mut status = None;
        let mut body_started = false;
        let read = async {
            while let Some(event) = answer.recv().await {
                match event {
                    Event::Head {
                        status: s,
                        retry_after,
                        location,
                    } => {
                        status = Some(s);
                        self.hold_if_asked(s, retry_after.as_ref());
                        if (300..400).contains(&s) {
                            return Err(redirect_error(s, url, location.as_ref()));
                        }
                        if !(200..300).contains(&s) {
                            return Err(status_error(s, retry_after.as_ref()));
                        }
                    }
                    Event::Chunk(chunk) => {
                        body_started = true;
                        sink(&chunk)?;
                    }
                    Event::Failed(e) => return Err(e),
                }
            }
            match status {
                Some(_) => Ok(()),
                None => Err(BalenaError::Transport(
                    "the request ended without an answer".into(),
                )),
            }
        };
        let outcome = actix_rt::time::timeout(timeout, read).await;
        let error = match outcome {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            // Given up at the deadline: the exchange task keeps the slot while the API works.
            Err(_) => BalenaError::Timeout(timeout),
        };
        Err(Failure {
            status,
            error,
            sent: true,
            body_started,
        })
    }
}

/// What went wrong with one request.
#[derive(Debug)]
struct Failure {
    status: Option<u16>,
    error: BalenaError,
    /// Whether the request left the exporter (a request never sent is not an upstream error).
    sent: bool,
    /// Whether any of the body reached the caller (then it cannot be retried).
    body_started: bool,
}

impl Failure {
    fn not_sent(error: BalenaError) -> Self {
        Self {
            status: None,
            error,
            sent: false,
            body_started: false,
        }
    }
}

/// A redirect, which is never followed: where it pointed (scheme, host and port only; a path
/// or query could carry anything), and whether that is another origin than `api.url`'s.
fn redirect_error(status: u16, from: &str, location: Option<&HeaderValue>) -> BalenaError {
    let from = url::Url::parse(from).ok();
    let to = location
        .and_then(|l| l.to_str().ok())
        .and_then(|l| match &from {
            Some(base) => base.join(l).ok(),
            None => url::Url::parse(l).ok(),
        });
    let origin = |u: &url::Url| {
        format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        )
    };
    let why = match (&from, &to) {
        (_, None) => "a redirect without a usable Location".to_string(),
        (Some(f), Some(t)) if origin(f) == origin(t) => {
            format!("a redirect within {} (not followed)", origin(t))
        }
        (_, Some(t)) => format!(
            "a redirect to another host, {} (not followed: the token would go with it; check api.url)",
            origin(t)
        ),
    };
    BalenaError::Transport(format!("HTTP {status}: {why}"))
}

/// Maps a non-2xx status to a typed error.
pub fn status_error(status: u16, retry_after: Option<&HeaderValue>) -> BalenaError {
    match status {
        401 => BalenaError::Unauthorized,
        403 => BalenaError::Forbidden,
        429 => BalenaError::RateLimited {
            gave_up: None,
            retry_after: retry_after
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
        },
        s => BalenaError::Status { status: s },
    }
}

/// `Retry-After` as integer seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_parse(v: &str) -> Option<SystemTime> {
    v.parse::<actix_web::http::header::HttpDate>()
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        assert!(matches!(status_error(401, None), BalenaError::Unauthorized));
        assert!(matches!(status_error(403, None), BalenaError::Forbidden));
        assert!(matches!(
            status_error(500, None),
            BalenaError::Status { status: 500 }
        ));
        let h = HeaderValue::from_static("3");
        assert!(matches!(
            status_error(429, Some(&h)),
            BalenaError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
    }
}
