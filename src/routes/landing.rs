//! `/`: a plain HTML page with the version, every configured target with its last result (in
//! words, with what to do when it failed), the recent probes, and links.

use std::time::SystemTime;

use actix_web::{web, HttpResponse};

use super::took;
use super::AppState;
use crate::history::ProbeRecord;
use crate::probe::cache::Source;

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

/// The landing page: the targets with their last result, then the recent probes.
pub async fn landing(state: web::Data<AppState>) -> HttpResponse {
    let config = state.config.snapshot();
    let now = SystemTime::now();
    let mut rows = String::new();
    for (name, t) in &config.targets {
        let what = match t.scope() {
            crate::config::Scope::Fleet(f) => format!("fleet {f}"),
            crate::config::Scope::Org(o) => format!("organization {o}"),
            crate::config::Scope::All => "every accessible fleet".to_string(),
        };
        let n = url_encode(name);
        let last = match state.history.latest(name, None) {
            Some(r) => last_result(&r, now),
            None => "<td class=\"none\" colspan=\"3\">not probed yet</td>".to_string(),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{last}<td><a href=\"probe?target={n}\">metrics</a> · <a href=\"probe?target={n}&amp;debug=true\">debug</a></td></tr>\n",
            html_escape(name),
            html_escape(&what),
            html_escape(t.module_name()),
            html_escape(&t.auth),
        ));
    }
    let mut recent = String::new();
    for r in state.history.list() {
        let time = humantime::format_rfc3339_seconds(r.time);
        recent.push_str(&format!(
            "<tr class=\"{}\"><td>{time}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"logs?id={}\">log</a></td></tr>\n",
            class(&r),
            html_escape(&r.target),
            html_escape(&r.module),
            html_escape(&r.auth),
            result_cell(&r),
            html_escape(&data_cell(&r)),
            r.id,
        ));
    }
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>balena exporter</title>\n<style>{STYLE}</style></head><body>\n\
<h1>balena exporter</h1>\n<p>Version {version}</p>\n\
<p><a href=\"metrics\">Exporter metrics</a> · <a href=\"config\">Configuration</a> · <a href=\"-/healthy\">Health</a> · <a href=\"sd\">Service discovery (JSON)</a></p>\n\
<h2>Targets</h2>\n<table><tr><th>target</th><th>covers</th><th>module</th><th>auth</th><th>last result</th><th>data</th><th>when</th><th>probe</th></tr>\n{rows}</table>\n\
<h2>Recent probes</h2>\n<table><tr><th>time</th><th>target</th><th>module</th><th>auth</th><th>result</th><th>data</th><th>debug</th></tr>\n{recent}</table>\n\
</body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(body)
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}\
td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top}td:first-child{white-space:nowrap}\
.ok{background:#e8f6e8}.warning{background:#fdf3d8}.failed{background:#fbe4e4}.none{color:#777}.advice{font-size:90%;color:#555}\
.attention{font-size:90%;color:#8a4b00}";

/// `ok`, `warning` (a success whose data needs attention) or `failed`: the row's colour.
fn class(r: &ProbeRecord) -> &'static str {
    match (r.success(), r.attention.is_empty()) {
        (true, true) => "ok",
        (true, false) => "warning",
        (false, _) => "failed",
    }
}

/// The result in words, what to do about a failure, and what needs attention in the data.
fn result_cell(r: &ProbeRecord) -> String {
    let mut cell = html_escape(&r.summary);
    if let Some(a) = &r.advice {
        cell.push_str(&format!(
            "<br><span class=\"advice\">{}</span>",
            html_escape(a)
        ));
    }
    for line in &r.attention {
        cell.push_str(&format!(
            "<br><span class=\"attention\">⚠ {}</span>",
            html_escape(line)
        ));
    }
    cell
}

/// Where the data came from: a cached answer says so (and how old) instead of a duration.
fn data_cell(r: &ProbeRecord) -> String {
    match r.data_from {
        Source::Fetched => format!("fetched in {}", took(r.duration)),
        Source::Cache => format!("cached, {:.1} s old", r.data_age.as_secs_f64()),
        Source::Shared => format!("shared fetch, {}", took(r.duration)),
    }
}

/// The last result, data and time cells of a target's row.
fn last_result(r: &ProbeRecord, now: SystemTime) -> String {
    let ago = now.duration_since(r.time).unwrap_or_default().as_secs();
    format!(
        "<td class=\"{}\">{} · <a href=\"logs?id={}\">log</a></td><td>{}</td><td>{ago}s ago</td>",
        class(r),
        result_cell(r),
        r.id,
        html_escape(&data_cell(r)),
    )
}
