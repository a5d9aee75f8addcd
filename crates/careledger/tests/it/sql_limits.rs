//! Issue 13's probe against a real `careledger serve` process: the queries that once killed
//! the server (a 2 GB `repeat`, a doubling recursive CTE, `unnest(range(1, 2e9))`,
//! `string_agg` over an endless series, cross joins) run one after another and all at once
//! under an address-space limit; the process survives, its peak RSS stays bounded, and a
//! query past its deadline stops using CPU.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// A server started through `sh -c 'ulimit -v …; exec careledger serve …'`, so the limit
/// holds for the server itself; killed on drop (by [`crate::Server`]).
struct LimitedServer {
    server: crate::Server,
    addr: String,
    token: String,
}

impl LimitedServer {
    fn start(dir: &std::path::Path, address_space_kib: u64, extra: &[&str]) -> LimitedServer {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -v {address_space_kib} && exec \"$0\" serve --listen 127.0.0.1:0 \"$@\""
            ))
            .arg(env!("CARGO_BIN_EXE_careledger"))
            .args(extra);
        let server = crate::Server::spawn(dir, command);
        let addr = server
            .url
            .strip_prefix("http://")
            .unwrap_or(&server.url)
            .to_string();
        let token = server.token("admin");
        LimitedServer {
            server,
            addr,
            token,
        }
    }

    fn pid(&self) -> u32 {
        self.server.child.id()
    }

    fn alive(&mut self) -> bool {
        self.server.child.try_wait().unwrap().is_none()
    }

    /// A field of /proc/<pid>/status in KiB (`VmHWM`: the peak resident set).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    /// CPU time the process has used (user + system).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which ends in the last ')'): state is field 3,
        // utime 14 and stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// `POST /v1/sql` (or a GET when `sql` is None): the status, the Content-Type and the
    /// body read to the end (a streamed body cut short ends where it was cut).
    fn request(&self, path: &str, sql: Option<&str>) -> (u16, String, String) {
        let mut conn = TcpStream::connect(&self.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let head = match sql {
            Some(q) => {
                let body = serde_json::json!({ "sql": q }).to_string();
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    self.token,
                    body.len()
                )
            }
            None => format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        };
        conn.write_all(head.as_bytes()).unwrap();
        // The first MiB is kept (a streamed body can be large); a cut stream ends in an error.
        let mut raw = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while let Ok(n) = conn.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if raw.len() < 1 << 20 {
                raw.extend_from_slice(&chunk[..n]);
            }
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        (status, content_type, body.to_string())
    }

    fn sql(&self, q: &str) -> (u16, String, String) {
        self.request("/v1/sql", Some(q))
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// The probe's queries: each must end in a 4xx or 503 problem.
const ABUSE: [&str; 9] = [
    "SELECT max(length(s)) FROM (SELECT repeat('x', 2000000000) AS s) t",
    "WITH RECURSIVE t(n, s) AS (SELECT 1, 'x' UNION ALL SELECT n+1, s || s FROM t WHERE n < 40) SELECT max(length(s)) FROM t",
    "SELECT count(*) FROM (SELECT unnest(range(1, 2000000000)) AS v) u",
    "SELECT length(string_agg(CAST(value AS VARCHAR), ',')) FROM generate_series(1, 2000000000)",
    "SELECT length(string_agg(repeat('x', 1000), ',')) FROM generate_series(1, 2000000000)",
    "SELECT count(*) FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 1000000) b",
    "SELECT length(a.s) FROM (SELECT repeat('x', 16000000) AS s) a CROSS JOIN generate_series(1, 100000) b",
    "SELECT max(length(a)) FROM (SELECT array_to_string(range(1, 1000000), repeat(' ', 1000000)) AS a) t",
    "SELECT count(*) FROM generate_series(1, 1000000) a JOIN generate_series(1, 1000000) b ON a.value + b.value < 0",
];

fn assert_refused(q: &str, (status, content_type, body): &(u16, String, String)) {
    assert!(
        (400..500).contains(status) || *status == 503,
        "{q}: {status} {body}"
    );
    assert_eq!(content_type, "application/problem+json", "{q}: {body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
}

/// One after another, then all at once: every query ends in a problem, the server keeps
/// answering, and its peak resident memory stays within the bound below. The address space
/// is limited to 6 GiB (the query runtime's threads reserve 256 MiB of stack each), so a query
/// that allocated without bound would end the process instead of the machine.
#[test]
fn a_server_under_a_memory_limit_survives_the_abuse_queries_one_by_one_and_at_once() {
    const PEAK_BOUND_KIB: u64 = 1536 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut server = LimitedServer::start(
        dir.path(),
        6 * 1024 * 1024,
        &[
            "--query-memory-mib",
            "512",
            "--query-timeout-s",
            "10",
            "--max-queries",
            "4",
        ],
    );
    assert_eq!(server.sql("SELECT 1 AS x").0, 200);
    for q in ABUSE {
        let started = Instant::now();
        let answer = server.sql(q);
        assert_refused(q, &answer);
        assert!(server.alive(), "the server died on {q}");
        eprintln!(
            "{:>5} ms  {}  VmHWM {} MiB  {q}",
            started.elapsed().as_millis(),
            answer.0,
            server.status_kib("VmHWM") / 1024
        );
    }
    let server_ref = &server;
    let answers: Vec<(&str, (u16, String, String))> = std::thread::scope(|s| {
        let handles: Vec<_> = ABUSE
            .iter()
            .map(|q| s.spawn(move || (*q, server_ref.sql(q))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (q, answer) in &answers {
        assert_refused(q, answer);
    }
    assert!(
        server.alive(),
        "the server died running the queries at once"
    );
    assert_eq!(server.request("/healthz", None).0, 200);
    // A normal query answers again once the stopped ones have given their slots back.
    let started = Instant::now();
    loop {
        let (status, _, body) = server.sql("SELECT 1 AS x");
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let peak = server.status_kib("VmHWM");
    eprintln!("peak RSS through the sequence: {} MiB", peak / 1024);
    assert!(
        peak < PEAK_BOUND_KIB,
        "peak RSS {} MiB, more than {} MiB",
        peak / 1024,
        PEAK_BOUND_KIB / 1024
    );
}

/// At the deadline the query's operators stop: over the 2 s after its 503 (or the cut of its
/// streamed body) the process uses less than half a second of CPU. The join whose filter
/// drops every pair used to loop over the pairs of a probe batch without yielding, for
/// minutes after its 503.
#[test]
fn after_its_deadline_a_query_stops_using_cpu_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = LimitedServer::start(
        dir.path(),
        6 * 1024 * 1024,
        &["--query-memory-mib", "512", "--query-timeout-s", "2"],
    );
    assert_eq!(server.sql("SELECT 1 AS x").0, 200);
    for (q, format) in [
        (
            "SELECT count(*) FROM generate_series(1, 1000000) a JOIN generate_series(1, 1000000) b ON a.value + b.value < 0",
            "json",
        ),
        (
            "SELECT count(*) FROM generate_series(1, 1000000) a JOIN generate_series(1, 1000000) b ON a.value % 7 = b.value % 7 AND a.value < b.value - 2000000",
            "json",
        ),
        (
            "SELECT count(*) FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 1000000) b",
            "json",
        ),
        (
            "SELECT a.value, b.value FROM generate_series(1, 1000000) a JOIN generate_series(1, 1000000) b ON a.value + b.value > 0",
            "csv",
        ),
        (
            "SELECT length(string_agg(CAST(value AS VARCHAR), ',')) FROM generate_series(1, 2000000000)",
            "json",
        ),
    ] {
        let (status, _, body) = server.request(&format!("/v1/sql?format={format}"), Some(q));
        if format == "json" {
            assert_eq!(status, 503, "{q}: {body}");
        } else {
            assert_eq!(status, 200, "{q}: the stream starts, then is cut");
        }
        let before = server.cpu();
        std::thread::sleep(Duration::from_secs(2));
        let used = server.cpu() - before;
        eprintln!("{format} {q}: {used:?} of CPU in the 2 s after the deadline");
        assert!(
            used < Duration::from_millis(500),
            "{q}: {used:?} of CPU in the 2 s after its deadline"
        );
        assert!(server.alive());
    }
}
