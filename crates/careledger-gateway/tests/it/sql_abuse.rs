//! User SQL that tries to write, read files, exhaust the engine or the parser: each is
//! refused or stopped with a problem naming why, and a normal query answers after each.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use careledger_gateway::{GatewayConfig, QueryConfig};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::assert_problem;
use crate::query::{call, json_of, seeded, sql};

fn config(timeout: Duration, memory_limit: usize) -> GatewayConfig {
    GatewayConfig {
        query: QueryConfig {
            timeout,
            memory_limit,
            ..QueryConfig::default()
        },
        ..GatewayConfig::default()
    }
}

async fn still_answers(h: &crate::Harness, token: &str, after: &str) {
    let (s, _, body) = sql(h, token, "SELECT count(*) AS n FROM women", "json").await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::OK, "after {after}: {v}");
    assert_eq!(v["rows"][0][0], 11, "after {after}");
}

/// Each statement is refused with the given status and a detail containing the needle.
async fn refused(h: &crate::Harness, token: &str, cases: &[(String, StatusCode, &str)]) {
    for (q, status, needle) in cases {
        let shown: String = q.chars().take(80).collect();
        let (s, headers, body) = sql(h, token, q, "json").await;
        let v = json_of(&body);
        assert_problem(&headers, &v, *status, s);
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.to_lowercase().contains(&needle.to_lowercase()),
            "{shown}: detail {detail:?} should name {needle:?}"
        );
        assert!(!v.to_string().contains("root:x:0:0"), "{shown}: {v}");
        still_answers(h, token, &shown).await;
    }
}

#[tokio::test]
async fn writes_and_file_access_are_refused_naming_why() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let bad = StatusCode::BAD_REQUEST;
    let cases: Vec<(String, StatusCode, &str)> = [
        ("CREATE TABLE x (a INT)", "DDL not supported"),
        ("CREATE TABLE x AS SELECT * FROM women", "DDL not supported"),
        ("CREATE VIEW v AS SELECT 1", "DDL not supported"),
        ("DROP TABLE women", "DDL not supported"),
        ("DROP VIEW women", "DDL not supported"),
        ("INSERT INTO women SELECT * FROM women", "not supported"),
        ("DELETE FROM women", "not supported"),
        ("UPDATE women SET region_code = '1'", "not supported"),
        ("COPY women TO '/tmp/careledger-copy.csv'", "not supported"),
        (
            "COPY (SELECT 1) TO '/tmp/careledger-copy.parquet' STORED AS PARQUET",
            "not supported",
        ),
        (
            "CREATE EXTERNAL TABLE p (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
            "DDL not supported",
        ),
        ("SET datafusion.execution.batch_size = 1", "not supported"),
        ("SELECT * FROM read_parquet('/etc/passwd')", "read_parquet"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT * FROM '/etc/passwd'", "not found"),
        ("SELECT * FROM \"/etc/passwd\"", "not found"),
        ("SELECT pg_read_file('/etc/passwd')", "pg_read_file"),
        ("SELECT 1; SELECT 2", "single SQL statement"),
        ("SELECT 1; DROP TABLE women", "single SQL statement"),
    ]
    .into_iter()
    .map(|(q, n)| (q.to_string(), bad, n))
    .collect();
    refused(&h, &t["admin"], &cases).await;
    for f in ["/tmp/careledger-copy.csv", "/tmp/careledger-copy.parquet"] {
        assert!(!std::path::Path::new(f).exists(), "{f} was written");
    }
}

#[tokio::test]
async fn deep_and_long_sql_is_refused_or_answered_never_crashing() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let tok = &t["admin"];
    let deep = 10_000;
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            format!("SELECT {}1{}", "(".repeat(deep), ")".repeat(deep)),
            StatusCode::BAD_REQUEST,
            "recursion limit",
        ),
        (
            // The parser stops at its recursion limit and reports where.
            format!("SELECT {}true", "NOT ".repeat(deep)),
            StatusCode::BAD_REQUEST,
            "SQL error",
        ),
        (
            format!(
                "SELECT * FROM {}SELECT 1{}",
                "(".repeat(deep),
                ") x".repeat(deep)
            ),
            StatusCode::BAD_REQUEST,
            "recursion limit",
        ),
        (
            format!("SELECT 1 {}", "-- a comment\n".repeat(20_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "more than the limit of 102400 bytes",
        ),
    ];
    refused(&h, tok, &cases).await;

    // Chains the parser builds in a loop, as deep as they are long: refused past the limits
    // on shape (planning them is quadratic, and recursive)...
    let too_complex: Vec<(String, StatusCode, &str)> = vec![
        (
            format!("SELECT {}1", "1 + ".repeat(5_000)),
            StatusCode::BAD_REQUEST,
            "more than 500 deep",
        ),
        (
            format!(
                "SELECT count(*) FROM women WHERE {}false",
                "region_code = 'x' OR ".repeat(1_000)
            ),
            StatusCode::BAD_REQUEST,
            "IN (…) lists",
        ),
        (
            format!(
                "SELECT count(*) FROM ({}SELECT 1 AS a) u",
                "SELECT 1 AS a UNION ALL ".repeat(2_000)
            ),
            StatusCode::BAD_REQUEST,
            "more than 500 UNION",
        ),
        (
            format!(
                "SELECT count(*) FROM regions r0{}",
                (1..300)
                    .map(|i| format!(" JOIN regions r{i} ON true"))
                    .collect::<String>()
            ),
            StatusCode::BAD_REQUEST,
            "more than 256 tables",
        ),
    ];
    refused(&h, tok, &too_complex).await;
    // ... and answered below them: 450 levels overflowed a 2 MiB stack (the process aborted)
    // before user SQL ran on threads with large stacks.
    for (q, want) in [
        (format!("SELECT {}1 AS n", "1 + ".repeat(450)), 451),
        (
            format!(
                "SELECT count(*) AS n FROM ({}SELECT 1 AS a) u",
                "SELECT 1 AS a UNION ALL ".repeat(400)
            ),
            401,
        ),
    ] {
        let (s, _, body) = sql(&h, tok, &q, "json").await;
        let v = json_of(&body);
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["rows"][0][0], want, "{v}");
    }
    still_answers(&h, tok, "deep chains").await;

    // 5 MB of SQL does not even get read whole: the body limit answers first.
    let huge = format!("SELECT 1 AS x{}", " ".repeat(5 << 20));
    let (s, headers, body) = sql(&h, tok, &huge, "json").await;
    let v = json_of(&body);
    assert_problem(&headers, &v, StatusCode::PAYLOAD_TOO_LARGE, s);
    assert!(
        v["detail"].as_str().unwrap().contains("exceeds the limit"),
        "{v}"
    );
    still_answers(&h, tok, "5 MB of SQL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_queries_are_stopped_by_the_timeout_or_the_limits() {
    let (h, t) = seeded(config(Duration::from_secs(2), 2 << 30)).await;
    let tok = &t["admin"];
    let timeout = StatusCode::SERVICE_UNAVAILABLE;
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            "SELECT count(*) FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 1000000) b".into(),
            timeout,
            "longer than",
        ),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r".into(),
            timeout,
            "longer than",
        ),
        (
            // A result too big to send as JSON is cut at the row cap, not collected whole.
            "SELECT a.value, b.value FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 1000000) b".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "more than 100000 rows",
        ),
    ];
    refused(&h, tok, &cases).await;

    // Streamed, the same cross join runs until the timeout and the body is cut there.
    let resp = streamed_cross_join(&h, tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut bytes = 0usize;
    let ended = loop {
        match body.frame().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(e.to_string()),
            Some(Ok(f)) => bytes += f.data_ref().map_or(0, |d| d.len()),
        }
    };
    let err = ended.expect_err("the stream is cut, not finished");
    assert!(err.contains("longer than"), "{err} after {bytes} bytes");
    still_answers(&h, tok, "a streamed cross join").await;
}

#[tokio::test]
async fn a_whole_result_over_the_memory_limit_is_refused() {
    let (h, t) = seeded(config(Duration::from_secs(60), 64 << 20)).await;
    // Parquet is built whole: collecting stops once the batches pass the query memory limit.
    let q = "SELECT a.value, b.value FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 1000000) b";
    let (s, headers, body) = sql(&h, &t["admin"], q, "parquet").await;
    let v = json_of(&body);
    assert_problem(&headers, &v, StatusCode::SERVICE_UNAVAILABLE, s);
    assert!(
        v["type"].as_str().unwrap().ends_with("query-memory-limit"),
        "{v}"
    );
    assert!(v["detail"].as_str().unwrap().contains("larger than"), "{v}");
    still_answers(&h, &t["admin"], "a parquet cross join").await;

    // A body that is no SQL request.
    for body in ["", "SELECT 1", "{\"sql\": 1}", "[]"] {
        let req = Request::post("/v1/sql")
            .header("authorization", format!("Bearer {}", t["admin"]))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let (s, headers, bytes) = call(&h, req).await;
        let v: Value = json_of(&bytes);
        assert_problem(&headers, &v, StatusCode::BAD_REQUEST, s);
        assert!(v["detail"].as_str().unwrap().contains("\"sql\""), "{v}");
    }
}

/// The probe of issue 13, in process: each query once built a value or a result without
/// bound (2 GB strings, a doubling recursive CTE, a two-billion-element list, a string_agg
/// over an endless series, a row copied into every row of a cross join) until the process
/// aborted. Each is now refused before or as the value passes a limit, well before the
/// timeout, with a problem naming the function or operator and the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_past_the_limits_are_refused_promptly_naming_the_limit() {
    let (h, t) = seeded(config(Duration::from_secs(20), 512 << 20)).await;
    let tok = &t["admin"];
    let limit = StatusCode::UNPROCESSABLE_ENTITY;
    let cases: Vec<(&str, StatusCode, &str, &str)> = vec![
        (
            "SELECT max(length(s)) FROM (SELECT repeat('x', 2000000000) AS s) t",
            limit,
            "query-limit",
            "repeat() would build a value of 2000000000 bytes",
        ),
        (
            "WITH RECURSIVE t(n, s) AS (SELECT 1, 'x' UNION ALL SELECT n+1, s || s FROM t WHERE n < 40) SELECT max(length(s)) FROM t",
            limit,
            "query-limit",
            "one row holds",
        ),
        (
            "SELECT count(*) FROM (SELECT unnest(range(1, 2000000000)) AS v) u",
            limit,
            "query-limit",
            "range() would build a list of 1999999999 elements",
        ),
        (
            "SELECT length(string_agg(repeat('x', 1000), ',')) FROM generate_series(1, 2000000000)",
            StatusCode::SERVICE_UNAVAILABLE,
            "query-memory-limit",
            "more memory",
        ),
        (
            "SELECT length(a.s) FROM (SELECT repeat('x', 16000000) AS s) a CROSS JOIN generate_series(1, 100000) b",
            limit,
            "query-limit",
            "copies each row",
        ),
        (
            "SELECT length(string_agg(CAST(value AS VARCHAR), ',') OVER ()) FROM generate_series(1, 100000)",
            limit,
            "query-limit",
            "string_agg() cannot be a window function",
        ),
        (
            "SELECT max(length(a)) FROM (SELECT array_to_string(range(1, 1000000), repeat(' ', 1000000)) AS a) t",
            limit,
            "query-limit",
            "array_to_string() would build",
        ),
        (
            "SELECT arrow_cast(NULL, 'FixedSizeBinary(2000000000)') AS x FROM generate_series(1, 10)",
            limit,
            "query-limit",
            "for every row",
        ),
        (
            "SELECT levenshtein(repeat('a', 100000), repeat('b', 100000)) AS d",
            limit,
            "query-limit",
            "pairs of characters",
        ),
    ];
    for (q, status, slug, needle) in cases {
        let started = std::time::Instant::now();
        let (s, headers, body) = sql(&h, tok, q, "json").await;
        let took = started.elapsed();
        let v = json_of(&body);
        assert_problem(&headers, &v, status, s);
        assert!(
            v["type"].as_str().unwrap().ends_with(slug),
            "{q}: {v} should be {slug}"
        );
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains(needle),
            "{q}: {detail:?} should name {needle:?}"
        );
        assert!(
            took < Duration::from_secs(15),
            "{q}: answered after {took:?}, not before the 20 s timeout"
        );
        still_answers(&h, tok, q).await;
    }
    let (s, _, body) = call(&h, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"ok"[..]));
    // What they counted is given back: the shared pool is empty again.
    let pool = h
        .state
        .warehouse
        .memory_pool()
        .expect("a memory limit is set");
    assert_eq!(
        pool.reserved(),
        0,
        "memory still reserved after the queries"
    );
}

/// Queries beyond `max_concurrent` are refused with 503 and Retry-After instead of each
/// taking the memory limit; the slot comes back when the client of a streamed answer leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_past_the_concurrency_limit_get_503_with_retry_after() {
    let mut c = config(Duration::from_secs(10), 512 << 20);
    c.query.max_concurrent = 1;
    let (h, t) = seeded(c).await;
    let tok = &t["admin"];
    // A streamed cross join holds the one slot while its client reads slowly.
    let resp = streamed_cross_join(&h, tok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (s, headers, body) = sql(&h, tok, "SELECT 1 AS x", "json").await;
    let v = json_of(&body);
    assert_problem(&headers, &v, StatusCode::SERVICE_UNAVAILABLE, s);
    assert!(
        v["type"].as_str().unwrap().ends_with("too-many-queries"),
        "{v}"
    );
    assert_eq!(headers["retry-after"], "1");
    // The client goes away: the query stops and its slot is free again.
    drop(resp);
    let started = std::time::Instant::now();
    loop {
        let (s, _, body) = sql(&h, tok, "SELECT 1 AS x", "json").await;
        if s == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the slot was not given back: {}",
            json_of(&body)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CSV-streamed cross join of a trillion rows: it runs until the timeout, or until its
/// client drops the body.
async fn streamed_cross_join(h: &crate::Harness, tok: &str) -> axum::response::Response {
    let req = Request::post("/v1/sql?format=csv")
        .header("authorization", format!("Bearer {tok}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"sql": "SELECT a.value, b.value FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 1000000) b"}).to_string(),
        ))
        .unwrap();
    tower::ServiceExt::oneshot(h.app.clone(), req)
        .await
        .unwrap()
}
