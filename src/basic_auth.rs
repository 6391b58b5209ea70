//! HTTP basic auth of `--web.config.file` (`basic_auth_users`, bcrypt hashes), with the work
//! an attacker can make it do bounded, so that a flood of wrong passwords cannot keep out the
//! users who have the right one (every path needs auth, `/-/healthy` included, as in the
//! Prometheus exporter-toolkit):
//!
//! - credentials verified once are remembered (a scrape every 15 s costs one bcrypt, ever), and
//!   so are credentials refused once (the same wrong password again costs nothing); both by a
//!   keyed hash, never the text;
//! - **one check per credential**: requests with a credential that is being checked wait for
//!   that check's verdict (twenty concurrent first scrapes cost one bcrypt and all get in);
//! - **bounded work per source**: bcrypt runs one at a time (a flood takes one core, not all),
//!   and a source has at most one check of a new credential waiting or running;
//! - **fairness between sources**: checks wait in a queue ordered by how many credentials their
//!   source has had refused, then by arrival. A flooding source is refused at every try, so it
//!   sinks behind any source that has not been refused (Prometheus, a person with the right
//!   password); when [`MAX_WAITING`] checks wait, a newcomer with fewer refusals takes the place
//!   of the worst one, and only a newcomer no better than all of them is turned away (401
//!   without bcrypt). A client nobody refused therefore waits for at most the bcrypts of other
//!   never-refused sources ahead of it — never for the flood.
//!
//! Chosen over remembering verified credentials alone (which does not help the first request
//! after a restart, or a new Prometheus replica) and over a per-source rate (which a flood from
//! many addresses escapes).
//!
//! The scheme is matched case-insensitively (`basic` as well as `Basic`, RFC 7235). With
//! `--web.health-without-auth`, `/-/healthy` and `/-/ready` answer without credentials (they
//! say nothing but "up"), so that kubelet probes work without a password in the pod spec.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use base64::Engine as _;

/// Checks that may wait for bcrypt at once; beyond this a newcomer takes the place of a check
/// whose source was refused more often, or is refused without bcrypt.
pub const MAX_WAITING: usize = 32;

/// Credentials (and sources) remembered, at most (then the memory starts again).
const MAX_REMEMBERED: usize = 4096;

/// The longest a check waits for its turn or for another check of its credential.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// Basic-auth users, the credentials already decided, and the queue of bcrypt work.
#[derive(Debug, Default)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// A hash that matches nothing a client sends, at the cost of the configured hashes:
    /// unknown users are checked against it, so they take as long as known ones.
    dummy: String,
    verified: Mutex<HashSet<u64>>,
    refused: Mutex<HashSet<u64>>,
    queue: Mutex<Queue>,
    changed: Condvar,
    /// How many bcrypts ran (tests, and to reason about floods).
    bcrypts: AtomicUsize,
    hasher: RandomState,
    /// Paths answered without credentials (`--web.health-without-auth`).
    exempt: Vec<String>,
}

/// Who waits for bcrypt, and who runs it.
#[derive(Debug, Default)]
struct Queue {
    /// A bcrypt runs.
    running: bool,
    /// Waiting checks by (refusals of their source, arrival).
    waiting: BTreeSet<(u32, u64)>,
    /// Waiting checks turned away to make room (they answer `Busy`).
    evicted: HashSet<u64>,
    arrivals: u64,
    /// Credentials being checked (their later requests wait for the verdict).
    checking: HashSet<u64>,
    /// Sources with a check waiting or running.
    sources: HashSet<Option<IpAddr>>,
    /// Credentials refused per source.
    refusals: HashMap<Option<IpAddr>, u32>,
}

/// Why a request was let in or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid credentials.
    Allowed,
    /// Wrong, missing or malformed credentials.
    Refused,
    /// Not checked: this source already has a check of another credential running, or the
    /// queue is full of sources no worse than it, or it waited too long.
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

    /// What is already known of a credential.
    fn remembered(&self, key: u64) -> Option<Verdict> {
        if remembered(&self.verified, key) {
            Some(Verdict::Allowed)
        } else if remembered(&self.refused, key) {
            Some(Verdict::Refused)
        } else {
            None
        }
    }

    /// Checks an `Authorization` header value sent from `source` (blocking: bcrypt, and the
    /// wait for a turn; the middleware runs it off the async workers).
    pub fn check(&self, header: Option<&str>, source: Option<IpAddr>) -> Verdict {
        let Some(encoded) = header
            .and_then(|h| h.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, creds)| creds.trim())
        else {
            return Verdict::Refused;
        };
        let key = self.hasher.hash_one(encoded);
        if let Some(v) = self.remembered(key) {
            return v;
        }
        let Some((user, password)) = decode(encoded) else {
            return Verdict::Refused;
        };
        let turn = match self.wait_for_turn(key, source) {
            Ok(turn) => turn,
            Err(verdict) => return verdict,
        };
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy.as_str(), false),
        };
        self.bcrypts.fetch_add(1, Ordering::Relaxed);
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        let (set, verdict) = if ok {
            (&self.verified, Verdict::Allowed)
        } else {
            (&self.refused, Verdict::Refused)
        };
        if let Ok(mut s) = set.lock() {
            if s.len() >= MAX_REMEMBERED {
                s.clear();
            }
            s.insert(key);
        }
        turn.done(!ok);
        verdict
    }

    /// Waits until this check may run bcrypt (see the module doc), or says why not: the verdict
    /// of another check of the same credential, or `Busy`.
    fn wait_for_turn(&self, key: u64, source: Option<IpAddr>) -> Result<Turn<'_>, Verdict> {
        let until = Instant::now() + MAX_WAIT;
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while q.checking.contains(&key) {
            q = self.wait(q, until).ok_or(Verdict::Busy)?;
            if let Some(v) = self.remembered(key) {
                return Err(v);
            }
        }
        if let Some(v) = self.remembered(key) {
            return Err(v);
        }
        if q.sources.contains(&source) {
            return Err(Verdict::Busy);
        }
        let rank = q.refusals.get(&source).copied().unwrap_or(0);
        if q.waiting.len() >= MAX_WAITING {
            let worst = *q.waiting.last().expect("full");
            if worst.0 <= rank {
                return Err(Verdict::Busy);
            }
            q.waiting.remove(&worst);
            q.evicted.insert(worst.1);
            self.changed.notify_all();
        }
        q.arrivals += 1;
        let me = (rank, q.arrivals);
        q.waiting.insert(me);
        q.checking.insert(key);
        q.sources.insert(source);
        let mut turn = Turn {
            auth: self,
            key,
            source,
            ran: false,
        };
        loop {
            if q.evicted.remove(&me.1) {
                drop(q);
                return Err(Verdict::Busy);
            }
            if !q.running && q.waiting.first() == Some(&me) {
                q.waiting.remove(&me);
                q.running = true;
                drop(q);
                turn.ran = true;
                return Ok(turn);
            }
            match self.wait(q, until) {
                Some(next) => q = next,
                None => {
                    let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                    q.waiting.remove(&me);
                    q.evicted.remove(&me.1);
                    return Err(Verdict::Busy);
                }
            }
        }
    }

    /// Waits for a change of the queue until `until`; `None` when the time is up.
    fn wait<'a>(
        &self,
        q: std::sync::MutexGuard<'a, Queue>,
        until: Instant,
    ) -> Option<std::sync::MutexGuard<'a, Queue>> {
        let left = until.checked_duration_since(Instant::now())?;
        let (q, _) = self
            .changed
            .wait_timeout(q, left)
            .unwrap_or_else(|p| p.into_inner());
        Some(q)
    }
}

/// A check's place in the queue: given back (and the waiters told) when dropped.
struct Turn<'a> {
    auth: &'a BasicAuth,
    key: u64,
    source: Option<IpAddr>,
    /// It ran bcrypt (and holds the running flag).
    ran: bool,
}

impl Turn<'_> {
    /// bcrypt is done; `refused`: the source's refusals go up by one.
    fn done(self, refused: bool) {
        if refused {
            let mut q = self.auth.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.refusals.len() >= MAX_REMEMBERED {
                q.refusals.clear();
            }
            *q.refusals.entry(self.source).or_default() += 1;
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut q = self.auth.queue.lock().unwrap_or_else(|p| p.into_inner());
        if self.ran {
            q.running = false;
        }
        q.checking.remove(&self.key);
        q.sources.remove(&self.source);
        self.auth.changed.notify_all();
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
            // bcrypt takes tens of milliseconds, and a check may wait for its turn: keep it off
            // the async worker.
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

    /// The same wrong password again costs no bcrypt; a source with a check of another
    /// credential running gets none; and the queue in all is bounded.
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
        // A check of the flooding source holds its place: another credential of that source
        // is turned away without bcrypt, while another source is checked.
        let held = auth.wait_for_turn(1, Some(flood)).unwrap();
        assert_eq!(
            auth.check(Some(&enc("prom:other")), Some(flood)),
            Verdict::Busy
        );
        drop(held);
        let prometheus: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            auth.check(Some(&enc("prom:s3cret")), Some(prometheus)),
            Verdict::Allowed
        );
        assert_eq!(
            auth.check(Some(&enc("prom:x")), Some(prometheus)),
            Verdict::Refused
        );
    }

    /// Twenty concurrent first requests with the right password from one source: one bcrypt,
    /// twenty admitted (the others wait for its verdict).
    #[test]
    fn concurrent_first_requests_wait_for_the_one_check() {
        let hash = bcrypt::hash("s3cret", 6).unwrap();
        let auth =
            std::sync::Arc::new(BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)])));
        let source: IpAddr = "10.1.1.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..20)
            .map(|_| {
                let auth = auth.clone();
                std::thread::spawn(move || auth.check(Some(&enc("prom:s3cret")), Some(source)))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(verdicts, vec![Verdict::Allowed; 20]);
        assert_eq!(auth.bcrypt_runs(), 1);
    }

    /// 100 sources flood with ever new wrong passwords; a client from another source whose
    /// credentials were never checked gets in every time (ten users, each checked once), while
    /// the flood keeps the queue full.
    #[test]
    fn a_flood_from_many_sources_cannot_keep_a_right_password_out() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users: BTreeMap<String, String> = (0..10)
            .map(|i| (format!("prom{i}"), hash.clone()))
            .collect();
        let auth = std::sync::Arc::new(BasicAuth::new(users));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood: Vec<_> = (0..100u8)
            .map(|i| {
                let (auth, stop) = (auth.clone(), stop.clone());
                std::thread::spawn(move || {
                    let source = Some(IpAddr::from([10, 0, 1, i]));
                    let mut n = 0u64;
                    let mut busy = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let header = enc(&format!("prom0:guess-{i}-{n}"));
                        if auth.check(Some(&header), source) == Verdict::Busy {
                            busy += 1;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    (n, busy)
                })
            })
            .collect();
        // Once every flooding source has been refused (a flood that lasts), the client from a
        // source nobody refused goes first.
        while auth.bcrypt_runs() < 200 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let legit: IpAddr = "192.0.2.7".parse().unwrap();
        for i in 0..10 {
            let started = Instant::now();
            let v = auth.check(Some(&enc(&format!("prom{i}:s3cret"))), Some(legit));
            assert_eq!(v, Verdict::Allowed, "try {i} after {:?}", started.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        let (tries, busy): (u64, u64) = flood
            .into_iter()
            .map(|t| t.join().unwrap())
            .fold((0, 0), |(a, b), (n, m)| (a + n, b + m));
        assert!(
            busy > 0 && tries > 100,
            "the flood kept the queue full: {tries} tries, {busy} turned away"
        );
    }
}
