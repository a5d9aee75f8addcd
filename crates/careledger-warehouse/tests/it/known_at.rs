//! A report run with an old `known_at` gives the same answer before and after later batches
//! land, and after the store is maintained and the derived ledger compacted or rebuilt; a
//! snapshot reads what the deriver stored.

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
    wh.catch_up().await.unwrap();
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
    wh.catch_up().await.unwrap();

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
    // Maintenance rewrites files, never answers: Delta OPTIMIZE and vacuum of every table, the
    // derived ledger compacted, then rebuilt from scratch.
    for (name, _) in careledger_store::all_tables() {
        store.compact(name, 128 << 20).await.unwrap();
        store
            .vacuum(name, std::time::Duration::ZERO, true)
            .await
            .unwrap();
    }
    wh.deriver().compact().await.unwrap();
    assert_eq!(
        wh.run_report("stock", &frozen).await.unwrap(),
        before,
        "after compaction"
    );
    wh.deriver().rebuild().await.unwrap();
    assert_eq!(
        wh.run_report("stock", &frozen).await.unwrap(),
        before,
        "after a rebuild"
    );
    let now = params(&[("as_of", "2024-06-30"), ("level", "township")]);
    assert_eq!(wh.run_report("stock", &now).await.unwrap(), now_after);
}

#[tokio::test]
async fn a_snapshot_reads_what_the_deriver_stored_and_says_what_it_reflects() {
    let ledger = ledger::two_counties();
    let dir = tempfile::tempdir().unwrap();
    let store = ledger::load(dir.path(), &ledger).await;
    let wh = Warehouse::new(store.clone(), RuleParams::default());
    let first = wh.snapshot(None).await.unwrap();
    assert!(first.derived.cycle >= 1, "{:?}", first.derived);
    for (t, v) in &first.derived.sources {
        assert_eq!(first.versions[t], *v, "{t}: every commit is reflected");
    }
    let episodes = |snap: careledger_warehouse::Snapshot| async move {
        let b = snap
            .ctx
            .sql("SELECT count(*) FROM status_episodes")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        arrow_cast::display::array_value_to_string(b[0].column(0), 0).unwrap()
    };
    let n = episodes(first).await;
    // A commit the deriver has not read: the snapshot still shows the last cycle, and says so.
    ledger::commit(&store, &ledger.batches[0], 500).await;
    let second = wh.snapshot(None).await.unwrap();
    let t = ledger.batches[0].table.as_str();
    assert!(
        !second.derived.covers(t, second.versions[t]),
        "{t} version {} is not reflected yet: {:?}",
        second.versions[t],
        second.derived
    );
    let cycle = second.derived.cycle;
    assert_eq!(episodes(second).await, n);
    let stats = wh.catch_up().await.unwrap();
    assert_eq!(stats.len(), 1, "one cycle for one commit");
    assert!(stats[0].women >= 1 && !stats[0].rebuild, "{stats:?}");
    let third = wh.snapshot(None).await.unwrap();
    assert_eq!(third.derived.cycle, cycle + 1);
    for (t, v) in &third.derived.sources {
        assert_eq!(third.versions[t], *v, "{t}");
    }
    // The same batch again (same record versions): the same ledger.
    assert_eq!(episodes(third).await, n);
}

/// A reused snapshot is never older than what this process committed: every batch and every
/// deriver cycle moves a table it read, so the next request builds a new one. Leaving out the
/// version check makes this fail (the first answer would come back for an hour).
#[tokio::test]
async fn a_reused_snapshot_gives_way_to_every_commit() {
    let ledger = ledger::two_counties();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        careledger_store::Store::open(dir.path().to_str().unwrap())
            .await
            .unwrap(),
    );
    let wh = Warehouse::new(store.clone(), RuleParams::default())
        .with_snapshot_reuse(std::time::Duration::from_secs(3600));
    let count = |sql: &'static str| {
        let wh = &wh;
        async move {
            let snap = wh.snapshot(None).await.unwrap();
            let batches = snap.ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let n = arrow_cast::display::array_value_to_string(batches[0].column(0), 0).unwrap();
            (n, snap.versions.clone(), snap.derived.cycle)
        }
    };
    let mut seen = Vec::new();
    for (n, b) in ledger.batches.iter().enumerate() {
        ledger::commit(&store, b, n).await;
        // Raw rows show at once; the derived ones after the deriver's cycle.
        let (raw, versions, _) = count("SELECT count(*) FROM raw_women").await;
        wh.catch_up().await.unwrap();
        let (episodes, _, cycle) = count("SELECT count(*) FROM status_episodes").await;
        // Unchanged since: the same snapshot serves (same versions, same answer).
        let (again, versions_again, cycle_again) =
            count("SELECT count(*) FROM status_episodes").await;
        assert_eq!((&again, cycle_again), (&episodes, cycle));
        assert!(versions_again.values().sum::<u64>() >= versions.values().sum::<u64>());
        seen.push((raw, versions.values().sum::<u64>(), episodes));
    }
    // Each answer is what a fresh warehouse (no reuse) gives at the end, for the last one.
    let fresh = Warehouse::new(store.clone(), RuleParams::default());
    let snap = fresh.snapshot(None).await.unwrap();
    let last = |sql: &str| {
        let ctx = snap.ctx.clone();
        let sql = sql.to_string();
        async move {
            let b = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            arrow_cast::display::array_value_to_string(b[0].column(0), 0).unwrap()
        }
    };
    let (raw, version, episodes) = seen.last().unwrap().clone();
    assert_eq!(raw, last("SELECT count(*) FROM raw_women").await);
    assert_eq!(episodes, last("SELECT count(*) FROM status_episodes").await);
    assert_eq!(version, snap.versions.values().sum::<u64>());
    // And the answers moved as batches landed.
    let distinct: std::collections::BTreeSet<_> = seen.iter().map(|s| s.1).collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "every batch a new version: {seen:?}"
    );
    let episodes: std::collections::BTreeSet<_> = seen.iter().map(|s| &s.2).collect();
    assert!(episodes.len() > 3, "{seen:?}");
}

/// A service counts as inside the ledger (`services.in_episode`) only from the instant her
/// episode covering its date is known: pushed before her husband's departure was reported, it
/// is outside as known until then and inside after, at every instant the same as the join
/// with `status_episodes` it replaces.
#[tokio::test]
async fn a_service_is_in_an_episode_from_when_the_episode_is_known() {
    use careledger_model::{ResidentId, Table};
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        careledger_store::Store::open(dir.path().to_str().unwrap())
            .await
            .unwrap(),
    );
    let birth = chrono::NaiveDate::from_ymd_opt(1985, 3, 1).unwrap();
    let idn = ResidentId::synthesize("450123", birth, 2)
        .as_str()
        .to_string();
    let at = |s: &str| -> DateTime<Utc> { s.parse().unwrap() };
    let batches = [
        (
            Table::Women,
            "2024-01-02T00:00:00Z",
            format!(
                r#"{{"record_id":"w-1","record_version":1,"op":"upsert","id_number":"{idn}","region_code":"450123100201","ethnicity":"08","marital_status":"20"}}"#
            ),
        ),
        (
            Table::Services,
            "2024-01-03T00:00:00Z",
            format!(
                r#"{{"record_id":"s-1","record_version":1,"op":"upsert","id_number":"{idn}","measure":"M1","service_type":"dibao_enrolment","service_date":"2024-03-01","amount_yuan":"465.00"}}"#
            ),
        ),
        (
            Table::LifeEvents,
            "2024-01-10T00:00:00Z",
            format!(
                r#"{{"record_id":"e-1","record_version":1,"op":"upsert","id_number":"{idn}","event_type":"spouse_departed","event_date":"2023-01-01","destination":"out_of_province","work_type":"labour"}}"#
            ),
        ),
    ];
    for (n, (table, ingested_at, row)) in batches.into_iter().enumerate() {
        let b = ledger::Batch {
            table,
            source: "civil_affairs".into(),
            ingested_at: at(ingested_at),
            rows: vec![row],
        };
        ledger::commit(&store, &b, n).await;
    }
    let wh = Warehouse::new(store.clone(), RuleParams::default());
    wh.catch_up().await.unwrap();
    let cases = [
        (Some(at("2024-01-05T00:00:00Z")), 0),
        (Some(at("2024-01-11T00:00:00Z")), 1),
        (None, 1),
    ];
    for (known_at, inside) in cases {
        let (rows, in_episode, wrong) =
            crate::incremental::in_episode_against_the_join(&wh, known_at).await;
        assert_eq!(
            (rows, in_episode, wrong),
            (1, inside, 0),
            "as known at {known_at:?}"
        );
    }
    // Coverage counts her as served only as known after the departure was reported.
    let served = |known_at: &'static str| {
        let wh = &wh;
        async move {
            let p = params(&[
                ("from", "2024-01-01"),
                ("to", "2025-01-01"),
                ("level", "province"),
                ("measure", "M1"),
                ("known_at", known_at),
            ]);
            let mut out = Vec::new();
            for b in wh.run_report("coverage_by_measure", &p).await.unwrap() {
                let col = b
                    .column(b.schema().index_of("women_served").unwrap())
                    .clone();
                for r in 0..b.num_rows() {
                    out.push(arrow_cast::display::array_value_to_string(&col, r).unwrap());
                }
            }
            out
        }
    };
    assert_eq!(served("2024-01-11T00:00:00Z").await, vec!["1"]);
    // Before the departure was known she was in no episode, so in no region row at all.
    assert_eq!(served("2024-01-05T00:00:00Z").await, Vec::<String>::new());
}

/// Rows derived under another rule (or an older layout of the derived tables, which is part of
/// the same fingerprint) are not answered from: the snapshot says the ledger is being derived
/// again, until the deriver's rebuild under this rule commits.
#[tokio::test]
async fn no_answer_comes_from_rows_derived_under_another_rule() {
    let ledger = ledger::two_counties();
    let dir = tempfile::tempdir().unwrap();
    let store = ledger::load(dir.path(), &ledger).await;
    let other = RuleParams {
        min_absence_months: 12,
        ..RuleParams::default()
    };
    let wh = Warehouse::new(store.clone(), other);
    match wh.snapshot(None).await {
        Err(careledger_warehouse::WarehouseError::Rederiving { rule }) => {
            assert!(rule.contains("m12"), "{rule}")
        }
        Err(e) => panic!("expected Rederiving, got {e}"),
        Ok(_) => panic!("a snapshot answered from rows derived under another rule"),
    }
    let cycles = wh.catch_up().await.unwrap();
    assert!(cycles.iter().any(|c| c.rebuild), "{cycles:?}");
    wh.snapshot(None).await.unwrap();
}

/// Each filter on a stored table reaches the Parquet reader once. delta-rs pushed the view's
/// filters into its own scan and DataFusion pushed them again, so the scan's predicate held
/// every conjunct twice; the snapshot now leaves the Parquet predicate to DataFusion.
#[tokio::test]
async fn a_scan_of_a_stored_table_carries_each_filter_once() {
    let ledger = ledger::two_counties();
    let dir = tempfile::tempdir().unwrap();
    let store = ledger::load(dir.path(), &ledger).await;
    let wh = Warehouse::new(store, RuleParams::default());
    let snap = wh.snapshot(None).await.unwrap();
    let batches = snap
        .ctx
        .sql(
            "EXPLAIN SELECT count(*) FROM ledger_runs \
             WHERE level = 'county' AND run_start >= DATE '2024-01-01'",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut plan = String::new();
    for b in &batches {
        for row in 0..b.num_rows() {
            plan += &arrow_cast::display::array_value_to_string(b.column(1), row).unwrap();
            plan.push('\n');
        }
    }
    let scan = plan
        .lines()
        .find(|l| l.contains("DataSourceExec") && l.contains("derived/ledger_runs"))
        .unwrap_or_else(|| panic!("no scan of ledger_runs in:\n{plan}"));
    let start = scan
        .find(", predicate=")
        .unwrap_or_else(|| panic!("the scan has no predicate: {scan}"));
    let predicate = &scan[start + ", predicate=".len()..];
    let predicate = &predicate[..predicate
        .find(", pruning_predicate=")
        .unwrap_or(predicate.len())];
    let conjuncts: Vec<&str> = predicate.split(" AND ").collect();
    for column in ["level@", "run_start@", "known_to@"] {
        assert!(
            conjuncts.iter().any(|c| c.starts_with(column)),
            "{column} is not in the scan's predicate: {predicate}"
        );
    }
    let distinct: std::collections::HashSet<&&str> = conjuncts.iter().collect();
    assert_eq!(
        distinct.len(),
        conjuncts.len(),
        "a conjunct is in the scan's predicate twice: {predicate}"
    );
}
