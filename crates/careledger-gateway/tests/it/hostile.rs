//! Hostile bodies and requests through the real router: each gets a 4xx problem+json whose
//! detail names the problem, nothing is stored, memory stays bounded, and a valid push works
//! after all of them.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{Harness, assert_problem, id, ndjson, woman};

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib * 1024
}

struct Case {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, String)>,
    status: StatusCode,
    needle: &'static str,
}

fn case(
    name: &'static str,
    content_type: &'static str,
    body: impl Into<Vec<u8>>,
    status: StatusCode,
    needle: &'static str,
) -> Case {
    Case {
        name,
        path: "/v1/ingest/women",
        content_type,
        body: body.into(),
        extra: Vec::new(),
        status,
        needle,
    }
}

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";
const CSV: &str = "text/csv";
const GB: &str = "text/csv; charset=gb18030";

fn cases() -> Vec<Case> {
    use StatusCode as S;
    let good = woman(1, "civil_affairs").to_string();
    let ten_mb = "x".repeat(10 << 20);
    let mut huge_cell = woman(2, "civil_affairs");
    huge_cell["record_id"] = json!(ten_mb);
    let mut huge_id = woman(3, "civil_affairs");
    huge_id["id_number"] = json!(ten_mb);
    let mut wrong_type = woman(4, "civil_affairs");
    wrong_type["record_version"] = json!("two");
    let mut cases = vec![
        case(
            "truncated JSON array",
            JSON,
            format!("[{good}, {{\"record_id\": \"a"),
            S::BAD_REQUEST,
            "EOF",
        ),
        case(
            "truncated NDJSON line",
            NDJSON,
            format!("{good}\n{{\"record_id\": "),
            S::UNPROCESSABLE_ENTITY,
            "line 2",
        ),
        case(
            "array of numbers",
            JSON,
            "[1, 2, 3]",
            S::BAD_REQUEST,
            "array element 1 is not an object",
        ),
        case(
            "an object, not an array",
            JSON,
            good.clone(),
            S::BAD_REQUEST,
            "JSON array",
        ),
        case(
            "a value that is an object",
            JSON,
            "[{\"record_id\": {\"a\": 1}}]",
            S::UNPROCESSABLE_ENTITY,
            "not an object or array",
        ),
        case(
            "a value that is an array",
            NDJSON,
            "{\"region_code\": [\"450123100201\"]}\n",
            S::UNPROCESSABLE_ENTITY,
            "\"region_code\" must be a string",
        ),
        case(
            "a word where a number goes",
            NDJSON,
            ndjson(&[wrong_type]),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        case(
            "invalid UTF-8 in a JSON string",
            JSON,
            b"[{\"record_id\": \"\xc3\x28\"}]".to_vec(),
            S::BAD_REQUEST,
            "unicode",
        ),
        case(
            "invalid UTF-8 in NDJSON",
            NDJSON,
            [good.as_bytes(), b"\n{\"op\": \"\xff\"}\n"].concat(),
            S::UNPROCESSABLE_ENTITY,
            "line 2",
        ),
        case(
            "invalid UTF-8 in CSV",
            CSV,
            b"record_id,op\n\xe4\xb8,upsert\n".to_vec(),
            S::BAD_REQUEST,
            "not valid UTF-8",
        ),
        case(
            "invalid GB18030",
            GB,
            b"record_id,op\n\xff\xfe,upsert\n".to_vec(),
            S::BAD_REQUEST,
            "not valid GB18030",
        ),
        case(
            "a lone surrogate escape",
            JSON,
            "[{\"record_id\": \"\\udc00\"}]",
            S::UNPROCESSABLE_ENTITY,
            "not a valid JSON string",
        ),
        case(
            "a 10 MB string field",
            NDJSON,
            ndjson(&[huge_cell]),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        case(
            "a 10 MB ID number",
            JSON,
            Value::Array(vec![huge_id]).to_string(),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        case(
            "100k nested arrays",
            JSON,
            "[".repeat(100_000),
            S::BAD_REQUEST,
            "not an object",
        ),
        case(
            "100k nested arrays in a value",
            NDJSON,
            format!("{{\"op\": {}}}\n", "[".repeat(100_000)),
            S::UNPROCESSABLE_ENTITY,
            "line 1",
        ),
        case(
            "100k nested objects",
            JSON,
            format!("[{}", "{\"op\":".repeat(100_000)),
            S::BAD_REQUEST,
            "line 1",
        ),
        case(
            "a CSV header of 3 million columns",
            CSV,
            format!("record_id{}\nx\n", ",op".repeat(3_000_000)),
            S::BAD_REQUEST,
            "3000001 columns",
        ),
        case(
            "a CSV row wider than its header",
            CSV,
            "record_id,op\nx,upsert,more\n",
            S::BAD_REQUEST,
            "invalid CSV",
        ),
        case(
            "unknown field",
            NDJSON,
            "{\"record_id\": \"x\", \"favourite_colour\": \"red\"}\n",
            S::UNPROCESSABLE_ENTITY,
            "unknown field \"favourite_colour\"",
        ),
        case(
            "duplicate keys in one object",
            JSON,
            "[{\"record_id\": \"x\", \"op\": \"upsert\", \"op\": \"delete\"}]",
            S::UNPROCESSABLE_ENTITY,
            "\"op\" appears twice",
        ),
        case("empty JSON body", JSON, "", S::BAD_REQUEST, "JSON array"),
        case("empty JSON array", JSON, "[]", S::BAD_REQUEST, "no rows"),
        case("empty NDJSON body", NDJSON, "", S::BAD_REQUEST, "no rows"),
        case(
            "blank NDJSON lines only",
            NDJSON,
            "\n \r\n\n",
            S::BAD_REQUEST,
            "no rows",
        ),
        case("empty CSV body", CSV, "", S::BAD_REQUEST, "header"),
        case(
            "a NUL byte in JSON",
            NDJSON,
            format!("{good}\n{{\"record_id\": \"a\0b\"}}\n"),
            S::BAD_REQUEST,
            "NUL byte",
        ),
        case(
            "a NUL byte in CSV",
            CSV,
            "record_id\na\0b\n",
            S::BAD_REQUEST,
            "NUL byte",
        ),
        case(
            "an escaped NUL in a JSON string",
            JSON,
            "[{\"record_id\": \"a\\u0000b\"}]",
            S::UNPROCESSABLE_ENTITY,
            "NUL character",
        ),
        case(
            "a UTF-16 body",
            CSV,
            "record_id\nx\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>(),
            S::BAD_REQUEST,
            "UTF-16",
        ),
        case(
            "1,000,001 empty rows",
            NDJSON,
            "{}\n".repeat(1_000_001),
            S::PAYLOAD_TOO_LARGE,
            "more than 1000000 rows",
        ),
        case(
            "a body over the limit",
            NDJSON,
            vec![b' '; 64 * 1024 * 1024 + 1],
            S::PAYLOAD_TOO_LARGE,
            "exceeds the limit",
        ),
        case(
            "XML",
            "application/xml",
            "<women/>",
            S::UNSUPPORTED_MEDIA_TYPE,
            "application/xml",
        ),
        case(
            "no content type",
            "",
            good.clone(),
            S::UNSUPPORTED_MEDIA_TYPE,
            "(none)",
        ),
        case(
            "CSV in Latin-1",
            "text/csv; charset=latin1",
            "record_id\nx\n",
            S::UNSUPPORTED_MEDIA_TYPE,
            "latin1",
        ),
    ];
    let mut more = vec![
        Case {
            path: "/v1/ingest/women?atomic=maybe",
            ..case(
                "atomic=maybe",
                NDJSON,
                ndjson(&[woman(5, "civil_affairs")]),
                S::BAD_REQUEST,
                "atomic",
            )
        },
        Case {
            path: "/v1/ingest/men",
            ..case(
                "an unknown table",
                NDJSON,
                good.clone(),
                S::NOT_FOUND,
                "the pushed tables are",
            )
        },
        Case {
            extra: vec![("idempotency-key", "k".repeat(201))],
            ..case(
                "an idempotency key of 201 characters",
                NDJSON,
                good.clone(),
                S::BAD_REQUEST,
                "Idempotency-Key",
            )
        },
        Case {
            extra: vec![("batch-seq", "-3".into())],
            ..case(
                "a negative Batch-Seq",
                NDJSON,
                good.clone(),
                S::BAD_REQUEST,
                "Batch-Seq",
            )
        },
    ];
    cases.append(&mut more);
    cases
}

#[tokio::test]
async fn hostile_bodies_are_refused_with_a_problem_naming_why_and_the_server_carries_on() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs").to_string();
    let before = peak_rss();
    for c in cases() {
        let extra: Vec<(&str, &str)> = c.extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, headers, body) = if c.content_type.is_empty() {
            let req = axum::http::Request::post(c.path)
                .header("authorization", format!("Bearer {tok}"))
                .body(axum::body::Body::from(c.body))
                .unwrap();
            let resp = tower::ServiceExt::oneshot(h.app.clone(), req)
                .await
                .unwrap();
            let (status, headers) = (resp.status(), resp.headers().clone());
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, headers, serde_json::from_slice(&bytes).unwrap())
        } else {
            h.post(c.path, &tok, c.content_type, c.body, &extra).await
        };
        assert_problem(&headers, &body, c.status, status);
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(c.needle),
            "{}: detail {:?} should name {:?}",
            c.name,
            detail.chars().take(300).collect::<String>(),
            c.needle
        );
        assert!(
            body.to_string().len() < 64 * 1024,
            "{}: an answer of {} bytes",
            c.name,
            body.to_string().len()
        );
    }
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 1 << 30,
        "peak memory grew by {} MiB over the hostile table",
        grown >> 20
    );
    assert_eq!(h.count("women").await, 0, "nothing was stored");

    let rows: Vec<Value> = (10..13).map(|n| woman(n, "civil_affairs")).collect();
    let (s, _, r) = h
        .post("/v1/ingest/women", &tok, NDJSON, ndjson(&rows), &[])
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 3);
    assert_eq!(h.count("women").await, 3);
}

/// Byte-order marks are accepted in every format.
#[tokio::test]
async fn boms_are_accepted() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs");
    let row = |n: u32| woman(n, "civil_affairs");
    let csv = |n: u32| {
        format!(
            "record_id,record_version,op,id_number,region_code\nb-{n},1,upsert,{},450123100201\n",
            id(n)
        )
    };
    let csv4 = csv(4);
    let (gb, _, _) = encoding_rs::GB18030.encode(&csv4);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        (JSON, format!("\u{feff}[{}]", row(1)).into_bytes()),
        (NDJSON, format!("\u{feff}{}\n", row(2)).into_bytes()),
        (CSV, format!("\u{feff}{}", csv(3)).into_bytes()),
        (GB, gb.into_owned()),
        (GB, format!("\u{feff}{}", csv(5)).into_bytes()),
    ];
    for (ct, body) in bodies {
        let (s, _, r) = h.post("/v1/ingest/women", tok, ct, body, &[]).await;
        assert_eq!(s, StatusCode::OK, "{ct}: {r}");
        assert_eq!(r["rows_accepted"], 1, "{ct}: {r}");
    }
    assert_eq!(h.count("women").await, 5);
}

/// 200k rows, each with several errors: the receipt lists the first 100 and counts them all.
#[tokio::test]
async fn a_body_of_invalid_rows_gets_a_bounded_answer() {
    let h = Harness::new().await;
    let n = 200_000;
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("civil_affairs"),
            NDJSON,
            "{\"op\": \"x\"}\n".repeat(n),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
    let receipt = &r["receipt"];
    assert_eq!(receipt["rows_rejected"], n);
    assert!(receipt["error_count"].as_u64().unwrap() >= 2 * n as u64);
    assert_eq!(receipt["errors"].as_array().unwrap().len(), 100);
    assert!(receipt["errors"][99]["row"].as_u64().unwrap() <= 100);
}
