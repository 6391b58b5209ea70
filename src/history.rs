//! The recent probes shown on the landing page and served by `/logs`: a ring of the last
//! `--history.limit` probes, plus as many recent failures kept apart so that a burst of
//! successes never hides why something failed (as blackbox_exporter does).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::probe::cache::Source;

/// One finished probe.
#[derive(Debug, Clone)]
pub struct ProbeRecord {
    /// Sequence number (for `/logs?id=`).
    pub id: u64,
    /// When it finished.
    pub time: SystemTime,
    /// Target name.
    pub target: String,
    /// Module name.
    pub module: String,
    /// The auth it used.
    pub auth: String,
    /// `success` or the failure reason.
    pub result: &'static str,
    /// The result in words ("success: 1 fleet, 12 devices", "failure (unauthorized): ...").
    pub summary: String,
    /// What to do about a failure, naming the auth.
    pub advice: Option<String>,
    /// What needs attention in the data (crashed services, updates, builds).
    pub attention: Vec<String>,
    /// Where the data came from (a cached answer made no request).
    pub data_from: Source,
    /// How old the data was.
    pub data_age: Duration,
    /// How long it took.
    pub duration: Duration,
    /// The debug text without the metrics: upstream requests, log lines, module.
    pub log: String,
}

impl ProbeRecord {
    /// Whether the probe succeeded.
    pub fn success(&self) -> bool {
        self.result == "success"
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    recent: VecDeque<Arc<ProbeRecord>>,
    failures: VecDeque<Arc<ProbeRecord>>,
}

/// The history; cheap to share.
#[derive(Debug)]
pub struct History {
    limit: usize,
    inner: Mutex<Inner>,
}

impl History {
    /// Keeps `limit` recent probes (0 keeps none).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records a probe; returns its id.
    pub fn add(&self, mut record: ProbeRecord) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next_id += 1;
        record.id = inner.next_id;
        let id = record.id;
        if self.limit == 0 {
            return id;
        }
        inner.recent.push_back(Arc::new(record));
        while inner.recent.len() > self.limit {
            if let Some(old) = inner.recent.pop_front() {
                if !old.success() {
                    inner.failures.push_back(old);
                    while inner.failures.len() > self.limit {
                        inner.failures.pop_front();
                    }
                }
            }
        }
        id
    }

    /// Every kept probe, newest first.
    pub fn list(&self) -> Vec<Arc<ProbeRecord>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Arc<ProbeRecord>> = inner
            .recent
            .iter()
            .chain(inner.failures.iter())
            .cloned()
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.id));
        all
    }

    /// A probe by id.
    pub fn get(&self, id: u64) -> Option<Arc<ProbeRecord>> {
        self.list().into_iter().find(|r| r.id == id)
    }

    /// The newest probe of a target (and module, when given).
    pub fn latest(&self, target: &str, module: Option<&str>) -> Option<Arc<ProbeRecord>> {
        self.list()
            .into_iter()
            .find(|r| r.target == target && module.is_none_or(|m| r.module == m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(target: &str, result: &'static str) -> ProbeRecord {
        ProbeRecord {
            id: 0,
            time: SystemTime::now(),
            target: target.into(),
            module: "default".into(),
            auth: "a".into(),
            result,
            summary: result.into(),
            advice: None,
            attention: Vec::new(),
            data_from: Source::Fetched,
            data_age: Duration::ZERO,
            duration: Duration::ZERO,
            log: String::new(),
        }
    }

    #[test]
    fn failures_outlive_a_burst_of_successes() {
        let h = History::new(3);
        let failed = h.add(rec("a", "timeout"));
        for _ in 0..10 {
            h.add(rec("b", "success"));
        }
        let list = h.list();
        assert_eq!(list.len(), 4);
        assert_eq!(list[0].id, 11, "newest first");
        assert_eq!(h.get(failed).unwrap().result, "timeout");
        assert_eq!(h.latest("a", None).unwrap().id, failed);
        assert!(h.latest("a", Some("other")).is_none());
    }
}
