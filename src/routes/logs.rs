//! `/logs?id=N` or `/logs?target=T[&module=M]`: the log of a recent probe (upstream requests,
//! decisions, module), as linked from the landing page.

use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;

/// The log of one probe from the history.
pub async fn logs(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let (mut id, mut target, mut module) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match k.as_ref() {
            "id" => id = Some(v.into_owned()),
            "target" => target = Some(v.into_owned()),
            "module" => module = Some(v.into_owned()),
            _ => {}
        }
    }
    let record = match (id, target) {
        (Some(_), Some(_)) | (None, None) => {
            return HttpResponse::BadRequest()
                .body("Give either id or target (and optionally module)\n")
        }
        (Some(id), None) => match id.parse::<u64>() {
            Ok(id) => state.history.get(id),
            Err(_) => return HttpResponse::BadRequest().body(format!("Invalid id {id:?}\n")),
        },
        (None, Some(t)) => state.history.latest(&t, module.as_deref()),
    };
    match record {
        Some(r) => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(r.log.clone()),
        None => HttpResponse::NotFound()
            .body("Probe not found (it may have aged out of --history.limit)\n"),
    }
}
