//! HTTP basic auth of `--web.config.file` (`basic_auth_users`, bcrypt hashes), with the work
//! an attacker can make it do bounded, so that a flood of wrong passwords cannot starve the
//! users who have the right one (every path needs auth, `/-/healthy` included, as in the
//! Prometheus exporter-toolkit):
//!
//! - credentials verified once are remembered (a scrape every 15 s costs one bcrypt, ever);
//! - credentials refused once are remembered too (the same wrong password again costs nothing);
//! - bcrypt runs one at a time (a flood takes one core, not all of them), at most one per
//!   source address at a time, and with at most [`MAX_WAITING`] checks waiting in all: beyond
//!   that a new, unknown credential is refused at once with 401, without bcrypt. Prometheus
//!   from its own address therefore waits for at most a few bcrypts, not for the flood.
//!
//! The scheme is matched case-insensitively (`basic` as well as `Basic`, RFC 7235). With
//! `--web.health-without-auth`, `/-/healthy` and `/-/ready` answer without credentials (they
//! say nothing but "up"), so that kubelet probes work without a password in the pod spec.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use base64::Engine as _;

/// Checks that may wait for the bcrypt lock at once; beyond this, unknown credentials are
/// refused without bcrypt.
pub const MAX_WAITING: usize = 8;

/// Credentials remembered as refused, at most (then the memory starts again).
const MAX_REMEMBERED_REFUSALS: usize = 4096;

/// Basic-auth users, the credentials already decided, and the bounds of bcrypt work.
#[derive(Debug, Default)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// A hash that matches nothing a client sends, at the cost of the configured hashes:
    /// unknown users are checked against it, so they take as long as known ones.
    dummy: String,
    verified: Mutex<HashSet<u64>>,
    refused: Mutex<HashSet<u64>>,
    /// One bcrypt at a time.
    one_at_a_time: Mutex<()>,
    /// Checks waiting for (or holding) the bcrypt lock.
    waiting: AtomicUsize,
    /// Sources with a bcrypt waiting or running.
    busy_sources: Mutex<HashMap<Option<IpAddr>, usize>>,
    /// How many bcrypts ran (tests, and to reason about floods).
    bcrypts: AtomicUsize,
    hasher: RandomState,
    /// Paths answered without credentials (`--web.health-without-auth`).
    exempt: Vec<String>,
}

/// Why a request was let in or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid credentials.
    Allowed,
    /// Wrong, missing or malformed credentials.
    Refused,
    /// Not checked: this source already has a check running, or too many checks wait.
    Busy,
}

impl BasicAuth {
    /// From the config's `basic_auth_users`.
    pub fn new(users: BTreeMap<String, String>) -> Self {
        let cost = users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|p| p.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = if users.is_empty() {
            String::new()
        } else {
            bcrypt::hash("balena-exporter-no-such-user", cost).unwrap_or_default()
        };
        Self {
            users,
            dummy,
            ..Default::default()
        }
    }

    /// True when no users are configured (auth off).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The same, answering `paths` without credentials.
    pub fn exempting(mut self, paths: Vec<String>) -> Self {
        self.exempt = paths;
        self
    }

    /// How many bcrypt verifications have run.
    pub fn bcrypt_runs(&self) -> usize {
        self.bcrypts.load(Ordering::Relaxed)
    }

    /// Checks an `Authorization` header value sent from `source`.
    pub fn check(&self, header: Option<&str>, source: Option<IpAddr>) -> Verdict {
        let Some(encoded) = header
            .and_then(|h| h.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, creds)| creds.trim())
        else {
            return Verdict::Refused;
        };
        let key = self.hasher.hash_one(encoded);
        if remembered(&self.verified, key) {
            return Verdict::Allowed;
        }
        if remembered(&self.refused, key) {
            return Verdict::Refused;
        }
        let Some((user, password)) = decode(encoded) else {
            return Verdict::Refused;
        };
        let Some(_turn) = self.take_turn(source) else {
            return Verdict::Busy;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        let ok = {
            let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
            self.bcrypts.fetch_add(1, Ordering::Relaxed);
            bcrypt::verify(password, hash).unwrap_or(false) && known
        };
        let (set, verdict) = if ok {
            (&self.verified, Verdict::Allowed)
        } else {
            (&self.refused, Verdict::Refused)
        };
        if let Ok(mut s) = set.lock() {
            if s.len() >= MAX_REMEMBERED_REFUSALS {
                s.clear();
            }
            s.insert(key);
        }
        verdict
    }

    /// A place among the checks that may run bcrypt, if `source` has none and the queue has
    /// room; given back when dropped.
    fn take_turn(&self, source: Option<IpAddr>) -> Option<Turn<'_>> {
        let mut busy = self.busy_sources.lock().unwrap_or_else(|p| p.into_inner());
        if busy.get(&source).is_some_and(|n| *n > 0) {
            return None;
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        *busy.entry(source).or_default() += 1;
        Some(Turn { auth: self, source })
    }
}

/// A check's place in the bcrypt queue.
struct Turn<'a> {
    auth: &'a BasicAuth,
    source: Option<IpAddr>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.auth.waiting.fetch_sub(1, Ordering::SeqCst);
        let mut busy = self
            .auth
            .busy_sources
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = busy.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.source);
            }
        }
    }
}

fn remembered(set: &Mutex<HashSet<u64>>, key: u64) -> bool {
    set.lock().map(|s| s.contains(&key)).unwrap_or(false)
}

/// `user:password` from base64.
fn decode(encoded: &str) -> Option<(String, String)> {
    let text = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Middleware: 401 with `WWW-Authenticate` unless the request carries valid credentials.
pub async fn require_basic_auth(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let auth = req.app_data::<web::Data<BasicAuth>>().cloned();
    let allowed = match &auth {
        Some(a) if a.exempt.iter().any(|p| p == req.path()) => true,
        Some(a) if !a.is_empty() => {
            let header = req
                .headers()
                .get("authorization")
                .and_then(|h| h.to_str().ok())
                .map(String::from);
            let source = req.peer_addr().map(|a| a.ip());
            let a = a.clone();
            // bcrypt takes tens of milliseconds: keep it off the async worker.
            web::block(move || a.check(header.as_deref(), source))
                .await
                .map(|v| v == Verdict::Allowed)
                .unwrap_or(false)
        }
        _ => true,
    };
    if allowed {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let resp = HttpResponse::Unauthorized()
        .insert_header(("WWW-Authenticate", "Basic realm=\"balena-exporter\""))
        .body("Unauthorized\n");
    Ok(req.into_response(resp).map_into_right_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    /// An unknown user costs what a known one does: the dummy hash has the configured cost.
    #[test]
    fn the_dummy_hash_has_the_cost_of_the_configured_ones() {
        let hash = bcrypt::hash("pw", 5).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("u".to_string(), hash)]));
        let cost = auth.dummy.parse::<bcrypt::HashParts>().unwrap().get_cost();
        assert_eq!(cost, 5);
    }

    #[test]
    fn basic_auth_accepts_only_matching_credentials() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)]));
        let check = |h: Option<&str>| auth.check(h, None);
        assert_eq!(check(Some(&enc("prom:s3cret"))), Verdict::Allowed);
        assert_eq!(check(Some(&enc("prom:s3cret"))), Verdict::Allowed, "cached");
        let lower = enc("prom:s3cret").replacen("Basic", "basic", 1);
        assert_eq!(
            check(Some(&lower)),
            Verdict::Allowed,
            "the scheme is case-insensitive"
        );
        assert_eq!(check(Some(&enc("prom:wrong"))), Verdict::Refused);
        assert_eq!(check(Some(&enc("other:s3cret"))), Verdict::Refused);
        assert_eq!(check(Some("Bearer x")), Verdict::Refused);
        assert_eq!(check(None), Verdict::Refused);
    }

    /// The same wrong password again costs no bcrypt; a source with a check running gets no
    /// second one; and the queue is bounded for everyone.
    #[test]
    fn bcrypt_work_is_bounded_per_credential_per_source_and_in_all() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)]));
        let flood: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..50 {
            assert_eq!(
                auth.check(Some(&enc("prom:guess")), Some(flood)),
                Verdict::Refused
            );
        }
        assert_eq!(auth.bcrypt_runs(), 1, "a refused credential is remembered");
        // A check of the flooding source is running (its turn is held): the next is refused
        // without bcrypt, while another source is checked.
        let held = auth.take_turn(Some(flood)).unwrap();
        assert_eq!(
            auth.check(Some(&enc("prom:other")), Some(flood)),
            Verdict::Busy
        );
        let prometheus: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            auth.check(Some(&enc("prom:s3cret")), Some(prometheus)),
            Verdict::Allowed
        );
        drop(held);
        // The queue in all: MAX_WAITING turns held by as many sources.
        let turns: Vec<_> = (0..MAX_WAITING)
            .map(|i| {
                auth.take_turn(Some(IpAddr::from([10, 0, 0, i as u8])))
                    .unwrap()
            })
            .collect();
        assert_eq!(
            auth.check(Some(&enc("prom:x")), Some(prometheus)),
            Verdict::Busy
        );
        drop(turns);
        assert_eq!(
            auth.check(Some(&enc("prom:x")), Some(prometheus)),
            Verdict::Refused
        );
    }
}
