//! What an answer reflects: the derived ledger is maintained by the deriver task beside the
//! queries; an answer says which cycle and commit time it reflects (headers, JSON, Arrow
//! metadata), and a request can wait, bounded, for a batch it was acknowledged.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use careledger_gateway::{CommitConfig, GatewayConfig, Role};
use serde_json::json;

use crate::query::{call, get, json_of};
use crate::{Harness, VILLAGE, id, ndjson};

async fn harness() -> (Harness, String) {
    let h = Harness::with_config_as_is(GatewayConfig {
        commit: CommitConfig {
            window: Duration::from_millis(20),
            max_rows: 100_000,
            receipt_cache: careledger_gateway::commit::RECEIPT_CACHE,
        },
        ..GatewayConfig::default()
    })
    .await;
    assert!(!h.state.config.query.read_your_writes);
    let admin = h.tokens.create("admin", &Role::Admin, None).unwrap();
    (h, admin)
}

async fn push(h: &Harness, table: &str, rows: &[serde_json::Value]) -> serde_json::Value {
    let (s, _, r) = h
        .post(
            &format!("/v1/ingest/{table}"),
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(rows),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    r
}

#[tokio::test]
async fn a_report_can_wait_for_an_acknowledged_batch_and_says_what_it_reflects() {
    let (h, admin) = harness().await;
    let women: Vec<_> = (0..5u32)
        .map(|n| json!({"record_id": format!("w-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n), "region_code": VILLAGE, "marital_status": "20"}))
        .collect();
    push(&h, "women", &women).await;
    let events: Vec<_> = (0..5u32)
        .map(|n| json!({"record_id": format!("e-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n), "event_type": "spouse_departed",
                        "event_date": "2023-01-01", "destination": "out_of_province", "work_type": "labour"}))
        .collect();
    let receipt = push(&h, "life_events", &events).await;
    let batch = receipt["batch_id"].as_str().unwrap().to_string();
    let version = receipt["table_version"].as_u64().unwrap();

    let path = format!("/v1/reports/stock?as_of=2024-06-30&level=county&wait_for={batch}");
    let (s, headers, body) = get(&h, &admin, &path, &[]).await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["rows"][0][v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c["name"] == "women")
            .unwrap()],
        5,
        "{v}"
    );
    let cycle: i64 = headers["careledger-derived-cycle"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cycle >= 1);
    let at = headers["careledger-reflects-ingested-at"].to_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
    assert!(
        v["reflects"]["table_versions"]["life_events"]
            .as_u64()
            .unwrap()
            >= version,
        "{v}"
    );
    assert_eq!(v["reflects"]["cycle"], cycle);

    // A batch id no receipt gave: named.
    let (s, _, body) = get(
        &h,
        &admin,
        "/v1/reports/stock?as_of=2024-06-30&level=county&wait_for=no-such-batch",
        &[],
    )
    .await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(
        v["type"].as_str().unwrap().ends_with("unknown-batch"),
        "{v}"
    );

    // In Arrow, the schema metadata says it.
    let (s, _, body) = get(
        &h,
        &admin,
        "/v1/reports/stock?as_of=2024-06-30&level=county&format=arrow",
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let reader =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body.to_vec()), None)
            .unwrap();
    let meta = reader.schema().metadata()["careledger.reflects"].clone();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["cycle"], cycle, "{meta}");

    // SQL too: headers and JSON.
    let req = Request::post("/v1/sql?format=json&wait_for=latest")
        .header("authorization", format!("Bearer {admin}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"sql": "SELECT count(*) AS n FROM status_episodes"}).to_string(),
        ))
        .unwrap();
    let (s, headers, body) = call(&h, req).await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(headers.contains_key("careledger-derived-cycle"));
    assert_eq!(v["rows"][0][0], 5, "{v}");
    assert!(v["reflects"]["ingested_at"].is_string(), "{v}");

    // The deriver's progress is in /metrics.
    let (s, _, body) = get(&h, &admin, "/metrics", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    let cycles = text
        .lines()
        .find_map(|l| l.strip_prefix("careledger_derive_cycles_total "))
        .unwrap();
    assert!(cycles.parse::<u64>().unwrap() >= 1, "{text}");
    assert!(text.contains("careledger_derive_lag_seconds "), "{text}");
    assert!(
        text.contains("careledger_derive_pending_commits "),
        "{text}"
    );
}

#[tokio::test]
async fn the_derived_ledger_follows_commits_without_anyone_asking() {
    let (h, admin) = harness().await;
    let women: Vec<_> = (0..3u32)
        .map(|n| json!({"record_id": format!("w-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n), "region_code": VILLAGE, "marital_status": "20"}))
        .collect();
    push(&h, "women", &women).await;
    // No request waits: the deriver task picks the commit up on its own.
    let reflected = async {
        loop {
            let req = Request::post("/v1/sql?format=json")
                .header("authorization", format!("Bearer {admin}"))
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"sql": "SELECT count(*) AS n FROM people"}).to_string(),
                ))
                .unwrap();
            let (s, headers, body) = call(&h, req).await;
            assert_eq!(s, StatusCode::OK);
            assert!(headers.contains_key("careledger-derived-cycle"));
            let v = json_of(&body);
            if v["rows"][0][0] == 3 {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let v = tokio::time::timeout(Duration::from_secs(60), reflected)
        .await
        .expect("the deriver reflects the commit");
    assert!(
        v["reflects"]["table_versions"]["women"].as_u64().unwrap() >= 1,
        "{v}"
    );
}
