//! A stub balena API on a loopback port, for what the simulator cannot do: answer every request
//! after a fixed time whether or not the client is still there (a server that keeps working on
//! abandoned requests), close connections without saying so, or send rows out of order. It
//! counts the requests it is working on, so a test can check the exporter's upstream cap as the
//! API sees it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How the stub treats a connection after its first answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    /// HTTP/1.1 keep-alive: every request on the connection is answered.
    KeepAlive,
    /// One answer, then a request sent again on the connection is never answered: the server
    /// closes it (HTTP/1.0 servers, proxies with a short keep-alive), without saying so.
    CloseAfterOne,
    /// HTTP/1.0 style: no Content-Length, no chunking; the body ends when the server closes.
    CloseDelimited,
}

/// The answer body for a request head (`GET /v7/... HTTP/1.1 ...`).
pub type Answer = fn(&str) -> String;

/// A running stub; stopped by [`StubApi::stop`].
pub struct StubApi {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    server: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Counts {
    answered: AtomicUsize,
    working: AtomicUsize,
    most_working: AtomicUsize,
}

impl StubApi {
    /// Answers every request with `answer(head)` after `work` (200, JSON).
    pub fn start(answer: Answer, work: Duration, connections: Connections) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let server = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((conn, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    let counts = counts.clone();
                    std::thread::spawn(move || serve(conn, answer, work, connections, &counts));
                }
            })
        };
        Self {
            url,
            stop,
            counts,
            server: Some(server),
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.counts.answered.load(Ordering::SeqCst)
    }

    /// The most requests the stub was working on at once.
    pub fn most_working(&self) -> usize {
        self.counts.most_working.load(Ordering::SeqCst)
    }

    /// Waits until the stub works on nothing (at most `limit`).
    pub async fn idle(&self, limit: Duration) {
        let until = std::time::Instant::now() + limit;
        while self.counts.working.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < until {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops accepting and joins the accept thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            s.join().unwrap();
        }
    }
}

fn read_request(conn: &mut TcpStream) -> Option<String> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&req).into_owned())
}

fn serve(
    mut conn: TcpStream,
    answer: Answer,
    work: Duration,
    connections: Connections,
    counts: &Counts,
) {
    conn.set_nonblocking(false).unwrap();
    while let Some(head) = read_request(&mut conn) {
        let now = counts.working.fetch_add(1, Ordering::SeqCst) + 1;
        counts.most_working.fetch_max(now, Ordering::SeqCst);
        // The work is done whether or not the client waits for it.
        std::thread::sleep(work);
        let body = answer(&head);
        if connections == Connections::CloseDelimited {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{body}"
            );
            counts.working.fetch_sub(1, Ordering::SeqCst);
            counts.answered.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        counts.working.fetch_sub(1, Ordering::SeqCst);
        counts.answered.fetch_add(1, Ordering::SeqCst);
        if connections == Connections::CloseAfterOne {
            conn.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = read_request(&mut conn);
            return;
        }
    }
}

/// The fleet `org/app` (id 1) with device 5 (`d`, online): the lookup, the page and the
/// empty page after it.
pub fn one_device_fleet(head: &str) -> String {
    if head.starts_with("GET /v7/application") {
        r#"{"d":[{"id":1,"app_name":"app","slug":"org/app","organization":[{"handle":"org"}],"is_for__device_type":[{"slug":"rpi"}],"should_be_running__release":[]}]}"#.into()
    } else if head.contains("gt%205") {
        r#"{"d":[]}"#.into()
    } else {
        device_rows(&[(5, "0123456789abcdef0123456789abcdef")])
    }
}

/// A `{"d": [...]}` device page of `(id, uuid)` rows, in the order given.
pub fn device_rows(rows: &[(u64, &str)]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|(id, uuid)| {
            format!(
                r#"{{"id":{id},"uuid":"{uuid}","device_name":"d{id}","is_online":true,"api_heartbeat_state":"online","overall_status":"operational","is_undervolted":false}}"#
            )
        })
        .collect();
    format!(r#"{{"d":[{}]}}"#, rows.join(","))
}

/// The id a keyset page asks for rows after (`… id gt N …` in the request head), 0 for the
/// first page.
pub fn after_id(head: &str) -> u64 {
    head.split("id%20gt%20")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
