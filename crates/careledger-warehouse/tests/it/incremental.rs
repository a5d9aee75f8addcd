//! The deriver's incremental cycles give the same stored rows as a full rebuild, row for row,
//! transaction-time intervals included, over random sequences of commits: new women and
//! events, corrections, retractions, late reports (a lower record_version arriving later),
//! records moved to another woman, moves between villages, commits whose transaction time is
//! earlier than one already derived, services, and cycles run after some commits only.

use std::collections::HashMap;
use std::sync::Arc;

use careledger_model::status::RuleParams;
use careledger_model::{ResidentId, Table};
use careledger_store::{
    DERIVED_EPISODES, DERIVED_PEOPLE, DERIVED_RESIDENCE, DERIVED_RUNS, Store, derived_current,
};
use careledger_warehouse::{Deriver, Warehouse};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::derive_props::runtime;
use crate::ledger::{Batch, commit};

const VILLAGES: [&str; 4] = [
    "450123100201",
    "450123100202",
    "450125100201",
    "450125100202",
];
const WOMEN: usize = 6;

fn id(n: usize) -> String {
    let birth = NaiveDate::from_ymd_opt(1980 + n as i32, 3, 1).unwrap();
    ResidentId::synthesize("450123", birth, 2 * (n as u16 + 1))
        .as_str()
        .to_string()
}

fn day(rng: &mut StdRng) -> String {
    let d =
        NaiveDate::from_ymd_opt(2022, 1, 1).unwrap() + Duration::days(rng.random_range(0..1000));
    d.to_string()
}

/// One random commit: its table, source, transaction time and rows. `versions` holds the
/// highest version sent per record id.
fn random_batch(rng: &mut StdRng, n: usize, versions: &mut HashMap<String, i64>) -> Batch {
    let base = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    // Mostly later than the one before; sometimes earlier (a slow commit of another table).
    let ingested_at: DateTime<Utc> = if rng.random_bool(0.2) && n > 0 {
        base + Duration::hours(rng.random_range(0..(n as i64 * 24)))
    } else {
        base + Duration::hours(n as i64 * 24 + 12)
    };
    let table = match rng.random_range(0..10) {
        0..=3 => Table::Women,
        4..=8 => Table::LifeEvents,
        _ => Table::Services,
    };
    let source = if table == Table::Women && rng.random_bool(0.2) {
        "health"
    } else {
        "civil_affairs"
    };
    let mut rows = Vec::new();
    for _ in 0..rng.random_range(1..4) {
        let woman = rng.random_range(0..WOMEN);
        // Sometimes a record is sent again for another woman (a corrected ID number).
        let owner = if rng.random_bool(0.1) {
            rng.random_range(0..WOMEN)
        } else {
            woman
        };
        let record = match table {
            Table::Women => format!("w-{woman}"),
            Table::LifeEvents => format!("e-{woman}-{}", rng.random_range(0..4)),
            _ => format!("s-{woman}-{}", rng.random_range(0..2)),
        };
        let key = format!("{source}/{record}");
        let top = versions.get(&key).copied().unwrap_or(0);
        let version = if top > 1 && rng.random_bool(0.15) {
            top - 1 // a late report of an older version
        } else {
            top + 1
        };
        versions.insert(key, top.max(version));
        if top > 0 && rng.random_bool(0.12) {
            rows.push(format!(
                r#"{{"record_id":"{record}","record_version":{version},"op":"delete"}}"#
            ));
            continue;
        }
        let idn = id(owner);
        let village = VILLAGES[rng.random_range(0..VILLAGES.len())];
        rows.push(match table {
            Table::Women => {
                let marital = ["20", "20", "20", "10", "40"][rng.random_range(0..5)];
                format!(
                    r#"{{"record_id":"{record}","record_version":{version},"op":"upsert","id_number":"{idn}","region_code":"{village}","ethnicity":"08","marital_status":"{marital}"}}"#
                )
            }
            Table::LifeEvents => {
                let date = day(rng);
                match rng.random_range(0..6) {
                    0 | 1 => format!(
                        r#"{{"record_id":"{record}","record_version":{version},"op":"upsert","id_number":"{idn}","event_type":"spouse_departed","event_date":"{date}","destination":"out_of_province","work_type":"labour"}}"#
                    ),
                    2 => format!(
                        r#"{{"record_id":"{record}","record_version":{version},"op":"upsert","id_number":"{idn}","event_type":"spouse_returned","event_date":"{date}"}}"#
                    ),
                    3 => format!(
                        r#"{{"record_id":"{record}","record_version":{version},"op":"upsert","id_number":"{idn}","event_type":"moved_in","event_date":"{date}","region_code":"{village}"}}"#
                    ),
                    4 => format!(
                        r#"{{"record_id":"{record}","record_version":{version},"op":"upsert","id_number":"{idn}","event_type":"moved_out","event_date":"{date}"}}"#
                    ),
                    _ => format!(
                        r#"{{"record_id":"{record}","record_version":{version},"op":"upsert","id_number":"{idn}","event_type":"divorced","event_date":"{date}"}}"#
                    ),
                }
            }
            _ => format!(
                r#"{{"record_id":"{record}","record_version":{version},"op":"upsert","id_number":"{idn}","measure":"M1","service_type":"dibao_enrolment","service_date":"{}","amount_yuan":"465.00"}}"#,
                day(rng)
            ),
        });
    }
    Batch {
        table,
        source: source.to_string(),
        ingested_at,
        rows,
    }
}

/// Every live row of every derived table, as sorted text lines per table.
async fn stored(deriver: &Deriver) -> Vec<(String, Vec<String>)> {
    let mut names: Vec<&str> = Table::ALL.iter().map(|t| derived_current(*t)).collect();
    names.extend([
        DERIVED_PEOPLE,
        DERIVED_EPISODES,
        DERIVED_RESIDENCE,
        DERIVED_RUNS,
    ]);
    let mut out = Vec::new();
    for name in names {
        let mut lines = Vec::new();
        for b in deriver.live_rows(name).await.unwrap() {
            for r in 0..b.num_rows() {
                let cells: Vec<String> = b
                    .columns()
                    .iter()
                    .map(|c| arrow_cast::display::array_value_to_string(c, r).unwrap())
                    .collect();
                lines.push(cells.join("|"));
            }
        }
        lines.sort();
        out.push((name.to_string(), lines));
    }
    out
}

/// Rows of `services` as known at `at` (now when None), and how many of them have an
/// `in_episode` other than the join it stands for: a service dated inside one of her episodes
/// (`status_episodes` as known at the same instant).
pub(crate) async fn in_episode_against_the_join(
    wh: &Warehouse,
    at: Option<DateTime<Utc>>,
) -> (i64, i64, i64) {
    let snap = wh.snapshot(at).await.unwrap();
    let b = snap
        .ctx
        .sql(
            "SELECT count(*), \
                    coalesce(sum(CASE WHEN s.in_episode THEN 1 ELSE 0 END), 0), \
                    coalesce(sum(CASE WHEN s.in_episode = (j.hit IS NOT NULL) THEN 0 ELSE 1 END), 0) \
             FROM services s LEFT JOIN ( \
                 SELECT s2.source, s2.record_id, count(*) AS hit FROM services s2 \
                 JOIN status_episodes e ON e.person_key = s2.person_key \
                  AND s2.service_date >= e.start_date \
                  AND (e.end_date IS NULL OR s2.service_date < e.end_date) \
                 GROUP BY s2.source, s2.record_id) j \
             ON j.source = s.source AND j.record_id = s.record_id",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let n = |i: usize| {
        b[0].column(i)
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap()
            .value(0)
    };
    (n(0), n(1), n(2))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn incremental_cycles_equal_a_full_rebuild(seed in any::<u64>(), commits in 6usize..14) {
        runtime().block_on(async {
            let mut rng = StdRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
            let deriver = Deriver::new(store.clone(), RuleParams::default());
            let mut versions = HashMap::new();
            let mut cycles = 0;
            for n in 0..commits {
                let batch = random_batch(&mut rng, n, &mut versions);
                commit(&store, &batch, n).await;
                if rng.random_bool(0.6) {
                    cycles += deriver.catch_up().await.unwrap().len();
                }
            }
            cycles += deriver.catch_up().await.unwrap().len();
            assert!(cycles >= 1);
            let incremental = stored(&deriver).await;
            // `services.in_episode` is the join with `status_episodes` it replaces, now and as
            // known at every day of the commits (the rows are split where her episodes change).
            let wh = Warehouse::new(store.clone(), RuleParams::default());
            let base = Utc.with_ymd_and_hms(2024, 1, 1, 6, 0, 0).unwrap();
            let instants = (0..=commits as i64).map(|k| Some(base + Duration::hours(24 * k)));
            for at in std::iter::once(None).chain(instants) {
                let (rows, _, wrong) = in_episode_against_the_join(&wh, at).await;
                assert_eq!(wrong, 0, "in_episode differs from the join in {} of {} services as known at {:?} (seed {})", wrong, rows, at, seed);
            }
            let rebuilt = deriver.rebuild().await.unwrap();
            assert!(rebuilt.rebuild);
            let full = stored(&deriver).await;
            for ((name, a), (_, b)) in incremental.iter().zip(&full) {
                assert_eq!(a, b, "{name}: incremental (left) and full rebuild (right) differ (seed {seed})");
            }
            // A rebuild in several buckets (by the keys' first two hex digits) derives every
            // woman once, as one bucket does.
            let mut bytes = 0;
            for t in Table::ALL {
                bytes += store.file_stats(t.as_str()).await.unwrap().bytes;
            }
            let bucketed = Deriver::new(store.clone(), RuleParams::default())
                .with_rebuild_bucket_bytes(bytes / 5);
            bucketed.rebuild().await.unwrap();
            assert_eq!(stored(&bucketed).await, full, "a rebuild in 5 or 6 buckets differs (seed {seed})");
            // In 256 buckets (each woman most likely alone in hers), a record sent again for
            // another woman, or retracted, reaches the bucket of every woman it ever named.
            let finest = Deriver::new(store.clone(), RuleParams::default())
                .with_rebuild_bucket_bytes(1);
            finest.rebuild().await.unwrap();
            assert_eq!(stored(&finest).await, full, "a rebuild in 256 buckets differs (seed {seed})");
            // Compaction drops the dead rows and changes no live one.
            deriver.compact().await.unwrap();
            assert_eq!(stored(&deriver).await, full, "compaction changed the rows (seed {seed})");
        });
    }
}

#[tokio::test]
async fn a_cycle_cut_short_is_redone_and_nothing_is_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
    let wh = Warehouse::new(store.clone(), RuleParams::default());
    let mut rng = StdRng::seed_from_u64(7);
    let mut versions = HashMap::new();
    for n in 0..6 {
        commit(&store, &random_batch(&mut rng, n, &mut versions), n).await;
    }
    wh.catch_up().await.unwrap();
    let before = stored(wh.deriver()).await;
    // A crash after part of a cycle: rows of cycle N+1 in one table, no superseded commit.
    let state = careledger_warehouse::DerivedState::read(&store)
        .await
        .unwrap();
    let people = wh.deriver().live_rows(DERIVED_PEOPLE).await.unwrap();
    let mut partial = Vec::new();
    for b in people {
        let schema = careledger_store::derived_tables()
            .into_iter()
            .find(|(n, _)| *n == DERIVED_PEOPLE)
            .unwrap()
            .1;
        let mut cols: Vec<arrow_array::ArrayRef> = Vec::new();
        for f in schema.fields() {
            cols.push(match b.column_by_name(f.name()) {
                Some(c) => arrow_cast::cast(c, f.data_type()).unwrap(),
                None => Arc::new(arrow_array::Int64Array::from(vec![
                    state.cycle + 1;
                    b.num_rows()
                ])),
            });
        }
        partial.push(arrow_array::RecordBatch::try_new(schema, cols).unwrap());
    }
    store
        .append(
            DERIVED_PEOPLE,
            careledger_store::Append {
                batches: partial,
                txns: vec![("careledger-deriver/cycle".into(), state.cycle + 1)],
                metadata: vec![],
            },
        )
        .await
        .unwrap();
    // Readers never see the partial cycle.
    let snap = wh.snapshot(None).await.unwrap();
    let n = snap
        .ctx
        .sql("SELECT count(*) AS n FROM people")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let n = arrow_cast::display::array_value_to_string(n[0].column(0), 0).unwrap();
    let expected = before
        .iter()
        .find(|(name, _)| name == DERIVED_PEOPLE)
        .unwrap()
        .1
        .iter()
        // known_to is the last column but person_id: empty on current rows.
        .filter(|l| l.rsplit('|').nth(1) == Some(""))
        .count();
    assert_eq!(
        n,
        expected.to_string(),
        "current people rows (known_to empty)"
    );
    // The next cycle deletes the partial rows first, then derives the new commit.
    commit(&store, &random_batch(&mut rng, 6, &mut versions), 6).await;
    let cycles = wh.catch_up().await.unwrap();
    assert_eq!(cycles.len(), 1);
    assert_eq!(cycles[0].cycle, state.cycle + 1);
    let incremental = stored(wh.deriver()).await;
    wh.deriver().rebuild().await.unwrap();
    assert_eq!(incremental, stored(wh.deriver()).await);
}

#[tokio::test]
async fn commits_whose_files_were_compacted_away_are_derived_by_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
    let deriver = Deriver::new(store.clone(), RuleParams::default());
    let mut rng = StdRng::seed_from_u64(11);
    let mut versions = HashMap::new();
    for n in 0..4 {
        commit(&store, &random_batch(&mut rng, n, &mut versions), n).await;
    }
    deriver.catch_up().await.unwrap();
    // More commits, then (no deriver running) every table compacted and vacuumed: the files
    // those commits added are gone, their rows now in compacted files.
    for n in 4..10 {
        commit(&store, &random_batch(&mut rng, n, &mut versions), n).await;
    }
    for t in Table::ALL {
        store.compact(t.as_str(), 128 << 20).await.unwrap();
        store
            .vacuum(t.as_str(), std::time::Duration::ZERO, true)
            .await
            .unwrap();
    }
    let cycles = deriver.catch_up().await.unwrap();
    assert!(cycles.iter().any(|c| c.rebuild), "{cycles:?}");
    let after = stored(&deriver).await;
    deriver.rebuild().await.unwrap();
    assert_eq!(after, stored(&deriver).await);
}

/// Two women whose pseudonyms agree in their first 64 bits share a `person_id`: the deriver's
/// check finds them (the server logs it after every rebuild and compaction); women with
/// different pseudonyms are never reported.
#[tokio::test]
async fn women_sharing_a_person_id_are_found() {
    let ledger = crate::ledger::parse(
        "# person: A 1990-01-01\n\
         # person: B 1991-02-02\n\
         # person: C 1992-03-03\n\
         # batch: women civil_affairs 2024-01-05T02:00:00Z\n\
         {\"record_id\":\"w-A\",\"record_version\":1,\"op\":\"upsert\",\"id_number\":\"@A\",\"region_code\":\"450123100201\",\"ethnicity\":\"08\",\"marital_status\":\"20\"}\n\
         {\"record_id\":\"w-B\",\"record_version\":1,\"op\":\"upsert\",\"id_number\":\"@B\",\"region_code\":\"450123100201\",\"ethnicity\":\"08\",\"marital_status\":\"20\"}\n\
         {\"record_id\":\"w-C\",\"record_version\":1,\"op\":\"upsert\",\"id_number\":\"@C\",\"region_code\":\"450123100201\",\"ethnicity\":\"08\",\"marital_status\":\"20\"}\n",
    );
    for collide in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
        // The pseudonyms as stored, with the first 16 hex digits of A's and B's made equal
        // (and C's left alone) when `collide`.
        crate::ledger::commit_edited(&store, &ledger.batches[0], 0, |b| {
            if !collide {
                return b;
            }
            let i = b.schema().index_of("person_key").unwrap();
            let keys = arrow_cast::cast(b.column(i), &arrow_schema::DataType::Utf8).unwrap();
            let keys = keys
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            let edited: arrow_array::StringArray = keys
                .iter()
                .enumerate()
                .map(|(r, k)| {
                    let k = k.unwrap();
                    Some(if r < 2 {
                        format!("0123456789abcdef{}", &k[16..])
                    } else {
                        k.to_string()
                    })
                })
                .collect();
            let mut cols = b.columns().to_vec();
            cols[i] = arrow_cast::cast(&edited, b.column(i).data_type()).unwrap();
            arrow_array::RecordBatch::try_new(b.schema(), cols).unwrap()
        })
        .await;
        let deriver = Deriver::new(store.clone(), RuleParams::default());
        deriver.catch_up().await.unwrap();
        let women = deriver
            .live_rows(careledger_store::DERIVED_PEOPLE)
            .await
            .unwrap();
        assert_eq!(women.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        assert_eq!(
            deriver.person_id_collisions().await.unwrap(),
            u64::from(collide),
            "collide: {collide}"
        );
    }
}
