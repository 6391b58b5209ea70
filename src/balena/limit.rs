//! The per-auth cap on upstream requests in flight (`api.max_concurrency`), shared by every
//! worker, built so that it holds at the edge of overload:
//!
//! - **Probes already under way go first.** A probe's later requests (device pages after the
//!   fleet lookup) take a free slot before any probe's first request, so that under overload
//!   the exporter finishes the probes it started instead of starting every probe and finishing
//!   none (each probe's second request queued behind every first request).
//! - **No request without time to finish.** Each auth keeps a running estimate of how long its
//!   requests take; a request is not started when less than that is left before the probe's
//!   deadline (it would be abandoned half way while the API goes on working on it), and a
//!   probe's first request not when less than two requests' time is left (a fetch is at least
//!   two: the probe could not finish, and its first request would only take a slot).
//! - **A slot outlives an abandoned request.** When a probe gives up while its request is in
//!   flight, the API still works on it: the slot stays taken for the rest of the estimated
//!   request time, so the API never sees more than the cap.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::oneshot;

/// Before this many finished requests the estimate is not trusted for refusing requests.
const ESTIMATE_AFTER: u32 = 3;

/// Upstream requests in flight, capped per auth name (shared by every worker).
#[derive(Debug, Default)]
pub struct AuthLimits {
    limits: Mutex<HashMap<(String, usize), Arc<Limit>>>,
}

impl AuthLimits {
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
    free: usize,
    /// Requests of probes that already made one.
    continuing: VecDeque<oneshot::Sender<()>>,
    /// First requests of probes.
    starting: VecDeque<oneshot::Sender<()>>,
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
}

impl Limit {
    fn new(cap: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free: cap,
                continuing: VecDeque::new(),
                starting: VecDeque::new(),
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

    /// Waits for a slot. Dropping the future gives up the place in the queue.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Slot {
        let rx = {
            let mut s = self.lock();
            if s.free > 0 {
                s.free -= 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                match priority {
                    Priority::Continuing => s.continuing.push_back(tx),
                    Priority::Starting => s.starting.push_back(tx),
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
            finished: false,
        }
    }

    /// Hands a freed slot to the first live waiter (continuing probes first), or frees it.
    fn release(&self) {
        let mut s = self.lock();
        loop {
            let next = s.continuing.pop_front().or_else(|| s.starting.pop_front());
            match next {
                Some(tx) => {
                    if tx.send(()).is_ok() {
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

/// A taken slot. [`Slot::finished`] records how long the request took; a slot dropped without
/// it (the probe gave up mid-request) stays taken for the rest of the estimated request time.
#[derive(Debug)]
pub struct Slot {
    limit: Arc<Limit>,
    started: Instant,
    finished: bool,
}

impl Slot {
    /// The request got its answer (or failed at the API): the slot is free now.
    pub fn finished(mut self, record_time: bool) {
        if record_time {
            self.limit.record(self.started.elapsed());
        }
        self.finished = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.finished {
            self.limit.release();
            return;
        }
        let left = self
            .limit
            .expected()
            .unwrap_or_default()
            .saturating_sub(self.started.elapsed());
        if left.is_zero() {
            self.limit.release();
            return;
        }
        // The API is still working on the abandoned request: keep its slot that long.
        let limit = self.limit.clone();
        let handle = tokio::runtime::Handle::try_current();
        match handle {
            Ok(h) => {
                h.spawn(async move {
                    tokio::time::sleep(left).await;
                    limit.release();
                });
            }
            Err(_) => limit.release(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn continuing_probes_take_a_freed_slot_before_new_ones() {
        let limit = Arc::new(Limit::new(1));
        let held = limit.acquire(Priority::Starting).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let wait = |p: Priority, name: &'static str| {
            let (limit, order) = (limit.clone(), order.clone());
            actix_rt::spawn(async move {
                let slot = limit.acquire(p).await;
                order.lock().unwrap().push(name);
                slot.finished(false);
            })
        };
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

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_request_keeps_its_slot_for_the_expected_time() {
        let limit = Arc::new(Limit::new(1));
        for _ in 0..ESTIMATE_AFTER {
            let slot = limit.acquire(Priority::Starting).await;
            tokio::time::advance(Duration::from_secs(2)).await;
            slot.finished(true);
        }
        assert_eq!(limit.expected(), Some(Duration::from_secs(2)));
        let slot = limit.acquire(Priority::Starting).await;
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(slot); // the probe gave up after 0.5 s; the API works on for ~1.5 s
        let early = tokio::time::timeout(
            Duration::from_millis(1400),
            limit.acquire(Priority::Starting),
        )
        .await;
        assert!(early.is_err(), "the slot is still the API's");
        let later = tokio::time::timeout(
            Duration::from_millis(200),
            limit.acquire(Priority::Starting),
        )
        .await;
        assert!(later.is_ok());
    }
}
