//! The simulator's HTTP face: routes, the Bearer-token → caller mapping, the balena error
//! bodies (reference §9), fault injection and a request log that tests count.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::odata::{parse_request, Key, Lit};
use super::world::{Caller, ReadError, World};

/// A fault the simulator injects instead of (or before) the normal answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this status and the body balena sends for it.
    Status(u16),
    /// 429 with an optional `Retry-After` header value.
    RateLimit(Option<String>),
    /// 503 with an optional `Retry-After` header value (maintenance, overload).
    Unavailable(Option<String>),
    /// Wait, then answer normally.
    Delay(Duration),
    /// 200 with a body that is not JSON.
    MalformedJson,
    /// 200 with JSON cut in the middle.
    TruncatedJson,
    /// 502 with an HTML page, as a cloud gateway sends.
    Html502,
    /// 200 whose body arrives one byte per this interval.
    SlowBody(Duration),
    /// 200 whose body stops half way and the connection drops.
    Reset,
    /// The normal answer with every row of `d` twice.
    DuplicateRows,
}

/// When a fault applies.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// Path prefix, e.g. `/v7/device` or `/actor`.
    pub path_prefix: String,
    /// Only when the decoded query contains this text (e.g. a fleet id or slug).
    pub query_contains: Option<String>,
    /// What to do.
    pub fault: Fault,
    /// How many more times; None = until cleared.
    pub remaining: Option<u32>,
}

impl FaultRule {
    /// A fault on every request under `path_prefix`, until cleared.
    pub fn always(path_prefix: &str, fault: Fault) -> Self {
        Self {
            path_prefix: path_prefix.into(),
            query_contains: None,
            fault,
            remaining: None,
        }
    }

    /// Limits the rule to requests whose decoded query contains `text`.
    pub fn when_query_contains(mut self, text: &str) -> Self {
        self.query_contains = Some(text.into());
        self
    }

    /// Limits the rule to the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Self {
        self.remaining = Some(n);
        self
    }
}

/// One request as the simulator saw it (never the token itself).
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Username of the caller, or `guest`.
    pub caller: String,
    /// Status answered.
    pub status: u16,
}

/// Shared state of a running simulator.
#[derive(Debug, Default)]
pub struct SimState {
    /// The data.
    pub world: RwLock<World>,
    /// Active fault rules, first match wins.
    pub faults: Mutex<Vec<FaultRule>>,
    /// Every request received.
    pub log: Mutex<Vec<LoggedRequest>>,
    /// Requests being answered right now.
    pub in_flight: std::sync::atomic::AtomicUsize,
    /// The most requests ever answered at once.
    pub max_in_flight: std::sync::atomic::AtomicUsize,
    /// A server-side cap on `$top` (0: none), as a deployment may set: asked for more rows, the
    /// server answers at most this many.
    pub top_cap: std::sync::atomic::AtomicUsize,
}

impl SimState {
    /// Requests whose path starts with `prefix`.
    /// Requests whose path is under `prefix`: `/v7/` counts every resource, `/v7/device`
    /// counts `/v7/device` and `/v7/device(…)` but not `/v7/device_tag`.
    pub fn count_requests(&self, prefix: &str) -> usize {
        let under = |path: &str| {
            path.strip_prefix(prefix).is_some_and(|rest| {
                prefix.ends_with('/')
                    || !rest.starts_with(|c: char| c == '_' || c.is_alphanumeric())
            })
        };
        self.log
            .lock()
            .map(|l| l.iter().filter(|r| under(&r.path)).count())
            .unwrap_or(0)
    }

    fn take_fault(&self, path: &str, query: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().ok()?;
        let decoded = percent_encoding::percent_decode_str(query)
            .decode_utf8_lossy()
            .into_owned();
        let i = faults.iter().position(|r| {
            path.starts_with(&r.path_prefix)
                && r.query_contains
                    .as_ref()
                    .is_none_or(|q| decoded.contains(q.as_str()))
        })?;
        let fault = faults[i].fault.clone();
        if let Some(n) = &mut faults[i].remaining {
            *n -= 1;
            if *n == 0 {
                faults.remove(i);
            }
        }
        Some(fault)
    }
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    h.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

/// The balena error body for a status: a JSON string, or empty.
fn error_response(status: u16, retry_after: Option<&str>) -> HttpResponse {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = HttpResponse::build(code);
    r.insert_header(("Cache-Control", "no-cache"));
    if let Some(v) = retry_after {
        r.insert_header(("Retry-After", v.to_string()));
    }
    match status {
        429 => r.json("Too Many Requests"),
        500 => r.json("Server error"),
        401 | 404 => r.finish(),
        _ => r.json(code.canonical_reason().unwrap_or("Error")),
    }
}

fn json_ok(body: &Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-cache"))
        .json(body)
}

/// Every request lands here.
pub async fn dispatch(req: HttpRequest, state: web::Data<Arc<SimState>>) -> HttpResponse {
    use std::sync::atomic::Ordering;
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let response = answer_with_faults(&req, &state).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// The answer to a request, or the fault injected for it; every request is logged.
async fn answer_with_faults(req: &HttpRequest, state: &web::Data<Arc<SimState>>) -> HttpResponse {
    let path = req.path().to_string();
    let query = req.query_string().to_string();
    let token = bearer(req);
    let caller = state
        .world
        .read()
        .map(|w| w.caller(token.as_deref()))
        .unwrap_or(Caller::Guest);
    let caller_name = match &caller {
        Caller::Guest => "guest".to_string(),
        Caller::User { username, .. } => username.clone(),
    };
    let real = || answer(state, req, &path, &query, &caller);
    let response = match state.take_fault(&path, &query) {
        Some(fault) => with_fault(fault, real).await,
        None => real(),
    };
    if let Ok(mut log) = state.log.lock() {
        log.push(LoggedRequest {
            path,
            query,
            caller: caller_name,
            status: response.status().as_u16(),
        });
    }
    response
}

/// What a request answers under `fault`, one arm per injectable fault, side by side; `real`
/// gives the answer without it (for the faults that delay or spoil the real answer).
async fn with_fault(fault: Fault, real: impl FnOnce() -> HttpResponse) -> HttpResponse {
    let json = || {
        let mut ok = HttpResponse::Ok();
        ok.content_type("application/json");
        ok
    };
    match fault {
        Fault::Delay(d) => {
            actix_rt::time::sleep(d).await;
            real()
        }
        Fault::Status(s) => error_response(s, None),
        Fault::RateLimit(after) => error_response(429, after.as_deref()),
        Fault::Unavailable(after) => error_response(503, after.as_deref()),
        Fault::MalformedJson => json().body("{\"d\": [oops"),
        Fault::Html502 => HttpResponse::BadGateway()
            .content_type("text/html")
            .body("<html><body><h1>502 Bad Gateway</h1></body></html>"),
        Fault::TruncatedJson => {
            let body = body_of(real()).await;
            json().body(body.slice(..body.len() / 2))
        }
        Fault::SlowBody(every) => {
            let body = body_of(real()).await;
            let stream =
                futures_util::stream::unfold((body, 0usize), move |(body, i)| async move {
                    if i >= body.len() {
                        return None;
                    }
                    actix_rt::time::sleep(every).await;
                    Some((Ok::<_, std::io::Error>(body.slice(i..i + 1)), (body, i + 1)))
                });
            json().streaming(stream)
        }
        Fault::Reset => {
            let body = body_of(real()).await;
            let half = body.slice(..body.len() / 2);
            let stream = futures_util::stream::iter(vec![
                Ok(half),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated reset",
                )),
            ]);
            json().streaming(stream)
        }
        Fault::DuplicateRows => {
            let body = body_of(real()).await;
            let mut value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if let Some(rows) = value.get_mut("d").and_then(Value::as_array_mut) {
                let copy = rows.clone();
                rows.extend(copy);
            }
            json_ok(&value)
        }
    }
}

/// A whole answer's body (empty if it cannot be read).
async fn body_of(response: HttpResponse) -> actix_web::web::Bytes {
    actix_web::body::to_bytes(response.into_body())
        .await
        .unwrap_or_default()
}

fn answer(
    state: &SimState,
    req: &HttpRequest,
    path: &str,
    query: &str,
    caller: &Caller,
) -> HttpResponse {
    if let Some(action) = path.strip_prefix("/_sim/") {
        return admin(state, req, action, query);
    }
    if req.method() != actix_web::http::Method::GET {
        return error_response(405, None);
    }
    match path {
        "/ping" => HttpResponse::Ok().content_type("text/plain").body("OK"),
        "/actor/v1/whoami" => match caller {
            Caller::User {
                actor,
                id,
                username,
                ..
            } => json_ok(&json!({
                "id": actor, "actorType": "user", "actorTypeId": id, "username": username, "email": null,
            })),
            Caller::Guest => error_response(401, None),
        },
        "/user/v1/whoami" => match caller {
            Caller::User { id, username, .. } => {
                json_ok(&json!({"id": id, "username": username, "email": null}))
            }
            Caller::Guest => error_response(401, None),
        },
        p if p.starts_with("/v7/") => odata(state, &p["/v7/".len()..], query, caller),
        _ => error_response(404, None),
    }
}

/// The simulator's own control surface (not part of the balena API), for `--demo` users and
/// end-to-end tests driving a simulator in another process:
/// `GET /_sim/fleets` (ground truth per fleet), `POST /_sim/offline?fleet=SLUG` (every device
/// of the fleet goes offline) and `GET /_sim/requests` (the request log: path, raw query,
/// caller, status).
fn admin(state: &SimState, req: &HttpRequest, action: &str, query: &str) -> HttpResponse {
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let post = req.method() == actix_web::http::Method::POST;
    match (action, post) {
        ("fleets", false) => {
            let Ok(world) = state.world.read() else {
                return error_response(500, None);
            };
            let fleets: Vec<Value> = world
                .fleet_slugs()
                .into_iter()
                .map(|slug| {
                    let rows = world.devices_of(&slug);
                    let count =
                        |f: &dyn Fn(&super::Row) -> bool| rows.iter().filter(|r| f(r)).count();
                    json!({
                        "slug": slug,
                        "devices": rows.len(),
                        "online": count(&|r| r["is_online"] == true),
                        "undervolted": count(&|r| r["is_undervolted"] == true),
                    })
                })
                .collect();
            json_ok(&Value::Array(fleets))
        }
        ("requests", false) => {
            let Ok(log) = state.log.lock() else {
                return error_response(500, None);
            };
            let rows: Vec<Value> = log
                .iter()
                .filter(|r| !r.path.starts_with("/_sim/"))
                .map(|r| json!({"path": r.path, "query": r.query, "caller": r.caller, "status": r.status}))
                .collect();
            json_ok(&Value::Array(rows))
        }
        ("offline", true) => {
            let Some(slug) = param("fleet") else {
                return HttpResponse::BadRequest().body("fleet parameter is missing\n");
            };
            let Ok(mut world) = state.world.write() else {
                return error_response(500, None);
            };
            let ids = world.device_ids(&slug);
            for id in &ids {
                if let Some(d) = world.row_mut("device", *id) {
                    d.insert("is_online".into(), Value::Bool(false));
                    d.insert("is_connected_to_vpn".into(), Value::Bool(false));
                    d.insert("api_heartbeat_state".into(), "offline".into());
                }
            }
            json_ok(&json!({ "fleet": slug, "devices_offline": ids.len() }))
        }
        _ => error_response(404, None),
    }
}

fn malformed(path: &str, query: &str) -> HttpResponse {
    let url = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    HttpResponse::BadRequest().json(format!("Malformed url: '{url}'"))
}

fn odata(state: &SimState, rest: &str, query: &str, caller: &Caller) -> HttpResponse {
    let full_path = format!("/v7/{rest}");
    let Ok(mut request) = parse_request(rest, query) else {
        return malformed(&full_path, query);
    };
    let cap = state.top_cap.load(std::sync::atomic::Ordering::Relaxed);
    if cap > 0 {
        request.options.top = Some(request.options.top.map_or(cap, |t| t.min(cap)));
    }
    let Ok(world) = state.world.read() else {
        return error_response(500, None);
    };
    let Some(table) = super::world::table(&request.resource) else {
        return error_response(401, None);
    };
    let key_ids = match &request.key {
        None => None,
        Some(Key::Id(id)) => Some(vec![*id]),
        Some(Key::Field(field, Lit::Str(value))) => {
            // Keys by natural key: slug (fleets, lowercased as stored), handle (orgs).
            let value = if field == "slug" {
                value.to_lowercase()
            } else {
                value.clone()
            };
            Some(world.find(table, field, &value).into_iter().collect())
        }
        Some(Key::Field(..)) => return malformed(&full_path, query),
    };
    let result = if request.count {
        world
            .count(table, key_ids, &request.options, caller)
            .map(|n| json!({ "d": n }))
    } else {
        world
            .read(table, key_ids, &request.options, caller)
            .map(|rows| json!({ "d": rows }))
    };
    match result {
        Ok(body) => json_ok(&body),
        Err(ReadError::Unauthorized) => error_response(401, None),
        // open-balena-api answers a field or navigation it does not know with 500 and an
        // empty body (a `$select` of `latitude` on openBalena): so does the simulator.
        Err(ReadError::BadField(_)) => error_response(500, None),
    }
}
