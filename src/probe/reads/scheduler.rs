//! When background reads run, and what they may hold: one [`Scheduler`] for every read kind
//! ([`super::READS`]), one slot per [`Key`] — the read, the API, the auth and its token, the
//! device scope and the read's own settings — so every module and target over one scope shares
//! a snapshot, and a reload that changes none of these keeps it (and starts no read).
//!
//! A probe answers with the snapshot it finds. Once the snapshot is its interval old, the first
//! probe to see it starts a read in the background (one at a time per key, at most
//! [`MAX_RUNNING`] at once) and answers with the old one. Only a probe that finds no snapshot
//! (the first one, or an interval of 0s) waits for the read, which runs beside its device
//! listing, until shortly before its deadline; a read it gave up on goes on for the next probe.
//! A failed read keeps the old snapshot, is tried again after [`RETRY_AFTER_FAILURE`] (or the
//! interval, if shorter), and its session's notes are shown to the next probe.
//!
//! **Memory** (`api.background_max_bytes`): each running read may hold a quarter of it (its
//! listing fails past that, [`super::Bounds`]), and at most two run at once; the snapshots kept
//! hold at most half of it, the least recently used dropped first (read again when asked for).
//! Snapshots no probe asked for in [`IDLE`] (or twice their interval) are swept.
//!
//! **Probes first**: a read's requests go through a session marked background, which the
//! per-auth cap serves last, with a slot budget of its own, and whose times never feed the
//! probes' estimate (`balena::limit`).

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Bounds, Read, Snapshot, Snapshots, READS};
use crate::balena::{BalenaClient, BalenaError, DeviceScope, Session};
use crate::config::{shown_url, Config, ModuleConfig};
use crate::metrics::ExporterMetrics;

/// How soon a failed read is tried again (or its interval, if shorter).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How long a background read may take in all (each request is bounded by `api.timeout`).
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A snapshot no probe asked for in this long (or twice its interval, if longer) is dropped.
pub const IDLE: Duration = Duration::from_secs(600);

/// Background reads running at once, in the whole process: each may hold a quarter of
/// `api.background_max_bytes`, so two leave half of it for the snapshots kept.
pub const MAX_RUNNING: usize = 2;

/// Lines of a background session's notes shown to the next probe.
const NOTES_SHOWN: usize = 12;

/// What one snapshot covers: what the read depends on, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The read's name.
    pub read: &'static str,
    /// `api.url` (another API has other data).
    pub api: String,
    /// Auth name.
    pub auth: String,
    /// A hash of the auth's token (another token may see other devices); never the token.
    pub token: u64,
    /// The device scope, in words (`fleet 42`, `org acme`, `all`).
    pub scope: String,
    /// The read's own module settings ([`Read::settings`]).
    pub settings: String,
}

/// The device scope as a key.
pub fn scope_key(scope: &DeviceScope) -> String {
    match scope {
        DeviceScope::Fleet(id) => format!("fleet {id}"),
        DeviceScope::Org(handle) => format!("org {}", handle.to_lowercase()),
        DeviceScope::Accessible => "all".into(),
    }
}

/// A token's hash for keys: random per process, so it says nothing outside it.
fn token_hash(token: &SecretString) -> u64 {
    static HASHER: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    HASHER
        .get_or_init(Default::default)
        .hash_one(token.expose_secret().as_bytes())
}

/// A read's outcome as waiting probes see it (`None` while it runs).
pub type ReadResult = Option<Result<Arc<dyn Snapshot>, String>>;

/// How the last read of a slot ended, for the next probe's notes.
#[derive(Debug, Clone)]
struct Last {
    finished: SystemTime,
    failure: Option<String>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct Slot {
    current: Option<(Arc<dyn Snapshot>, Instant)>,
    attempted: Option<Instant>,
    pending: Option<watch::Receiver<ReadResult>>,
    used: Instant,
    interval: Duration,
    /// How the last read ended, until a probe is told (then taken).
    last: Option<Last>,
}

impl Slot {
    fn running(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|rx| rx.borrow().is_none() && rx.has_changed().is_ok())
    }
}

/// What a probe does about one read, decided under the lock ([`Scheduler::plan`]).
#[derive(Debug, Default)]
pub struct Plan {
    /// The snapshot there is, and its age.
    pub now: Option<(Arc<dyn Snapshot>, Duration)>,
    /// A read to wait for instead of answering with `now` at once (no snapshot yet, or an
    /// interval of 0s).
    pub wait: Option<watch::Receiver<ReadResult>>,
    /// Set when this probe is to start the read: finish it with [`Scheduler::store`].
    pub start: Option<watch::Sender<ReadResult>>,
    /// A read was due but [`MAX_RUNNING`] were running: a later probe starts it.
    pub deferred: bool,
    /// How the last read ended, if no probe was told yet: when, why it failed, its notes.
    pub last: Option<(SystemTime, Option<String>, Vec<String>)>,
}

/// The snapshots of every read; see the module doc.
#[derive(Debug)]
pub struct Scheduler {
    slots: Mutex<HashMap<Key, Slot>>,
    max_bytes: AtomicUsize,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
            max_bytes: AtomicUsize::new(crate::config::DEFAULT_BACKGROUND_MAX_BYTES),
        }
    }
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `api.background_max_bytes` (each probe, from the config in force).
    pub fn set_max_bytes(&self, max: usize) {
        self.max_bytes.store(max, Ordering::Relaxed);
    }

    /// What one running read may hold.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            max_bytes: self.max_bytes.load(Ordering::Relaxed) / (2 * MAX_RUNNING),
        }
    }

    /// What a probe of `key` under `interval` does now: answer with the snapshot, start a read,
    /// wait for one.
    pub fn plan(&self, key: &Key, interval: Duration) -> Plan {
        let now = Instant::now();
        let mut slots = self.lock();
        let running = slots.values().filter(|s| s.running()).count();
        let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
            current: None,
            attempted: None,
            pending: None,
            used: now,
            interval,
            last: None,
        });
        slot.used = now;
        slot.interval = interval;
        let mut plan = Plan {
            now: slot
                .current
                .as_ref()
                .map(|(s, at)| (s.clone(), now.duration_since(*at))),
            ..Plan::default()
        };
        plan.last = slot.last.take().map(|l| (l.finished, l.failure, l.notes));
        if matches!(&plan.now, Some((_, age)) if *age < interval) {
            return plan;
        }
        plan.wait = slot.running().then(|| slot.pending.clone()).flatten();
        let due = slot
            .attempted
            .is_none_or(|t| now.duration_since(t) >= interval.min(RETRY_AFTER_FAILURE));
        if plan.wait.is_none() && due {
            if running >= MAX_RUNNING {
                plan.deferred = true;
            } else {
                let (tx, rx) = watch::channel(None);
                slot.pending = Some(rx.clone());
                slot.attempted = Some(now);
                plan.wait = Some(rx);
                plan.start = Some(tx);
            }
        }
        if plan.now.is_some() && !interval.is_zero() {
            plan.wait = None;
        }
        plan
    }

    /// Ends the read started with `tx`: a snapshot becomes the current one (then the least
    /// recently used others are dropped while the kept ones are over their half of the
    /// budget); a failure keeps the old. `notes`: the read session's log, for the next probe.
    /// Probes waiting for it are told either way.
    pub fn store(
        &self,
        key: &Key,
        tx: &watch::Sender<ReadResult>,
        result: Result<Arc<dyn Snapshot>, BalenaError>,
        notes: Vec<String>,
    ) {
        let shared = result.map_err(|e| e.to_string());
        {
            let mut slots = self.lock();
            if let Some(slot) = slots.get_mut(key) {
                if let Ok(s) = &shared {
                    slot.current = Some((s.clone(), Instant::now()));
                }
                slot.pending = None;
                let keep = notes.len().saturating_sub(NOTES_SHOWN);
                slot.last = Some(Last {
                    finished: SystemTime::now(),
                    failure: shared.as_ref().err().cloned(),
                    notes: notes.into_iter().skip(keep).collect(),
                });
            }
            let budget = self.max_bytes.load(Ordering::Relaxed) / 2;
            evict(&mut slots, key, budget);
        }
        let _ = tx.send(Some(shared));
    }

    /// Drops the snapshots no probe asked for in [`IDLE`] (or twice their interval), unless a
    /// read of theirs is running.
    pub fn sweep(&self) {
        self.lock().retain(|_, s| {
            let reading = s
                .pending
                .as_ref()
                .is_some_and(|rx| rx.has_changed().is_ok());
            reading || s.used.elapsed() < IDLE.max(s.interval * 2)
        });
    }

    /// Bytes held by the snapshots of each read (every read listed, 0 when none).
    pub fn bytes(&self) -> Vec<(&'static str, usize)> {
        let slots = self.lock();
        READS
            .iter()
            .map(|r| {
                let held = slots
                    .iter()
                    .filter(|(k, _)| k.read == r.name())
                    .filter_map(|(_, s)| s.current.as_ref())
                    .map(|(s, _)| s.bytes())
                    .sum();
                (r.name(), held)
            })
            .collect()
    }
}

/// Drops the current snapshot of the least recently used slots other than `keep` while the
/// snapshots held are over `budget`.
fn evict(slots: &mut HashMap<Key, Slot>, keep: &Key, budget: usize) {
    let mut held: usize = slots
        .values()
        .filter_map(|s| s.current.as_ref())
        .map(|(s, _)| s.bytes())
        .sum();
    while held > budget {
        let victim = slots
            .iter_mut()
            .filter(|(k, s)| *k != keep && s.current.is_some())
            .min_by_key(|(_, s)| s.used);
        let Some((key, slot)) = victim else { return };
        if let Some((dropped, _)) = slot.current.take() {
            held -= dropped.bytes();
        }
        tracing::info!(
            read = key.read,
            scope = %key.scope,
            "background snapshot dropped: over half of api.background_max_bytes; read again when asked for"
        );
    }
}

/// What a probe needs to get its snapshots: the scheduler, and what a read it starts runs with
/// (a session of its own, so that it outlives the probe).
pub struct ReadsAt {
    /// The shared scheduler.
    pub scheduler: Arc<Scheduler>,
    /// The worker's upstream client.
    pub client: BalenaClient,
    /// The config the probe runs under.
    pub config: Arc<Config>,
    /// Auth name.
    pub auth: String,
    /// The auth's token.
    pub token: Arc<SecretString>,
    /// Where reads are counted.
    pub metrics: Arc<ExporterMetrics>,
    /// How long the probe may wait for a read.
    pub wait_until: std::time::Instant,
}

impl ReadsAt {
    /// The snapshots `module` reads for `scope`, each got (and perhaps started) as the module
    /// doc says; `session` takes the notes.
    pub async fn get(
        &self,
        session: &Session<'_>,
        scope: &DeviceScope,
        module: &ModuleConfig,
    ) -> Snapshots {
        self.scheduler
            .set_max_bytes(self.config.api.background_max_bytes);
        let wanted = READS
            .iter()
            .filter_map(|r| Some((*r, r.interval(module)?)))
            .map(|(r, interval)| self.get_one(session, r, scope, module, interval));
        let mut out = Snapshots::default();
        for s in futures_util::future::join_all(wanted)
            .await
            .into_iter()
            .flatten()
        {
            out.push(s);
        }
        out
    }

    fn key(&self, read: &dyn Read, scope: &DeviceScope, module: &ModuleConfig) -> Key {
        Key {
            read: read.name(),
            api: shown_url(&self.config.api.url),
            auth: self.auth.clone(),
            token: token_hash(&self.token),
            scope: scope_key(scope),
            settings: read.settings(module),
        }
    }

    /// One read's snapshot for this probe: notes how the last read ended, starts the read
    /// when it is due, and waits only when there is nothing to answer with yet.
    async fn get_one(
        &self,
        session: &Session<'_>,
        read: &'static dyn Read,
        scope: &DeviceScope,
        module: &ModuleConfig,
        interval: Duration,
    ) -> Option<Arc<dyn Snapshot>> {
        let key = self.key(read, scope, module);
        let name = read.name();
        let plan = self.scheduler.plan(&key, interval);
        let shown = humantime::format_duration(interval);
        if let Some(last) = &plan.last {
            note_last_read(session, name, &key.scope, last);
        }
        if plan.deferred {
            session.note(format_args!(
                "{name}: a read of {} is due; {MAX_RUNNING} background reads are running (the most at once): a later probe starts it",
                key.scope
            ));
        }
        if let Some(tx) = plan.start {
            session.note(format_args!(
                "{name}: reading {} in the background (interval {shown})",
                key.scope
            ));
            self.spawn_read(read, key.clone(), scope.clone(), tx);
        }
        let Some(rx) = plan.wait else {
            if let Some((s, age)) = &plan.now {
                session.note(format_args!(
                    "{name}: snapshot of {} read {}s ago (interval {shown})",
                    s.summary(),
                    age.as_secs()
                ));
            }
            return plan.now.map(|(s, _)| s);
        };
        let fallback = plan.now.map(|(s, _)| s);
        self.wait_for(session, name, rx, fallback, interval).await
    }

    /// Waits for a read this probe needs (no snapshot yet, or an interval of 0s) until the
    /// probe's own deadline; the read's snapshot, else `fallback` (the previous one, if any).
    async fn wait_for(
        &self,
        session: &Session<'_>,
        name: &str,
        mut rx: watch::Receiver<ReadResult>,
        fallback: Option<Arc<dyn Snapshot>>,
        interval: Duration,
    ) -> Option<Arc<dyn Snapshot>> {
        let remaining = self
            .wait_until
            .saturating_duration_since(std::time::Instant::now());
        let outcome = match actix_rt::time::timeout(remaining, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone().expect("waited for Some").map_err(|e| {
                format!(
                    "the read failed: {e}; tried again in {}s",
                    interval.min(RETRY_AFTER_FAILURE).as_secs()
                )
            }),
            Ok(Err(_)) => Err("the read ended without an answer".into()),
            Err(_) => Err(format!(
                "not read within {:.1}s; the read goes on for the next probe",
                remaining.as_secs_f64()
            )),
        };
        match outcome {
            Ok(s) => {
                session.note(format_args!("{name}: read {}", s.summary()));
                Some(s)
            }
            Err(why) => {
                let with = if fallback.is_some() {
                    "the previous snapshot"
                } else {
                    "none"
                };
                session.note(format_args!("{name}: {why}; answering with {with}"));
                fallback
            }
        }
    }

    /// Starts a read on this worker, with a background session of its own.
    fn spawn_read(
        &self,
        read: &'static dyn Read,
        key: Key,
        scope: DeviceScope,
        tx: watch::Sender<ReadResult>,
    ) {
        let scheduler = self.scheduler.clone();
        let client = self.client.clone();
        let config = self.config.clone();
        let token = self.token.clone();
        let metrics = self.metrics.clone();
        let bounds = scheduler.bounds();
        actix_rt::spawn(async move {
            let deadline = std::time::Instant::now() + READ_TIMEOUT;
            let session =
                Session::new(&client, &config.api, &key.auth, &token, deadline).background();
            let result = actix_rt::time::timeout(READ_TIMEOUT, read.read(&session, &scope, bounds))
                .await
                .unwrap_or(Err(BalenaError::Timeout(READ_TIMEOUT)));
            let label = match &result {
                Ok(_) => "success",
                Err(e) => e.reason(),
            };
            metrics
                .background_reads
                .with_label_values(&[key.read, label])
                .inc();
            match &result {
                Ok(s) => tracing::debug!(
                    read = key.read,
                    auth = %key.auth,
                    scope = %key.scope,
                    held = %s.summary(),
                    requests = session.call_count(),
                    "background read"
                ),
                Err(e) => tracing::warn!(
                    read = key.read,
                    auth = %key.auth,
                    scope = %key.scope,
                    reason = e.reason(),
                    error = %e,
                    "background read failed; the previous snapshot is kept"
                ),
            }
            for line in session.notes() {
                tracing::debug!(read = key.read, scope = %key.scope, "{}", line.trim_start());
            }
            scheduler.store(&key, &tx, result, session.notes());
        });
    }
}

/// Tells a probe how the last read of its data ended (once a read: [`Plan::last`]), and
/// what that read noted on its way.
fn note_last_read(
    session: &Session<'_>,
    name: &str,
    scope: &str,
    (finished, failure, notes): &(SystemTime, Option<String>, Vec<String>),
) {
    let ago = SystemTime::now()
        .duration_since(*finished)
        .unwrap_or_default()
        .as_secs();
    match failure {
        Some(why) => session.note(format_args!(
            "{name}: the last read of {scope} ({ago}s ago) failed: {why}"
        )),
        None => session.note(format_args!(
            "{name}: the last read of {scope} finished {ago}s ago"
        )),
    }
    for line in notes {
        // A note is "<seconds into its session>s <text>".
        let (at, text) = line.trim_start().split_once("s ").unwrap_or(("?", line));
        session.note(format_args!("{name} (background, +{at}s): {text}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Held(usize);

    impl Snapshot for Held {
        fn bytes(&self) -> usize {
            self.0
        }
        fn read_at(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH
        }
        fn summary(&self) -> String {
            format!("{} bytes", self.0)
        }
    }

    fn key_of(scope: &str) -> Key {
        Key {
            read: "services",
            api: "http://api".into(),
            auth: "a".into(),
            token: 1,
            scope: scope.into(),
            settings: String::new(),
        }
    }

    fn key() -> Key {
        key_of("fleet 1")
    }

    /// The bytes the scheduler reports for the services read (every read is reported).
    fn services_bytes(cache: &Scheduler) -> usize {
        let all = cache.bytes();
        assert_eq!(all.len(), READS.len(), "{all:?}");
        all.iter()
            .find(|(r, _)| *r == "services")
            .expect("reported")
            .1
    }

    fn snapshot() -> Result<Arc<dyn Snapshot>, BalenaError> {
        Ok(Arc::new(Held(100)))
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[tokio::test(start_paused = true)]
    async fn the_first_probe_waits_then_probes_answer_at_once_and_refresh_in_the_background() {
        let cache = Scheduler::default();
        let first = cache.plan(&key(), FIVE_MIN);
        assert!(first.now.is_none() && first.wait.is_some());
        let tx = first.start.expect("the first probe starts the read");
        // A second probe meanwhile waits for the same read, and starts none.
        let second = cache.plan(&key(), FIVE_MIN);
        assert!(second.start.is_none() && second.wait.is_some());
        cache.store(&key(), &tx, snapshot(), vec!["a note".into()]);
        assert!(matches!(&*first.wait.unwrap().borrow(), Some(Ok(_))));

        tokio::time::advance(Duration::from_secs(299)).await;
        let fresh = cache.plan(&key(), FIVE_MIN);
        assert!(fresh.now.is_some() && fresh.wait.is_none() && fresh.start.is_none());
        let (_, failure, notes) = fresh.last.expect("the read's notes, once");
        assert_eq!((failure, notes), (None, vec!["a note".to_string()]));
        assert!(cache.plan(&key(), FIVE_MIN).last.is_none(), "shown once");

        tokio::time::advance(Duration::from_secs(2)).await;
        let stale = cache.plan(&key(), FIVE_MIN);
        let (_, age) = stale.now.as_ref().expect("answers with the stale snapshot");
        assert_eq!(age.as_secs(), 301);
        assert!(stale.wait.is_none(), "does not wait");
        let tx = stale.start.expect("starts the refresh");
        let again = cache.plan(&key(), FIVE_MIN);
        assert!(
            again.start.is_none() && again.now.is_some(),
            "one read at a time"
        );

        // A failed refresh keeps the old snapshot, says why to the next probe, and is retried
        // after 30 s.
        cache.store(
            &key(),
            &tx,
            Err(BalenaError::Timeout(READ_TIMEOUT)),
            Vec::new(),
        );
        let kept = cache.plan(&key(), FIVE_MIN);
        assert!(kept.now.is_some() && kept.start.is_none());
        assert!(kept.last.unwrap().1.unwrap().contains("timed out"));
        tokio::time::advance(RETRY_AFTER_FAILURE).await;
        assert!(cache.plan(&key(), FIVE_MIN).start.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn interval_zero_waits_for_a_read_every_time_and_idle_snapshots_are_swept() {
        let cache = Scheduler::default();
        let first = cache.plan(&key(), Duration::ZERO);
        cache.store(&key(), &first.start.unwrap(), snapshot(), Vec::new());
        let next = cache.plan(&key(), Duration::ZERO);
        assert!(next.now.is_some(), "the old one is the fallback");
        assert!(next.wait.is_some() && next.start.is_some());
        cache.store(&key(), &next.start.unwrap(), snapshot(), Vec::new());
        assert_eq!(services_bytes(&cache), 100);

        tokio::time::advance(IDLE - Duration::from_secs(1)).await;
        cache.sweep();
        assert_eq!(services_bytes(&cache), 100);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.sweep();
        assert_eq!(services_bytes(&cache), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_whose_reader_vanished_is_started_again() {
        let cache = Scheduler::default();
        let first = cache.plan(&key(), FIVE_MIN);
        drop(first.start);
        tokio::time::advance(RETRY_AFTER_FAILURE).await;
        let again = cache.plan(&key(), FIVE_MIN);
        assert!(again.start.is_some());
        // A slot whose reader vanished is swept once idle; one whose read runs is kept.
        tokio::time::advance(IDLE).await;
        cache.sweep();
        assert!(
            cache.plan(&key(), FIVE_MIN).start.is_none(),
            "kept: its read runs"
        );
        drop(again.start);
        tokio::time::advance(IDLE).await;
        cache.sweep();
        assert!(cache.lock().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_two_reads_run_and_kept_snapshots_stay_within_half_the_budget() {
        let cache = Scheduler::default();
        cache.set_max_bytes(1000);
        assert_eq!(cache.bounds().max_bytes, 250, "a quarter each");
        let a = cache.plan(&key_of("fleet 1"), FIVE_MIN);
        let b = cache.plan(&key_of("fleet 2"), FIVE_MIN);
        let c = cache.plan(&key_of("fleet 3"), FIVE_MIN);
        assert!(a.start.is_some() && b.start.is_some());
        assert!(
            c.start.is_none() && c.deferred,
            "a third waits for a later probe"
        );
        for (scope, plan) in [("fleet 1", a), ("fleet 2", b)] {
            tokio::time::advance(Duration::from_secs(1)).await;
            let held: Arc<dyn Snapshot> = Arc::new(Held(200));
            cache.store(&key_of(scope), &plan.start.unwrap(), Ok(held), Vec::new());
        }
        assert_eq!(services_bytes(&cache), 400);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            cache.plan(&key_of("fleet 2"), FIVE_MIN).now.is_some(),
            "fleet 2 used"
        );
        let c = cache.plan(&key_of("fleet 3"), FIVE_MIN);
        let held: Arc<dyn Snapshot> = Arc::new(Held(200));
        cache.store(&key_of("fleet 3"), &c.start.unwrap(), Ok(held), Vec::new());
        assert_eq!(
            services_bytes(&cache),
            400,
            "the least recently used dropped: 600 > 500"
        );
        assert!(cache.plan(&key_of("fleet 1"), FIVE_MIN).now.is_none());
        assert!(cache.plan(&key_of("fleet 2"), FIVE_MIN).now.is_some());
    }

    #[test]
    fn a_key_holds_no_token_and_tells_tokens_apart() {
        let a = token_hash(&SecretString::from("tok-a"));
        let b = token_hash(&SecretString::from("tok-b"));
        assert_ne!(a, b);
        assert_eq!(a, token_hash(&SecretString::from("tok-a")));
    }
}
