//! `/-/healthy` (the process serves) and `/-/ready` (a config is loaded; never tied to the
//! balena API's reachability).

use actix_web::HttpResponse;

/// 200 `Healthy`.
pub async fn healthy() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Healthy\n")
}

/// 200 `Ready` once a config is in force (always, after start-up).
pub async fn ready() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Ready\n")
}
