//! Region scope beyond the person tables: a scoped token sees only the receipts of batches
//! holding its women, never `rejects`, source health without province totals, and reports only
//! at its own level or below.

use std::collections::HashMap;

use axum::http::StatusCode;
use careledger_gateway::{GatewayConfig, Role};
use careledger_model::mask_id;
use serde_json::{Value, json};

use crate::query::{get, json_of, seeded, sql};
use crate::{Harness, assert_problem, id, ndjson};

/// The cells of an answer's rows by column name.
fn rows_by_name(v: &Value) -> Vec<HashMap<String, Value>> {
    let names: Vec<String> = v["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            names
                .iter()
                .cloned()
                .zip(r.as_array().unwrap().iter().cloned())
                .collect()
        })
        .collect()
}

async fn push(h: &Harness, token: &str, table: &str, rows: &[Value], extra: &[(&str, &str)]) {
    let (s, _, r) = h
        .post(
            &format!("/v1/ingest/{table}?atomic=false"),
            token,
            "application/x-ndjson",
            ndjson(rows),
            extra,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
}

fn service(n: u32, measure: &str) -> Value {
    json!({"record_id": format!("hs-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n),
           "measure": measure, "service_type": "home_visit", "service_date": "2024-03-01"})
}

#[tokio::test]
async fn a_scoped_token_sees_the_receipts_of_its_women_only_and_never_rejects() {
    let (h, mut t) = seeded(GatewayConfig::default()).await;
    // Three civil-affairs batches hold 8 women of 隆安 (450123) and 3 of 上林 each. Health
    // sends one batch about 上林 women only, with a row it rejects, then one about a 隆安
    // woman, skipping a Batch-Seq.
    let health = h.tok("health").to_string();
    push(
        &h,
        &health,
        "services",
        &[service(8, "M3"), service(9, "M99")],
        &[("batch-seq", "1"), ("idempotency-key", "shanglin-only")],
    )
    .await;
    push(
        &h,
        &health,
        "services",
        &[service(0, "M3")],
        &[("batch-seq", "3")],
    )
    .await;
    t.insert(
        "county-admin",
        h.tokens
            .create("county-admin", &Role::Admin, Some("450123"))
            .unwrap(),
    );

    let q = "SELECT * FROM batches ORDER BY table_name, source";
    let (s, _, body) = sql(&h, &t["admin"], q, "json").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&body)["row_count"], 5);
    assert!(
        String::from_utf8_lossy(&body).contains("shanglin-only"),
        "the unscoped admin sees every receipt"
    );

    for scoped in ["county-analyst", "county-admin"] {
        let (s, _, body) = sql(&h, &t[scoped], q, "json").await;
        let v = json_of(&body);
        assert_eq!(s, StatusCode::OK, "{v}");
        let rows = rows_by_name(&v);
        let seen: Vec<(&str, &str, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r["table_name"].as_str().unwrap(),
                    r["source"].as_str().unwrap(),
                    r["rows_accepted"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("life_events", "civil_affairs", 8),
                ("services", "civil_affairs", 8),
                ("services", "health", 1),
                ("women", "civil_affairs", 8),
            ],
            "{scoped}: the batch about 上林 alone is not there; the others count 隆安's rows"
        );
        for r in &rows {
            for col in [
                "receipt",
                "rows_received",
                "rows_rejected",
                "idempotency_key",
                "batch_seq",
                "table_version",
            ] {
                assert!(r[col].is_null(), "{scoped}: {col} in {r:?}");
            }
        }
        let text = String::from_utf8_lossy(&body);
        for n in 8..11 {
            assert!(!text.contains(&mask_id(&id(n))), "{scoped}: {text}");
        }
        assert!(!text.contains("shanglin-only"), "{text}");

        // No rejects, even for an admin with a scope; `access` says why.
        let (s, headers, body) = sql(&h, &t[scoped], "SELECT * FROM rejects", "json").await;
        assert_problem(&headers, &json_of(&body), StatusCode::BAD_REQUEST, s);
        let (_, _, body) = sql(&h, &t[scoped], "SELECT scope, rejects FROM access", "json").await;
        assert_eq!(json_of(&body)["rows"], json!([["450123", false]]));
        let (_, _, body) = get(&h, &t[scoped], "/v1/tables", &[]).await;
        let tables = json_of(&body);
        let names: Vec<&str> = tables["tables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"access") && !names.contains(&"rejects"),
            "{names:?}"
        );
    }
    let (s, _, body) = sql(&h, &t["admin"], "SELECT count(*) FROM rejects", "json").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json_of(&body)["rows"][0][0], 1);
    let (_, _, body) = sql(&h, &t["admin"], "SELECT scope, rejects FROM access", "json").await;
    assert_eq!(json_of(&body)["rows"], json!([[null, true]]));

    // Source health: the scoped answer counts its own batches and rows, and has no figure
    // for rejected rows or sequence gaps (which cannot be split by region); the whole one is
    // exact, zeros included.
    let health_row = |v: &Value, source: &str| {
        rows_by_name(v)
            .into_iter()
            .find(|r| r["source"] == source)
            .unwrap_or_else(|| panic!("{source} in {v}"))
    };
    let (s, _, body) = get(&h, &t["county-analyst"], "/v1/reports/source_health", &[]).await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = health_row(&v, "health");
    assert_eq!(
        (r["batches"].clone(), r["rows_accepted"].clone()),
        (json!(1), json!(1))
    );
    assert!(
        r["rows_rejected"].is_null() && r["seq_gaps"].is_null(),
        "{r:?}"
    );
    let r = health_row(&v, "civil_affairs");
    assert_eq!(r["rows_accepted"], 24);
    assert!(
        r["rows_rejected"].is_null() && r["seq_gaps"].is_null(),
        "{r:?}"
    );
    let r = health_row(&v, "justice");
    assert!(r["rows_rejected"].is_null(), "no figure, not a zero: {r:?}");

    let (_, _, body) = get(&h, &t["admin"], "/v1/reports/source_health", &[]).await;
    let v = json_of(&body);
    let r = health_row(&v, "health");
    assert_eq!(
        (
            &r["batches"],
            &r["rows_accepted"],
            &r["rows_rejected"],
            &r["seq_gaps"]
        ),
        (&json!(2), &json!(2), &json!(1), &json!(1))
    );
    let r = health_row(&v, "civil_affairs");
    assert_eq!(
        (&r["rows_accepted"], &r["rows_rejected"], &r["seq_gaps"]),
        (&json!(33), &json!(0), &json!(0))
    );
}

#[tokio::test]
async fn a_scoped_token_asks_at_its_own_level_or_below() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    // Registered: 6 of the 8 隆安 women and 1 of the 3 上林 women. All 11 are in the ledger on
    // 2024-06-30, so 2 eligible-not-registered in each county, none registered-not-eligible.
    let registrations: Vec<Value> = [0u32, 1, 2, 3, 4, 5, 8]
        .iter()
        .map(|&n| {
            let village = if n < 8 { crate::query::LONGAN } else { crate::query::SHANGLIN };
            json!({"record_id": format!("r-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n),
                   "action": "registered", "effective_date": "2023-08-01", "region_code": village})
        })
        .collect();
    push(
        &h,
        h.tok("civil_affairs"),
        "registrations",
        &registrations,
        &[],
    )
    .await;

    let report = |level: &str| {
        format!("/v1/reports/registration_discrepancies?as_of=2024-06-30&level={level}")
    };
    let figures = |v: &Value| -> Vec<(String, i64, i64)> {
        rows_by_name(v)
            .iter()
            .map(|r| {
                (
                    r["region_code"].as_str().unwrap().to_string(),
                    r["eligible_not_registered"].as_i64().unwrap(),
                    r["registered_not_eligible"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let scoped = &t["county-analyst"];

    let (s, _, body) = get(&h, scoped, &report("county"), &[]).await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(figures(&v), vec![("450123000000".to_string(), 2, 0)]);

    for path in [
        report("province"),
        report("city"),
        "/v1/reports/stock?as_of=2024-06-30&level=province".to_string(),
        "/v1/reports/coverage_by_measure?level=city".to_string(),
    ] {
        let (s, headers, body) = get(&h, scoped, &path, &[]).await;
        let v = json_of(&body);
        assert_problem(&headers, &v, StatusCode::BAD_REQUEST, s);
        assert!(
            v["type"].as_str().unwrap().ends_with("outside-scope"),
            "{path}: {v}"
        );
        let detail = v["detail"].as_str().unwrap();
        assert!(
            detail.contains("450123") && detail.contains("county, township, village"),
            "{path}: {detail}"
        );
    }
    // Below its level: only its own regions, adding up to its county.
    let (s, _, body) = get(&h, scoped, &report("village"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let villages = figures(&json_of(&body));
    assert!(
        villages.iter().all(|(c, _, _)| c.starts_with("450123")),
        "{villages:?}"
    );
    assert_eq!(villages.iter().map(|r| r.1).sum::<i64>(), 2);

    // Unscoped: the province is the sum over its counties.
    let (_, _, body) = get(&h, &t["admin"], &report("county"), &[]).await;
    let counties = figures(&json_of(&body));
    assert_eq!(
        counties,
        vec![
            ("450123000000".to_string(), 2, 0),
            ("450125000000".to_string(), 2, 0)
        ]
    );
    let (s, _, body) = get(&h, &t["admin"], &report("province"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        figures(&json_of(&body)),
        vec![("450000000000".to_string(), 4, 0)]
    );
}
