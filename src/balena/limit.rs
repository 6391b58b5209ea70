//! The per-auth cap on upstream requests in flight (`api.max_concurrency`), shared by every
//! worker, built so that it holds at the edge of overload and can never wedge:
//!
//! - **Probes already under way go first.** A probe's later requests (device pages after the
//!   fleet lookup) take a free slot before any probe's first request, so that under overload
//!   the exporter finishes the probes it started instead of starting every probe and finishing
//!   none (each probe's second request queued behind every first request).
//! - **No request without time to finish, while others compete for the API.** Each auth keeps
//!   a running estimate of how long its requests take; while other requests of the auth are in
//!   flight, a request is not started when less than that is left before the probe's deadline
//!   (it would be abandoned half way while the API goes on working on it), and a probe's first
//!   request not when less than two requests' time is left (a fetch is at least two). When no
//!   other request of the auth is in flight, a request is always sent: the estimate is only
//!   refreshed by requests that finish, so refusing then could refuse forever after a slow
//!   spell of the API.
//! - **Background reads last, on a budget of their own.** A background read's requests
//!   ([`Priority::Background`]) wait behind every probe's, hold at most a quarter of the cap
//!   (at least one slot), and their times never feed the estimate: a slow background listing
//!   can neither take the probes' slots nor make the probes look slow.
//! - **`Retry-After` holds the whole auth.** A 429 or 503 with `Retry-After` holds every
//!   request of the auth — probes, discovery, background reads — until it passes
//!   ([`AuthLimits::hold`], capped by `api.max_retry_after`): a request asked for meanwhile is
//!   never sent. Other auths are untouched.
//! - **A slot outlives an abandoned request.** A request runs as a task that holds its slot
//!   until the API has answered (at most `api.timeout` after sending: `balena/exchange.rs`), so
//!   the API never sees more than the cap, whatever the probes gave up on.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::oneshot;

/// Before this many finished requests the estimate is not trusted for refusing requests.
const ESTIMATE_AFTER: u32 = 3;

/// Upstream requests in flight, capped per auth name, and the auths held by a `Retry-After`
/// (shared by every worker).
#[derive(Debug, Default)]
pub struct AuthLimits {
    limits: Mutex<HashMap<(String, usize), Arc<Limit>>>,
    holds: Mutex<HashMap<String, (std::time::Instant, std::time::SystemTime)>>,
}

impl AuthLimits {
    /// Holds the auth's requests for `wait` (a hold already longer stays).
    pub fn hold(&self, auth: &str, wait: Duration) {
        let until = std::time::Instant::now() + wait;
        let wall = std::time::SystemTime::now() + wait;
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let entry = holds.entry(auth.to_string()).or_insert((until, wall));
        if entry.0 < until {
            *entry = (until, wall);
        }
    }

    /// How long the auth is held yet, and until when (wall clock), if it is.
    pub fn held(&self, auth: &str) -> Option<(Duration, std::time::SystemTime)> {
        let holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let (until, wall) = holds.get(auth)?;
        let left = until.saturating_duration_since(std::time::Instant::now());
        (!left.is_zero()).then_some((left, *wall))
    }

    /// Every auth held now, with the time left.
    pub fn holds(&self) -> Vec<(String, Duration)> {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        holds.retain(|_, (until, _)| *until > now);
        holds
            .iter()
            .map(|(auth, (until, _))| (auth.clone(), until.saturating_duration_since(now)))
            .collect()
    }

    /// The limit of an auth at a given cap (a reload that changes the cap starts a new one).
    pub fn get(&self, auth: &str, cap: usize) -> Arc<Limit> {
        let mut map = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((auth.to_string(), cap))
            .or_insert_with(|| Arc::new(Limit::new(cap)))
            .clone()
    }
}

/// One auth's slots, two queues of waiters and its request-time estimate.
#[derive(Debug)]
pub struct Limit {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    cap: usize,
    free: usize,
    /// Requests of probes that already made one.
    continuing: VecDeque<oneshot::Sender<()>>,
    /// First requests of probes.
    starting: VecDeque<oneshot::Sender<()>>,
    /// Requests of background reads.
    background: VecDeque<oneshot::Sender<()>>,
    /// Slots held by background reads.
    background_held: usize,
    /// Smoothed request time (seconds) and how many requests it has seen.
    estimate: f64,
    samples: u32,
}

/// Which queue a request waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The probe has already made a request: it goes first.
    Continuing,
    /// The probe's first request.
    Starting,
    /// A background read's request: after every probe's, within its own budget.
    Background,
}

impl State {
    /// Slots background reads may hold at once: a quarter of the cap, at least one.
    fn background_budget(&self) -> usize {
        (self.cap / 4).max(1)
    }
}

impl Limit {
    fn new(cap: usize) -> Self {
        Self {
            state: Mutex::new(State {
                cap,
                free: cap,
                continuing: VecDeque::new(),
                starting: VecDeque::new(),
                background: VecDeque::new(),
                background_held: 0,
                estimate: 0.0,
                samples: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long a request of this auth is expected to take, once enough have finished.
    pub fn expected(&self) -> Option<Duration> {
        let s = self.lock();
        (s.samples >= ESTIMATE_AFTER).then(|| Duration::from_secs_f64(s.estimate))
    }

    /// Whether a request that holds a slot, with `left` before its probe's deadline and
    /// `requests` still to make, should not be sent: the time those take (once estimated), if
    /// more than `left` — but only while other requests of the auth hold slots too. With none
    /// in flight a request always goes, and its time refreshes the estimate: refusing then
    /// could refuse forever after a slow spell.
    pub fn too_late(&self, left: Duration, requests: u32) -> Option<Duration> {
        let s = self.lock();
        let others_in_flight = s.cap.saturating_sub(s.free) > 1;
        if !others_in_flight || s.samples < ESTIMATE_AFTER {
            return None;
        }
        let needed = Duration::from_secs_f64(s.estimate) * requests;
        (needed > left).then_some(needed)
    }

    /// Waits for a slot. Dropping the future gives up the place in the queue.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Slot {
        let background = priority == Priority::Background;
        let rx = {
            let mut s = self.lock();
            let probes_waiting = !s.continuing.is_empty() || !s.starting.is_empty();
            let now = if background {
                s.free > 0 && !probes_waiting && s.background_held < s.background_budget()
            } else {
                s.free > 0
            };
            if now {
                s.free -= 1;
                s.background_held += usize::from(background);
                None
            } else {
                let (tx, rx) = oneshot::channel();
                match priority {
                    Priority::Continuing => s.continuing.push_back(tx),
                    Priority::Starting => s.starting.push_back(tx),
                    Priority::Background => s.background.push_back(tx),
                }
                Some(rx)
            }
        };
        if let Some(rx) = rx {
            // The sender is only dropped unsent when the slot went to another waiter: wait on.
            let _ = rx.await;
        }
        Slot {
            limit: self.clone(),
            started: Instant::now(),
            background,
        }
    }

    /// Hands a freed slot to the first live waiter (continuing probes, then starting ones, then
    /// background reads within their budget), or frees it. `background`: the freed slot was a
    /// background read's.
    fn release(&self, background: bool) {
        let mut s = self.lock();
        s.background_held -= usize::from(background);
        loop {
            let next = match s.continuing.pop_front().or_else(|| s.starting.pop_front()) {
                Some(tx) => Some((tx, false)),
                None if s.background_held < s.background_budget() => {
                    s.background.pop_front().map(|tx| (tx, true))
                }
                None => None,
            };
            match next {
                Some((tx, to_background)) => {
                    if tx.send(()).is_ok() {
                        s.background_held += usize::from(to_background);
                        return;
                    }
                    // That waiter gave up: try the next one.
                }
                None => {
                    s.free += 1;
                    return;
                }
            }
        }
    }

    fn record(&self, took: Duration) {
        let mut s = self.lock();
        let t = took.as_secs_f64();
        s.estimate = if s.samples == 0 {
            t
        } else {
            0.8 * s.estimate + 0.2 * t
        };
        s.samples = s.samples.saturating_add(1);
    }
}

/// A taken slot. [`Slot::finished`] frees it and records how long the request took; a slot
/// dropped without it (its task ended with the runtime) is freed as well.
#[derive(Debug)]
pub struct Slot {
    limit: Arc<Limit>,
    started: Instant,
    background: bool,
}

impl Slot {
    /// The API is done with the request (it answered, or it failed): the slot is free now.
    /// `record_time`: the time counts for the estimate (an answer came back); a background
    /// read's never does.
    pub fn finished(self, record_time: bool) {
        if record_time && !self.background {
            self.limit.record(self.started.elapsed());
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.release(self.background);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request of priority `p` that waits for a slot, writes `name` to `order` once it has
    /// one, and gives it back.
    fn waiter(
        limit: &Arc<Limit>,
        order: &Arc<Mutex<Vec<&'static str>>>,
        p: Priority,
        name: &'static str,
    ) -> actix_rt::task::JoinHandle<()> {
        let (limit, order) = (limit.clone(), order.clone());
        actix_rt::spawn(async move {
            let slot = limit.acquire(p).await;
            order.lock().unwrap().push(name);
            slot.finished(false);
        })
    }

    #[actix_rt::test]
    async fn continuing_probes_take_a_freed_slot_before_new_ones() {
        let limit = Arc::new(Limit::new(1));
        let held = limit.acquire(Priority::Starting).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let wait = |p: Priority, name: &'static str| waiter(&limit, &order, p, name);
        let a = wait(Priority::Starting, "new probe");
        actix_rt::task::yield_now().await;
        let b = wait(Priority::Continuing, "probe under way");
        actix_rt::task::yield_now().await;
        held.finished(false);
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["probe under way", "new probe"]);
    }

    #[actix_rt::test]
    async fn background_reads_wait_behind_probes_and_keep_to_their_budget() {
        let limit = Arc::new(Limit::new(4));
        let first = limit.acquire(Priority::Background).await;
        // The budget of a cap of 4 is one slot: a second background request waits although
        // three slots are free, and probes take them.
        let second = tokio::time::timeout(
            Duration::from_millis(20),
            limit.acquire(Priority::Background),
        )
        .await;
        assert!(second.is_err(), "over the background budget");
        let probes: Vec<Slot> =
            futures_util::future::join_all((0..3).map(|_| limit.acquire(Priority::Starting))).await;
        // All four held; a background and a probe request wait: the probe gets the next slot,
        // even the one the background read frees.
        let order = Arc::new(Mutex::new(Vec::new()));
        let wait = |p: Priority, name: &'static str| waiter(&limit, &order, p, name);
        let b = wait(Priority::Background, "background");
        actix_rt::task::yield_now().await;
        let p = wait(Priority::Starting, "probe");
        actix_rt::task::yield_now().await;
        first.finished(true);
        p.await.unwrap();
        drop(probes);
        b.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["probe", "background"]);
        assert_eq!(
            limit.expected(),
            None,
            "a background read's time is no estimate"
        );
        let s = limit.lock();
        assert_eq!((s.free, s.background_held), (4, 0));
    }

    #[test]
    fn a_hold_covers_one_auth_until_it_passes_and_only_lengthens() {
        let limits = AuthLimits::default();
        limits.hold("a", Duration::from_secs(60));
        limits.hold("a", Duration::from_secs(5));
        let (left, _) = limits.held("a").expect("held");
        assert!(left > Duration::from_secs(55), "{left:?}");
        assert!(limits.held("b").is_none(), "other auths untouched");
        limits.hold("b", Duration::ZERO);
        assert!(limits.held("b").is_none());
        let holds = limits.holds();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].0, "a");
    }

    #[actix_rt::test]
    async fn a_waiter_that_gives_up_loses_nothing_for_the_others() {
        let limit = Arc::new(Limit::new(1));
        let held = limit.acquire(Priority::Starting).await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(10),
            limit.acquire(Priority::Continuing),
        )
        .await;
        assert!(gave_up.is_err());
        held.finished(false);
        let again = tokio::time::timeout(
            Duration::from_millis(100),
            limit.acquire(Priority::Starting),
        )
        .await;
        assert!(again.is_ok(), "the slot came back");
    }

    /// The sequence that wedged an auth for good: the API slow for a spell (8 s a request,
    /// the estimate grows past what a 9.5 s probe allows), then fast again. A request that
    /// finds no other in flight is always sent, so the estimate comes down and within a few
    /// probes requests pass the check under contention again.
    #[tokio::test(start_paused = true)]
    async fn a_slow_spell_never_locks_the_auth_out() {
        let limit = Arc::new(Limit::new(4));
        let request = |took: Duration| {
            let limit = limit.clone();
            async move {
                let slot = limit.acquire(Priority::Starting).await;
                tokio::time::advance(took).await;
                slot.finished(true);
            }
        };
        for _ in 0..6 {
            request(Duration::from_secs(8)).await;
        }
        let left = Duration::from_millis(9_500);
        let contended = || async {
            let other = limit.acquire(Priority::Starting).await;
            let mine = limit.acquire(Priority::Starting).await;
            let refused = limit.too_late(left, 2);
            drop((other, mine));
            refused
        };
        assert!(
            contended().await.is_some(),
            "under contention the slow estimate refuses a first request"
        );
        let alone = limit.acquire(Priority::Starting).await;
        assert_eq!(limit.too_late(left, 2), None, "alone, a request is sent");
        drop(alone);
        let mut probes = 0;
        while contended().await.is_some() {
            probes += 1;
            assert!(probes <= 3, "still refused after {probes} fast probes");
            request(Duration::from_millis(50)).await;
            request(Duration::from_millis(50)).await;
        }
        assert!(probes > 0);
    }
}
