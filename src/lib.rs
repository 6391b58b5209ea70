//! balena-exporter: a Prometheus multi-target exporter for the balena cloud API.
//!
//! # Layout
//! The modules follow the data flow of a probe:
//!
//! - [`config`]: YAML (+ env) → validated [`config::Config`], tokens as `SecretString`,
//!   reloadable [`config::SharedConfig`].
//! - [`balena`]: the upstream client (awc): OData quoting, typed responses and errors.
//! - [`probe`]: target → fetch (cache, single-flight) → metric families.
//! - [`metrics`]: the metric catalogue and the exporter's own metrics.
//! - [`routes`] and [`startup`]: the HTTP surface and the server.
//! - [`simulator`]: an in-process balena API for `--demo` and tests.

pub mod balena;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod history;
pub mod metrics;
pub mod probe;
pub mod routes;
pub mod simulator;
pub mod startup;
pub mod telemetry;
pub mod web_config;
