//! Retried Idempotency-Keys and replayed Batch-Seqs store nothing, also after a restart.

use axum::http::StatusCode;
use serde_json::Value;

use crate::{Harness, assert_problem, ndjson, post_to, woman};

#[tokio::test]
async fn a_retried_idempotency_key_returns_the_original_receipt_and_stores_nothing() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs");
    let rows: Vec<Value> = (0..4).map(|n| woman(n, "civil_affairs")).collect();
    let hdr = [("idempotency-key", "push-2024-05-01-a")];
    let (s, _, first) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(&rows),
            &hdr,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["duplicate"], false);
    let (s, _, again) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(&rows),
            &hdr,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["batch_id"], first["batch_id"]);
    assert_eq!(again["table_version"], first["table_version"]);
    assert_eq!(h.count("women").await, 4);

    // Keys are per source: the same key from another source is a different batch.
    let mut other: Vec<Value> = rows.clone();
    for r in &mut other {
        r["source"] = "health".into();
    }
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("health"),
            "application/x-ndjson",
            ndjson(&other),
            &hdr,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["duplicate"], false);
    assert_eq!(h.count("women").await, 8);

    // After a restart (a new gateway on the same directory) the key is still known.
    let (_state, app) = h.reopen().await;
    let (s, _, r) = post_to(
        &app,
        "/v1/ingest/women",
        tok,
        "application/x-ndjson",
        ndjson(&rows),
        &hdr,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["duplicate"], true);
    assert_eq!(r["batch_id"], first["batch_id"]);
    assert_eq!(h.count("women").await, 8);
}

#[tokio::test]
async fn a_replayed_batch_seq_is_refused_and_a_gap_is_reported() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs");
    let send = |n: u32, seq: &'static str| {
        let rows = vec![woman(n, "civil_affairs")];
        let app = h.app.clone();
        let tok = tok.to_string();
        async move {
            post_to(
                &app,
                "/v1/ingest/women",
                &tok,
                "application/x-ndjson",
                ndjson(&rows),
                &[("batch-seq", seq)],
            )
            .await
        }
    };
    let (s, _, r) = send(1, "1").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert!(r["seq_gap"].is_null());
    let (s, headers, r) = send(2, "1").await;
    assert_problem(&headers, &r, StatusCode::CONFLICT, s);
    assert_eq!(r["duplicate"], true);
    let (s, _, r) = send(3, "4").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["seq_gap"]["expected"], 2);
    assert_eq!(r["seq_gap"]["got"], 4);
    assert_eq!(h.count("women").await, 2);

    // After a restart the sequence comes back from the Delta transactions.
    let (_state, app) = h.reopen().await;
    let rows = vec![woman(9, "civil_affairs")];
    for seq in ["3", "4"] {
        let (s, headers, r) = post_to(
            &app,
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(&rows),
            &[("batch-seq", seq)],
        )
        .await;
        assert_problem(&headers, &r, StatusCode::CONFLICT, s);
    }
    let (s, _, r) = post_to(
        &app,
        "/v1/ingest/women",
        tok,
        "application/x-ndjson",
        ndjson(&rows),
        &[("batch-seq", "5")],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(h.count("women").await, 3);
}

#[tokio::test]
async fn a_second_gateway_process_on_the_same_store_refuses_a_committed_key() {
    // Two gateways opened on one directory; the second did not see the first's commit at
    // start-up, so only the Delta transaction in the table can tell it.
    let h = Harness::new().await;
    let (_state2, app2) = h.reopen().await;
    let tok = h.tok("civil_affairs");
    let rows = vec![woman(1, "civil_affairs")];
    let hdr = [("idempotency-key", "shared-key")];
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(&rows),
            &hdr,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, headers, r) = post_to(
        &app2,
        "/v1/ingest/women",
        tok,
        "application/x-ndjson",
        ndjson(&rows),
        &hdr,
    )
    .await;
    assert_problem(&headers, &r, StatusCode::CONFLICT, s);
    assert_eq!(r["duplicate"], true);
    assert_eq!(h.count("women").await, 1);
}

/// A request refused for a bad parameter holds nothing: its key is free for the retry.
#[tokio::test]
async fn a_refused_parameter_does_not_hold_the_idempotency_key() {
    let h = Harness::new().await;
    let rows = ndjson(&[woman(1, "civil_affairs")]);
    let (s, _, r) = h
        .post(
            "/v1/ingest/women?errors=ALL",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            rows.clone(),
            &[("idempotency-key", "k-param"), ("batch-seq", "1")],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("errors=ALL"), "{r}");
    let (s, _, r) = h
        .post(
            "/v1/ingest/women?errors=all",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            rows,
            &[("idempotency-key", "k-param"), ("batch-seq", "1")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["duplicate"], false, "{r}");
    assert_eq!(h.count("women").await, 1);
}

/// Receipts held in memory are bounded: with room for two, the first of five keyed batches is
/// answered from its commit when retried, equal to its original receipt, in this process and
/// after a restart.
#[tokio::test]
async fn receipts_beyond_the_memory_bound_are_read_back_from_their_commits() {
    let h = Harness::with_config(careledger_gateway::GatewayConfig {
        commit: careledger_gateway::CommitConfig {
            receipt_cache: 2,
            ..careledger_gateway::CommitConfig::default()
        },
        ..careledger_gateway::GatewayConfig::default()
    })
    .await;
    let tok = h.tok("civil_affairs");
    let first = push_keyed(&h, "bounded", 5, 3).await;
    assert!(h.state.committer.dedup.cached_receipts() <= 2);
    let (key, rows, original) = &first[0];
    let (s, _, again) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(rows),
            &[("idempotency-key", key)],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["duplicate"], true);
    for field in [
        "batch_id",
        "table_version",
        "rows_accepted",
        "received_at",
        "committed_at",
        "commit_group",
    ] {
        assert_eq!(
            again[field], original[field],
            "{field}: {again} vs {original}"
        );
    }
    assert!(h.state.committer.dedup.cached_receipts() <= 2);
    assert_eq!(h.count("women").await, 15, "nothing stored twice");

    // A restarted gateway holds at most two receipts too, and finds the others in the store.
    let (_, app) = h.reopen().await;
    for (key, rows, original) in &first {
        let (s, _, again) = post_to(
            &app,
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(rows),
            &[("idempotency-key", key)],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{again}");
        assert_eq!(
            (
                &again["duplicate"],
                &again["batch_id"],
                &again["table_version"]
            ),
            (
                &Value::Bool(true),
                &original["batch_id"],
                &original["table_version"]
            ),
            "{key}"
        );
    }
    assert_eq!(h.count("women").await, 15);
}

/// Background compaction keeps file counts bounded while keeping every row once, every
/// receipt (a retried key still gets its original) and every `known_at` answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_compaction_bounds_files_and_keeps_rows_receipts_and_known_at() {
    let h = Harness::with_config(careledger_gateway::GatewayConfig {
        compaction: careledger_gateway::compact_task::CompactionConfig {
            enabled: true,
            max_files: 4,
            interval: std::time::Duration::from_millis(100),
            ..Default::default()
        },
        ..careledger_gateway::GatewayConfig::default()
    })
    .await;
    let tok = h.tok("civil_affairs");
    let mut receipts = Vec::new();
    for b in 0..12u32 {
        let rows: Vec<Value> = (b * 2..b * 2 + 2)
            .map(|n| woman(n, "civil_affairs"))
            .collect();
        let key = format!("compact-{b}");
        let (s, _, r) = h
            .post(
                "/v1/ingest/women",
                tok,
                "application/x-ndjson",
                ndjson(&rows),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        receipts.push((key, rows, r));
    }
    let analyst = h.tok("analyst");
    let known_at = receipts[5].2["committed_at"].as_str().unwrap().to_string();
    let count_at = |known_at: String| {
        let body =
            serde_json::json!({"sql": "SELECT count(*) AS n FROM women", "known_at": known_at})
                .to_string();
        post_to(&h.app, "/v1/sql", analyst, "application/json", body, &[])
    };
    let (s, _, before) = count_at(known_at.clone()).await;
    assert_eq!(s, StatusCode::OK, "{before}");
    assert_eq!(
        before["rows"][0][0], 12,
        "six batches of two were known then"
    );

    let mut waited = 0;
    loop {
        let files = h.state.store.file_count("women").await.unwrap();
        if files <= 4 {
            break;
        }
        assert!(waited < 100, "women still has {files} files after 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(h.count("women").await, 24, "every row once");
    let (s, _, after) = count_at(known_at).await;
    assert_eq!(
        (s, &after["rows"]),
        (StatusCode::OK, &before["rows"]),
        "known_at answers are unchanged"
    );
    let (key, rows, original) = &receipts[0];
    let (s, _, again) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(rows),
            &[("idempotency-key", key)],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(
        (&again["duplicate"], &again["batch_id"]),
        (&Value::Bool(true), &original["batch_id"])
    );
    assert_eq!(h.count("women").await, 24);
}

/// The `batches` rows are written after the answer; a crash in between loses none of them. Here
/// the table is emptied behind the server's back (as if every row had been lost), and the next
/// start restores each receipt once, from the data commits' metadata, equal to what the
/// senders were given.
#[tokio::test]
async fn receipts_missing_from_the_batches_table_are_restored_at_start() {
    let h = Harness::new().await;
    let answered: Vec<Value> = push_keyed(&h, "restore", 3, 2)
        .await
        .into_iter()
        .map(|(_, _, r)| r)
        .collect();
    assert_eq!(h.count("batches").await, 3);
    h.state.committer.batches.drain().await;
    h.state
        .store
        .overwrite(
            careledger_store::BATCHES,
            careledger_store::Append::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        crate::read_table(&h.state.store, "batches")
            .await
            .iter()
            .map(arrow_array::RecordBatch::num_rows)
            .sum::<usize>(),
        0
    );

    let (state, _) = h.reopen().await;
    let stored = crate::read_table(&state.store, "batches").await;
    let ids = strings(&stored, "batch_id");
    let versions = ints(&stored, "table_version");
    assert_eq!(ids.len(), 3, "each receipt restored once: {ids:?}");
    for r in &answered {
        let i = ids
            .iter()
            .position(|id| id == r["batch_id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("receipt {} not restored", r["batch_id"]));
        assert_eq!(Some(versions[i]), r["table_version"].as_i64());
    }
    // A second start finds nothing missing.
    drop(state);
    let (state, _) = h.reopen().await;
    assert_eq!(
        crate::read_table(&state.store, "batches")
            .await
            .iter()
            .map(arrow_array::RecordBatch::num_rows)
            .sum::<usize>(),
        3
    );
}

fn strings(batches: &[arrow_array::RecordBatch], column: &str) -> Vec<String> {
    use arrow_array::Array;
    let mut out = Vec::new();
    for b in batches {
        let c = arrow_array::cast::AsArray::as_string::<i32>(b.column_by_name(column).unwrap());
        for i in 0..c.len() {
            out.push(c.value(i).to_string());
        }
    }
    out
}

fn ints(batches: &[arrow_array::RecordBatch], column: &str) -> Vec<i64> {
    let mut out = Vec::new();
    for b in batches {
        let c = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::Int64Type>(
            b.column_by_name(column).unwrap(),
        );
        for i in 0..c.len() {
            out.push(c.value(i));
        }
    }
    out
}

/// `batches` keyed batches of `per` women each from civil affairs (keys `<prefix>-<n>`), each
/// answered 200: (key, rows, receipt).
async fn push_keyed(
    h: &Harness,
    prefix: &str,
    batches: u32,
    per: u32,
) -> Vec<(String, Vec<Value>, Value)> {
    let mut out = Vec::new();
    for b in 0..batches {
        let rows: Vec<Value> = (b * per..(b + 1) * per)
            .map(|n| woman(n, "civil_affairs"))
            .collect();
        let key = format!("{prefix}-{b}");
        let (s, _, r) = h
            .post(
                "/v1/ingest/women",
                h.tok("civil_affairs"),
                "application/x-ndjson",
                ndjson(&rows),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        out.push((key, rows, r));
    }
    out
}
