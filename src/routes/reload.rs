//! `POST /-/reload`: re-read the config file; a bad file is refused and the old config stays.

use actix_web::{web, HttpResponse};

use super::AppState;

/// Reloads; 200 on success, 500 with the reason on failure.
pub async fn reload(state: web::Data<AppState>) -> HttpResponse {
    match crate::startup::reload(&state) {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => HttpResponse::InternalServerError()
            .content_type("text/plain; charset=utf-8")
            .body(format!("failed to reload config: {e}\n")),
    }
}
