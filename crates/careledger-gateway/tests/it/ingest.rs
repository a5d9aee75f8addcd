//! Validation through HTTP, atomic and non-atomic batches, rejects, dry runs, source
//! ownership, group commit, and the raw ID's absence from every stored byte.

use std::collections::HashSet;

use arrow_array::{Array, StringArray};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::{Harness, assert_problem, id, ndjson, woman};

fn strings(batches: &[arrow_array::RecordBatch], col: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name(col).unwrap();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..c.len() {
            if !c.is_null(i) {
                out.push(c.value(i).to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn validation_errors_name_row_field_and_code_over_http() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs");
    let mut bad_check = id(3);
    let last = bad_check.pop().unwrap();
    bad_check.push(if last == '1' { '2' } else { '1' });
    let mut rows: Vec<Value> = (0..6).map(|n| woman(n, "civil_affairs")).collect();
    rows[1]["id_number"] = json!(bad_check);
    rows[2]["region_code"] = json!("450123999999");
    rows[3]["ethnicity"] = json!("77");
    rows[4]["record_version"] = json!("two");
    let cases = [
        (2, "id_number", "id_number.check_digit"),
        (3, "region_code", "region_code.unknown"),
        (4, "ethnicity", "ethnicity.unknown_code"),
        (5, "record_version", "record_version.not_integer"),
    ];
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
    let receipt = &r["receipt"];
    assert_eq!(receipt["rows_received"], 6);
    assert_eq!(receipt["rows_rejected"], 4);
    assert_eq!(receipt["error_count"], 4);
    for (row, field, code) in cases {
        let e = receipt["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["code"] == code)
            .unwrap_or_else(|| panic!("{code} missing: {receipt}"));
        assert_eq!(e["row"], row);
        assert_eq!(e["field"], field);
    }
    assert!(
        !r.to_string().contains(&bad_check),
        "errors show only the masked ID"
    );
    assert_eq!(h.count("women").await, 0, "atomic: nothing stored");
}

#[tokio::test]
async fn non_atomic_keeps_valid_rows_and_stores_rejects_with_the_id_masked() {
    let h = Harness::new().await;
    let mut rows: Vec<Value> = (0..3).map(|n| woman(n, "civil_affairs")).collect();
    rows[1]["region_code"] = json!("450123100000"); // a township, not a village
    let (s, _, r) = h
        .post(
            "/v1/ingest/women?atomic=false",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 2);
    assert_eq!(r["rows_rejected"], 1);
    assert_eq!(r["errors"][0]["code"], "region_code.level");
    assert!(r["table_version"].as_u64().is_some());
    assert_eq!(h.count("women").await, 2);

    let rejects = h.rows("rejects").await;
    assert_eq!(rejects.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let raw: Value = serde_json::from_str(&strings(&rejects, "raw")[0]).unwrap();
    let masked = raw["id_number"].as_str().unwrap();
    assert_eq!(masked, careledger_model::mask_id(&id(1)));
    assert!(!strings(&rejects, "raw")[0].contains(&id(1)));
    assert_eq!(strings(&rejects, "codes"), vec!["region_code.level"]);
    assert_eq!(
        strings(&rejects, "batch_id"),
        vec![r["batch_id"].as_str().unwrap().to_string()]
    );

    let batches = h.rows("batches").await;
    assert_eq!(
        strings(&batches, "batch_id"),
        vec![r["batch_id"].as_str().unwrap().to_string()]
    );
}

#[tokio::test]
async fn dry_run_validates_and_stores_nothing() {
    let h = Harness::new().await;
    let before = h.version("women").await;
    let mut rows: Vec<Value> = (0..3).map(|n| woman(n, "civil_affairs")).collect();
    rows[2]["marital_status"] = json!("x");
    let (s, _, r) = h
        .post(
            "/v1/ingest/women?dry_run=true",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["rows_accepted"], 2);
    assert_eq!(r["rows_rejected"], 1);
    assert!(r["table_version"].is_null());
    assert_eq!(h.version("women").await, before);
    assert_eq!(h.count("women").await, 0);
    assert_eq!(h.count("batches").await, 0);
}

#[tokio::test]
async fn a_source_writes_only_its_own_records() {
    let h = Harness::new().await;
    let rows = vec![woman(1, "civil_affairs")];
    // The health department's token naming civil affairs as source.
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("health"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
    assert_eq!(r["receipt"]["errors"][0]["code"], "source.not_token_source");
    // Without a source field, rows are stored under the token's source.
    let mut row = woman(2, "x");
    row.as_object_mut().unwrap().remove("source");
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("health"),
            "application/x-ndjson",
            ndjson(&[row]),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(strings(&h.rows("women").await, "source"), vec!["health"]);
    // Non-source tokens cannot push at all; unknown tokens are 401.
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("analyst"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::FORBIDDEN, s);
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            "cl_not_a_token",
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNAUTHORIZED, s);
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            "",
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNAUTHORIZED, s);
    h.tokens.revoke("health").unwrap();
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("health"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNAUTHORIZED, s);
    assert!(r["detail"].as_str().unwrap().contains("revoked"));
}

#[tokio::test]
async fn concurrent_senders_are_group_committed_and_every_row_lands_once() {
    let h = Harness::with_config(careledger_gateway::GatewayConfig {
        commit: careledger_gateway::CommitConfig {
            window: std::time::Duration::from_millis(150),
            max_rows: 1_000_000,
        },
        ..Default::default()
    })
    .await;
    let before = h.version("services").await;
    let senders = 32u32;
    let per = 50u32;
    let mut tasks = Vec::new();
    for s in 0..senders {
        let app = h.app.clone();
        let tok = h.tok("health").to_string();
        tasks.push(tokio::spawn(async move {
            let rows: Vec<Value> = (0..per)
                .map(|i| {
                    let n = s * per + i;
                    json!({"record_id": format!("s-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n),
                           "measure": "M3", "service_type": "two_cancers_screening", "service_date": "2024-04-01"})
                })
                .collect();
            let key = format!("k-{s}");
            crate::post_to(&app, "/v1/ingest/services", &tok, "application/x-ndjson", ndjson(&rows), &[("idempotency-key", &key)]).await
        }));
    }
    let mut versions = HashSet::new();
    for t in tasks {
        let (s, _, r) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["rows_accepted"], per);
        versions.insert(r["table_version"].as_u64().unwrap());
    }
    let commits = h.version("services").await - before;
    assert!(
        commits < u64::from(senders),
        "group commit: {commits} commits for {senders} requests"
    );
    assert_eq!(
        commits as usize,
        versions.len(),
        "every receipt names one of the commits"
    );
    let ids = strings(&h.rows("services").await, "record_id");
    assert_eq!(ids.len(), (senders * per) as usize);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no row twice"
    );
    println!("group commit: {senders} requests in {commits} commits");
}

/// Every file under the store: neither its bytes nor any decoded string value holds a raw ID.
#[tokio::test]
async fn the_raw_id_number_appears_in_no_stored_file() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs");
    let rows: Vec<Value> = (0..20).map(|n| woman(n, "civil_affairs")).collect();
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(&rows),
            &[("idempotency-key", "scan-1")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let mut bad = rows.clone();
    bad[0]["region_code"] = json!("999999999999");
    let (s, _, _) = h
        .post(
            "/v1/ingest/women?atomic=false",
            tok,
            "application/x-ndjson",
            ndjson(&bad),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<String> = (0..20).map(id).collect();
    let mut files = 0;
    let mut parquet_files = 0;
    for entry in walk(h.dir.path()) {
        files += 1;
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for raw in &ids {
            assert!(
                !text.contains(raw.as_str()),
                "{} holds a raw ID",
                entry.display()
            );
        }
        if entry.extension().is_some_and(|e| e == "parquet") {
            parquet_files += 1;
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&entry).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            for b in reader {
                let b = b.unwrap();
                for col in b.columns() {
                    if let Some(c) = col.as_any().downcast_ref::<StringArray>() {
                        for v in c.iter().flatten() {
                            assert!(
                                !ids.iter().any(|raw| v.contains(raw.as_str())),
                                "decoded value {v:?} in {} holds a raw ID",
                                entry.display()
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(
        parquet_files >= 3,
        "women, rejects and batches files were scanned ({files} files)"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
