//! Properties of the derived tables over random histories committed to a real store, each of
//! which a wrong derivation can break (unlike the balance identity, which runs satisfy by
//! algebra whatever their dates):
//!
//! - the runs of every episode tile it at every level: the first starts on the episode's
//!   start with its entry reason, each ends where the next starts (transfer_out / transfer_in
//!   between two different regions), the last ends on the episode's end with its exit reason;
//!   one run per episode province-wide; no run outside an episode;
//! - stock from the runs (what the reports count) equals stock from the episodes joined with
//!   `residence` on the same day (what the definition says: in the ledger on E, counted where
//!   she lived on E), per region at every level;
//! - the `stock` report's children sum to their parent at every level, and the province's
//!   figure is the number of women with an episode covering E.
//!
//! Histories: villages in two townships of one county, another county, another city and a
//! town's residents' committee; moves in and out, short visits, divorces, marriages, deaths,
//! same-day events, and marital codes 20/10/40/90/none on the record.

use std::collections::{BTreeMap, HashMap};

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use careledger_model::status::RuleParams;
use careledger_model::{RegionLevel, Table, regions};
use careledger_warehouse::{Snapshot, Warehouse, reports};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use proptest::prelude::*;

use crate::ledger::{Batch, commit};

const PLACES: [&str; 6] = [
    "450123100201", // 隆安县 城厢镇 四兴村
    "450123100202", // 隆安县 城厢镇 那可村
    "450123101201", // 隆安县 南圩镇 光明村
    "450125100201", // 上林县 拥军村
    "450202005201", // 柳州市 窑埠村
    "450123100005", // 隆安县 新兴社区 (urban)
];

const MARITAL: [Option<&str>; 5] = [Some("20"), Some("20"), Some("90"), None, Some("40")];

#[derive(Debug, Clone)]
struct Ev {
    gap: i64,
    kind: &'static str,
    place: usize,
}

fn event() -> impl Strategy<Value = Ev> {
    let kind = prop_oneof![
        8 => Just("spouse_departed"),
        6 => Just("spouse_returned"),
        4 => Just("moved_in"),
        1 => Just("moved_out"),
        1 => Just("divorced"),
        1 => Just("married"),
        1 => Just("spouse_died"),
        1 => Just("died"),
    ];
    let gap = prop_oneof![2 => Just(0i64), 3 => 1i64..40, 5 => 40i64..240];
    (gap, kind, 0usize..PLACES.len()).prop_map(|(gap, kind, place)| Ev { gap, kind, place })
}

/// Women: (base place, marital code index, events).
type Women = Vec<(usize, usize, Vec<Ev>)>;

/// Random women, after one whose husband leaves on the second day and never returns: she is
/// in the ledger on every checked day from her sixth month on, so no history leaves the
/// ledger empty on all the days a property samples (which would make it hold vacuously).
fn women() -> impl Strategy<Value = Women> {
    prop::collection::vec(
        (
            0usize..5,
            0usize..MARITAL.len(),
            prop::collection::vec(event(), 1..10),
        ),
        15..30,
    )
    .prop_map(|mut women| {
        let away = Ev {
            gap: 1,
            kind: "spouse_departed",
            place: 0,
        };
        women.insert(0, (0, 0, vec![away]));
        women
    })
}

/// The first event's earliest day; 9 events at most 240 days apart end before 2026.
const START: (i32, u32, u32) = (2020, 1, 1);

fn start() -> NaiveDate {
    NaiveDate::from_ymd_opt(START.0, START.1, START.2).unwrap()
}

async fn snapshot_of(women: &Women, dir: &std::path::Path) -> Snapshot {
    let at: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().unwrap();
    let batch = |table| Batch {
        table,
        source: "civil_affairs".into(),
        ingested_at: at,
        rows: Vec::new(),
    };
    let mut w = batch(Table::Women);
    let mut e = batch(Table::LifeEvents);
    for (n, (base, marital, events)) in women.iter().enumerate() {
        let birth = NaiveDate::from_ymd_opt(1980, 1, 1).unwrap() + TimeDelta::days(n as i64);
        let id = careledger_model::ResidentId::synthesize("450123", birth, 2)
            .as_str()
            .to_string();
        let marital =
            MARITAL[*marital].map_or(String::new(), |m| format!(r#","marital_status":"{m}""#));
        w.rows.push(format!(
            r#"{{"record_id":"w-{n}","record_version":1,"op":"upsert","id_number":"{id}","region_code":"{}"{marital}}}"#,
            PLACES[*base]
        ));
        let mut date = start();
        for (k, ev) in events.iter().enumerate() {
            date += TimeDelta::days(ev.gap);
            let extra = match ev.kind {
                "spouse_departed" => {
                    r#","destination":"out_of_province","work_type":"labour""#.to_string()
                }
                "moved_in" => format!(r#","region_code":"{}""#, PLACES[ev.place]),
                _ => String::new(),
            };
            e.rows.push(format!(
                r#"{{"record_id":"e-{n}-{k}","record_version":1,"op":"upsert","id_number":"{id}","event_type":"{}","event_date":"{date}"{extra}}}"#,
                ev.kind
            ));
        }
    }
    let store = std::sync::Arc::new(
        careledger_store::Store::open(dir.to_str().unwrap())
            .await
            .unwrap(),
    );
    commit(&store, &w, 0).await;
    commit(&store, &e, 1).await;
    let wh = Warehouse::new(store, RuleParams::default());
    wh.catch_up().await.unwrap();
    wh.snapshot(None).await.unwrap()
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Days E to check: every 29 days over the histories' span.
fn days_to_check() -> Vec<NaiveDate> {
    (0..75).map(|i| start() + TimeDelta::days(29 * i)).collect()
}

async fn rows(snap: &Snapshot, sql: &str) -> Vec<RecordBatch> {
    snap.ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// (region_code, count) rows of a two-column answer.
fn counts(batches: &[RecordBatch]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for b in batches {
        let codes = arrow_cast::cast(b.column(0), &arrow_schema::DataType::Utf8).unwrap();
        let codes = codes.as_string::<i32>();
        let n = arrow_cast::cast(b.column(1), &arrow_schema::DataType::Int64).unwrap();
        let n = n.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.insert(codes.value(i).to_string(), n.value(i));
        }
    }
    out
}

/// A table of a snapshot, in one batch.
pub(crate) async fn table_of(snap: &Snapshot, name: &str) -> RecordBatch {
    let df = snap.ctx.table(name).await.unwrap();
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.unwrap();
    datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap()
}

fn str_col(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = arrow_cast::cast(
        b.column_by_name(name).unwrap(),
        &arrow_schema::DataType::Utf8,
    )
    .unwrap();
    let c = c.as_string::<i32>();
    (0..c.len())
        .map(|i| (!c.is_null(i)).then(|| c.value(i).to_string()))
        .collect()
}

fn date_col(b: &RecordBatch, name: &str) -> Vec<Option<i32>> {
    let c = b.column_by_name(name).unwrap().as_primitive::<Date32Type>();
    (0..c.len())
        .map(|i| (!c.is_null(i)).then(|| c.value(i)))
        .collect()
}

fn int_col(b: &RecordBatch, name: &str) -> Vec<i32> {
    let c = b
        .column_by_name(name)
        .unwrap()
        .as_primitive::<arrow_array::types::Int32Type>();
    c.values().to_vec()
}

#[derive(Debug, Clone)]
struct Run {
    region: Option<String>,
    start: i32,
    end: Option<i32>,
    entry: String,
    exit: Option<String>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5, ..ProptestConfig::default() })]

    #[test]
    fn runs_tile_each_episode_at_every_level(women in women()) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let snap = snapshot_of(&women, dir.path()).await;
            let ep = &table_of(&snap, "status_episodes").await;
            let runs = &table_of(&snap, "ledger_runs").await;
            assert!(ep.num_rows() > 0, "no episodes: the histories are too poor");
            // Runs by (person, episode, level), in order.
            let mut by: HashMap<(String, i32, String), Vec<Run>> = HashMap::new();
            let (keys, nos, levels) =
                (str_col(runs, "person_key"), int_col(runs, "episode_no"), str_col(runs, "level"));
            let (regions_, starts, ends) =
                (str_col(runs, "region_code"), date_col(runs, "run_start"), date_col(runs, "run_end"));
            let (entries, exits) = (str_col(runs, "entry_reason"), str_col(runs, "exit_reason"));
            for i in 0..runs.num_rows() {
                by.entry((keys[i].clone().unwrap(), nos[i], levels[i].clone().unwrap()))
                    .or_default()
                    .push(Run {
                        region: regions_[i].clone(),
                        start: starts[i].unwrap(),
                        end: ends[i],
                        entry: entries[i].clone().unwrap(),
                        exit: exits[i].clone(),
                    });
            }
            let (e_keys, e_nos) = (str_col(ep, "person_key"), int_col(ep, "episode_no"));
            let (e_starts, e_ends) = (date_col(ep, "start_date"), date_col(ep, "end_date"));
            let (e_entries, e_exits) = (str_col(ep, "entry_reason"), str_col(ep, "exit_reason"));
            let mut tiled = 0;
            for i in 0..ep.num_rows() {
                for level in RegionLevel::ALL {
                    let key = (e_keys[i].clone().unwrap(), e_nos[i], level.as_str().to_string());
                    let mut rs = by.remove(&key).unwrap_or_default();
                    rs.sort_by_key(|r| r.start);
                    let place = format!("episode {key:?}: runs {rs:?}");
                    assert!(!rs.is_empty(), "{place}");
                    assert_eq!(rs[0].start, e_starts[i].unwrap(), "{place}");
                    assert_eq!(rs.last().unwrap().end, e_ends[i], "{place}");
                    assert_eq!(Some(&rs[0].entry), e_entries[i].as_ref(), "{place}");
                    assert_eq!(rs.last().unwrap().exit, e_exits[i], "{place}");
                    for r in &rs {
                        assert!(r.end.is_none_or(|e| r.start < e), "empty run: {place}");
                        let code = r.region.as_deref().expect("a run has a region");
                        assert_eq!(
                            regions().get(code).map(|g| g.level),
                            Some(level),
                            "{place}"
                        );
                    }
                    for w in rs.windows(2) {
                        assert_eq!(w[0].end, Some(w[1].start), "gap or overlap: {place}");
                        assert_ne!(w[0].region, w[1].region, "split without a move: {place}");
                        assert_eq!(w[0].exit.as_deref(), Some("transfer_out"), "{place}");
                        assert_eq!(w[1].entry, "transfer_in", "{place}");
                    }
                    if level == RegionLevel::Province {
                        assert_eq!(rs.len(), 1, "{place}");
                    }
                    tiled += 1;
                }
            }
            assert!(by.is_empty(), "runs outside any episode: {by:?}");
            assert!(tiled > 0);
        });
    }

    #[test]
    fn stock_from_runs_equals_episodes_joined_with_residence(women in women()) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let snap = snapshot_of(&women, dir.path()).await;
            // Both sides are step functions of the day that change only on a day where a
            // run, an episode or a residence starts or ends: checking every such day checks
            // every day. All at once: (day, level, region) -> women.
            let days = "days AS (\
                SELECT run_start AS d FROM ledger_runs UNION SELECT run_end FROM ledger_runs \
                UNION SELECT start_date FROM status_episodes UNION SELECT end_date FROM status_episodes \
                UNION SELECT valid_from FROM residence UNION SELECT valid_to FROM residence)";
            let from_runs = counts(&rows(&snap, &format!(
                "WITH {days} \
                 SELECT concat(CAST(days.d AS VARCHAR), ' ', r.level, ' ', r.region_code), \
                        count(DISTINCT r.person_key) \
                 FROM days JOIN ledger_runs r ON r.run_start <= days.d \
                   AND (r.run_end IS NULL OR r.run_end > days.d) \
                 GROUP BY days.d, r.level, r.region_code"
            )).await);
            let from_definition = counts(&rows(&snap, &format!(
                "WITH {days} \
                 SELECT concat(CAST(days.d AS VARCHAR), ' ', lv.level, ' ', lv.region_code), \
                        count(DISTINCT e.person_key) \
                 FROM days \
                 JOIN status_episodes e ON e.start_date <= days.d \
                   AND (e.end_date IS NULL OR e.end_date > days.d) \
                 JOIN residence r ON r.person_key = e.person_key AND r.valid_from <= days.d \
                   AND (r.valid_to IS NULL OR r.valid_to > days.d) \
                 JOIN region_levels lv ON lv.code = r.region_code \
                 GROUP BY days.d, lv.level, lv.region_code"
            )).await);
            assert!(!from_runs.is_empty(), "nobody in the ledger on any day checked");
            let differ: Vec<_> = from_runs
                .keys()
                .chain(from_definition.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|k| from_runs.get(*k) != from_definition.get(*k))
                .map(|k| (k, from_runs.get(k), from_definition.get(k)))
                .collect();
            assert!(differ.is_empty(), "(day level region, runs, episodes x residence): {differ:?}");
        });
    }

    #[test]
    fn the_stock_of_children_sums_to_their_parent(women in women()) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let snap = snapshot_of(&women, dir.path()).await;
            let spec = reports::find("stock").unwrap();
            let mut nonzero = 0;
            // Every sixth of those days (each report costs a query per level).
            for day in days_to_check().into_iter().step_by(6) {
                let mut by_level: Vec<BTreeMap<String, i64>> = Vec::new();
                for level in RegionLevel::ALL {
                    let params: HashMap<String, String> =
                        [("as_of", day.to_string()), ("level", level.as_str().to_string())]
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect();
                    let answer = snap.run_sql_report(spec, &params).await.unwrap();
                    let mut m = BTreeMap::new();
                    for b in &answer {
                        let codes = str_col(b, "region_code");
                        let women = arrow_cast::cast(
                            b.column_by_name("women").unwrap(),
                            &arrow_schema::DataType::Int64,
                        )
                        .unwrap();
                        let women = women.as_primitive::<Int64Type>();
                        for (i, code) in codes.into_iter().enumerate() {
                            m.insert(code.unwrap(), women.value(i));
                        }
                    }
                    by_level.push(m);
                }
                for (li, parent_level) in RegionLevel::ALL.iter().enumerate().take(4) {
                    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
                    for (child, n) in &by_level[li + 1] {
                        let parent = regions().ancestor(child, *parent_level).unwrap();
                        *sums.entry(parent.code.clone()).or_default() += n;
                    }
                    assert_eq!(
                        by_level[li], sums,
                        "{day}: {} vs the sum of its children", parent_level.as_str()
                    );
                }
                let in_ledger = counts(&rows(&snap, &format!(
                    "SELECT 'all', count(DISTINCT person_key) FROM status_episodes \
                     WHERE start_date <= DATE '{day}' AND (end_date IS NULL OR end_date > DATE '{day}')"
                )).await);
                assert_eq!(
                    by_level[0].values().sum::<i64>(),
                    in_ledger["all"],
                    "{day}: province vs women in the ledger"
                );
                nonzero += in_ledger["all"];
            }
            assert!(nonzero > 0, "nobody in the ledger on any day checked");
        });
    }
}
