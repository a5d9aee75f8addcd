//! Report cost at scale: generates a ledger of N women (default 1,000,000) with ~10 services
//! each straight into a Delta store (stored-schema batches, no HTTP), then measures the
//! derivation of status episodes and each named report, cold (first run) and warm.
//! Prints a table; asserts nothing about time.
//!
//! cargo bench -p careledger-warehouse --bench reports -- [women] [services_per_woman]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::ArrayBuilder;
use arrow_array::builder::{
    Date32Builder, Decimal128Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use careledger_model::status::RuleParams;
use careledger_model::{Table, regions, vocabulary};
use careledger_store::{Append, Store};
use careledger_warehouse::{Warehouse, catalog};
use chrono::{NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHUNK: usize = 200_000;

fn epoch_days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

/// Builds one stored-schema batch from named columns (absent columns are null).
fn batch(table: Table, n: usize, mut cols: HashMap<&str, ArrayRef>) -> RecordBatch {
    let schema = table.spec().stored_schema();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            cols.remove(f.name().as_str())
                .unwrap_or_else(|| arrow_array::new_null_array(f.data_type(), n))
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

struct Common {
    source: StringBuilder,
    record_id: StringBuilder,
    version: Int64Builder,
    op: StringBuilder,
    person: StringBuilder,
    batch_id: StringBuilder,
    at: TimestampMicrosecondBuilder,
}

impl Common {
    fn new() -> Common {
        Common {
            source: StringBuilder::new(),
            record_id: StringBuilder::new(),
            version: Int64Builder::new(),
            op: StringBuilder::new(),
            person: StringBuilder::new(),
            batch_id: StringBuilder::new(),
            at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
        }
    }
    fn push(&mut self, source: &str, id: String, person: &str, at: i64) {
        self.source.append_value(source);
        self.record_id.append_value(id);
        self.version.append_value(1);
        self.op.append_value("upsert");
        self.person.append_value(person);
        self.batch_id.append_value("bench");
        self.at.append_value(at);
    }
    fn finish(mut self) -> HashMap<&'static str, ArrayRef> {
        HashMap::from([
            ("source", Arc::new(self.source.finish()) as ArrayRef),
            ("record_id", Arc::new(self.record_id.finish())),
            ("record_version", Arc::new(self.version.finish())),
            ("op", Arc::new(self.op.finish())),
            ("person_key", Arc::new(self.person.finish())),
            ("batch_id", Arc::new(self.batch_id.finish())),
            ("ingested_at", Arc::new(self.at.finish())),
        ])
    }
}

async fn generate(store: &Store, women: usize, services_per: usize) {
    let mut rng = StdRng::seed_from_u64(42);
    let villages: Vec<String> = regions()
        .iter()
        .filter(|r| r.rural)
        .map(|r| r.code.clone())
        .collect();
    let types: Vec<(String, String)> = vocabulary()
        .list("service_types")
        .codes
        .iter()
        .map(|c| (c.measure.clone().unwrap(), c.code.clone()))
        .collect();
    let at = Utc::now().timestamp_micros();
    let base = NaiveDate::from_ymd_opt(2021, 1, 1).unwrap();
    let mut start = 0;
    while start < women {
        let end = (start + CHUNK).min(women);
        let n = end - start;
        let (mut w, mut region, mut birth, mut marital) = (
            Common::new(),
            StringBuilder::new(),
            Date32Builder::new(),
            StringBuilder::new(),
        );
        let (mut e, mut etype, mut edate, mut eregion, mut dest, mut work) = (
            Common::new(),
            StringBuilder::new(),
            Date32Builder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut s, mut measure, mut stype, mut sdate, mut amount) = (
            Common::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            Date32Builder::new(),
            Decimal128Builder::new(),
        );
        let (mut g, mut group, mut gfrom) =
            (Common::new(), StringBuilder::new(), Date32Builder::new());
        let mut events = 0;
        for i in start..end {
            let pk = format!("{i:032x}");
            w.push("civil_affairs", format!("w-{i}"), &pk, at);
            let home = &villages[rng.random_range(0..villages.len())];
            region.append_value(home);
            birth.append_value(epoch_days(
                NaiveDate::from_ymd_opt(
                    1965 + rng.random_range(0..35),
                    1 + rng.random_range(0..12),
                    1,
                )
                .unwrap(),
            ));
            marital.append_value("20");
            let mut ev = |kind: &str, day: i64, village: Option<&str>, e: &mut Common| {
                e.push("civil_affairs", format!("e-{i}-{day}-{kind}"), &pk, at);
                etype.append_value(kind);
                edate.append_value(epoch_days(base) + day as i32);
                eregion.append_option(village);
                dest.append_option((kind == "spouse_departed").then_some("out_of_province"));
                work.append_option((kind == "spouse_departed").then_some("labour"));
                events += 1;
            };
            if rng.random_bool(0.7) {
                // Departures peak after the Spring Festival (Feb-Mar), returns before it.
                let mut day = rng.random_range(30..90) + 365 * rng.random_range(0..3);
                for _ in 0..rng.random_range(1..4) {
                    ev("spouse_departed", day, None, &mut e);
                    let away = rng.random_range(60..700);
                    if day + away > 1400 {
                        break;
                    }
                    ev("spouse_returned", day + away, None, &mut e);
                    day += away
                        + if rng.random_bool(0.5) {
                            rng.random_range(5..30)
                        } else {
                            rng.random_range(40..200)
                        };
                }
                if rng.random_bool(0.05) {
                    let v = &villages[rng.random_range(0..villages.len())];
                    ev("moved_in", rng.random_range(0..1400), Some(v), &mut e);
                }
                if rng.random_bool(0.02) {
                    ev("moved_out", rng.random_range(0..1400), None, &mut e);
                }
            }
            for k in 0..services_per {
                let (m, t) = &types[rng.random_range(0..types.len())];
                s.push("womens_federation", format!("s-{i}-{k}"), &pk, at);
                measure.append_value(m);
                stype.append_value(t);
                sdate.append_value(epoch_days(base) + rng.random_range(0..1400));
                amount.append_value(rng.random_range(0..100_000));
            }
            if rng.random_bool(0.15) {
                g.push("civil_affairs", format!("g-{i}"), &pk, at);
                group.append_value(["seriously_ill", "registered_poor"][rng.random_range(0..2)]);
                gfrom.append_value(epoch_days(base) + rng.random_range(0..1400));
            }
        }
        let mut cols = w.finish();
        cols.insert("region_code", Arc::new(region.finish()));
        cols.insert("birth_date", Arc::new(birth.finish()));
        cols.insert("marital_status", Arc::new(marital.finish()));
        store
            .append(
                "women",
                Append {
                    batches: vec![batch(Table::Women, n, cols)],
                    ..Append::default()
                },
            )
            .await
            .unwrap();
        let mut cols = e.finish();
        cols.insert("event_type", Arc::new(etype.finish()));
        cols.insert("event_date", Arc::new(edate.finish()));
        cols.insert("region_code", Arc::new(eregion.finish()));
        cols.insert("destination", Arc::new(dest.finish()));
        cols.insert("work_type", Arc::new(work.finish()));
        store
            .append(
                "life_events",
                Append {
                    batches: vec![batch(Table::LifeEvents, events, cols)],
                    ..Append::default()
                },
            )
            .await
            .unwrap();
        let rows = n * services_per;
        let mut cols = s.finish();
        cols.insert("measure", Arc::new(measure.finish()));
        cols.insert("service_type", Arc::new(stype.finish()));
        cols.insert("service_date", Arc::new(sdate.finish()));
        cols.insert(
            "amount_yuan",
            Arc::new(amount.finish().with_precision_and_scale(14, 2).unwrap()),
        );
        store
            .append(
                "services",
                Append {
                    batches: vec![batch(Table::Services, rows, cols)],
                    ..Append::default()
                },
            )
            .await
            .unwrap();
        let gn = g.record_id.len();
        let mut cols = g.finish();
        cols.insert("group", Arc::new(group.finish()));
        cols.insert("valid_from", Arc::new(gfrom.finish()));
        store
            .append(
                "group_flags",
                Append {
                    batches: vec![batch(Table::GroupFlags, gn, cols)],
                    ..Append::default()
                },
            )
            .await
            .unwrap();
        start = end;
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let women = args.first().copied().unwrap_or(1_000_000);
    let services = args.get(1).copied().unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
        let t = Instant::now();
        generate(&store, women, services).await;
        println!(
            "generated {women} women, {} services in {:.1} s",
            women * services,
            t.elapsed().as_secs_f64()
        );
        let wh = Warehouse::new(store, RuleParams::default());
        let t = Instant::now();
        let cycles = wh.catch_up().await.unwrap();
        let c = &cycles[0];
        println!(
            "full derivation: {:.2} s (read {:.2} s, rule {:.2} s, write {:.2} s; {} women, {} derived rows)",
            t.elapsed().as_secs_f64(),
            c.read.as_secs_f64(),
            c.derive.as_secs_f64(),
            c.write.as_secs_f64(),
            c.women,
            c.rows_written
        );
        println!(
            "{:<28} | {:>9} | {:>9} | {:>7}",
            "report", "cold s", "warm s", "rows"
        );
        for spec in catalog() {
            let params: HashMap<String, String> = if spec.name == "revisions" {
                HashMap::from([("frozen_at".to_string(), "2025-01-01T00:00:00Z".to_string())])
            } else {
                HashMap::new()
            };
            let t = Instant::now();
            let rows: usize = wh
                .run_report(&spec.name, &params)
                .await
                .map(|b| b.iter().map(|b| b.num_rows()).sum())
                .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
            let cold = t.elapsed().as_secs_f64();
            let t = Instant::now();
            wh.run_report(&spec.name, &params).await.unwrap();
            let warm = t.elapsed().as_secs_f64();
            println!("{:<28} | {cold:>9.3} | {warm:>9.3} | {rows:>7}", spec.name);
        }
    });
}
