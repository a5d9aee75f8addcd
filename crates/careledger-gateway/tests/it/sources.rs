//! A source asks what it already stored: its figures, its receipts, its refused rows, and
//! nothing of another source's.

use axum::http::StatusCode;
use careledger_gateway::Role;
use serde_json::json;

use crate::query::{get, json_of};
use crate::{Harness, VILLAGE, id, ndjson};

#[tokio::test]
async fn a_source_reads_its_own_receipts_and_rejects_and_no_others() {
    let h = Harness::new().await;
    let good: Vec<_> = (0..3u32)
        .map(|n| json!({"record_id": format!("w-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n), "region_code": VILLAGE, "marital_status": "20"}))
        .collect();
    let mut rows = good.clone();
    // A refused row carrying a real ID number (a wrong region): kept in rejects, masked.
    rows.push(json!({"record_id": "w-bad", "record_version": 1, "op": "upsert", "id_number": id(7), "region_code": "999999999999"}));
    let (s, _, receipt) = h
        .post(
            "/v1/ingest/women?atomic=false",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&rows),
            &[("Idempotency-Key", "push-1"), ("Batch-Seq", "1")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{receipt}");
    let batch = receipt["batch_id"].as_str().unwrap().to_string();
    let ca = h.tok("civil_affairs");

    let (s, _, body) = get(&h, ca, "/v1/sources/me", &[]).await;
    let me = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["source"], "civil_affairs");
    assert_eq!(me["last_batch_seq"], 1, "{me}");
    assert_eq!(me["batches"], 1, "{me}");
    assert_eq!(me["rows_accepted"], 3, "{me}");
    assert_eq!(me["rows_rejected"], 1, "{me}");
    assert_eq!(me["last_batch"]["batch_id"], batch.as_str(), "{me}");

    for query in ["idempotency_key=push-1", "batch_seq=1", ""] {
        let (s, _, body) = get(&h, ca, &format!("/v1/batches?{query}"), &[]).await;
        let v = json_of(&body);
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["batches"].as_array().unwrap().len(), 1, "{query}: {v}");
        assert_eq!(v["batches"][0]["batch_id"], batch.as_str());
    }
    let (_, _, body) = get(&h, ca, "/v1/batches?since=2999-01-01T00:00:00Z", &[]).await;
    assert_eq!(json_of(&body)["batches"], json!([]));
    let (s, _, body) = get(&h, ca, "/v1/batches?limit=0", &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", json_of(&body));
    let (s, _, body) = get(&h, ca, "/v1/batches?seq=1", &[]).await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["detail"].as_str().unwrap().contains("seq"), "{v}");

    let (s, _, body) = get(&h, ca, &format!("/v1/batches/{batch}"), &[]).await;
    let r = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["batch_id"], batch.as_str());
    assert_eq!(r["rows_accepted"], 3, "{r}");

    let (s, _, body) = get(&h, ca, &format!("/v1/batches/{batch}/rejects"), &[]).await;
    let r = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{r}");
    let rejects = r["rejects"].as_array().unwrap();
    assert_eq!(rejects.len(), 1, "{r}");
    assert!(
        rejects[0]["codes"]
            .as_str()
            .unwrap()
            .contains("region_code"),
        "{r}"
    );
    let raw = rejects[0]["raw"].as_str().unwrap();
    assert!(!raw.contains(&id(7)), "the ID number is masked: {raw}");

    // Another source sees none of it, and cannot tell the batch exists.
    let health = h.tok("health");
    let (s, _, _) = get(&h, health, &format!("/v1/batches/{batch}"), &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = get(&h, health, &format!("/v1/batches/{batch}/rejects"), &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, _, body) = get(&h, health, "/v1/batches", &[]).await;
    assert_eq!(json_of(&body)["batches"], json!([]));
    let (_, _, body) = get(&h, health, "/v1/sources/me", &[]).await;
    let v = json_of(&body);
    assert_eq!(v["batches"], 0, "{v}");
    assert_eq!(v["last_batch_seq"], json!(null), "{v}");

    // What an operator sees of it: latency by route template and status, rows by table,
    // source and outcome, process figures, the build.
    let (s, _, body) = get(&h, "", "/metrics", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8_lossy(&body).into_owned();
    for line in [
        "careledger_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/ingest/{table}\",method=\"POST\",status=\"200\"} 1",
        "careledger_http_request_duration_seconds_count{route=\"/v1/batches/{id}\",method=\"GET\",status=\"404\"} 1",
        "careledger_ingested_rows_total{table=\"women\",source=\"civil_affairs\",outcome=\"accepted\"} 3",
        "careledger_ingested_rows_total{table=\"women\",source=\"civil_affairs\",outcome=\"rejected\"} 1",
        "careledger_ingested_batches_total{table=\"women\",source=\"civil_affairs\"} 1",
        "careledger_commit_duration_seconds_count 1",
        "careledger_build_info{version=",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "# EOF",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(
        !text.contains(&batch),
        "no batch id (unbounded label) in metrics"
    );

    // Not a source: these routes are not for it.
    let analyst = h.tokens.create("a", &Role::Analyst, None).unwrap();
    let (s, _, body) = get(&h, &analyst, "/v1/sources/me", &[]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{}", json_of(&body));
}
