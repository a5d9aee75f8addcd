//! Each body format is accepted; malformed bodies are refused with problem+json naming where.

use axum::http::StatusCode;
use serde_json::Value;

use crate::{Harness, assert_problem, id, ndjson, woman};

#[tokio::test]
async fn json_array_ndjson_and_csv_in_utf8_and_gb18030_are_accepted() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs");
    let rows: Vec<Value> = (0..3).map(|n| woman(n, "civil_affairs")).collect();

    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/json",
            Value::Array(rows.clone()).to_string(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 3);
    assert_eq!(r["format"], "json");

    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 3);

    let csv = format!(
        "\u{feff}record_id,record_version,op,id_number,region_code,ethnicity\nc-1,1,upsert,{},450123100201,08\nc-2,1,upsert,{},450123100201,08\n",
        id(10),
        id(11)
    );
    let (s, _, r) = h.post("/v1/ingest/women", tok, "text/csv", csv, &[]).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 2);

    // A spreadsheet export in GB18030, with Chinese text in a free-text field.
    let csv = format!(
        "record_id,record_version,op,id_number,action,effective_date,region_code,reason\ng-1,1,upsert,{},registered,2024-05-01,450123100201,摸底排查新登记\n",
        id(12)
    );
    let (gb, _, _) = encoding_rs::GB18030.encode(&csv);
    assert_ne!(
        gb.as_ref(),
        csv.as_bytes(),
        "the body really is GB18030, not UTF-8"
    );
    let (s, _, r) = h
        .post(
            "/v1/ingest/registrations",
            tok,
            "text/csv; charset=gb18030",
            gb.into_owned(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 1);

    assert_eq!(h.count("women").await, 8);
    let regs = h.rows("registrations").await;
    let reason = regs[0].column_by_name("reason").unwrap();
    let reason = reason
        .as_any()
        .downcast_ref::<arrow_array::StringArray>()
        .unwrap();
    assert_eq!(
        reason.value(0),
        "摸底排查新登记",
        "GB18030 text is stored as UTF-8"
    );
}

#[tokio::test]
async fn malformed_bodies_get_problem_json_naming_the_place() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs");
    let good = woman(1, "civil_affairs").to_string();

    let cases: Vec<(&str, &str, String, StatusCode, &str)> = vec![
        (
            "/v1/ingest/women",
            "application/json",
            format!("[{good},\n {{\"record_id\": }}]"),
            StatusCode::BAD_REQUEST,
            "line 2",
        ),
        (
            "/v1/ingest/women",
            "application/json",
            good.clone(),
            StatusCode::BAD_REQUEST,
            "array",
        ),
        (
            "/v1/ingest/women",
            "application/x-ndjson",
            format!("{good}\n{{\"record_id\": \"x\"\n"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "line 2",
        ),
        (
            "/v1/ingest/women",
            "application/x-ndjson",
            format!("{good}\n{{\"nickname\": \"x\"}}\n"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "nickname",
        ),
        (
            "/v1/ingest/women",
            "application/json",
            "[{\"shoe_size\": 38}]".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "shoe_size",
        ),
        (
            "/v1/ingest/women",
            "text/csv",
            "record_id,favourite_colour\nx,red\n".into(),
            StatusCode::BAD_REQUEST,
            "favourite_colour",
        ),
        (
            "/v1/ingest/women",
            "text/csv",
            "".into(),
            StatusCode::BAD_REQUEST,
            "header",
        ),
        (
            "/v1/ingest/women",
            "application/xml",
            "<women/>".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/xml",
        ),
        (
            "/v1/ingest/men",
            "application/json",
            "[]".into(),
            StatusCode::NOT_FOUND,
            "women",
        ),
        (
            "/v1/ingest/women",
            "application/json",
            "[]".into(),
            StatusCode::BAD_REQUEST,
            "no rows",
        ),
    ];
    for (path, ct, body, status, needle) in cases {
        let (s, headers, r) = h.post(path, tok, ct, body.clone(), &[]).await;
        assert_problem(&headers, &r, status, s);
        let detail = r["detail"].as_str().unwrap();
        assert!(
            detail.contains(needle),
            "{path} {ct} {body:?}: detail {detail:?} should mention {needle:?}"
        );
    }
    // Invalid UTF-8 in a CSV declared UTF-8.
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            tok,
            "text/csv",
            b"record_id\n\xff\xfe\n".to_vec(),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::BAD_REQUEST, s);
    assert!(r["detail"].as_str().unwrap().contains("gb18030"));
    assert_eq!(h.count("women").await, 0, "nothing stored by any of these");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let h = Harness::with_config(careledger_gateway::GatewayConfig {
        max_body_bytes: 1024,
        ..Default::default()
    })
    .await;
    let rows: Vec<Value> = (0..50).map(|n| woman(n, "civil_affairs")).collect();
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::PAYLOAD_TOO_LARGE, s);
    assert!(r["detail"].as_str().unwrap().contains("1024"));
}
