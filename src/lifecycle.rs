//! The process lifecycle in one place, as mini-redis' `run(listener, shutdown)` keeps it:
//! reload (SIGHUP and `POST /-/reload` both call [`Lifecycle::reload`]), stop (SIGTERM and
//! Ctrl-C call [`Lifecycle::stop`]: a reload in progress gives up at once, then in-flight
//! requests finish), and the signal handlers ([`Signals`], installed before the server answers
//! anything: a signal that arrives as soon as `/-/ready` does must not meet the default
//! action, which ends the process).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use tokio::sync::Notify;

use crate::config::{reload_off_thread, ReloadError, Reloaded, SharedConfig};
use crate::discovery::Discovery;
use crate::metrics::ExporterMetrics;

/// What reloads and stops act on: the config, the self-metrics that record reloads,
/// discovery (refreshed after a good reload), and the stop flag.
#[derive(Debug)]
pub struct Lifecycle {
    config: Arc<SharedConfig>,
    metrics: Arc<ExporterMetrics>,
    discovery: Arc<Discovery>,
    stopping: AtomicBool,
    stopped: Notify,
}

impl Lifecycle {
    /// The lifecycle of a process serving `config`.
    pub fn new(
        config: Arc<SharedConfig>,
        metrics: Arc<ExporterMetrics>,
        discovery: Arc<Discovery>,
    ) -> Self {
        Self {
            config,
            metrics,
            discovery,
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
        }
    }

    /// Reloads the config files (off the HTTP workers, within the time limit, never applied
    /// once given up on: [`reload_off_thread`]), records the outcome in the self-metrics,
    /// asks discovery to refresh after a good one, and logs it. SIGHUP and `POST /-/reload`
    /// alike.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let result = reload_off_thread(self.config.clone(), self.wait_stopping()).await;
        // A load parses the files into several trees (YAML values, figment's, the config): the
        // allocator keeps their freed pages unless asked (a 4 MiB file's reload would leave
        // hundreds of MiB resident for good).
        crate::memory::return_freed_memory();
        match &result {
            Ok(Reloaded::Swapped) => {
                self.metrics.observe_reload(true);
                self.discovery.request_refresh();
                tracing::info!(files = ?self.config.files(), "configuration reloaded");
            }
            Ok(Reloaded::NoFile(fixed)) => {
                tracing::info!("reload asked: {}", fixed.nothing_to_reload())
            }
            Err(ReloadError::Stopping) => {}
            Err(e) => {
                self.metrics.observe_reload(false);
                tracing::error!(error = %e, "configuration reload failed; keeping the previous configuration")
            }
        }
        result
    }

    /// Marks the process as stopping: every reload that waits gives up at once.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stopped.notify_waiters();
    }

    /// Resolves once [`Lifecycle::stop`] has been called.
    pub fn wait_stopping(&self) -> impl Future<Output = ()> + '_ {
        let notified = self.stopped.notified();
        async move {
            if !self.stopping.load(Ordering::SeqCst) {
                notified.await;
            }
        }
    }

    /// Runs the signal handlers until the process ends: SIGHUP reloads, SIGTERM and Ctrl-C
    /// stop (`server` finishes its in-flight requests, then ends).
    pub fn handle_signals(self: &Arc<Self>, signals: Signals, server: ServerHandle) {
        let this = self.clone();
        let handle = server.clone();
        actix_rt::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
            this.stop();
            handle.stop(true).await;
        });
        #[cfg(unix)]
        {
            let Signals { term, hup } = signals;
            let this = self.clone();
            actix_rt::spawn(async move {
                if let Some(mut term) = term {
                    term.recv().await;
                    tracing::info!("received SIGTERM, finishing in-flight requests");
                    this.stop();
                    server.stop(true).await;
                }
            });
            let this = self.clone();
            actix_rt::spawn(async move {
                let Some(mut hup) = hup else {
                    tracing::warn!("cannot install the SIGHUP handler; reload with POST /-/reload");
                    return;
                };
                while hup.recv().await.is_some() {
                    let _ = this.reload().await;
                }
            });
        }
        #[cfg(not(unix))]
        let _ = signals;
    }
}

/// The signal streams, made before the server starts so that no signal meets the default
/// action.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the SIGTERM and SIGHUP handlers (a handler that cannot be installed is said
    /// when the handlers start).
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }
}
