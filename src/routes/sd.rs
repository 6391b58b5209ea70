//! `/sd`: Prometheus HTTP service discovery listing every configured target, so the scrape
//! config needs no copy of the target list. Each target is its own group so that its module
//! travels as `__param_module`.

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::AppState;
use crate::config::Scope;

/// The target groups: each fleet or configured target, with organization and `all` targets
/// expanded into one target per discovered fleet (`<target>/<fleet slug>`) once discovery has
/// listed them.
pub async fn sd(state: web::Data<AppState>) -> HttpResponse {
    let config = state.config.snapshot();
    let mut groups: Vec<Value> = Vec::new();
    for (name, t) in &config.targets {
        let scope = t.scope();
        let discovered = match scope {
            Scope::Fleet(_) => None,
            _ => state.discovery.fleets_of(name, config.generation),
        };
        match discovered {
            Some(fleets) => {
                for f in fleets {
                    let mut labels = base_labels(t.module_name(), "fleet", &f.slug, &t.auth);
                    labels.insert("__meta_balena_parent_target".into(), json!(name));
                    labels.insert("__meta_balena_fleet_name".into(), json!(f.app_name));
                    groups.push(
                        json!({ "targets": [format!("{name}/{}", f.slug)], "labels": labels }),
                    );
                }
            }
            None => {
                let (kind, covers) = match scope {
                    Scope::Fleet(f) => ("fleet", f),
                    Scope::Org(o) => ("org", o),
                    Scope::All => ("all", String::new()),
                };
                let labels = base_labels(t.module_name(), kind, &covers, &t.auth);
                groups.push(json!({ "targets": [name], "labels": labels }));
            }
        }
    }
    HttpResponse::Ok().json(groups)
}

fn base_labels(
    module: &str,
    kind: &str,
    covers: &str,
    auth: &str,
) -> serde_json::Map<String, Value> {
    let mut labels = serde_json::Map::new();
    labels.insert("__param_module".into(), json!(module));
    labels.insert("__meta_balena_target_kind".into(), json!(kind));
    labels.insert("__meta_balena_target_covers".into(), json!(covers));
    labels.insert("__meta_balena_auth".into(), json!(auth));
    labels
}
