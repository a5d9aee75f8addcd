//! The balance identity Stock(to-1) - Stock(from-1) = Entries - Exits holds for every region,
//! at every level, for every month, over random histories committed to a real store.
//!
//! What this can catch: the balance report's four counts disagreeing on their day boundaries
//! (stock on the eve of `from` and of `to`, entries and exits in `[from, to)`). It cannot catch
//! a wrong derivation: any set of runs with start <= end satisfies the identity by algebra.
//! Whether the runs and episodes are right is checked by `derive_props` (runs tile episodes,
//! stock from runs = episodes joined with residence, children sum to parents) and by the
//! model's `status_reference` (the rule against a day-by-day second implementation).

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use careledger_model::Table;
use careledger_model::status::RuleParams;
use careledger_warehouse::{Warehouse, reports};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use proptest::prelude::*;

use crate::ledger::{Batch, Ledger, commit};

const VILLAGES: [&str; 5] = [
    "450123100201",
    "450123100202",
    "450125100201",
    "450125100202",
    "450123100005",
];

#[derive(Debug, Clone)]
struct Ev {
    day: i64,
    kind: &'static str,
    village: usize,
}

fn event() -> impl Strategy<Value = Ev> {
    let kind = prop_oneof![
        6 => Just("spouse_departed"),
        5 => Just("spouse_returned"),
        3 => Just("moved_in"),
        1 => Just("moved_out"),
        1 => Just("divorced"),
        1 => Just("married"),
        1 => Just("died"),
    ];
    (0i64..1000, kind, 0usize..VILLAGES.len()).prop_map(|(day, kind, village)| Ev {
        day,
        kind,
        village,
    })
}

fn history() -> impl Strategy<Value = Vec<(usize, Vec<Ev>)>> {
    prop::collection::vec((0usize..4, prop::collection::vec(event(), 0..8)), 20..40)
}

fn ledger_of(women: &[(usize, Vec<Ev>)]) -> Ledger {
    let mut ledger = Ledger::default();
    let at: DateTime<Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let mut w = Batch {
        table: Table::Women,
        source: "civil_affairs".into(),
        ingested_at: at,
        rows: Vec::new(),
    };
    let mut e = Batch {
        table: Table::LifeEvents,
        source: "civil_affairs".into(),
        ingested_at: at,
        rows: Vec::new(),
    };
    let start = NaiveDate::from_ymd_opt(2022, 6, 1).unwrap();
    for (n, (base, events)) in women.iter().enumerate() {
        let birth = NaiveDate::from_ymd_opt(1980, 1, 1).unwrap() + TimeDelta::days(n as i64);
        let id = careledger_model::ResidentId::synthesize("450123", birth, 2)
            .as_str()
            .to_string();
        w.rows.push(format!(
            r#"{{"record_id":"w-{n}","record_version":1,"op":"upsert","id_number":"{id}","region_code":"{}","marital_status":"20"}}"#,
            VILLAGES[*base]
        ));
        for (k, ev) in events.iter().enumerate() {
            let date = start + TimeDelta::days(ev.day);
            let extra = match ev.kind {
                "spouse_departed" => {
                    r#","destination":"out_of_province","work_type":"labour""#.to_string()
                }
                "moved_in" => format!(r#","region_code":"{}""#, VILLAGES[ev.village]),
                _ => String::new(),
            };
            e.rows.push(format!(
                r#"{{"record_id":"e-{n}-{k}","record_version":1,"op":"upsert","id_number":"{id}","event_type":"{}","event_date":"{date}"{extra}}}"#,
                ev.kind
            ));
        }
    }
    ledger.batches.push(w);
    if !e.rows.is_empty() {
        ledger.batches.push(e);
    }
    ledger
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn balance_holds_for_every_region_level_and_month(women in history()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let ledger = ledger_of(&women);
            let dir = tempfile::tempdir().unwrap();
            let store = std::sync::Arc::new(careledger_store::Store::open(dir.path().to_str().unwrap()).await.unwrap());
            for (n, b) in ledger.batches.iter().enumerate() {
                commit(&store, b, n).await;
            }
            let wh = Warehouse::new(store, RuleParams::default());
            wh.catch_up().await.unwrap();
            let snap = wh.snapshot(None).await.unwrap();
            let spec = reports::find("balance").unwrap();
            let mut checked = 0;
            for level in ["province", "city", "county", "township", "village"] {
                let mut month = NaiveDate::from_ymd_opt(2022, 6, 1).unwrap();
                while month < NaiveDate::from_ymd_opt(2025, 6, 1).unwrap() {
                    let next = month.checked_add_months(chrono::Months::new(1)).unwrap();
                    let params: HashMap<String, String> = [
                        ("from", month.to_string()), ("to", next.to_string()), ("level", level.to_string()),
                    ].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                    for b in snap.run_sql_report(spec, &params).await.unwrap() {
                        let balanced = b.column_by_name("balanced").unwrap().as_boolean();
                        for i in 0..b.num_rows() {
                            assert!(balanced.value(i), "{level} {month}: row {i} of {b:?}");
                            checked += 1;
                        }
                    }
                    month = next;
                }
            }
            assert!(checked > 0 || crate::derive_props::table_of(&snap, "ledger_runs").await.num_rows() == 0);
        });
    }
}
