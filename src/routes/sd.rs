//! `/sd`: Prometheus HTTP service discovery listing every configured target, so the scrape
//! config needs no copy of the target list. Each target is its own group so that its module
//! travels as `__param_module`.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::AppState;
use crate::config::Scope;

/// The target groups.
pub async fn sd(state: web::Data<AppState>) -> HttpResponse {
    let config = state.config.snapshot();
    let groups: Vec<Value> = config
        .targets
        .iter()
        .map(|(name, t)| {
            let (kind, covers) = match t.scope() {
                Scope::Fleet(f) => ("fleet", f),
                Scope::Org(o) => ("org", o),
                Scope::All => ("all", String::new()),
            };
            let mut labels = serde_json::Map::new();
            labels.insert("__param_module".into(), json!(t.module_name()));
            labels.insert("__meta_balena_target_kind".into(), json!(kind));
            labels.insert("__meta_balena_target_covers".into(), json!(covers));
            labels.insert("__meta_balena_auth".into(), json!(t.auth));
            json!({ "targets": [name], "labels": labels })
        })
        .collect();
    HttpResponse::Ok().json(groups)
}
