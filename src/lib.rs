//! balena-exporter: a Prometheus multi-target exporter for the balena cloud API.
//!
//! # Layout
//! The modules follow the data flow of a probe:
//!
//! - [`config`]: YAML (+ env) → validated [`config::Config`], tokens as `SecretString` (token
//!   files used fresh: [`config::token_file`]), files read bounded ([`config::files`]),
//!   reloadable [`config::SharedConfig`] (one reload at a time).
//! - [`balena`]: the upstream client (awc): OData quoting, keyset paging, typed responses and
//!   errors, the per-auth cap ([`balena::limit`]).
//! - [`probe`]: the [`probe::prober::Prober`] (the caches, single-flight and the upstream cap
//!   behind one type) → fetch → metric families (one table of device families:
//!   [`probe::device::DEVICE_FAMILIES`]) → every answer form ([`probe::answer`]).
//! - [`exposition`]: the text format and its compression (pieces, the cached compressed series,
//!   gzip, zstd and decoded answers).
//! - [`metrics`]: the metric catalogue and the exporter's own metrics.
//! - [`routes`] (HTTP only: parse, call, record, answer; basic auth in [`basic_auth`]),
//!   [`lifecycle`] (reload, stop, signals) and [`startup`] (the start-up sequence, the server).
//! - [`memory`]: glibc's allocator settings and handing freed pages back.
//!
//! The balena API simulator behind `--demo` and every test is its own crate,
//! `balena-simulator` (`simulator/`), a dependency of the binary only with the default `demo`
//! feature.

pub mod balena;
pub mod basic_auth;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod exposition;
pub mod history;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod probe;
pub mod routes;
pub mod startup;
pub mod telemetry;
pub mod web_config;
