//! Typed errors of the balena client, each with a bounded `reason` for metrics and logs, and
//! the error-text helpers every part of the client shares ([`unquoted`], [`EMPTY_BODY`]): the
//! leaf of `balena/`, importing none of it (the quoting rule itself is the config's,
//! [`crate::config::unquoted_text`]).

use std::time::Duration;

/// Why a call to the balena API (or a whole probe) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BalenaError {
    /// The token was rejected: 401 on a read, or whoami says it is not a valid credential.
    #[error("the API token was rejected (HTTP 401)")]
    Unauthorized,
    /// 403: the token is valid but may not read this.
    #[error("forbidden (HTTP 403)")]
    Forbidden,
    /// The fleet or organization does not exist, or this (valid) token cannot see it.
    #[error("{kind} {name:?} not found, or not visible to this token")]
    NotFound {
        /// `fleet` or `organization`.
        kind: &'static str,
        /// Slug or handle from the config.
        name: String,
    },
    /// 429 whose `Retry-After` does not fit in the probe's deadline, or 429s again and again.
    #[error("{}", rate_limit_text(*retry_after, *gave_up))]
    RateLimited {
        /// What the API asked for, when it said.
        retry_after: Option<Duration>,
        /// Why the probe stopped asking, once it did.
        gave_up: Option<GaveUp>,
    },
    /// Any other non-2xx answer.
    #[error("unexpected HTTP status {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// The probe's deadline passed before the API answered.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A request the probe needed was never sent (no free slot of the auth's cap in time, or
    /// too little time left while other requests compete): the API was not asked.
    #[error("not sent: {0}")]
    NotSent(String),
    /// Connection refused, reset, TLS failure...
    #[error("transport error: {0}")]
    Transport(String),
    /// The body was not the JSON we expected.
    #[error("cannot decode the response: {0}")]
    Decode(String),
    /// A row or a string of the answer over its cap (one row 1 MiB, one string 16 KiB).
    #[error("{0}")]
    Oversized(String),
    /// A listing that cannot be trusted: rows out of id order (keyset paging would skip
    /// rows), or one uuid on two rows (duplicate series). Never reported as a success.
    #[error("{0}")]
    Inconsistent(String),
    /// A bounded read past its bound (a background listing longer than its setting allows):
    /// failed rather than held.
    #[error("{0}")]
    OverBound(String),
    /// The API does not have what the module asks for (device locations on openBalena).
    #[error("{0}")]
    Unsupported(String),
    /// The body exceeded `api.max_response_bytes`.
    #[error("response larger than the {limit}-byte cap (api.max_response_bytes)")]
    TooLarge {
        /// The configured cap.
        limit: usize,
    },
}

/// Why a rate-limited request was not asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// `Retry-After` asked for more than the probe had left.
    TimeLeft,
    /// 429 this many times in a row, each retried as asked.
    Repeated(usize),
    /// Not sent: an earlier 429 or 503 with `Retry-After` holds the auth's requests until then.
    Held(std::time::SystemTime),
}

fn rate_limit_text(retry_after: Option<Duration>, gave_up: Option<GaveUp>) -> String {
    match gave_up {
        Some(GaveUp::Held(_)) => format!("rate limited{}", rate_limit_detail(retry_after, gave_up)),
        _ => format!(
            "rate limited (HTTP 429){}",
            rate_limit_detail(retry_after, gave_up)
        ),
    }
}

fn rate_limit_detail(retry_after: Option<Duration>, gave_up: Option<GaveUp>) -> String {
    let asked = retry_after.map(|d| format!(", Retry-After {:.1}s", d.as_secs_f64()));
    match gave_up {
        Some(GaveUp::Repeated(n)) => {
            format!(" {n} times in a row, each retried after its Retry-After; gave up")
        }
        Some(GaveUp::TimeLeft) => format!("{} exceeds the time left", asked.unwrap_or_default()),
        Some(GaveUp::Held(until)) => format!(
            ": the API asked this auth to wait (Retry-After); its requests are held until {} ({:.0}s more), so none was sent",
            humantime::format_rfc3339_seconds(until),
            retry_after.unwrap_or_default().as_secs_f64().ceil()
        ),
        None => asked.unwrap_or_default(),
    }
}

impl BalenaError {
    /// What to do about it, naming the auth the probe used; `None` where the message says all.
    pub fn advice(&self, auth: &str) -> Option<String> {
        Some(match self {
            Self::Unauthorized => format!(
                "check the token of auth {auth:?} (auths.{auth}.token or its token_file): expired, revoked, or for another API"
            ),
            Self::Forbidden => format!("auth {auth:?} is valid but may not read this target"),
            Self::NotFound { .. } => {
                format!("check the slug or handle, and that auth {auth:?} can see it")
            }
            Self::RateLimited { .. } => format!(
                "the API rate-limits auth {auth:?}: probe less often, raise api.cache_ttl, or use fewer targets"
            ),
            Self::Timeout(_) | Self::NotSent(_) => {
                "raise the scrape timeout, or use a lighter module for a big fleet".to_string()
            }
            Self::Transport(_) => {
                "check api.url, DNS, egress rules, api.proxy_url and api.tls_config".to_string()
            }
            _ => return None,
        })
    }

    /// A short, bounded reason: a label value and a log field.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound { .. } => "not_found",
            Self::RateLimited { .. } => "rate_limited",
            Self::Status { .. } => "api_error",
            Self::Timeout(_) => "timeout",
            Self::NotSent(_) => "not_sent",
            Self::Transport(_) => "transport",
            Self::Decode(_) => "decode",
            Self::TooLarge { .. } | Self::Oversized(_) => "too_large",
            Self::Inconsistent(_) => "inconsistent",
            Self::OverBound(_) => "over_bound",
            Self::Unsupported(_) => "unsupported",
        }
    }
}

/// Why an empty 2xx body cannot be decoded, and the likely cause.
pub const EMPTY_BODY: &str = "the answer's body is empty (a body with neither Content-Length nor chunked encoding, ended by closing the connection, is read as empty: a proxy speaking HTTP/1.0?)";

/// A decode error without the answer's text: serde quotes the value it could not take
/// (`invalid type: string "…", expected u64`), and an API or proxy that echoes a request
/// header would put the token there. What stood between the first and the last quote is
/// left out; the kind of error and where it is stay.
pub fn unquoted(e: &serde_json::Error) -> String {
    crate::config::unquoted_text(&e.to_string())
}
