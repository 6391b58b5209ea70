//! `POST /-/reload`: re-read the config file ([`crate::lifecycle::Lifecycle::reload`], as
//! SIGHUP does); a bad file is refused and the old config stays.

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::config::{ReloadError, Reloaded};

/// Reloads; 200 on success (saying so when there is no file to read), 500 with the reason on
/// failure, 503 when the exporter is stopping.
pub async fn reload(state: web::Data<AppState>) -> HttpResponse {
    let text = |mut r: actix_web::HttpResponseBuilder, body: String| {
        r.content_type("text/plain; charset=utf-8").body(body)
    };
    match state.lifecycle.reload().await {
        Ok(Reloaded::Swapped) => HttpResponse::Ok().finish(),
        Ok(Reloaded::NoFile(fixed)) => text(
            HttpResponse::Ok(),
            format!("{}\n", fixed.nothing_to_reload()),
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
