//! Derived tables: the status rule applied to the current events of every woman in scope.
//!
//! - `people`: one row per woman with a `women` record (the most recently ingested wins).
//! - `status_episodes`: her episodes in the ledger (the model's rule).
//! - `residence`: which village (or none: moved out) on which days.
//! - `ledger_runs`: for each level (province … village), the maximal pieces of an episode spent
//!   in one region at that level. A move across a region's border inside an episode ends a run
//!   there (`transfer_out`) and starts one in the new region (`transfer_in`); at province level
//!   every episode is one run. Stock, entries, exits and balance all count runs, so the balance
//!   identity holds at every level by construction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{Date32Builder, Int32Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::Date32Type;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use careledger_model::status::{
    EventKind, LifeEvent, RuleParams, Woman, derive_episodes, residence_history,
};
use careledger_model::{RegionLevel, epoch_days as days, from_epoch_days as date, regions};
use chrono::NaiveDate;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::Result;

/// The derived tables of one snapshot.
#[derive(Debug)]
pub struct Derived {
    pub people: RecordBatch,
    pub episodes: RecordBatch,
    pub residence: RecordBatch,
    pub runs: RecordBatch,
    /// The current view of each pushed table, computed once per snapshot key (deduplicating
    /// versions is the costliest step of a report otherwise).
    pub current: Vec<(&'static str, SchemaRef, Vec<RecordBatch>)>,
    /// Time spent materialising the current views and deriving (for benchmarks).
    pub elapsed: Duration,
}

impl Derived {
    pub(crate) fn register(&self, ctx: &SessionContext) -> Result<()> {
        register_current(ctx, &self.current)?;
        for (name, batch) in [
            ("people", &self.people),
            ("status_episodes", &self.episodes),
            ("residence", &self.residence),
            ("ledger_runs", &self.runs),
        ] {
            crate::reference::register(ctx, name, batch.clone())?;
        }
        Ok(())
    }
}

/// Replaces the current views by their materialised rows, in two partitions.
fn register_current(
    ctx: &SessionContext,
    current: &[(&'static str, SchemaRef, Vec<RecordBatch>)],
) -> Result<()> {
    for (name, schema, batches) in current {
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(), Vec::new()];
        for (i, b) in batches.iter().enumerate() {
            parts[i % 2].push(b.clone());
        }
        ctx.deregister_table(*name)?;
        ctx.register_table(*name, Arc::new(MemTable::try_new(schema.clone(), parts)?))?;
    }
    Ok(())
}

/// A column as plain UTF-8 (Delta scans may return string views or dictionaries).
fn utf8(col: &arrow_array::ArrayRef) -> Result<arrow_array::StringArray> {
    let cast = datafusion::arrow::compute::cast(col, &DataType::Utf8)?;
    Ok(cast.as_string::<i32>().clone())
}

/// A column as Date32.
fn date32(col: &arrow_array::ArrayRef) -> Result<arrow_array::Date32Array> {
    let cast = datafusion::arrow::compute::cast(col, &DataType::Date32)?;
    Ok(cast.as_primitive::<Date32Type>().clone())
}

struct PersonRec {
    region: Option<String>,
    marital: Option<String>,
    ethnicity: Option<String>,
    birth: Option<NaiveDate>,
}

const LEVELS: [RegionLevel; 5] = RegionLevel::ALL;

/// Reads the current `women` and `life_events` views of `ctx` and derives the tables.
pub(crate) async fn derive(ctx: &SessionContext, params: &RuleParams) -> Result<Derived> {
    let started = Instant::now();
    let mut current = Vec::new();
    for t in careledger_model::Table::ALL {
        let df = ctx.table(t.as_str()).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        current.push((t.as_str(), schema, df.collect().await?));
    }
    register_current(ctx, &current)?;
    let women = ctx
        .sql(
            "SELECT person_key, region_code, marital_status, ethnicity, birth_date FROM women \
             WHERE person_key IS NOT NULL ORDER BY person_key, ingested_at, source, record_id",
        )
        .await?
        .collect()
        .await?;
    let mut people: HashMap<String, PersonRec> = HashMap::new();
    for b in &women {
        let pk = utf8(b.column(0))?;
        let region = utf8(b.column(1))?;
        let marital = utf8(b.column(2))?;
        let eth = utf8(b.column(3))?;
        let birth = date32(b.column(4))?;
        for i in 0..b.num_rows() {
            let opt =
                |a: &arrow_array::StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
            // Later rows (more recently ingested) overwrite earlier ones.
            people.insert(
                pk.value(i).to_string(),
                PersonRec {
                    region: opt(&region),
                    marital: opt(&marital),
                    ethnicity: opt(&eth),
                    birth: (!birth.is_null(i)).then(|| date(birth.value(i))),
                },
            );
        }
    }
    let events = ctx
        .sql("SELECT person_key, event_type, event_date, region_code FROM life_events WHERE person_key IS NOT NULL")
        .await?
        .collect()
        .await?;
    let mut by_person: HashMap<String, Vec<LifeEvent>> = HashMap::new();
    for b in &events {
        let pk = utf8(b.column(0))?;
        let kind = utf8(b.column(1))?;
        let d = date32(b.column(2))?;
        let region = utf8(b.column(3))?;
        for i in 0..b.num_rows() {
            if !people.contains_key(pk.value(i)) || d.is_null(i) {
                continue; // orphans derive no status until her record arrives
            }
            let Some(kind) = EventKind::parse(kind.value(i)) else {
                continue;
            };
            by_person
                .entry(pk.value(i).to_string())
                .or_default()
                .push(LifeEvent {
                    date: date(d.value(i)),
                    kind,
                    region_code: (!region.is_null(i)).then(|| region.value(i).to_string()),
                });
        }
    }

    let table = regions();
    let rural = |c: &str| table.is_rural_village(c);
    let rule_version = params.rule_version();
    let mut keys: Vec<&String> = people.keys().collect();
    keys.sort();

    let mut p_key = StringBuilder::new();
    let mut p_region = StringBuilder::new();
    let mut p_marital = StringBuilder::new();
    let mut p_eth = StringBuilder::new();
    let mut p_birth = Date32Builder::new();

    let mut e_key = StringBuilder::new();
    let mut e_no = Int32Builder::new();
    let mut e_start = Date32Builder::new();
    let mut e_end = Date32Builder::new();
    let mut e_entry = StringBuilder::new();
    let mut e_exit = StringBuilder::new();
    let mut e_rs = StringBuilder::new();
    let mut e_re = StringBuilder::new();
    let mut e_rule = StringBuilder::new();

    let mut r_key = StringBuilder::new();
    let mut r_from = Date32Builder::new();
    let mut r_to = Date32Builder::new();
    let mut r_region = StringBuilder::new();

    let mut u_level = StringBuilder::new();
    let mut u_region = StringBuilder::new();
    let mut u_key = StringBuilder::new();
    let mut u_no = Int32Builder::new();
    let mut u_start = Date32Builder::new();
    let mut u_end = Date32Builder::new();
    let mut u_entry = StringBuilder::new();
    let mut u_exit = StringBuilder::new();

    let mut ancestors: HashMap<String, [Option<String>; 5]> = HashMap::new();
    let empty: Vec<LifeEvent> = Vec::new();
    for key in keys {
        let rec = &people[key];
        p_key.append_value(key);
        p_region.append_option(rec.region.as_deref());
        p_marital.append_option(rec.marital.as_deref());
        p_eth.append_option(rec.ethnicity.as_deref());
        p_birth.append_option(rec.birth.map(days));

        let evs = by_person.get(key).unwrap_or(&empty);
        let history = residence_history(rec.region.as_deref(), evs);
        for (i, (from, region)) in history.iter().enumerate() {
            let to = history.get(i + 1).and_then(|(f, _)| *f);
            r_key.append_value(key);
            r_from.append_value(from.map_or(
                days(NaiveDate::from_ymd_opt(1900, 1, 1).expect("date")),
                days,
            ));
            r_to.append_option(to.map(days));
            r_region.append_option(region.as_deref());
        }
        // The record's marital code as it is: the rule reads it (docs/status-rule.md).
        let woman = Woman {
            base_region: rec.region.as_deref(),
            marital_status: rec.marital.as_deref(),
            birth_date: rec.birth,
            events: evs,
        };
        let episodes = derive_episodes(&woman, &rural, params);
        for (n, ep) in episodes.iter().enumerate() {
            let no = n as i32 + 1;
            e_key.append_value(key);
            e_no.append_value(no);
            e_start.append_value(days(ep.start));
            e_end.append_option(ep.end.map(days));
            e_entry.append_value(ep.entry_reason);
            e_exit.append_option(ep.exit_reason);
            e_rs.append_option(ep.region_at_start.as_deref());
            e_re.append_option(ep.region_at_end.as_deref());
            e_rule.append_value(&rule_version);

            // Pieces of the episode in one village: split at residence changes inside it.
            let mut pieces: Vec<(NaiveDate, Option<NaiveDate>, Option<&str>)> = Vec::new();
            for (i, (from, region)) in history.iter().enumerate() {
                let to = history.get(i + 1).and_then(|(f, _)| *f);
                let s = from.map_or(ep.start, |f| f.max(ep.start));
                let e = match (to, ep.end) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if e.is_none_or(|e| s < e)
                    && to.is_none_or(|t| t > ep.start)
                    && ep.end.is_none_or(|end| s < end)
                {
                    pieces.push((s, e, region.as_deref()));
                }
            }
            for (li, level) in LEVELS.iter().enumerate() {
                let mut runs: Vec<(NaiveDate, Option<NaiveDate>, Option<String>)> = Vec::new();
                for (s, e, village) in &pieces {
                    let code = village.and_then(|v| {
                        ancestors.entry(v.to_string()).or_insert_with(|| {
                            LEVELS.map(|l| table.ancestor(v, l).map(|r| r.code.clone()))
                        })[li]
                            .clone()
                    });
                    match runs.last_mut() {
                        Some(last) if last.2 == code => last.1 = *e,
                        _ => runs.push((*s, *e, code)),
                    }
                }
                let count = runs.len();
                for (ri, (s, e, code)) in runs.into_iter().enumerate() {
                    u_level.append_value(level.as_str());
                    u_region.append_option(code.as_deref());
                    u_key.append_value(key);
                    u_no.append_value(no);
                    u_start.append_value(days(s));
                    u_end.append_option(e.map(days));
                    u_entry.append_value(if ri == 0 {
                        ep.entry_reason
                    } else {
                        "transfer_in"
                    });
                    if ri + 1 < count {
                        u_exit.append_value("transfer_out");
                    } else {
                        u_exit.append_option(ep.exit_reason);
                    }
                }
            }
        }
    }

    let people_batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("person_key", DataType::Utf8, false),
            Field::new("region_code", DataType::Utf8, true),
            Field::new("marital_status", DataType::Utf8, true),
            Field::new("ethnicity", DataType::Utf8, true),
            Field::new("birth_date", DataType::Date32, true),
        ])),
        vec![
            Arc::new(p_key.finish()),
            Arc::new(p_region.finish()),
            Arc::new(p_marital.finish()),
            Arc::new(p_eth.finish()),
            Arc::new(p_birth.finish()),
        ],
    )?;
    let episodes = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("person_key", DataType::Utf8, false),
            Field::new("episode_no", DataType::Int32, false),
            Field::new("start_date", DataType::Date32, false),
            Field::new("end_date", DataType::Date32, true),
            Field::new("entry_reason", DataType::Utf8, false),
            Field::new("exit_reason", DataType::Utf8, true),
            Field::new("region_at_start", DataType::Utf8, true),
            Field::new("region_at_end", DataType::Utf8, true),
            Field::new("rule_version", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(e_key.finish()),
            Arc::new(e_no.finish()),
            Arc::new(e_start.finish()),
            Arc::new(e_end.finish()),
            Arc::new(e_entry.finish()),
            Arc::new(e_exit.finish()),
            Arc::new(e_rs.finish()),
            Arc::new(e_re.finish()),
            Arc::new(e_rule.finish()),
        ],
    )?;
    let residence = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("person_key", DataType::Utf8, false),
            Field::new("valid_from", DataType::Date32, false),
            Field::new("valid_to", DataType::Date32, true),
            Field::new("region_code", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(r_key.finish()),
            Arc::new(r_from.finish()),
            Arc::new(r_to.finish()),
            Arc::new(r_region.finish()),
        ],
    )?;
    let runs = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("level", DataType::Utf8, false),
            Field::new("region_code", DataType::Utf8, true),
            Field::new("person_key", DataType::Utf8, false),
            Field::new("episode_no", DataType::Int32, false),
            Field::new("run_start", DataType::Date32, false),
            Field::new("run_end", DataType::Date32, true),
            Field::new("entry_reason", DataType::Utf8, false),
            Field::new("exit_reason", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(u_level.finish()),
            Arc::new(u_region.finish()),
            Arc::new(u_key.finish()),
            Arc::new(u_no.finish()),
            Arc::new(u_start.finish()),
            Arc::new(u_end.finish()),
            Arc::new(u_entry.finish()),
            Arc::new(u_exit.finish()),
        ],
    )?;
    Ok(Derived {
        people: people_batch,
        episodes,
        residence,
        runs,
        current,
        elapsed: started.elapsed(),
    })
}
