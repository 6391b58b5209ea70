//! `rate_limit` of the web config: a token bucket over every request, as exporter-toolkit's
//! (`golang.org/x/time/rate`: one token every `interval`, at most `burst` held). A request that
//! finds no token is answered 429 at once, with `Retry-After`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

/// The bucket.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// One request per `interval`, `burst` at once (a burst of 0 lets none through, as Go's).
    pub fn new(interval: Duration, burst: u32) -> Self {
        Self {
            interval,
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Takes a token if there is one; else how long until the next.
    pub fn take(&self) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() / self.interval.as_secs_f64();
        s.0 = (s.0 + refill).min(self.burst);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            return Ok(());
        }
        Err(self.interval.mul_f64(1.0 - s.0))
    }
}

/// Middleware: 429 with `Retry-After` (whole seconds, at least 1) when the bucket is empty.
pub async fn limit_rate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(limit) = req.app_data::<web::Data<Option<RateLimit>>>() {
        if let Some(Err(wait)) = limit.as_ref().as_ref().map(RateLimit::take) {
            let resp = HttpResponse::TooManyRequests()
                .insert_header((
                    "Retry-After",
                    wait.as_secs_f64().ceil().max(1.0).to_string(),
                ))
                .body("Too Many Requests\n");
            return Ok(req.into_response(resp).map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let limit = RateLimit::new(Duration::from_millis(200), 3);
        for _ in 0..3 {
            assert!(limit.take().is_ok());
        }
        let wait = limit.take().unwrap_err();
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        std::thread::sleep(Duration::from_millis(220));
        assert!(limit.take().is_ok(), "a token came back");
        assert!(limit.take().is_err());
    }
}
