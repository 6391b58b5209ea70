//! The prober, as blackbox_exporter's: the `/probe` handler hands it a resolved target and gets
//! a result; discovery asks it for the fleets of an org or `all` target. It owns what probes
//! share — the probe cache (single-flight and TTL), the fleet-row cache, the background
//! reads, the per-auth upstream cap — and builds each probe's session, cache key and
//! deadline, so `routes/` keeps only HTTP. Built once by `Application::build`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::{CacheKey, FleetRows, ProbeCache, Source};
use super::reads::{ReadsAt, Scheduler};
use super::{fetch, FleetRowsAt, ProbeData};
use crate::balena::model::Fleet;
use crate::balena::{self, AuthLimits, BalenaClient, BalenaError, CallRecord, FleetSet, Session};
use crate::config::{token_file, ApiConfig, Config, ModuleConfig, TargetConfig};
use crate::exposition::codec::Codec;
use crate::metrics::ExporterMetrics;

/// A target resolved against the config in force: what to probe, with which module and
/// token, and how long it may take.
#[derive(Debug, Clone)]
pub struct ProbeRequest {
    /// The name asked for (a configured target, or `<parent>/<fleet>` found by discovery).
    pub target_name: String,
    /// The target (for a discovered fleet: a fleet target with the parent's settings).
    pub target: TargetConfig,
    /// The module in force (the target's, or the request's override).
    pub module_name: String,
    /// The auth in force.
    pub auth_name: String,
    /// The auth's token now, and why it is not its file's contents if it is not.
    pub token: token_file::Current,
    /// The config snapshot the probe runs under.
    pub config: Arc<Config>,
    /// The time the probe may take.
    pub timeout: Duration,
    /// The codec its series are compressed in if this probe fetches: the one its client asked
    /// for (zstd when none, the cheaper to decode). A probe that shares another's fetch, or
    /// its cached result, gets that one's codec, re-encoded for its client when they differ
    /// (`answer`).
    pub codec: Codec,
}

impl ProbeRequest {
    /// The module in force.
    pub fn module(&self) -> &ModuleConfig {
        &self.config.modules[&self.module_name]
    }
}

/// What a probe got: the data (or why not), its age and origin, and this probe's upstream
/// calls and log lines.
#[derive(Debug)]
pub struct Outcome {
    /// The data, shared with the cache and other probes, or the failure.
    pub result: Result<Arc<ProbeData>, BalenaError>,
    /// How old the data is (zero when fetched for this probe).
    pub age: Duration,
    /// Where it came from.
    pub source: Source,
    /// This probe's upstream calls.
    pub calls: Vec<CallRecord>,
    /// This probe's log lines.
    pub notes: Vec<String>,
}

/// What probes share; see the module doc.
#[derive(Debug)]
pub struct Prober {
    cache: ProbeCache,
    fleet_rows: FleetRows,
    reads: Arc<Scheduler>,
    limits: Arc<AuthLimits>,
    metrics: Arc<ExporterMetrics>,
}

/// How long before its deadline a probe stops waiting for a background read: the most it
/// keeps back is this, or a fifth of its timeout if less.
const READ_MARGIN: Duration = Duration::from_secs(1);

impl Prober {
    /// A prober recording into `metrics`.
    pub fn new(metrics: Arc<ExporterMetrics>) -> Self {
        for read in super::reads::READS {
            let name = read.name();
            metrics
                .background_reads
                .with_label_values(&[name, "success"]);
            metrics.background_bytes.with_label_values(&[name]);
        }
        Self {
            cache: ProbeCache::default(),
            fleet_rows: FleetRows::default(),
            reads: Arc::default(),
            limits: Arc::new(AuthLimits::default()),
            metrics,
        }
    }

    /// An upstream client for one worker (awc clients are per thread), under this prober's
    /// per-auth cap.
    pub fn client(&self) -> BalenaClient {
        BalenaClient::new(self.metrics.clone(), self.limits.clone())
    }

    /// Probes `req` through the cache: a young result, a fetch in flight, or a new fetch
    /// bounded by the deadline (`started` + the request's timeout).
    pub async fn probe(
        &self,
        client: &BalenaClient,
        req: &ProbeRequest,
        started: Instant,
    ) -> Outcome {
        let (config, auth) = (&req.config, req.auth_name.as_str());
        let deadline = started + req.timeout;
        let session = Session::new(client, &config.api, auth, &req.token.token, deadline);
        if let Some(why) = &req.token.kept_because {
            tracing::warn!(auth, "token file not used: {why}");
            session.note(format_args!("auth {auth}: token file not used: {why}"));
        }
        let key = CacheKey {
            target: req.target_name.clone(),
            module: req.module_name.clone(),
            auth: auth.to_string(),
            generation: config.generation,
        };
        let rows = FleetRowsAt {
            rows: &self.fleet_rows,
            auth,
            generation: config.generation,
            ttl: config.api.fleet_cache_ttl,
        };
        let scope = req.target.scope();
        let timeout = req.timeout;
        let reads = ReadsAt {
            scheduler: self.reads.clone(),
            client: client.clone(),
            config: config.clone(),
            auth: auth.to_string(),
            token: req.token.token.clone(),
            metrics: self.metrics.clone(),
            wait_until: deadline - READ_MARGIN.min(timeout / 5),
        };
        let work = fetch(&session, &scope, req.module(), &rows, &reads, req.codec);
        self.cache.set_max_bytes(config.api.cache_max_bytes);
        let (result, age, source) = self
            .cache
            .get_or_fetch(key, config.api.cache_ttl, deadline, || async {
                actix_rt::time::timeout(timeout, work)
                    .await
                    .unwrap_or(Err(BalenaError::Timeout(timeout)))
            })
            .await;
        match source {
            Source::Cache => self.metrics.cache_hits.with_label_values(&["cache"]).inc(),
            Source::Shared => self.metrics.cache_hits.with_label_values(&["shared"]).inc(),
            Source::Fetched => {}
        }
        Outcome {
            result,
            age,
            source,
            calls: session.calls(),
            notes: session.notes(),
        }
    }

    /// The fleets of an org or `all` set, as the auth's token sees them, within `api.timeout`
    /// (discovery).
    pub async fn fleets(
        &self,
        client: &BalenaClient,
        config: &Config,
        auth_name: &str,
        token: &token_file::Current,
        set: &FleetSet<'_>,
    ) -> Result<Vec<Fleet>, BalenaError> {
        let module = ModuleConfig {
            devices: false,
            ..ModuleConfig::default()
        };
        let deadline = Instant::now() + config.api.timeout;
        let session = Session::new(client, &config.api, auth_name, &token.token, deadline);
        balena::fleets(&session, set, &module).await
    }

    /// Drops expired results, fleet rows and idle background snapshots; true if a result was
    /// dropped.
    pub fn sweep(&self, api: &ApiConfig) -> bool {
        self.fleet_rows.sweep(api.fleet_cache_ttl);
        self.reads.sweep();
        self.cache.sweep(api.cache_ttl)
    }

    /// Bytes held by the snapshots of each background read
    /// (`balena_exporter_background_bytes{read}`).
    pub fn background_bytes(&self) -> Vec<(&'static str, usize)> {
        self.reads.bytes()
    }

    /// The auths whose requests a `Retry-After` holds, and for how long yet
    /// (`balena_exporter_api_hold_seconds{auth}`).
    pub fn holds(&self) -> Vec<(String, Duration)> {
        self.limits.holds()
    }

    /// Results held and their bytes (`balena_exporter_cache_entries`, `_bytes`).
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.usage()
    }
}
