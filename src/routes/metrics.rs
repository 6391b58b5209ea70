//! `/metrics`: the exporter's own metrics only, never a target's.

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::exposition::TEXT_FORMAT;

/// The self-metrics registry in text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let (entries, bytes) = state.prober.cache_usage();
    state.metrics.cache_entries.set(entries as i64);
    state.metrics.cache_bytes.set(bytes as i64);
    for (read, bytes) in state.prober.background_bytes() {
        let gauge = state.metrics.background_bytes.with_label_values(&[read]);
        gauge.set(bytes as i64);
    }
    state.metrics.api_hold.reset();
    for (auth, left) in state.prober.holds() {
        let gauge = state.metrics.api_hold.with_label_values(&[&auth]);
        gauge.set(left.as_secs_f64());
    }
    HttpResponse::Ok()
        .content_type(TEXT_FORMAT)
        .body(state.metrics.render())
}
