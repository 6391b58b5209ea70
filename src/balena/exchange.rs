//! One HTTP exchange with the API, run as a task of its own that owns the request's slot of
//! the auth's cap ([`super::limit`]). The probe reads the answer through a small channel; when
//! it stops reading — its deadline, its scraper hung up, a row it refused — the task goes on
//! waiting for the API's answer (at most `api.timeout` after the request was sent) and frees
//! the slot only then. The API therefore never works on more than `max_concurrency` requests
//! of one auth, abandoned ones included, and the auth's request-time estimate learns how long
//! abandoned requests really took.
//!
//! Once the answer has begun and nobody reads it, the task closes the connection: the API's
//! work is done when it answers.

use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::web::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::error::BalenaError;
use super::limit::Slot;

/// What the task tells the probe, in order: a head, then chunks of a 2xx body, then the end
/// of the channel; or a failure at any point.
#[derive(Debug)]
pub enum Event {
    /// The status and `Retry-After` of the answer.
    Head {
        /// HTTP status.
        status: u16,
        /// The `Retry-After` header, if any.
        retry_after: Option<HeaderValue>,
        /// `Location` of a redirect (never followed: the token would go with it).
        location: Option<HeaderValue>,
    },
    /// A piece of a 2xx body (only 2xx bodies are read).
    Chunk(Bytes),
    /// The request failed; the channel ends after this.
    Failed(BalenaError),
}

/// Chunks in flight between the task and the probe: enough to overlap reading and decoding.
const CHANNEL_CHUNKS: usize = 8;

/// Sends `request` from a task of its own that holds `slot` until the API is done with the
/// request, or `hard_limit` after sending (awc's own timeout is set to it too). A 2xx body
/// longer than `max_bytes` ends with [`BalenaError::TooLarge`].
pub fn start(
    request: awc::ClientRequest,
    slot: Slot,
    hard_limit: Duration,
    max_bytes: usize,
) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    actix_rt::spawn(run(
        request.timeout(hard_limit),
        slot,
        hard_limit,
        max_bytes,
        tx,
    ));
    rx
}

async fn run(
    request: awc::ClientRequest,
    slot: Slot,
    hard_limit: Duration,
    max_bytes: usize,
    tx: mpsc::Sender<Event>,
) {
    let hard = tokio::time::sleep(hard_limit);
    tokio::pin!(hard);
    // Waiting for the head goes on whether or not the probe still reads: until the API
    // answers, it is working on the request.
    let answer = tokio::select! {
        r = request.send() => r,
        _ = &mut hard => {
            slot.finished(false);
            let _ = tx.send(Event::Failed(BalenaError::Timeout(hard_limit))).await;
            return;
        }
    };
    let mut resp = match answer {
        Ok(resp) => resp,
        Err(e) => {
            slot.finished(false);
            let _ = tx.send(Event::Failed(send_error(e, hard_limit))).await;
            return;
        }
    };
    let status = resp.status().as_u16();
    let head = Event::Head {
        status,
        retry_after: resp.headers().get("retry-after").cloned(),
        location: resp.headers().get("location").cloned(),
    };
    if tx.send(head).await.is_err() || !resp.status().is_success() {
        // Nobody reads on, or an error status whose body is not needed: the API is done.
        slot.finished(true);
        return;
    }
    let mut read = 0usize;
    let end = loop {
        let chunk = tokio::select! {
            c = resp.next() => c,
            _ = &mut hard => break Some(BalenaError::Timeout(hard_limit)),
        };
        match chunk {
            None => break None,
            Some(Err(e)) => break Some(BalenaError::Transport(format!("reading the body: {e}"))),
            Some(Ok(chunk)) => {
                read += chunk.len();
                if read > max_bytes {
                    break Some(BalenaError::TooLarge { limit: max_bytes });
                }
                if tx.send(Event::Chunk(chunk)).await.is_err() {
                    break None; // the probe stopped reading: close the connection
                }
            }
        }
    };
    slot.finished(true);
    if let Some(error) = end {
        // Waits for room if the probe still reads (a failure must never read as the end).
        let _ = tx.send(Event::Failed(error)).await;
    }
}

fn send_error(e: awc::error::SendRequestError, timeout: Duration) -> BalenaError {
    match e {
        awc::error::SendRequestError::Timeout => BalenaError::Timeout(timeout),
        other => BalenaError::Transport(other.to_string()),
    }
}
