//! When a target's services are read: one [`Snapshot`] per (auth, device scope, config
//! generation), shared by every module and target over that scope, re-read off the probe path.
//!
//! A probe answers with the snapshot it finds. Once the snapshot is `services_interval` old,
//! the first probe to see it starts a read in the background (one at a time per scope) and
//! answers with the old one: services lag device states by up to the interval plus a read,
//! and a probe costs the device listing alone. Only a probe that finds no snapshot (the first
//! one, or `services_interval: 0s`) waits for the read, which runs beside its device listing,
//! until shortly before its deadline; a read it gave up on goes on for the next probe. A failed
//! read keeps the old snapshot and is tried again after [`RETRY_AFTER_FAILURE`] (or the
//! interval, if shorter). Snapshots no probe asked for in a while are swept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::watch;
use tokio::time::Instant;

use super::services::{read, Snapshot};
use crate::balena::{BalenaClient, BalenaError, DeviceScope, Session};
use crate::config::Config;
use crate::metrics::ExporterMetrics;

/// How soon a failed read is tried again (or `services_interval`, if shorter).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How long a background read may take in all (each request is bounded by `api.timeout`).
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A snapshot no probe asked for in this long (or twice its interval, if longer) is dropped.
pub const IDLE: Duration = Duration::from_secs(600);

/// What one snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotKey {
    /// Auth name (another token may see other devices).
    pub auth: String,
    /// The device scope, in words (`fleet 42`, `org acme`, `all`).
    pub scope: String,
    /// Config generation.
    pub generation: u64,
}

/// The device scope as a key.
pub fn scope_key(scope: &DeviceScope) -> String {
    match scope {
        DeviceScope::Fleet(id) => format!("fleet {id}"),
        DeviceScope::Org(handle) => format!("org {}", handle.to_lowercase()),
        DeviceScope::Accessible => "all".into(),
    }
}

/// A read's outcome as waiting probes see it (`None` while it runs).
pub type ReadResult = Option<Result<Arc<Snapshot>, String>>;

#[derive(Debug)]
struct Slot {
    current: Option<(Arc<Snapshot>, Instant)>,
    attempted: Option<Instant>,
    pending: Option<watch::Receiver<ReadResult>>,
    used: Instant,
    interval: Duration,
}

/// What a probe does about its services, decided under the lock ([`ServiceSnapshots::plan`]).
#[derive(Debug, Default)]
pub struct Plan {
    /// The snapshot there is, and its age.
    pub now: Option<(Arc<Snapshot>, Duration)>,
    /// A read to wait for instead of answering with `now` at once (no snapshot yet, or
    /// `services_interval: 0s`).
    pub wait: Option<watch::Receiver<ReadResult>>,
    /// Set when this probe is to start the read: finish it with [`ServiceSnapshots::store`].
    pub start: Option<watch::Sender<ReadResult>>,
}

/// The shared snapshots; see the module doc.
#[derive(Debug, Default)]
pub struct ServiceSnapshots {
    slots: Mutex<HashMap<SnapshotKey, Slot>>,
}

impl ServiceSnapshots {
    /// What a probe of `key` under `interval` does now: answer with the snapshot, start a read,
    /// wait for one.
    pub fn plan(&self, key: &SnapshotKey, interval: Duration) -> Plan {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(key.clone()).or_insert_with(|| Slot {
            current: None,
            attempted: None,
            pending: None,
            used: now,
            interval,
        });
        slot.used = now;
        slot.interval = interval;
        let current = slot
            .current
            .as_ref()
            .map(|(s, at)| (s.clone(), now.duration_since(*at)));
        if let Some((_, age)) = &current {
            if *age < interval {
                return Plan {
                    now: current,
                    ..Plan::default()
                };
            }
        }
        let running = slot
            .pending
            .as_ref()
            .filter(|rx| rx.borrow().is_none() && rx.has_changed().is_ok())
            .cloned();
        let mut plan = Plan {
            now: current,
            wait: running,
            start: None,
        };
        let due = slot
            .attempted
            .is_none_or(|t| now.duration_since(t) >= interval.min(RETRY_AFTER_FAILURE));
        if plan.wait.is_none() && due {
            let (tx, rx) = watch::channel(None);
            slot.pending = Some(rx.clone());
            slot.attempted = Some(now);
            plan.wait = Some(rx);
            plan.start = Some(tx);
        }
        if plan.now.is_some() && !interval.is_zero() {
            plan.wait = None;
        }
        plan
    }

    /// Ends the read started with `tx`: a snapshot becomes the current one; a failure keeps
    /// the old. Probes waiting for it are told either way.
    pub fn store(
        &self,
        key: &SnapshotKey,
        tx: &watch::Sender<ReadResult>,
        result: Result<Snapshot, BalenaError>,
    ) {
        let shared = result.map(Arc::new).map_err(|e| e.to_string());
        {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = slots.get_mut(key) {
                if let Ok(s) = &shared {
                    slot.current = Some((s.clone(), Instant::now()));
                }
                slot.pending = None;
            }
        }
        let _ = tx.send(Some(shared));
    }

    /// Drops the snapshots no probe asked for in [`IDLE`] (or twice their interval), unless a
    /// read of theirs is running.
    pub fn sweep(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|_, s| {
            let reading = s
                .pending
                .as_ref()
                .is_some_and(|rx| rx.has_changed().is_ok());
            reading || s.used.elapsed() < IDLE.max(s.interval * 2)
        });
    }

    /// Bytes held by the snapshots.
    pub fn bytes(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .filter_map(|s| s.current.as_ref())
            .map(|(s, _)| s.bytes())
            .sum()
    }
}

/// What a probe needs to get its services: the shared snapshots, and what a read it starts
/// runs with (its own session, so that it outlives the probe).
pub struct ServicesAt {
    /// The shared snapshots.
    pub snapshots: Arc<ServiceSnapshots>,
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

impl ServicesAt {
    /// The services snapshot of `scope` for a probe (`session` takes the notes), or `None`
    /// when there is none in time.
    pub async fn get(
        &self,
        session: &Session<'_>,
        scope: &DeviceScope,
        interval: Duration,
    ) -> Option<Arc<Snapshot>> {
        let key = SnapshotKey {
            auth: self.auth.clone(),
            scope: scope_key(scope),
            generation: self.config.generation,
        };
        let plan = self.snapshots.plan(&key, interval);
        let shown = humantime::format_duration(interval);
        if let Some(tx) = plan.start {
            session.note(format_args!(
                "services: reading the image installs of {} (services_interval {shown})",
                key.scope
            ));
            self.spawn_read(key.clone(), scope.clone(), tx);
        }
        let Some(mut rx) = plan.wait else {
            if let Some((s, age)) = &plan.now {
                session.note(format_args!(
                    "services: snapshot of {} installs read {}s ago (services_interval {shown})",
                    s.installs,
                    age.as_secs()
                ));
            }
            return plan.now.map(|(s, _)| s);
        };
        let fallback = plan.now.map(|(s, _)| s);
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
                session.note(format_args!(
                    "services: read {} installs ({} current services)",
                    s.installs,
                    s.len()
                ));
                Some(s)
            }
            Err(why) => {
                let with = if fallback.is_some() {
                    "the previous snapshot"
                } else {
                    "no services"
                };
                session.note(format_args!("services: {why}; answering with {with}"));
                fallback
            }
        }
    }

    /// Starts a read of `scope` on this worker, with a session of its own.
    fn spawn_read(&self, key: SnapshotKey, scope: DeviceScope, tx: watch::Sender<ReadResult>) {
        let snapshots = self.snapshots.clone();
        let client = self.client.clone();
        let config = self.config.clone();
        let token = self.token.clone();
        let metrics = self.metrics.clone();
        actix_rt::spawn(async move {
            let deadline = std::time::Instant::now() + READ_TIMEOUT;
            let session = Session::new(&client, &config.api, &key.auth, &token, deadline);
            let result = actix_rt::time::timeout(READ_TIMEOUT, read(&session, &scope))
                .await
                .unwrap_or(Err(BalenaError::Timeout(READ_TIMEOUT)));
            match &result {
                Ok(s) => {
                    metrics.services_reads.with_label_values(&["success"]).inc();
                    tracing::debug!(
                        auth = %key.auth,
                        scope = %key.scope,
                        installs = s.installs,
                        requests = session.call_count(),
                        "services read"
                    );
                }
                Err(e) => {
                    metrics.services_reads.with_label_values(&["failure"]).inc();
                    tracing::warn!(
                        auth = %key.auth,
                        scope = %key.scope,
                        error = %e,
                        "services read failed; the previous snapshot is kept"
                    );
                }
            }
            snapshots.store(&key, &tx, result);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::services::SnapshotBuilder;

    fn key() -> SnapshotKey {
        SnapshotKey {
            auth: "a".into(),
            scope: "fleet 1".into(),
            generation: 1,
        }
    }

    fn snapshot() -> Snapshot {
        SnapshotBuilder::default().finish(&HashMap::new(), std::time::SystemTime::now())
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[tokio::test(start_paused = true)]
    async fn the_first_probe_waits_then_probes_answer_at_once_and_refresh_in_the_background() {
        let cache = ServiceSnapshots::default();
        let first = cache.plan(&key(), FIVE_MIN);
        assert!(first.now.is_none() && first.wait.is_some());
        let tx = first.start.expect("the first probe starts the read");
        // A second probe meanwhile waits for the same read, and starts none.
        let second = cache.plan(&key(), FIVE_MIN);
        assert!(second.start.is_none() && second.wait.is_some());
        cache.store(&key(), &tx, Ok(snapshot()));
        assert!(matches!(&*first.wait.unwrap().borrow(), Some(Ok(_))));

        tokio::time::advance(Duration::from_secs(299)).await;
        let fresh = cache.plan(&key(), FIVE_MIN);
        assert!(fresh.now.is_some() && fresh.wait.is_none() && fresh.start.is_none());

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

        // A failed refresh keeps the old snapshot, and is retried after 30 s.
        cache.store(&key(), &tx, Err(BalenaError::Timeout(READ_TIMEOUT)));
        let kept = cache.plan(&key(), FIVE_MIN);
        assert!(kept.now.is_some() && kept.start.is_none());
        tokio::time::advance(RETRY_AFTER_FAILURE).await;
        assert!(cache.plan(&key(), FIVE_MIN).start.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn interval_zero_waits_for_a_read_every_time_and_idle_snapshots_are_swept() {
        let cache = ServiceSnapshots::default();
        let first = cache.plan(&key(), Duration::ZERO);
        cache.store(&key(), &first.start.unwrap(), Ok(snapshot()));
        let next = cache.plan(&key(), Duration::ZERO);
        assert!(next.now.is_some(), "the old one is the fallback");
        assert!(next.wait.is_some() && next.start.is_some());
        cache.store(&key(), &next.start.unwrap(), Ok(snapshot()));
        assert!(cache.bytes() > 0);

        tokio::time::advance(IDLE - Duration::from_secs(1)).await;
        cache.sweep();
        assert!(cache.bytes() > 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        cache.sweep();
        assert_eq!(cache.bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_whose_reader_vanished_is_started_again() {
        let cache = ServiceSnapshots::default();
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
        assert!(cache.slots.lock().unwrap().is_empty());
    }
}
