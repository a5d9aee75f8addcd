//! Query serving through the router: formats read back with real readers, read-only SQL,
//! limits, roles and region scopes, disclosure control, ETags, OpenAPI, metrics and audit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use careledger_gateway::{GatewayConfig, QueryConfig, Role};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{Harness, assert_problem, id, ndjson};

pub(crate) const LONGAN: &str = "450123100201"; // 隆安县 四兴村
pub(crate) const SHANGLIN: &str = "450125100201"; // 上林县 拥军村

/// 8 women in 隆安, 3 in 上林, all with husbands away since 2023-01-01 (in the ledger from
/// 2023-07-01); each has one service.
pub(crate) async fn seeded(config: GatewayConfig) -> (Harness, HashMap<&'static str, String>) {
    let h = Harness::with_config(config).await;
    let mut women = Vec::new();
    let mut events = Vec::new();
    let mut services = Vec::new();
    for n in 0..11u32 {
        let village = if n < 8 { LONGAN } else { SHANGLIN };
        women.push(json!({"record_id": format!("w-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n), "region_code": village, "marital_status": "20"}));
        events.push(json!({"record_id": format!("e-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n), "event_type": "spouse_departed",
                           "event_date": "2023-01-01", "destination": "out_of_province", "work_type": "labour"}));
        services.push(json!({"record_id": format!("s-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n), "measure": "M3",
                             "service_type": "home_visit", "service_date": "2024-03-01"}));
    }
    for (table, rows) in [
        ("women", women),
        ("life_events", events),
        ("services", services),
    ] {
        let (s, _, r) = h
            .post(
                &format!("/v1/ingest/{table}"),
                h.tok("civil_affairs"),
                "application/x-ndjson",
                ndjson(&rows),
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
    }
    let mut tokens = HashMap::new();
    for (name, role, scope) in [
        ("county-analyst", Role::Analyst, Some("450123")),
        ("dash", Role::Dashboard, None),
        ("admin", Role::Admin, None),
    ] {
        tokens.insert(name, h.tokens.create(name, &role, scope).unwrap());
    }
    (h, tokens)
}

pub(crate) async fn call(
    h: &Harness,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, bytes::Bytes) {
    let resp = h.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    (
        status,
        headers,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

pub(crate) async fn sql(
    h: &Harness,
    token: &str,
    sql: &str,
    format: &str,
) -> (StatusCode, axum::http::HeaderMap, bytes::Bytes) {
    let req = Request::post(format!("/v1/sql?format={format}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(json!({"sql": sql}).to_string()))
        .unwrap();
    call(h, req).await
}

pub(crate) async fn get(
    h: &Harness,
    token: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, bytes::Bytes) {
    let mut req = Request::get(path).header("authorization", format!("Bearer {token}"));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    call(h, req.body(Body::empty()).unwrap()).await
}

pub(crate) fn json_of(b: &bytes::Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into()))
}

#[tokio::test]
async fn every_output_format_parses_with_a_real_reader() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let q = "SELECT person_key, region_code, marital_status FROM women ORDER BY person_key";
    let (s, headers, body) = sql(&h, &t["admin"], q, "json").await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&body));
    assert_eq!(headers["content-type"], "application/json");
    let v = json_of(&body);
    assert_eq!(v["row_count"], 11);
    assert_eq!(v["columns"][1]["name"], "region_code");
    assert_eq!(v["columns"][1]["type"], "string");

    let (s, headers, body) = sql(&h, &t["admin"], q, "csv").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("person_key", arrow_schema::DataType::Utf8, true),
        arrow_schema::Field::new("region_code", arrow_schema::DataType::Utf8, true),
        arrow_schema::Field::new("marital_status", arrow_schema::DataType::Utf8, true),
    ]));
    let rows: usize = arrow_csv::ReaderBuilder::new(schema)
        .with_header(true)
        .build(std::io::Cursor::new(body.to_vec()))
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 11);

    let (s, headers, body) = sql(&h, &t["admin"], q, "arrow").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body.to_vec()), None)
            .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 11);
    assert_eq!(batches[0].schema().field(1).name(), "region_code");

    let (s, _, body) = sql(&h, &t["admin"], q, "parquet").await;
    assert_eq!(s, StatusCode::OK);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 11);

    // Past the JSON row cap, JSON is refused with advice, and CSV and Arrow stream the rows.
    let big = "SELECT value FROM generate_series(1, 250000)";
    let (s, headers, body) = sql(&h, &t["admin"], big, "json").await;
    let v = json_of(&body);
    assert_problem(&headers, &v, StatusCode::UNPROCESSABLE_ENTITY, s);
    assert!(v["detail"].as_str().unwrap().contains("format=csv"));
    let (s, _, body) = sql(&h, &t["admin"], big, "csv").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body.iter().filter(|b| **b == b'\n').count(),
        250_001,
        "header and every row"
    );
    let (s, _, body) = sql(&h, &t["admin"], big, "arrow").await;
    assert_eq!(s, StatusCode::OK);
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body.to_vec()), None)
            .unwrap();
    assert_eq!(
        reader.map(|b| b.unwrap().num_rows()).sum::<usize>(),
        250_000
    );

    // Accept negotiates too; an unknown format is refused.
    let req = Request::get("/v1/reports/stock?as_of=2024-06-30")
        .header("authorization", format!("Bearer {}", t["admin"]))
        .header("accept", "text/csv")
        .body(Body::empty())
        .unwrap();
    let (s, headers, _) = call(&h, req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let (s, headers, body) = sql(&h, &t["admin"], q, "xlsx").await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&body));
    assert_eq!(
        headers["content-type"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    assert_eq!(&body[..2], b"PK", "a zip container");
    let (s, headers, body) = sql(&h, &t["admin"], q, "xls").await;
    assert_problem(&headers, &json_of(&body), StatusCode::BAD_REQUEST, s);
}

#[tokio::test]
async fn user_sql_is_read_only_and_cannot_reach_files() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let refused = [
        "CREATE TABLE x (a INT)",
        "CREATE VIEW v AS SELECT 1",
        "DROP TABLE women",
        "INSERT INTO women SELECT * FROM women",
        "DELETE FROM women",
        "UPDATE women SET region_code = '1'",
        "COPY women TO '/tmp/out.parquet'",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
        "SET datafusion.execution.batch_size = 1",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM delta_women",
        "SELECT 1; SELECT 2",
    ];
    for q in refused {
        let (s, headers, body) = sql(&h, &t["admin"], q, "json").await;
        let v = json_of(&body);
        assert_problem(&headers, &v, StatusCode::BAD_REQUEST, s);
        assert!(!std::path::Path::new("/tmp/out.parquet").exists());
        let _ = q;
    }
    let (s, _, body) = sql(&h, &t["admin"], "SELECT count(*) AS n FROM women", "json").await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the server carries on: {}",
        json_of(&body)
    );
}

#[tokio::test]
async fn a_timeout_trips_cleanly() {
    let config = GatewayConfig {
        query: QueryConfig {
            timeout: Duration::from_millis(300),
            ..QueryConfig::default()
        },
        ..GatewayConfig::default()
    };
    let (h, t) = seeded(config).await;
    // The deriver is done with the seeded rows before the 300 ms clock matters.
    h.state.warehouse.catch_up().await.unwrap();
    let slow = "SELECT count(*) FROM generate_series(1, 30000) a CROSS JOIN generate_series(1, 30000) b WHERE a.value + b.value = 7";
    let (s, headers, body) = sql(&h, &t["admin"], slow, "json").await;
    let v = json_of(&body);
    assert_problem(&headers, &v, StatusCode::SERVICE_UNAVAILABLE, s);
    assert!(
        v["type"].as_str().unwrap().ends_with("query-timeout"),
        "{v}"
    );
    // Ingest carries on at once: it is served apart from the query runtime.
    let row = json!({"record_id": "w-late", "record_version": 1, "op": "upsert", "id_number": id(98), "region_code": LONGAN});
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&[row]),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    // Queries carry on too. The stopped query's operator may keep its query thread busy
    // until it next yields (a join whose filter drops every row produces no batch for a
    // while), which with a 300 ms timeout can time out the next queries: they are retried.
    let answered = async {
        loop {
            let (s, _, body) = sql(&h, &t["admin"], "SELECT count(*) FROM women", "json").await;
            if s == StatusCode::OK {
                break json_of(&body);
            }
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{}", json_of(&body));
        }
    };
    let v = tokio::time::timeout(Duration::from_secs(120), answered)
        .await
        .expect("the server carries on answering queries");
    assert_eq!(v["rows"][0][0], 12);
}

#[tokio::test]
async fn a_memory_limit_trips_cleanly() {
    let config = GatewayConfig {
        query: QueryConfig {
            memory_limit: 32 * 1024 * 1024,
            ..QueryConfig::default()
        },
        ..GatewayConfig::default()
    };
    let (h, t) = seeded(config).await;
    // A hash join's build side cannot spill: 3M keys need far more than 32 MiB.
    let greedy = "SELECT count(*) FROM generate_series(1, 3000000) a JOIN generate_series(1, 3000000) b ON a.value = b.value";
    let (s, headers, body) = sql(&h, &t["admin"], greedy, "json").await;
    let v = json_of(&body);
    assert_problem(&headers, &v, StatusCode::SERVICE_UNAVAILABLE, s);
    assert!(
        v["type"].as_str().unwrap().ends_with("query-memory-limit"),
        "{v}"
    );
    let (s, _, _) = sql(&h, &t["admin"], "SELECT count(*) FROM women", "json").await;
    assert_eq!(s, StatusCode::OK, "the server carries on");
}

#[tokio::test]
async fn a_scoped_analyst_sees_only_her_county_through_any_sql() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let count = |v: &Value| v["rows"][0][0].as_i64().unwrap();
    let scoped = &t["county-analyst"];
    for (q, want) in [
        ("SELECT count(*) FROM women", 8),
        ("SELECT count(*) FROM life_events", 8),
        ("SELECT count(*) FROM services", 8),
        ("SELECT count(*) FROM raw_women", 8),
        ("SELECT count(*) FROM people", 8),
        ("SELECT count(*) FROM status_episodes", 8),
        ("SELECT count(*) FROM residence", 8),
        ("SELECT count(DISTINCT person_key) FROM ledger_runs", 8),
        (
            "SELECT count(*) FROM women w JOIN services s ON s.person_key = w.person_key",
            8,
        ),
        (
            "SELECT count(*) FROM services WHERE person_key IN (SELECT person_key FROM raw_life_events)",
            8,
        ),
        (
            "SELECT count(*) FROM (SELECT person_key FROM women UNION SELECT person_key FROM raw_services) u",
            8,
        ),
        (
            "WITH x AS (SELECT * FROM status_episodes) SELECT count(*) FROM x",
            8,
        ),
        (
            "SELECT count(*) FROM ledger_runs WHERE NOT starts_with(region_code, '450123')",
            0,
        ),
    ] {
        let (s, _, body) = sql(&h, scoped, q, "json").await;
        let v = json_of(&body);
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        assert_eq!(count(&v), want, "{q}");
        // The unscoped admin sees all 11 where the county analyst sees 8.
        let (_, _, body) = sql(&h, &t["admin"], q, "json").await;
        if want == 8 {
            assert_eq!(count(&json_of(&body)), 11, "admin: {q}");
        }
    }
    let (s, headers, body) = sql(&h, scoped, "SELECT count(*) FROM rejects", "json").await;
    assert_problem(&headers, &json_of(&body), StatusCode::BAD_REQUEST, s);
    let (s, _, body) = get(
        &h,
        scoped,
        "/v1/reports/stock?as_of=2024-06-30&level=county",
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    assert_eq!(v["row_count"], 1, "{v}");
    assert_eq!(v["rows"][0][0], "450123000000");
    assert_eq!(v["rows"][0][2], 8);
}

#[tokio::test]
async fn a_dashboard_cannot_run_sql_and_gets_suppressed_cells() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let (s, headers, body) = sql(&h, &t["dash"], "SELECT 1", "json").await;
    assert_problem(&headers, &json_of(&body), StatusCode::FORBIDDEN, s);
    let (s, headers, body) = get(&h, &t["dash"], "/v1/reports/priority_gaps", &[]).await;
    assert_problem(&headers, &json_of(&body), StatusCode::FORBIDDEN, s);

    let (s, _, body) = get(
        &h,
        &t["dash"],
        "/v1/reports/stock?as_of=2024-06-30&level=county",
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    // Every county of Guangxi has a row (a missing row would say "zero").
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 111, "{v}");
    let row = |code: &str| {
        rows.iter()
            .position(|r| r[0] == code)
            .unwrap_or_else(|| panic!("{code} in {v}"))
    };
    let suppressed: Vec<(usize, usize)> = v["suppressed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c[0].as_u64().unwrap() as usize,
                c[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    // 上林 has 3 women, below k = 5: hidden, and so is every county with none.
    let shanglin = row("450125000000");
    assert!(suppressed.contains(&(shanglin, 2)), "{v}");
    assert!(rows[shanglin][2].is_null());
    assert!(
        rows[row("450126000000")][2].is_null(),
        "an empty county: {v}"
    );
    assert_eq!(
        rows[row("450123000000")][1],
        "隆安县",
        "labels stay visible"
    );
    // 隆安's 8 is published with the noise of its cell key: the same in every request.
    let longan = rows[row("450123000000")][2].clone();
    let (_, _, again) = get(
        &h,
        &t["dash"],
        "/v1/reports/stock?as_of=2024-06-30&level=county&region=4501",
        &[],
    )
    .await;
    let again = json_of(&again);
    let again_row = again["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == "450123000000")
        .unwrap();
    assert_eq!(again_row[2], longan, "{again}");
    // A day that is not a month's last is refused (daily steps would date single exits).
    let (s, headers, body) = get(
        &h,
        &t["dash"],
        "/v1/reports/stock?as_of=2024-06-29&level=county",
        &[],
    )
    .await;
    assert_problem(&headers, &json_of(&body), StatusCode::BAD_REQUEST, s);
    assert_eq!(
        json_of(&body)["type"]
            .as_str()
            .map(|t| t.ends_with("reference-period")),
        Some(true),
        "{}",
        json_of(&body)
    );
    // The analyst sees the exact figures.
    let (_, _, body) = get(
        &h,
        &t["admin"],
        "/v1/reports/stock?as_of=2024-06-30&level=county",
        &[],
    )
    .await;
    let v = json_of(&body);
    assert_eq!(v["rows"][1][2], 3);
    assert!(v.get("suppressed").is_none());
    // The catalog a dashboard sees has no case lists.
    let (_, _, body) = get(&h, &t["dash"], "/v1/reports", &[]).await;
    assert!(!json_of(&body).to_string().contains("\"priority_gaps\""));
}

#[tokio::test]
async fn etag_gives_304_until_a_new_batch_lands() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let path = "/v1/reports/stock?as_of=2024-06-30&level=county";
    let (s, headers, first) = get(&h, &t["admin"], path, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let etag = headers["etag"].to_str().unwrap().to_string();
    let (s, _, body) = get(&h, &t["admin"], path, &[("if-none-match", &etag)]).await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    let (s, headers, again) = get(&h, &t["admin"], path, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers["etag"].to_str().unwrap(), etag);
    assert_eq!(first, again, "served from the cache");

    let row = json!({"record_id": "w-new", "record_version": 1, "op": "upsert", "id_number": id(99), "region_code": LONGAN});
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&[row]),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, headers, _) = get(&h, &t["admin"], path, &[("if-none-match", &etag)]).await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a new batch changes the answer's version"
    );
    assert_ne!(headers["etag"].to_str().unwrap(), etag);

    let (_, _, metrics) = get(&h, "", "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    assert!(
        metrics.contains("careledger_report_not_modified_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("careledger_report_cache_hits_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("careledger_ingest_rows_accepted_total 34"),
        "{metrics}"
    );
}

#[tokio::test]
async fn openapi_lists_every_route_and_every_route_exists() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let (s, _, body) = get(&h, "", "/v1/openapi.json", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let doc = json_of(&body);
    // Every route is in the document; the report route as one path per report.
    for (method, path, _, _) in careledger_gateway::openapi::ROUTES {
        if *path == "/v1/reports/{name}" {
            continue;
        }
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the document"
        );
    }
    for r in careledger_warehouse::catalog() {
        let op = &doc["paths"][format!("/v1/reports/{}", r.name)]["get"];
        let names: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("report {} has no parameters: {op}", r.name))
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for p in &r.params {
            assert!(names.contains(&p.name.as_str()), "{}: {}", r.name, p.name);
        }
        for common in ["format", "known_at", "wait_for", "If-None-Match"] {
            assert!(names.contains(&common), "{}: {common}", r.name);
        }
        assert!(op["responses"]["200"]["content"]["application/json"].is_object());
    }
    // Pushed rows are the contracts, with their code lists; answers have schemas.
    let schemas = &doc["components"]["schemas"];
    for t in careledger_model::Table::ALL {
        let row = &schemas[format!("Row_{}", t.as_str())];
        assert_eq!(
            row["properties"]["op"]["enum"],
            json!(["upsert", "delete"]),
            "{t}"
        );
        assert_eq!(row["additionalProperties"], json!(false), "{t}");
    }
    for name in [
        "Receipt",
        "RowError",
        "Problem",
        "Answer",
        "SourceMe",
        "BatchRow",
        "RejectRow",
        "ReportSpec",
        "SqlRequest",
    ] {
        assert!(
            schemas[name]["properties"].is_object() || schemas[name]["type"].is_string(),
            "{name}: {}",
            schemas[name]
        );
    }
    assert_eq!(
        schemas["BatchRow"]["properties"]["batch_seq"]["type"],
        json!(["integer", "null"])
    );
    assert_eq!(
        doc["paths"]["/v1/ingest/{table}"]["post"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/Receipt"
    );
    // Every documented path answers through the router (not 404 / 405).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let concrete = path
                .replace("{table}", "women")
                .replace("{name}", "app.js")
                .replace("{id}", "0190d6a0-0000-7000-8000-000000000000");
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&concrete);
            let req = if op["security"].is_array() {
                req.header("authorization", format!("Bearer {}", t["admin"]))
            } else {
                req
            };
            let (s, _, body) = call(
                &h,
                req.header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await;
            assert!(
                s != StatusCode::NOT_FOUND && s != StatusCode::METHOD_NOT_ALLOWED
                    || concrete.starts_with("/v1/batches/")
                        && json_of(&body)["type"]
                            .as_str()
                            .is_some_and(|t| t.ends_with("unknown-batch")),
                "{method} {concrete}: {s}"
            );
        }
    }
    let (s, _, _) = get(&h, "", "/healthz", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = get(&h, "", "/readyz", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = get(&h, &t["admin"], "/v1/tables", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let tables = json_of(&body);
    let names: Vec<&str> = tables["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for n in [
        "women",
        "status_episodes",
        "ledger_runs",
        "regions",
        "batches",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("delta_")));
}

#[tokio::test]
async fn every_query_and_report_is_audited() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    sql(&h, &t["admin"], "SELECT count(*) FROM women", "json").await;
    sql(
        &h,
        &t["county-analyst"],
        "SELECT nonsense FROM nowhere",
        "json",
    )
    .await;
    get(&h, &t["dash"], "/v1/reports/stock?as_of=2024-06-30", &[]).await;
    h.state.audit_log.drain().await;
    let audit = crate::read_table(&h.state.store, "audit").await;
    let rows: usize = audit.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 3);
    let batch = arrow_select::concat::concat_batches(&audit[0].schema(), &audit).unwrap();
    let col = |n: &str| {
        let c = arrow_cast::cast(
            batch.column_by_name(n).unwrap(),
            &arrow_schema::DataType::Utf8,
        )
        .unwrap();
        (0..c.len())
            .map(|i| {
                arrow_array::cast::AsArray::as_string::<i32>(&c)
                    .value(i)
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    let mut seen: Vec<(String, String, String)> = col("token_name")
        .into_iter()
        .zip(col("kind"))
        .zip(col("outcome"))
        .map(|((a, b), c)| (a, b, c))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("admin".into(), "sql".into(), "ok".into()),
            ("county-analyst".into(), "sql".into(), "bad-query".into()),
            ("dash".into(), "report".into(), "ok".into()),
        ]
    );
}

#[tokio::test]
async fn answers_are_compressed_when_the_client_accepts_it() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let ask = |accept: Option<&'static str>| {
        let mut req = Request::post("/v1/sql?format=json")
            .header("authorization", format!("Bearer {}", t["admin"]))
            .header("content-type", "application/json");
        if let Some(a) = accept {
            req = req.header("accept-encoding", a);
        }
        req.body(Body::from(
            json!({"sql": "SELECT * FROM region_levels ORDER BY code, level LIMIT 300"})
                .to_string(),
        ))
        .unwrap()
    };
    let (s, headers, plain) = call(&h, ask(None)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(headers.get("content-encoding").is_none());
    assert!(
        plain.len() > 1024,
        "a body worth compressing: {}",
        plain.len()
    );
    let (s, headers, gz) = call(&h, ask(Some("br;q=1, gzip"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["vary"], "accept-encoding");
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut inflated).unwrap();
    assert_eq!(inflated, plain.to_vec());
    assert!(gz.len() < plain.len());
    let (_, headers, z) = call(&h, ask(Some("gzip, zstd"))).await;
    assert_eq!(headers["content-encoding"], "zstd");
    assert_eq!(zstd::decode_all(&z[..]).unwrap(), plain.to_vec());
    let (_, headers, _) = call(&h, ask(Some("gzip;q=0"))).await;
    assert!(headers.get("content-encoding").is_none());
}

/// `GET /v1/sql?q=` answers as POST does, under the same role and scope; a named report is a
/// table function in SQL, narrowed to the caller's scope like `GET /v1/reports/{name}`.
#[tokio::test]
async fn get_sql_and_reports_as_table_functions_answer_as_post_does() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let q = "SELECT count(DISTINCT person_key) AS women FROM status_episodes";
    let (s, _, posted) = sql(&h, &t["county-analyst"], q, "json").await;
    assert_eq!(s, StatusCode::OK);
    let path = format!("/v1/sql?format=json&q={}", url_encode(q));
    let (s, _, got) = get(&h, &t["county-analyst"], &path, &[]).await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&got));
    assert_eq!(json_of(&got)["rows"], json_of(&posted)["rows"]);
    assert_eq!(
        json_of(&got)["rows"][0][0],
        8,
        "the county token sees its 8 women"
    );
    let (s, _, _) = get(&h, &t["dash"], &path, &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "dashboards do not run SQL");
    let (s, hd, b) = get(&h, &t["admin"], "/v1/sql", &[]).await;
    assert_problem(&hd, &json_of(&b), StatusCode::BAD_REQUEST, s);
    assert!(json_of(&b)["detail"].as_str().unwrap().contains("q="));

    // stock as a table function = GET /v1/reports/stock, for a scoped token too.
    for who in ["admin", "county-analyst"] {
        let (s, _, report) = get(
            &h,
            &t[who],
            "/v1/reports/stock?as_of=2024-06-30&level=county&format=json",
            &[],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{}", json_of(&report));
        let (s, _, called) = sql(
            &h,
            &t[who],
            "SELECT * FROM stock(as_of => '2024-06-30', level => 'county')",
            "json",
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{}", json_of(&called));
        assert_eq!(json_of(&called)["rows"], json_of(&report)["rows"], "{who}");
    }
    // Positional parameters, a join with a table, and a bad parameter named.
    let (s, _, joined) = sql(
        &h,
        &t["admin"],
        "SELECT s.region_code, s.women, r.name FROM stock('2024-06-30', 'county') s \
         JOIN regions r ON r.code = s.region_code ORDER BY 1",
        "json",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&joined));
    assert_eq!(json_of(&joined)["rows"].as_array().unwrap().len(), 2);
    let (s, hd, b) = sql(
        &h,
        &t["county-analyst"],
        "SELECT * FROM stock(as_of => '2024-06-30', level => 'province')",
        "json",
    )
    .await;
    assert_problem(&hd, &json_of(&b), StatusCode::BAD_REQUEST, s);
    assert!(
        json_of(&b)["type"]
            .as_str()
            .unwrap()
            .ends_with("outside-scope")
    );
}

/// CORS is off unless configured; with an origin, a browser's preflight is answered.
#[tokio::test]
async fn cors_answers_preflights_only_when_configured() {
    let (h, _) = seeded(GatewayConfig::default()).await;
    let preflight = || {
        Request::options("/v1/sql")
            .header("origin", "https://dash.example.gx.cn")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap()
    };
    let resp = h.app.clone().oneshot(preflight()).await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let layer = careledger_gateway::cors("https://dash.example.gx.cn").unwrap();
    let app = h.app.clone().layer(layer);
    let resp = app.clone().oneshot(preflight()).await.unwrap();
    assert_eq!(
        resp.headers().get("access-control-allow-origin").unwrap(),
        "https://dash.example.gx.cn"
    );
    let other = Request::options("/v1/sql")
        .header("origin", "https://elsewhere.example")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(other).await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    assert!(careledger_gateway::cors("dash.example").is_err());
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A report called in SQL is answered inside its own query: queries that reuse the same
/// snapshot (the same token, within a second, nothing committed between) can call it again,
/// and cannot read an earlier query's answer.
#[tokio::test]
async fn report_calls_stay_inside_their_own_query() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let ask = |q: &'static str| {
        Request::post("/v1/sql?format=json&wait_for=latest")
            .header("authorization", format!("Bearer {}", t["admin"]))
            .header("content-type", "application/json")
            .body(Body::from(json!({"sql": q}).to_string()))
            .unwrap()
    };
    let call_stock = "SELECT * FROM stock(as_of => '2024-06-30', level => 'county')";
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (s, _, b) = call(&h, ask(call_stock)).await;
        assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
        answers.push(json_of(&b)["rows"].clone());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let (s, _, b) = call(&h, ask("SELECT * FROM careledger_report_calls.report_0")).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "an earlier answer is readable: {}",
        json_of(&b)
    );
}

/// CSV for Excel on a Chinese-locale Windows: `bom=true` marks UTF-8, `charset=gb18030` (or
/// the `Accept` header's charset) writes the code page Excel reads by default; both decode to
/// the plain answer, the report's download is named after it and its parameters, the ETag
/// tells the variants apart, and the options are refused with another format. A streamed SQL
/// answer gets the mark once, and is transcoded whole.
#[tokio::test]
async fn csv_downloads_open_in_excel_on_a_chinese_windows() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let admin = &t["admin"];
    let path = "/v1/reports/stock?as_of=2024-06-30&level=county&format=csv";
    let (s, plain_h, plain) = get(&h, admin, path, &[]).await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&plain));
    let text = std::str::from_utf8(&plain).unwrap();
    assert!(text.starts_with("region_code,region_name,women"), "{text}");
    assert!(text.contains("隆安县"), "{text}");
    assert_eq!(
        plain_h["content-disposition"],
        "attachment; filename=\"stock_as_of=2024-06-30_level=county.csv\""
    );

    let (s, bom_h, bom) = get(&h, admin, &format!("{path}&bom=true"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(&bom[..3], b"\xef\xbb\xbf");
    assert_eq!(&bom[3..], &plain[..]);
    assert_ne!(
        bom_h["etag"], plain_h["etag"],
        "the variants are cached apart"
    );

    for (query, accept) in [
        (format!("{path}&charset=gb18030"), None),
        (path.to_string(), Some("text/csv; charset=gb18030")),
    ] {
        let extra: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let (s, gb_h, gb) = get(&h, admin, &query, &extra).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(gb_h["content-type"], "text/csv; charset=gb18030");
        assert!(std::str::from_utf8(&gb).is_err(), "not UTF-8 any more");
        let (back, _, bad) = encoding_rs::GB18030.decode(&gb);
        assert!(!bad);
        assert_eq!(back, text, "GB18030 decodes to the same answer");
    }

    let (s, _, body) = get(
        &h,
        admin,
        "/v1/reports/stock?as_of=2024-06-30&format=json&bom=true",
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(json_of(&body)["detail"].as_str().unwrap().contains("bom"));

    // A streamed SQL answer: the mark once, then the rows.
    let q = "SELECT name FROM regions WHERE code LIKE '4501%' ORDER BY code";
    let req = Request::post("/v1/sql?format=csv&bom=true")
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(Body::from(json!({"sql": q}).to_string()))
        .unwrap();
    let (s, sh, body) = call(&h, req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        sh["content-disposition"],
        "attachment; filename=\"careledger-sql.csv\""
    );
    assert_eq!(&body[..3], b"\xef\xbb\xbf");
    let rest = std::str::from_utf8(&body[3..]).unwrap();
    assert!(
        rest.starts_with("name\n南宁市\n") && !rest.contains('\u{feff}'),
        "{rest}"
    );
    let (_, _, plain_sql) = sql(&h, admin, q, "csv").await;
    let req = Request::post("/v1/sql?format=csv&charset=gb18030")
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(Body::from(json!({"sql": q}).to_string()))
        .unwrap();
    let (s, _, gb) = call(&h, req).await;
    assert_eq!(s, StatusCode::OK);
    let (back, _, bad) = encoding_rs::GB18030.decode(&gb);
    assert!(!bad && back == std::str::from_utf8(&plain_sql).unwrap());
}

/// The audit entries waiting to be written are bounded: past the limit, a query or report is
/// refused (503 audit-backlog, Retry-After) instead of running unaudited or growing the
/// backlog, and taken again once the writer has caught up. Nothing recorded is dropped.
#[tokio::test]
async fn a_backlogged_audit_log_refuses_queries_until_it_catches_up() {
    let (h, t) = seeded(GatewayConfig {
        query: QueryConfig {
            // One entry is past it: the writer gathers entries for up to 500 ms first.
            audit_backlog_bytes: 1,
            ..QueryConfig::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    let admin = &t["admin"];
    let (s, _, b) = sql(&h, admin, "SELECT count(*) FROM women", "json").await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    assert!(h.state.audit_log.pending_bytes() > 1);
    let (s, headers, b) = sql(&h, admin, "SELECT 2", "json").await;
    assert_problem(&headers, &json_of(&b), StatusCode::SERVICE_UNAVAILABLE, s);
    assert_eq!(headers["retry-after"], "2");
    assert!(
        json_of(&b)["type"]
            .as_str()
            .unwrap()
            .ends_with("audit-backlog"),
        "{}",
        json_of(&b)
    );
    let (s, headers, _) = get(&h, admin, "/v1/reports/stock?as_of=2024-06-30", &[]).await;
    assert_eq!(
        (s, &headers["retry-after"]),
        (StatusCode::SERVICE_UNAVAILABLE, &"2".parse().unwrap())
    );
    // Once the entry is written, queries run again.
    let mut waited = 0;
    while h.state.audit_log.pending_bytes() > 0 {
        assert!(waited < 100, "the audit entry was not written in 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    let (s, _, b) = sql(&h, admin, "SELECT 3", "json").await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    h.state.audit_log.drain().await;
    let audit = crate::read_table(&h.state.store, "audit").await;
    let rows: usize = audit.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2, "the two queries that ran, not the refusals");
}
