//! The server loop on a real socket: slow senders of a request head are cut off by the header
//! read timeout while other connections are served, a dribbled body ends in a 408 problem,
//! excess connections wait for a slot, many slow bodies from one token cannot starve the
//! server, and shutdown is graceful.
//!
//! The timeouts are short; apart from the slow-bodies test (its probe must be answered within
//! 2 s), nothing here asserts how long anything took. The 30 s `guard` only turns a hang (the
//! behaviour under test missing) into a failure.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use careledger_gateway::{GatewayConfig, ServeLimits, serve};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Harness, ndjson, woman};

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after 30 s"))
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(h: &Harness, limits: ServeLimits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, h.app.clone(), limits, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

fn limits(max_connections: usize) -> ServeLimits {
    ServeLimits {
        header_read_timeout: Duration::from_millis(300),
        max_connections,
    }
}

/// Everything the server sends until it closes the connection.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    // A reset instead of a clean close also ends the connection.
    let _ = guard(
        "the server closing the connection",
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One request on its own connection (`Connection: close`); the whole answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_all(&mut s).await
}

fn healthz() -> &'static [u8] {
    b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
}

fn push(token: &str) -> Vec<u8> {
    let body = ndjson(&[woman(7, "civil_affairs")]);
    format!(
        "POST /v1/ingest/women HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_cut_off_while_another_connection_is_served() {
    let h = Harness::new().await;
    let server = start(&h, limits(16)).await;

    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /heal").await.unwrap();

    // Meanwhile, real work on another connection.
    let answer = exchange(server.addr, &push(h.tok("civil_affairs"))).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"rows_accepted\":1"), "{answer}");

    // The stalled connection is closed by the server, without an answer to its request.
    let got = read_all(&mut slow).await;
    assert!(!got.contains("200 OK"), "{got}");
    // It may not write any more either.
    let _ = slow.write_all(b"thz HTTP/1.1\r\n\r\n").await;
    assert_eq!(h.count("women").await, 1);

    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(read_all(&mut silent).await, "");
    assert!(
        exchange(server.addr, healthz())
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_body_ends_in_a_408_problem_naming_the_timeout() {
    let h = Harness::with_config(GatewayConfig {
        request_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    })
    .await;
    let server = start(&h, limits(16)).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/ingest/women HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n",
        h.tok("civil_affairs")
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"{\"record_id\": \"a\"").await.unwrap();
    // ... and nothing more: the server answers and closes.
    let answer = read_all(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["status"], 408);
    assert!(body["type"].as_str().unwrap().ends_with("request-timeout"));
    assert!(
        body["detail"].as_str().unwrap().contains("300 ms"),
        "{body}"
    );
    assert_eq!(h.count("women").await, 0);
    assert!(
        exchange(server.addr, healthz())
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_connections_wait_for_a_slot_instead_of_being_refused() {
    let h = Harness::new().await;
    let server = start(&h, limits(1)).await;
    // The only slot, held by a connection that stalls in its request line.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /heal").await.unwrap();
    // This one is accepted once the slow one has been cut off, then served.
    let answer = exchange(server.addr, healthz()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // So by now the slow one is closed.
    assert!(!read_all(&mut slow).await.contains("200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    let h = Harness::new().await;
    let mut server = start(&h, limits(16)).await;
    // A keep-alive connection, idle after one answered request.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = guard("the first answer", idle.read(&mut buf))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    server.stop.take().unwrap().send(()).unwrap();
    guard("serve returning after shutdown", &mut server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read_all(&mut idle).await,
        "",
        "the idle connection is closed"
    );
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "no longer listening"
    );
}

/// A sender that keeps one connection busy: a push whose 1,000-byte body comes one byte every
/// 2 s. When the server answers (or closes), it waits a moment and starts again, until `stop`.
/// Returns the answers it got (the start of each).
async fn slow_sender(addr: SocketAddr, token: String, stop: Instant) -> Vec<String> {
    let mut answers = Vec::new();
    let stop = tokio::time::Instant::from_std(stop);
    while tokio::time::Instant::now() < stop {
        let Ok(stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (mut rd, mut wr) = stream.into_split();
        let head = format!(
            "POST /v1/ingest/women HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n["
        );
        let dribble = async {
            if wr.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if tokio::time::Instant::now() >= stop || wr.write_all(b" ").await.is_err() {
                    return;
                }
            }
        };
        let mut answer = Vec::new();
        let read = rd.read_to_end(&mut answer);
        tokio::select! {
            // A reset after the answer still leaves the answer's bytes.
            _ = read => {}
            () = async {
                dribble.await;
                tokio::time::sleep_until(stop + Duration::from_secs(1)).await;
            } => {}
        }
        answers.push(String::from_utf8_lossy(&answer).into_owned());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_from_one_token_cannot_starve_the_server() {
    let h = Harness::with_config(GatewayConfig {
        max_in_flight_per_token: 8,
        min_body_rate: 1024,
        body_grace: Duration::from_secs(1),
        ..GatewayConfig::default()
    })
    .await;
    let server = start(
        &h,
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 32,
        },
    )
    .await;
    // 100 slow senders with one valid token, three times the connection cap, for 8 s.
    let stop = Instant::now() + Duration::from_secs(8);
    let senders: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(slow_sender(
                server.addr,
                h.tok("civil_affairs").to_string(),
                stop,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut probes = 0;
    while Instant::now() < stop {
        let asked = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(2), exchange(server.addr, healthz()))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "/healthz not answered within 2 s, {:.1} s into the slow senders",
                    8.0 - stop.saturating_duration_since(asked).as_secs_f64()
                )
            });
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        probes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(probes >= 10, "{probes} probes");

    let mut by_status: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut slow, mut busy) = (None, None);
    for s in senders {
        for answer in guard("a slow sender stopping", s).await.unwrap() {
            let status = answer.get(9..12).unwrap_or("none").to_string();
            assert!(
                ["408", "429", "none"].contains(&status.as_str()),
                "a slow body is refused, never taken: {answer}"
            );
            if status == "408" {
                slow.get_or_insert(answer.clone());
            } else if status == "429" {
                busy.get_or_insert(answer.clone());
            }
            *by_status.entry(status).or_default() += 1;
        }
    }
    // Eight at a time were read until they fell below the rate; the rest were refused at once.
    let slow = slow.unwrap_or_else(|| panic!("no 408 among {by_status:?}"));
    let busy = busy.unwrap_or_else(|| panic!("no 429 among {by_status:?}"));
    assert!(by_status["429"] > by_status["408"], "{by_status:?}");
    assert!(
        slow.contains("1024 bytes/s") && slow.contains("body-too-slow"),
        "{slow}"
    );
    let busy_lower = busy.to_ascii_lowercase();
    assert!(
        busy_lower.contains("retry-after: 1") && busy_lower.contains("connection: close"),
        "{busy}"
    );
    assert!(busy.contains("8 requests in flight"), "{busy}");
    assert!(
        exchange(server.addr, &push(h.tok("civil_affairs")))
            .await
            .starts_with("HTTP/1.1 200"),
        "a normal push goes through afterwards"
    );
}
