//! Single-flight and a TTL cache for probe results, shared by every worker.
//!
//! Identical probes (same target, module, auth and config generation) that arrive while a
//! fetch is in flight wait for it instead of starting their own; a successful result is then
//! reused for `api.cache_ttl` (0 disables reuse but keeps single-flight). Failures are shared
//! with the probes that waited for them but never cached. A leader that disappears (its
//! scraper hung up) frees its followers, one of which fetches instead.
//!
//! The results held are bounded by `api.cache_max_bytes`: when a new result would pass it,
//! the oldest results go first (the new one too, if it alone is larger). Expired results are
//! swept every second ([`ProbeCache::sweep`]) even when no probe comes, and the freed memory
//! is handed back to the operating system.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::ProbeData;
use crate::balena::model::Fleet;
use crate::balena::BalenaError;

/// What identifies identical probes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Target name.
    pub target: String,
    /// Module name.
    pub module: String,
    /// Auth name.
    pub auth: String,
    /// Config generation.
    pub generation: u64,
}

/// A finished fetch: the result and when it completed (on the runtime's clock, which tests
/// can pause and advance).
type Finished = (Result<Arc<ProbeData>, BalenaError>, tokio::time::Instant);

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This probe fetched it.
    Fetched,
    /// A result younger than the TTL.
    Cache,
    /// Another probe's fetch that was in flight.
    Shared,
}

impl Source {
    /// The word logs and pages use: `fetched`, `cache`, `shared` (the last two are also the
    /// `kind` of `balena_exporter_cache_hits_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fetched => "fetched",
            Source::Cache => "cache",
            Source::Shared => "shared",
        }
    }
}

/// The shared cache.
#[derive(Debug)]
pub struct ProbeCache {
    slots: Mutex<HashMap<CacheKey, watch::Receiver<Option<Finished>>>>,
    max_bytes: AtomicUsize,
}

impl Default for ProbeCache {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
            max_bytes: AtomicUsize::new(usize::MAX),
        }
    }
}

enum Step {
    Done(Result<Arc<ProbeData>, BalenaError>, Duration, Source),
    Wait(watch::Receiver<Option<Finished>>),
    Lead(watch::Sender<Option<Finished>>),
}

impl ProbeCache {
    /// Answers from the cache, from a fetch in flight, or by running `fetch` (at most once).
    /// Returns the result, its age and where it came from. Waiting is bounded by `deadline`.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: CacheKey,
        ttl: Duration,
        deadline: Instant,
        fetch: F,
    ) -> (Result<Arc<ProbeData>, BalenaError>, Duration, Source)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ProbeData, BalenaError>>,
    {
        let mut fetch = Some(fetch);
        loop {
            match self.step(&key, ttl) {
                Step::Done(r, age, source) => return (r, age, source),
                Step::Wait(mut rx) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match actix_rt::time::timeout(remaining, rx.wait_for(Option::is_some)).await {
                        Ok(Ok(v)) => {
                            let (r, at) = v.clone().expect("waited for Some");
                            return (r, at.elapsed(), Source::Shared);
                        }
                        // The leader went away without an answer: try again (maybe lead).
                        Ok(Err(_)) => continue,
                        Err(_) => {
                            return (
                                Err(BalenaError::Timeout(remaining)),
                                Duration::ZERO,
                                Source::Shared,
                            )
                        }
                    }
                }
                Step::Lead(tx) => {
                    let f = fetch.take().expect("a probe leads at most once");
                    let result = f().await.map(Arc::new);
                    let _ = tx.send(Some((result.clone(), tokio::time::Instant::now())));
                    if result.is_err() || ttl.is_zero() {
                        self.forget(&key, &tx);
                    } else {
                        self.evict_over_bound();
                    }
                    return (result, Duration::ZERO, Source::Fetched);
                }
            }
        }
    }

    fn step(&self, key: &CacheKey, ttl: Duration) -> Step {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = slots.get(key) {
            let leader_gone = rx.has_changed().is_err();
            match &*rx.borrow() {
                Some((Ok(data), at)) if at.elapsed() < ttl => {
                    return Step::Done(Ok(data.clone()), at.elapsed(), Source::Cache);
                }
                None if !leader_gone => return Step::Wait(rx.clone()),
                _ => {}
            }
        }
        // Drop expired results of other keys so the map stays as small as the config.
        slots.retain(|_, rx| match &*rx.borrow() {
            Some((Ok(_), at)) => at.elapsed() < ttl,
            Some((Err(_), _)) => false,
            None => rx.has_changed().is_ok(),
        });
        let (tx, rx) = watch::channel(None);
        slots.insert(key.clone(), rx);
        Step::Lead(tx)
    }

    /// Results held (successful fetches not yet dropped) and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .filter_map(|rx| match &*rx.borrow() {
                Some((Ok(data), _)) => Some(data.bytes()),
                _ => None,
            })
            .fold((0, 0), |(n, bytes), b| (n + 1, bytes + b))
    }

    /// Sets the bound of the results held (`api.cache_max_bytes`, from the config in force).
    pub fn set_max_bytes(&self, max: usize) {
        self.max_bytes.store(max, Ordering::Relaxed);
    }

    /// Drops the oldest results until those held fit the bound.
    fn evict_over_bound(&self) {
        let max = self.max_bytes.load(Ordering::Relaxed);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut held: Vec<(tokio::time::Instant, usize, CacheKey)> = slots
            .iter()
            .filter_map(|(k, rx)| match &*rx.borrow() {
                Some((Ok(data), at)) => Some((*at, data.bytes(), k.clone())),
                _ => None,
            })
            .collect();
        let mut total: usize = held.iter().map(|(_, b, _)| b).sum();
        if total <= max {
            return;
        }
        held.sort_by_key(|(at, _, _)| *at);
        for (_, bytes, key) in held {
            if total <= max {
                break;
            }
            slots.remove(&key);
            total -= bytes;
        }
    }

    /// Drops every result older than `ttl` and every failure; true if anything was dropped.
    pub fn sweep(&self, ttl: Duration) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let before = slots.len();
        slots.retain(|_, rx| match &*rx.borrow() {
            Some((Ok(_), at)) => at.elapsed() < ttl,
            Some((Err(_), _)) => false,
            None => rx.has_changed().is_ok(),
        });
        slots.len() < before
    }

    fn forget(&self, key: &CacheKey, tx: &watch::Sender<Option<Finished>>) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots
            .get(key)
            .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
        {
            slots.remove(key);
        }
    }

    /// Number of keys held (tests, metrics).
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fleet rows by (auth, slug, config generation), reused for `api.fleet_cache_ttl`: a fleet's
/// id, name, organization and target release rarely change, so a fleet probe in steady state
/// is one request (the device listing).
#[derive(Debug, Default)]
pub struct FleetRows {
    rows: Mutex<HashMap<FleetKey, (Fleet, Instant)>>,
}

/// (auth name, fleet slug, config generation)
type FleetKey = (String, String, u64);

impl FleetRows {
    /// A row younger than `ttl`.
    pub fn get(&self, auth: &str, slug: &str, generation: u64, ttl: Duration) -> Option<Fleet> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.get(&(auth.to_string(), slug.to_string(), generation))
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(f, _)| f.clone())
    }

    /// Drops rows older than `ttl`.
    pub fn sweep(&self, ttl: Duration) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.retain(|_, (_, at)| at.elapsed() < ttl);
    }

    /// Keeps a row (and drops expired ones).
    pub fn put(&self, auth: &str, slug: &str, generation: u64, ttl: Duration, fleet: Fleet) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.retain(|_, (_, at)| at.elapsed() < ttl);
        rows.insert(
            (auth.to_string(), slug.to_string(), generation),
            (fleet, Instant::now()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key() -> CacheKey {
        CacheKey {
            target: "t".into(),
            module: "m".into(),
            auth: "a".into(),
            generation: 0,
        }
    }

    #[actix_rt::test]
    async fn concurrent_probes_share_one_fetch_and_the_ttl_reuses_it() {
        tokio::time::pause(); // the 100 ms fetch and the TTL run on the test's clock
        let cache = Arc::new(ProbeCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut handles = Vec::new();
        for _ in 0..20 {
            let (cache, calls) = (cache.clone(), calls.clone());
            handles.push(actix_rt::spawn(async move {
                cache
                    .get_or_fetch(key(), Duration::from_secs(60), deadline, || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        actix_rt::time::sleep(Duration::from_millis(100)).await;
                        Ok(ProbeData::default())
                    })
                    .await
                    .2
            }));
        }
        let mut sources = Vec::new();
        for h in handles {
            sources.push(h.await.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(sources.iter().filter(|s| **s == Source::Fetched).count(), 1);
        let (_, _, src) = cache
            .get_or_fetch(key(), Duration::from_secs(60), deadline, || async {
                unreachable!()
            })
            .await;
        assert_eq!(src, Source::Cache);
    }

    #[actix_rt::test]
    async fn failures_and_zero_ttl_are_not_reused() {
        tokio::time::pause();
        let cache = ProbeCache::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (r, _, _) = cache
            .get_or_fetch(key(), Duration::from_secs(60), deadline, || async {
                Err(BalenaError::Unauthorized)
            })
            .await;
        assert!(r.is_err());
        let (r, _, src) = cache
            .get_or_fetch(key(), Duration::from_secs(60), deadline, || async {
                Ok(ProbeData::default())
            })
            .await;
        assert!(r.is_ok());
        assert_eq!(src, Source::Fetched);
        let k2 = CacheKey {
            generation: 1,
            ..key()
        };
        let _ = cache
            .get_or_fetch(k2.clone(), Duration::ZERO, deadline, || async {
                Ok(ProbeData::default())
            })
            .await;
        let (_, _, src) = cache
            .get_or_fetch(k2, Duration::ZERO, deadline, || async {
                Ok(ProbeData::default())
            })
            .await;
        assert_eq!(src, Source::Fetched);
    }

    #[actix_rt::test]
    async fn a_vanished_leader_frees_its_followers() {
        // Paused time: each sleep below ends when every task has run as far as it can, so
        // the order (leader fetching, follower waiting, leader gone) is certain, not timed.
        tokio::time::pause();
        let cache = Arc::new(ProbeCache::default());
        let deadline = Instant::now() + Duration::from_secs(5);
        let c = cache.clone();
        let leader = actix_rt::spawn(async move {
            let _ = c
                .get_or_fetch(key(), Duration::from_secs(60), deadline, || async {
                    actix_rt::time::sleep(Duration::from_secs(60)).await;
                    Ok(ProbeData::default())
                })
                .await;
        });
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        let c = cache.clone();
        let follower = actix_rt::spawn(async move {
            c.get_or_fetch(key(), Duration::from_secs(60), deadline, || async {
                Ok(ProbeData::default())
            })
            .await
            .2
        });
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        leader.abort();
        assert_eq!(follower.await.unwrap(), Source::Fetched);
    }

    #[actix_rt::test]
    async fn a_result_is_reused_until_its_ttl_then_fetched_again() {
        tokio::time::pause();
        let cache = ProbeCache::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        let ttl = Duration::from_secs(60);
        let probe =
            || cache.get_or_fetch(key(), ttl, deadline, || async { Ok(ProbeData::default()) });
        assert_eq!(probe().await.2, Source::Fetched);
        tokio::time::advance(Duration::from_secs(59)).await;
        let (_, age, src) = probe().await;
        assert_eq!((src, age), (Source::Cache, Duration::from_secs(59)));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(probe().await.2, Source::Fetched);
    }
}
