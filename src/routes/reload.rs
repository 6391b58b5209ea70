//! `POST /-/reload`: re-read the config file; a bad file is refused and the old config stays.

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::config::{reload_off_thread, ReloadError, Reloaded};

/// Reloads; 200 on success (saying so when there is no file to read), 500 with the reason on
/// failure, 503 when the exporter is stopping.
pub async fn reload(state: web::Data<AppState>) -> HttpResponse {
    let text = |mut r: actix_web::HttpResponseBuilder, body: String| {
        r.content_type("text/plain; charset=utf-8").body(body)
    };
    match reload_and_record(&state).await {
        Ok(Reloaded::Swapped) => HttpResponse::Ok().finish(),
        Ok(Reloaded::NoFile) => text(
            HttpResponse::Ok(),
            "nothing to reload: the configuration comes from the environment, read at start; BALENA_TOKEN_FILE is re-read when it changes\n".into(),
        ),
        Err(ReloadError::Stopping) => text(
            HttpResponse::ServiceUnavailable(),
            "the exporter is stopping\n".into(),
        ),
        Err(e) => text(
            HttpResponse::InternalServerError(),
            format!("failed to reload config: {e}\n"),
        ),
    }
}

/// Reloads (SIGHUP and `POST /-/reload` alike: [`reload_off_thread`]), records the outcome in
/// the self-metrics, asks discovery to refresh after a good one, and logs it.
pub async fn reload_and_record(state: &AppState) -> Result<Reloaded, ReloadError> {
    let result = reload_off_thread(state.config.clone(), &state.stopping).await;
    match &result {
        Ok(Reloaded::Swapped) => {
            state.metrics.observe_reload(true);
            state.discovery.request_refresh();
            tracing::info!(files = ?state.config.files(), "configuration reloaded");
        }
        Ok(Reloaded::NoFile) => tracing::info!(
            "reload asked, but the configuration comes from the environment only: nothing to read (token files are re-read when they change)"
        ),
        Err(ReloadError::Stopping) => {}
        Err(e) => {
            state.metrics.observe_reload(false);
            tracing::error!(error = %e, "configuration reload failed; keeping the previous configuration")
        }
    }
    result
}
