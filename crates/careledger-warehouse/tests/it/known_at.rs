//! A report run with an old `known_at` gives the same answer before and after later batches
//! land; the derived tables are reused while nothing changed.

use std::collections::HashMap;

use careledger_model::status::RuleParams;
use careledger_warehouse::Warehouse;
use chrono::{DateTime, Utc};

use crate::ledger;

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_frozen_known_at_keeps_its_answer_after_later_batches() {
    let ledger = ledger::two_counties();
    let cut: DateTime<Utc> = "2024-07-01T00:00:00Z".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        careledger_store::Store::open(dir.path().to_str().unwrap())
            .await
            .unwrap(),
    );
    let (early, late): (Vec<_>, Vec<_>) = ledger
        .batches
        .iter()
        .enumerate()
        .partition(|(_, b)| b.ingested_at <= cut);
    for (n, b) in &early {
        ledger::commit(&store, b, *n).await;
    }
    let wh = Warehouse::new(store.clone(), RuleParams::default());
    let frozen = params(&[
        ("as_of", "2024-06-30"),
        ("level", "township"),
        ("known_at", "2024-07-10T00:00:00Z"),
    ]);
    let before = wh.run_report("stock", &frozen).await.unwrap();
    let now_before = wh
        .run_report(
            "stock",
            &params(&[("as_of", "2024-06-30"), ("level", "township")]),
        )
        .await
        .unwrap();

    assert!(!late.is_empty());
    for (n, b) in &late {
        ledger::commit(&store, b, *n).await;
    }
    // A batch landing "now" too (a correction of K's record, ingested today).
    let mut today = late[0].1.clone();
    today.ingested_at = Utc::now();
    today.rows = vec![
        today.rows[0]
            .replace("\"record_version\":1", "\"record_version\":2")
            .replace("2023-12-20", "2023-11-20"),
    ];
    ledger::commit(&store, &today, 999).await;

    let after = wh.run_report("stock", &frozen).await.unwrap();
    let now_after = wh
        .run_report(
            "stock",
            &params(&[("as_of", "2024-06-30"), ("level", "township")]),
        )
        .await
        .unwrap();
    assert_eq!(before, after, "the frozen figure must not move");
    assert_ne!(
        now_before, now_after,
        "the current figure does take the late report"
    );
}

#[tokio::test]
async fn derived_tables_are_reused_until_a_table_changes() {
    let ledger = ledger::two_counties();
    let dir = tempfile::tempdir().unwrap();
    let store = ledger::load(dir.path(), &ledger).await;
    let wh = Warehouse::new(store.clone(), RuleParams::default());
    let first = wh.snapshot(None).await.unwrap();
    assert!(!first.derived_cached);
    let second = wh.snapshot(None).await.unwrap();
    assert!(second.derived_cached, "same versions: reuse");
    assert_eq!(first.derived.episodes, second.derived.episodes);
    ledger::commit(&store, &ledger.batches[0], 500).await;
    let third = wh.snapshot(None).await.unwrap();
    assert!(!third.derived_cached, "a new commit: derive again");
    assert_ne!(first.versions, third.versions);
}
