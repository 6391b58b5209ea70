//! `/`: a plain HTML page with the version, the configured targets and links.

use actix_web::{web, HttpResponse};

use super::AppState;

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The landing page.
pub async fn landing(state: web::Data<AppState>) -> HttpResponse {
    let config = state.config.snapshot();
    let mut rows = String::new();
    for (name, t) in &config.targets {
        let what = match t.scope() {
            crate::config::Scope::Fleet(f) => format!("fleet {f}"),
            crate::config::Scope::Org(o) => format!("organization {o}"),
            crate::config::Scope::All => "every accessible fleet".to_string(),
        };
        let n = url_encode(name);
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"probe?target={n}\">metrics</a> · <a href=\"probe?target={n}&amp;debug=true\">debug</a></td></tr>\n",
            html_escape(name),
            html_escape(&what),
            html_escape(t.module_name()),
        ));
    }
    let mut recent = String::new();
    for r in state.history.list() {
        let time = humantime::format_rfc3339_seconds(r.time);
        recent.push_str(&format!(
            "<tr><td>{time}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}s</td><td><a href=\"logs?id={}\">log</a></td></tr>\n",
            html_escape(&r.target),
            html_escape(&r.module),
            if r.success() { "Success".to_string() } else { format!("Failure ({})", r.result) },
            r.duration.as_secs_f64(),
            r.id,
        ));
    }
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>balena exporter</title></head><body>\n\
<h1>balena exporter</h1>\n<p>Version {version}</p>\n\
<p><a href=\"metrics\">Exporter metrics</a> · <a href=\"config\">Configuration</a> · <a href=\"-/healthy\">Health</a></p>\n\
<h2>Targets</h2>\n<table border=\"1\" cellpadding=\"4\"><tr><th>target</th><th>covers</th><th>module</th><th>probe</th></tr>\n{rows}</table>\n\
<h2>Recent probes</h2>\n<table border=\"1\" cellpadding=\"4\"><tr><th>time</th><th>target</th><th>module</th><th>result</th><th>duration</th><th>debug</th></tr>\n{recent}</table>\n\
<p><a href=\"sd\">Service discovery (JSON)</a></p>\n</body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(body)
}
