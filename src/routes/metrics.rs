//! `/metrics`: the exporter's own metrics only, never a target's.

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::exposition::TEXT_FORMAT;

/// The self-metrics registry in text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let (entries, bytes) = state.prober.cache_usage();
    state.metrics.cache_entries.set(entries as i64);
    state.metrics.cache_bytes.set(bytes as i64);
    let services = state.prober.services_bytes();
    state.metrics.services_bytes.set(services as i64);
    HttpResponse::Ok()
        .content_type(TEXT_FORMAT)
        .body(state.metrics.render())
}
