//! Abuse of the HTTP surface gets bounded, clear answers, and the exporter keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Oversized query strings, unknown parameters and other methods: clear 4xx, nothing upstream.
#[actix_rt::test]
async fn odd_requests_get_clear_answers() {
    let app = spawn_app(&[("screens", 3)]).await;
    let huge = "x".repeat(64 * 1024);
    let status = awc::Client::new()
        .get(format!("{}/probe?target={huge}", app.address))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(431);
    assert!((400..500).contains(&status), "oversized query: {status}");
    let a = app
        .get("/probe?target=screens&colour=blue&target_x=1")
        .await;
    assert_eq!(
        parse(&a.body).value("probe_success", &[]),
        1.0,
        "unknown parameters are ignored"
    );
    let client = awc::Client::new();
    let post = client
        .post(format!("{}/probe?target=screens", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
    assert_eq!(post.headers().get("allow").unwrap(), "GET, HEAD");
    // HEAD is answered wherever GET is, with GET's head and no body.
    for path in [
        "/",
        "/probe?target=screens",
        "/metrics",
        "/config",
        "/sd",
        "/-/healthy",
        "/-/ready",
    ] {
        let mut head = client
            .head(format!("{}{path}", app.address))
            .no_decompress()
            .send()
            .await
            .unwrap();
        assert_eq!(head.status().as_u16(), 200, "HEAD {path}");
        assert!(
            head.body().await.unwrap().is_empty(),
            "HEAD {path}: no body"
        );
    }
    // An uncompressed answer says nothing of its encoding (no `Content-Encoding: identity`).
    let plain = client
        .get(format!("{}/probe?target=screens", app.address))
        .insert_header(("Accept-Encoding", "identity"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 200);
    assert!(
        plain.headers().get("content-encoding").is_none(),
        "{:?}",
        plain.headers()
    );
    let del = client
        .delete(format!("{}/-/reload", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 405);
    assert_eq!(app.get("/nope").await.status, 404);
    assert_eq!(
        app.get("/probe?target=screens").await.status,
        200,
        "still serving"
    );
    app.stop().await;
}

/// A client that sends its headers byte by byte (slowloris) is cut off, and others are served
/// meanwhile.
#[actix_rt::test]
async fn a_slow_client_is_dropped_while_others_are_served() {
    let app = spawn_app(&[("screens", 3)]).await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /probe?target=screens HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    // Other clients are served while the slow one dangles.
    for _ in 0..5 {
        assert_eq!(app.get("/-/healthy").await.status, 200);
    }
    // Keep trickling one header byte per second; the server must give up on its own.
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(15) {
        if slow.write_all(b"X").is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {
                closed = true; // an error status (408) then close
                break;
            }
            Err(_) => actix_rt::time::sleep(Duration::from_millis(800)).await,
        }
    }
    assert!(closed, "the slow client was never cut off");
    assert_eq!(app.get("/probe?target=screens").await.status, 200);
    app.stop().await;
}
