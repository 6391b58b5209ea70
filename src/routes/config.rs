//! `/config`: the config in force as YAML, every token shown as `<secret>`.

use actix_web::{web, HttpResponse};

use super::AppState;

/// The redacted config.
pub async fn config(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(state.config.snapshot().to_redacted_yaml())
}
