//! `/-/healthy` (the process serves) and `/-/ready` (a config is loaded; never tied to the
//! balena API's reachability).

use actix_web::{web, HttpResponse};

use super::AppState;

/// 200 `Healthy`.
pub async fn healthy() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Healthy\n")
}

/// 200 `Ready` once a config is in force (always, after start-up).
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let _config = state.config.snapshot();
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Ready\n")
}
