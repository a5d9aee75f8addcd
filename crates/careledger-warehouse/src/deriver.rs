//! The deriver: keeps the derived tables of the store (`derived/…`) up to date with the pushed
//! tables, outside any request.
//!
//! A *cycle* reads the rows that the commits since its watermark added, finds the women they
//! touch (by `person_key`: the new rows' women, and every woman any version of a touched record
//! ever named), reads every version of every record of those women, and writes their whole
//! derivation again: the current rows of the five pushed tables and `people`,
//! `status_episodes`, `residence`, `ledger_runs`, each row with the transaction-time interval
//! (`known_from`, `known_to`) during which it held. Rows are appended with the cycle's number
//! (`gen`); the cycle then appends `(person_key, cycle)` for each woman it rewrote to
//! `derived/superseded`, and that last commit records the watermark (Delta application
//! transactions): the cycle number, the version of every pushed table it has read, the latest
//! `ingested_at` it reflects, the rule. Readers take only rows of complete cycles
//! ([`DerivedState`]), so a cycle is visible all at once. After a crash, rows of a cycle that did
//! not reach its last commit are deleted and the cycle runs again from the same watermark.
//!
//! A full rebuild (first start, a new rule version, or `careledger derive --rebuild`) is one
//! cycle over every woman, in buckets of `person_key`, that sets the *floor*: rows of earlier
//! cycles are dead from then on. [`Deriver::compact`] rewrites the tables without dead rows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    Date32Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Schema, SchemaRef};
use careledger_model::pseudonym::person_id;
use careledger_model::status::{EventKind, LifeEvent, RuleParams};
use careledger_model::{Table, from_epoch_days as date};
use careledger_store::{
    Append, DERIVED_EPISODES, DERIVED_PEOPLE, DERIVED_RESIDENCE, DERIVED_RUNS, DERIVED_SUPERSEDED,
    PERSON_ID, Staged, Store, derived_current, derived_tables,
};
use chrono::{DateTime, Utc};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use crate::derive::{Ancestors, EpisodeRow, PersonRec, ResidenceRow, RunRow, derive_woman};
use crate::partition::{Spill, nullable};
use crate::runs::Runs;
use crate::{QUERY_PARTITIONS, Result, WarehouseError};

type Provider = Arc<dyn datafusion::catalog::TableProvider>;

/// Women derived together (their records held in memory at once) in an incremental cycle.
const CHUNK: usize = 40_000;

/// A rebuild derives the women in buckets of about this much stored Parquet of the pushed
/// tables (up to 256 buckets): one bucket's records, and their derivation, are in memory at once.
/// The rows are split by bucket in one pass (`partition.rs`), so smaller buckets cost no more
/// scans: at 1M women (431 MB, 52–54 buckets) a standalone rebuild peaked at 690–741 MiB in
/// 50–53 s; the same code with 64 MiB buckets (7) at 1,700 MiB in 57 s.
pub const REBUILD_BUCKET_BYTES: u64 = 8 << 20;

/// The files a rebuild writes each clustered derived table as, each sorted throughout: a
/// few per query partition, so that the rows a filter on the order selects are spread over
/// every partition's files (with one file per partition, breadth's scan of 2024's services
/// read 1.08M rows in one partition and 1.80M in the other).
const SORTED_FILES: usize = 4 * QUERY_PARTITIONS;

/// Past this many women touched, a cycle is a full rebuild (fewer scans of the pushed tables).
const REBUILD_ABOVE: usize = 4 * CHUNK;

/// Past this many new rows (read from the commits' statistics), a cycle is a full rebuild
/// before any row is read: they touch more than [`REBUILD_ABOVE`] women but for the rare
/// pushes that carry many rows per woman, and a rebuild gives the same rows as the cycle.
const REBUILD_ABOVE_ROWS: u64 = 4 * REBUILD_ABOVE as u64;

const APP_GEN: &str = "careledger-deriver/cycle";
const APP_FLOOR: &str = "careledger-deriver/floor";
const APP_RULE: &str = "careledger-deriver/rule";
const APP_REFLECTS: &str = "careledger-deriver/reflects";
const APP_SUPERSEDED: &str = "careledger-deriver/superseded-rows";
const APP_WOMEN: &str = "careledger-deriver/women";

fn app_source(table: Table) -> String {
    format!("careledger-deriver/source/{}", table.as_str())
}

/// The layout of the derived tables. A store derived under another layout (or another rule)
/// is rebuilt when the deriver first runs: `person-id` added `person_id` to every derived
/// table, `service-in-episode` added `in_episode` to `current_services`; rows derived before
/// either lack it.
const DERIVED_LAYOUT: &str = "person-id|service-in-episode";

/// A stable number for a rule version and the derived layout (Delta transactions hold
/// integers).
fn rule_fingerprint(rule: &RuleParams) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{}|{DERIVED_LAYOUT}", rule.rule_version()).as_bytes());
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes")) & i64::MAX
}

/// What the derived tables reflect: the last complete cycle and its watermark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DerivedState {
    /// The last complete cycle (0: nothing derived yet).
    pub cycle: i64,
    /// Rows of cycles below this are dead (the last full rebuild).
    pub floor: i64,
    /// Fingerprint of the rule version the rows were derived with.
    pub rule: Option<i64>,
    /// Version of each pushed table read so far.
    pub sources: BTreeMap<String, u64>,
    /// The latest `ingested_at` (µs) reflected.
    pub reflects: Option<i64>,
    /// Entries in `derived/superseded` (0: every stored row of a complete cycle is live).
    pub superseded_rows: i64,
    /// Women with a current `people` row at the last rebuild or compaction.
    pub women: i64,
}

impl DerivedState {
    /// Reads the watermark from the store's latest `derived/superseded` commit.
    pub async fn read(store: &Store) -> Result<DerivedState> {
        let mut apps: Vec<String> = [
            APP_GEN,
            APP_FLOOR,
            APP_RULE,
            APP_REFLECTS,
            APP_SUPERSEDED,
            APP_WOMEN,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        apps.extend(Table::ALL.iter().map(|t| app_source(*t)));
        let v = store.txn_versions(DERIVED_SUPERSEDED, &apps).await?;
        let mut sources = BTreeMap::new();
        for (i, t) in Table::ALL.iter().enumerate() {
            sources.insert(t.as_str().to_string(), v[6 + i].unwrap_or(0).max(0) as u64);
        }
        Ok(DerivedState {
            cycle: v[0].unwrap_or(0),
            floor: v[1].unwrap_or(0),
            rule: v[2],
            reflects: v[3],
            superseded_rows: v[4].unwrap_or(0),
            women: v[5].unwrap_or(0),
            sources,
        })
    }

    /// Whether the stored rows were derived under `rule` and this build's layout of the derived
    /// tables (or nothing is derived yet). When not, the deriver's next cycle is a full
    /// rebuild, and until it commits the rows may lack columns this build reads.
    pub fn derived_under(&self, rule: &RuleParams) -> bool {
        self.cycle == 0 || self.rule == Some(rule_fingerprint(rule))
    }

    /// The latest commit time (`ingested_at`) of pushed rows that the derived tables reflect.
    pub fn reflects_at(&self) -> Option<DateTime<Utc>> {
        self.reflects.and_then(DateTime::from_timestamp_micros)
    }

    /// Whether version `version` of pushed table `table` is reflected.
    pub fn covers(&self, table: &str, version: u64) -> bool {
        self.sources.get(table).is_some_and(|v| *v >= version)
    }

    fn txns(&self, rule: i64) -> Vec<(String, i64)> {
        let mut out = vec![
            (APP_GEN.to_string(), self.cycle),
            (APP_FLOOR.to_string(), self.floor),
            (APP_RULE.to_string(), rule),
            (APP_SUPERSEDED.to_string(), self.superseded_rows),
            (APP_WOMEN.to_string(), self.women),
        ];
        if let Some(r) = self.reflects {
            out.push((APP_REFLECTS.to_string(), r));
        }
        for t in Table::ALL {
            out.push((app_source(t), self.sources[t.as_str()] as i64));
        }
        out
    }
}

/// What one cycle did.
#[derive(Debug, Clone, Default)]
pub struct CycleStats {
    pub cycle: i64,
    /// A full rebuild (every woman).
    pub rebuild: bool,
    /// Pushed rows read from the new commits.
    pub new_rows: usize,
    /// Women rewritten.
    pub women: usize,
    /// Of them, women with a current `people` row.
    pub women_current: usize,
    /// Derived rows written.
    pub rows_written: usize,
    /// Time spent reading, deriving (the CPU part) and writing.
    pub read: Duration,
    pub derive: Duration,
    pub write: Duration,
}

/// Maintains the derived tables of one store. One cycle runs at a time (a lock), so two
/// callers never derive the same commits twice.
#[derive(Debug)]
pub struct Deriver {
    store: Arc<Store>,
    rule: RuleParams,
    lock: tokio::sync::Mutex<()>,
    bucket_bytes: u64,
}

/// The derived data tables (all but `derived/superseded`).
/// The order rows of a derived table are written in (ascending, nulls first), so that the
/// filters reports put on it skip whole pages (Parquet page statistics): `ledger_runs` by
/// level, then current before ended, then region (every region-level report reads one level
/// under one prefix, as known now), the current services current first, then by date (the
/// coverage reports read one period). Each file is in this order; files are not merged.
fn cluster_order(name: &str) -> &'static [&'static str] {
    // Nulls first, so that within a level the current rows (`known_to` NULL) come before the
    // history (rows whose knowledge has ended), and a query of now skips the history's pages.
    if name == DERIVED_RUNS {
        &["level", "known_to", "region_code", "run_start"]
    } else if name == derived_current(Table::Services) {
        &["known_to", "service_date"]
    } else {
        &[]
    }
}

/// `batches` as one batch in [`cluster_order`] (unchanged when the table has none).
fn clustered(
    name: &str,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
    let order = cluster_order(name);
    if order.is_empty() || batches.is_empty() {
        return Ok(batches);
    }
    let all = datafusion::arrow::compute::concat_batches(schema, &batches)?;
    let columns: Vec<SortColumn> = order
        .iter()
        .map(|c| {
            Ok(SortColumn {
                values: all.column(schema.index_of(c)?).clone(),
                options: None,
            })
        })
        .collect::<Result<_>>()?;
    let indices = lexsort_to_indices(&columns, None)?;
    Ok(vec![take_record_batch(&all, &indices)?])
}

fn data_tables() -> Vec<(&'static str, SchemaRef)> {
    derived_tables()
        .into_iter()
        .filter(|(n, _)| *n != DERIVED_SUPERSEDED)
        .collect()
}

/// Which women a cycle rewrites.
enum Women {
    /// These keys.
    Keys(HashSet<String>),
    /// Every woman whose key starts with one of these pairs of hex digits (a rebuild bucket).
    Prefixes(HashSet<String>),
}

impl Women {
    fn contains(&self, key: &str) -> bool {
        match self {
            Women::Keys(k) => k.contains(key),
            Women::Prefixes(p) => key.get(..2).is_some_and(|c| p.contains(c)),
        }
    }
}

impl Deriver {
    pub fn new(store: Arc<Store>, rule: RuleParams) -> Deriver {
        Deriver {
            store,
            rule,
            lock: tokio::sync::Mutex::new(()),
            bucket_bytes: REBUILD_BUCKET_BYTES,
        }
    }

    /// Rebuild buckets of about `bytes` of stored Parquet each (default
    /// [`REBUILD_BUCKET_BYTES`]; at most 256 buckets).
    pub fn with_rebuild_bucket_bytes(mut self, bytes: u64) -> Deriver {
        self.bucket_bytes = bytes.max(1);
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs cycles until every commit present when it was called is reflected.
    pub async fn catch_up(&self) -> Result<Vec<CycleStats>> {
        let mut out = Vec::new();
        while let Some(stats) = self.run_once().await? {
            out.push(stats);
        }
        Ok(out)
    }

    /// One cycle over the commits since the watermark (a full rebuild if nothing was derived
    /// yet or the rule changed); None when there was nothing new.
    pub async fn run_once(&self) -> Result<Option<CycleStats>> {
        let _one = self.lock.lock().await;
        let state = DerivedState::read(&self.store).await?;
        self.recover(&state).await?;
        let rule = rule_fingerprint(&self.rule);
        if state.cycle == 0 || state.rule != Some(rule) {
            return Ok(Some(self.rebuild_locked(&state).await?));
        }
        let mut tables = Vec::new();
        let mut changed = false;
        for t in Table::ALL {
            let table = self.store.refresh(t.as_str()).await?;
            let v = table.version().unwrap_or(0);
            changed |= v > state.sources[t.as_str()];
            tables.push((t, table.table_provider().await?, v));
        }
        if !changed {
            return Ok(None);
        }
        // Rows enough that they surely touch more women than REBUILD_ABOVE (a bulk load):
        // a rebuild at once, without first holding the new rows and the records they touch
        // (counted from the commits' file statistics, no data read). That step held 2.5 GB
        // for a few seconds at 1M women, on top of the ingest.
        let mut new_rows_counted = 0u64;
        for (t, _, v) in &tables {
            let from = state.sources[t.as_str()];
            if *v > from {
                new_rows_counted += self.store.added_row_count(t.as_str(), from, *v).await?;
            }
        }
        if new_rows_counted > REBUILD_ABOVE_ROWS {
            tracing::debug!(new_rows = new_rows_counted, "so many new rows: rebuilding");
            return Ok(Some(self.rebuild_locked(&state).await?));
        }
        let started = Instant::now();
        let cycle = state.cycle + 1;
        let mut next = state.clone();
        next.cycle = cycle;
        // The new rows: their women, and their records (whose other versions may name others).
        let ctx = input_context(&tables).await?;
        let mut keys: HashSet<String> = HashSet::new();
        let mut new_rows = 0usize;
        for (t, _, v) in &tables {
            let from = state.sources[t.as_str()];
            next.sources.insert(t.as_str().to_string(), *v);
            if *v <= from {
                continue;
            }
            let rows = match self.store.added_rows(t.as_str(), from, *v).await {
                Ok(rows) => rows,
                Err(e) => {
                    // The files those commits added are gone (compacted and vacuumed while
                    // nothing derived them) or a commit file is missing: derive everything
                    // from what the tables hold now.
                    tracing::warn!(table = t.as_str(), error = %e, "the new rows cannot be read; rebuilding");
                    drop(ctx);
                    return Ok(Some(self.rebuild_locked(&state).await?));
                }
            };
            let mut records: HashSet<(String, String)> = HashSet::new();
            for b in &rows {
                new_rows += b.num_rows();
                let pk = utf8(b, "person_key")?;
                let src = utf8(b, "source")?;
                let rid = utf8(b, "record_id")?;
                let ing = b
                    .column_by_name("ingested_at")
                    .map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
                for i in 0..b.num_rows() {
                    if !pk.is_null(i) {
                        keys.insert(pk.value(i).to_string());
                    }
                    records.insert((src.value(i).to_string(), rid.value(i).to_string()));
                    if let Some(ing) = &ing
                        && !ing.is_null(i)
                    {
                        next.reflects = Some(next.reflects.unwrap_or(i64::MIN).max(ing.value(i)));
                    }
                }
            }
            if keys.len() > REBUILD_ABOVE {
                break;
            }
            if records.is_empty() {
                continue;
            }
            let (src, rid): (Vec<String>, Vec<String>) = records.into_iter().unzip();
            let batch = RecordBatch::try_from_iter(vec![
                ("source", Arc::new(StringArray::from(src)) as ArrayRef),
                ("record_id", Arc::new(StringArray::from(rid)) as ArrayRef),
            ])?;
            ctx.register_table(
                "touched_records_",
                Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
            )?;
            let others = ctx
                .sql(&format!(
                    "SELECT DISTINCT r.person_key FROM touched_records_ k JOIN delta_{0} r \
                     ON r.source = k.source AND r.record_id = k.record_id \
                     WHERE r.person_key IS NOT NULL",
                    t.as_str()
                ))
                .await?
                .collect()
                .await?;
            ctx.deregister_table("touched_records_")?;
            for b in &others {
                let pk = utf8(b, "person_key")?;
                for i in 0..b.num_rows() {
                    keys.insert(pk.value(i).to_string());
                }
            }
        }
        let mut stats = CycleStats {
            cycle,
            new_rows,
            ..CycleStats::default()
        };
        if keys.len() > REBUILD_ABOVE {
            // So many women (a burst while the server was down, a first push of a whole
            // county): a rebuild reads the tables twice in all instead of once per chunk.
            drop(ctx);
            return Ok(Some(self.rebuild_locked(&state).await?));
        }
        let mut touched: Vec<String> = keys.into_iter().collect();
        touched.sort();
        stats.women = touched.len();
        stats.read += started.elapsed();
        // At most CHUNK women's records in memory at once: a cycle after a burst of commits
        // derives them chunk by chunk (each chunk scans the pushed tables again).
        for chunk in touched.chunks(CHUNK) {
            let women = Women::Keys(chunk.iter().cloned().collect());
            self.derive_and_write(&ctx, &women, cycle, &mut stats)
                .await?;
        }
        let write = Instant::now();
        next.superseded_rows += touched.len() as i64;
        let superseded = RecordBatch::try_new(
            superseded_schema(),
            vec![
                Arc::new(StringArray::from(touched)) as ArrayRef,
                Arc::new(arrow_array::Int64Array::from(vec![cycle; stats.women])),
            ],
        )?;
        self.store
            .append(
                DERIVED_SUPERSEDED,
                Append {
                    batches: vec![superseded],
                    txns: next.txns(rule),
                    metadata: vec![],
                },
            )
            .await?;
        stats.write += write.elapsed();
        Ok(Some(stats))
    }

    /// Where a rebuild spills: `derived/.spill` in a local store (on its disk; emptied first,
    /// since only the process holding the store's deriver lock derives, whatever is there was
    /// left by a rebuild cut short), else the temporary directory (`TMPDIR`).
    fn spill_dir(&self) -> Result<std::path::PathBuf> {
        let Some(root) = self.store.local_dir() else {
            return Ok(std::env::temp_dir());
        };
        let dir = root.join("derived").join(".spill");
        let io = |e: std::io::Error| {
            WarehouseError::Deriver(format!("spill directory {}: {e}", dir.display()))
        };
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        std::fs::create_dir_all(&dir).map_err(io)?;
        Ok(dir)
    }

    /// Derives every woman again (a new floor); the old rows are dead once it completes.
    pub async fn rebuild(&self) -> Result<CycleStats> {
        let _one = self.lock.lock().await;
        let state = DerivedState::read(&self.store).await?;
        self.recover(&state).await?;
        self.rebuild_locked(&state).await
    }

    async fn rebuild_locked(&self, state: &DerivedState) -> Result<CycleStats> {
        let started = Instant::now();
        let cycle = state.cycle + 1;
        let mut tables = Vec::new();
        let mut next = DerivedState {
            cycle,
            floor: cycle,
            ..DerivedState::default()
        };
        let mut bytes = 0u64;
        for t in Table::ALL {
            let table = self.store.refresh(t.as_str()).await?;
            let v = table.version().unwrap_or(0);
            next.sources.insert(t.as_str().to_string(), v);
            bytes += self.store.file_stats(t.as_str()).await?.bytes;
            tables.push((t, table.table_provider().await?, v));
        }
        let ctx = input_context(&tables).await?;
        // Buckets of about `bucket_bytes` of stored Parquet each, by the key's first two
        // hex digits: a bucket's records are held in memory at once. One pass over the tables
        // splits their rows by bucket (`partition.rs`), so more buckets cost no more scans.
        let buckets = bytes.div_ceil(self.bucket_bytes).clamp(1, 256) as usize;
        let spill_dir = self.spill_dir()?;
        let spill = Spill::write(&ctx, buckets, conform, &spill_dir).await?;
        drop(ctx);
        // The latest commit time read: rows are read at these versions.
        next.reflects = spill.reflects;
        tracing::debug!(buckets, bytes, spilled_rows = spill.rows, "rebuilding");
        let mut stats = CycleStats {
            cycle,
            rebuild: true,
            ..CycleStats::default()
        };
        stats.read += started.elapsed();
        // Each derived table's rows go to staged files committed once at the end (a few
        // large files, not one per bucket); those of a table with a cluster order first to
        // sorted runs, merged into SORTED_FILES files each sorted throughout.
        let mut staged = HashMap::new();
        let mut runs = HashMap::new();
        for (name, _) in data_tables() {
            staged.insert(name, self.store.stage(name).await?);
            if !cluster_order(name).is_empty() {
                // A few sorted files per query partition: a filter on the sort order then
                // reads a part of each file, spread over the partitions.
                let sets = (0..SORTED_FILES)
                    .map(|_| Runs::new(&spill_dir))
                    .collect::<Result<Vec<_>>>()?;
                runs.insert(name, sets);
            }
        }
        for b in 0..buckets {
            let prefixes: HashSet<String> = (0..256usize)
                .filter(|i| i % buckets == b)
                .map(|i| format!("{i:02x}"))
                .collect();
            let read = Instant::now();
            let inputs = spill.take(b)?;
            stats.read += read.elapsed();
            self.derive_inputs(
                inputs,
                &Women::Prefixes(prefixes),
                cycle,
                &mut stats,
                Sink::Staged(&mut staged, &mut runs),
            )
            .await?;
        }
        drop(spill);
        let write = Instant::now();
        let mut sorted: HashMap<&'static str, Vec<Staged>> = HashMap::new();
        for (name, sets) in runs {
            for set in sets {
                let mut files = self.store.stage(name).await?;
                let mut merge = set.merge(cluster_order(name))?;
                while let Some(b) = merge.next_batch()? {
                    files.write(b).await?;
                }
                // Its last row group written out now, not held until the commit.
                files.close().await?;
                sorted.entry(name).or_default().push(files);
            }
        }
        for (name, files) in staged {
            let mut all = vec![files];
            all.extend(sorted.remove(name).unwrap_or_default());
            self.store
                .commit_staged(name, all, vec![(APP_GEN.to_string(), cycle)])
                .await?;
        }
        stats.write += write.elapsed();
        next.women = stats.women_current as i64;
        let write = Instant::now();
        // The old entries are below the floor: cleared with the commit that sets it.
        self.store
            .overwrite(
                DERIVED_SUPERSEDED,
                Append {
                    batches: vec![],
                    txns: next.txns(rule_fingerprint(&self.rule)),
                    metadata: vec![],
                },
            )
            .await?;
        // The rows below the new floor are dead: out of the files (readers skip them by `gen`
        // until then). A crash here leaves them for the next compaction.
        for (name, _) in data_tables() {
            self.store
                .delete_where(
                    name,
                    &format!("gen < {cycle}"),
                    vec![(APP_GEN.to_string(), cycle)],
                )
                .await?;
        }
        stats.write += write.elapsed();
        Ok(stats)
    }

    /// Deletes rows of a cycle that did not complete (a crash between its commits).
    async fn recover(&self, state: &DerivedState) -> Result<()> {
        for (name, _) in data_tables() {
            let written = self.store.txn_version(name, APP_GEN).await?.unwrap_or(0);
            if written > state.cycle {
                self.store
                    .delete_where(
                        name,
                        &format!("gen > {}", state.cycle),
                        vec![(APP_GEN.to_string(), state.cycle)],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// The live rows of derived table `name` as of the last complete cycle, every column but
    /// `gen` (for tests, and for reading the derived ledger without the SQL views).
    pub async fn live_rows(&self, name: &str) -> Result<Vec<RecordBatch>> {
        let (ctx, live) = self.live_source(name).await?;
        let schema = derived_tables()
            .into_iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| WarehouseError::Deriver(format!("no derived table {name}")))?
            .1;
        let cols: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| f.name() != "gen")
            .map(|f| format!("t.\"{}\"", f.name()))
            .collect();
        Ok(ctx
            .sql(&format!("SELECT {} FROM {live}", cols.join(", ")))
            .await?
            .collect()
            .await?)
    }

    /// A session holding derived table `name` as `t_` and `derived/superseded` as
    /// `superseded_`, and the `FROM` clause ([`live_from`], at the last complete cycle) that
    /// keeps the live rows of `t_`.
    async fn live_source(&self, name: &str) -> Result<(SessionContext, String)> {
        let state = DerivedState::read(&self.store).await?;
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        let sup = self.store.refresh(DERIVED_SUPERSEDED).await?;
        ctx.register_table("superseded_", sup.table_provider().await?)?;
        let table = self.store.refresh(name).await?;
        ctx.register_table("t_", table.table_provider().await?)?;
        Ok((ctx, live_from("t_", "superseded_", &state)))
    }

    /// How many `person_id`s the live `people` rows share between different `person_key`s
    /// (0 unless two women's pseudonyms agree in their first 64 bits, see
    /// `careledger_model::pseudonym::person_id`). Reports join and group on `person_id`, so
    /// such women would be counted as one: the server checks after every rebuild and
    /// compaction and logs an error naming the count.
    pub async fn person_id_collisions(&self) -> Result<u64> {
        let (ctx, live) = self.live_source(DERIVED_PEOPLE).await?;
        let batches = ctx
            .sql(&format!(
                "SELECT count(*) AS n FROM (SELECT t.person_id FROM {live} AND t.known_to IS NULL \
                 GROUP BY t.person_id HAVING count(DISTINCT t.person_key) > 1)"
            ))
            .await?
            .collect()
            .await?;
        let n = batches
            .first()
            .filter(|b| b.num_rows() > 0)
            .map_or(0, |b| b.column(0).as_primitive::<Int64Type>().value(0));
        Ok(n as u64)
    }

    /// Whether dead rows are many enough to rewrite the tables without them: more superseded
    /// entries than a quarter of the women (and at least 10,000).
    pub fn needs_compaction(state: &DerivedState) -> bool {
        state.superseded_rows > 10_000 && state.superseded_rows > state.women / 4
    }

    /// Rewrites the derived tables with their live rows only (streamed from a scan of the old
    /// version into the new one, never held whole), and empties `derived/superseded`. Answers
    /// are unchanged; returns the rows dropped.
    pub async fn compact(&self) -> Result<usize> {
        let _one = self.lock.lock().await;
        let state = DerivedState::read(&self.store).await?;
        self.recover(&state).await?;
        let ctx = careledger_store::write_session();
        let sup = self.store.refresh(DERIVED_SUPERSEDED).await?;
        ctx.register_table("superseded_", sup.table_provider().await?)?;
        let mut removed = 0usize;
        let mut women = 0usize;
        for (name, schema) in data_tables() {
            let table = self.store.refresh(name).await?;
            ctx.register_table("t_", table.table_provider().await?)?;
            // Cast to the stored types: scans may give string views.
            let cols: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| {
                    let c = format!("t.\"{}\"", f.name());
                    match f.data_type() {
                        DataType::Utf8 => format!("arrow_cast({c}, 'Utf8') AS \"{}\"", f.name()),
                        _ => format!("{c} AS \"{}\"", f.name()),
                    }
                })
                .collect();
            let before = count(&ctx.sql("SELECT count(*) FROM t_").await?.collect().await?);
            if name == DERIVED_PEOPLE {
                women = count(
                    &ctx.sql(&format!(
                        "SELECT count(*) FROM {} AND t.known_to IS NULL",
                        live_from("t_", "superseded_", &state)
                    ))
                    .await?
                    .collect()
                    .await?,
                );
            }
            // Nulls first, as `clustered` sorts.
            let order = cluster_order(name)
                .iter()
                .map(|c| format!("\"{c}\" ASC NULLS FIRST"))
                .collect::<Vec<_>>();
            let order = if order.is_empty() {
                String::new()
            } else {
                format!(" ORDER BY {}", order.join(", "))
            };
            let live = ctx
                .sql(&format!(
                    "SELECT {} FROM {}{order}",
                    cols.join(", "),
                    live_from("t_", "superseded_", &state)
                ))
                .await?;
            let plan = live.logical_plan().clone();
            self.store
                .overwrite_from(
                    name,
                    plan,
                    Arc::new(ctx.state()),
                    vec![(APP_GEN.to_string(), state.cycle)],
                )
                .await?;
            ctx.deregister_table("t_")?;
            let table = self.store.refresh(name).await?;
            ctx.register_table("t_", table.table_provider().await?)?;
            let after = count(&ctx.sql("SELECT count(*) FROM t_").await?.collect().await?);
            ctx.deregister_table("t_")?;
            removed += before.saturating_sub(after);
        }
        let mut next = state.clone();
        next.superseded_rows = 0;
        next.women = women as i64;
        self.store
            .overwrite(
                DERIVED_SUPERSEDED,
                Append {
                    batches: vec![],
                    txns: next.txns(state.rule.unwrap_or(rule_fingerprint(&self.rule))),
                    metadata: vec![],
                },
            )
            .await?;
        Ok(removed)
    }

    /// Reads every version of every record of `women`, derives, and appends the rows (cycle
    /// `gen`) to every derived data table.
    async fn derive_and_write(
        &self,
        ctx: &SessionContext,
        women: &Women,
        cycle: i64,
        stats: &mut CycleStats,
    ) -> Result<()> {
        let read = Instant::now();
        let inputs = self.read_women(ctx, women).await?;
        stats.read += read.elapsed();
        self.derive_inputs(inputs, women, cycle, stats, Sink::Append)
            .await
    }

    /// Every version of every record of `women`, one batch per pushed table in
    /// [`Table::ALL`] order (stored schema).
    async fn read_women(&self, ctx: &SessionContext, women: &Women) -> Result<Vec<RecordBatch>> {
        let filter = match women {
            Women::Keys(keys) => {
                let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                keys.sort_unstable();
                let batch = RecordBatch::try_from_iter(vec![(
                    "person_key",
                    Arc::new(StringArray::from(keys)) as ArrayRef,
                )])?;
                ctx.deregister_table("touched_women_")?;
                ctx.register_table(
                    "touched_women_",
                    Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?),
                )?;
                "x.person_key IN (SELECT person_key FROM touched_women_)".to_string()
            }
            Women::Prefixes(p) => {
                let mut list: Vec<String> = p.iter().map(|c| format!("'{c}'")).collect();
                list.sort_unstable();
                format!("substr(x.person_key, 1, 2) IN ({})", list.join(", "))
            }
        };
        let mut inputs = Vec::new();
        for t in Table::ALL {
            let name = t.as_str();
            let mut stream = ctx
                .sql(&format!(
                    "WITH k AS (SELECT DISTINCT x.source, x.record_id FROM delta_{name} x \
                     WHERE {filter}) \
                     SELECT r.* FROM k JOIN delta_{name} r \
                     ON r.source = k.source AND r.record_id = k.record_id"
                ))
                .await?
                .execute_stream()
                .await?;
            // Each batch is converted to the stored schema as it comes: the join's output
            // holds string views into every page the scan decoded, so collecting it first
            // kept most of the table's text alive (1.8 GB for a 1.7M-row bucket of
            // `services` at 1M women); the cast keeps only the rows' own bytes.
            let schema = t.spec().stored_schema();
            let mut rows = Vec::new();
            while let Some(b) = stream.next().await {
                rows.push(conform(&b?, &schema)?);
            }
            drop(stream);
            inputs.push(datafusion::arrow::compute::concat_batches(
                &nullable(&schema),
                &rows,
            )?);
        }
        Ok(inputs)
    }

    /// Derives the women `women` admits from `inputs` (every version of their records, one
    /// batch per pushed table) and writes the rows (cycle `gen`) to every derived data table.
    async fn derive_inputs(
        &self,
        inputs: Vec<RecordBatch>,
        women: &Women,
        cycle: i64,
        stats: &mut CycleStats,
        mut sink: Sink<'_>,
    ) -> Result<()> {
        let started = Instant::now();
        let member: Arc<dyn Fn(&str) -> bool + Send + Sync> = match women {
            Women::Keys(k) => {
                let k = k.clone();
                Arc::new(move |key| k.contains(key))
            }
            Women::Prefixes(p) => {
                let w = Women::Prefixes(p.clone());
                Arc::new(move |key| w.contains(key))
            }
        };
        // The CPU part runs off the async threads, in two halves (by the key's last byte: a
        // rebuild bucket may share the first) on two blocking threads.
        let inputs = Arc::new(inputs);
        let mut halves = Vec::new();
        for half in 0..2u8 {
            let (inputs, member, params) = (inputs.clone(), member.clone(), self.rule.clone());
            halves.push(tokio::task::spawn_blocking(move || {
                let mine =
                    |key: &str| key.as_bytes().last().is_some_and(|b| b % 2 == half) && member(key);
                compute(&inputs, &mine, cycle, &params)
            }));
        }
        let mut out: Vec<(&'static str, Vec<RecordBatch>)> = Vec::new();
        for h in halves {
            let (rows, current) = h
                .await
                .map_err(|e| WarehouseError::Deriver(format!("derivation panicked: {e}")))??;
            stats.women_current += current;
            for (name, batch) in rows {
                match out.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.push(batch),
                    None => out.push((name, vec![batch])),
                }
            }
        }
        // The records are not needed past here: freed before the writes.
        drop(inputs);
        stats.derive += started.elapsed();
        let write = Instant::now();
        for (name, batches) in out {
            let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
            stats.rows_written += n;
            if n == 0 {
                continue;
            }
            let schema = batches[0].schema();
            let batches = clustered(name, &schema, batches)?;
            match &mut sink {
                Sink::Append => {
                    self.store
                        .append(
                            name,
                            Append {
                                batches,
                                txns: vec![(APP_GEN.to_string(), cycle)],
                                metadata: vec![],
                            },
                        )
                        .await?;
                }
                Sink::Staged(files, runs) => {
                    if let Some(runs) = runs.get_mut(name) {
                        // To the set with the fewest rows so far: the merged files come out
                        // about the same size.
                        let run = runs
                            .iter_mut()
                            .min_by_key(|r| r.rows())
                            .expect("at least one set of runs");
                        for b in &batches {
                            run.push(b)?;
                        }
                        continue;
                    }
                    let staged = files.get_mut(name).ok_or_else(|| {
                        WarehouseError::Deriver(format!("no staged files for {name}"))
                    })?;
                    for b in batches {
                        staged.write(b).await?;
                    }
                }
            }
        }
        stats.write += write.elapsed();
        Ok(())
    }
}

/// Where [`Deriver::derive_inputs`] puts its rows.
enum Sink<'a> {
    /// One commit per derived table (an incremental cycle's chunk).
    Append,
    /// Into each derived table's staged files, committed by the caller (a rebuild: its
    /// buckets go to a few large files instead of one file per bucket and table); the rows of
    /// a table with a cluster order to one of its [`SORTED_FILES`] sets of sorted runs,
    /// which the caller merges into as many files, each sorted throughout.
    Staged(
        &'a mut HashMap<&'static str, Staged>,
        &'a mut HashMap<&'static str, Vec<Runs>>,
    ),
}

fn superseded_schema() -> SchemaRef {
    derived_tables()
        .into_iter()
        .find(|(n, _)| *n == DERIVED_SUPERSEDED)
        .expect("superseded is a derived table")
        .1
}

fn count(batches: &[RecordBatch]) -> usize {
    batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .map(|b| b.column(0).as_primitive::<Int64Type>().value(0) as usize)
        .unwrap_or(0)
}

/// A session over the pushed tables at the versions of `tables` (`delta_<name>`).
async fn input_context(tables: &[(Table, Provider, u64)]) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    for (t, table, _) in tables {
        ctx.register_table(format!("delta_{}", t.as_str()), table.clone())?;
    }
    Ok(ctx)
}

/// `FROM … WHERE …` of the live rows of derived table `table` (alias `t`) as of `state`: rows
/// of complete cycles at or above the floor that no later cycle superseded. The caller may add
/// `AND` conditions (the transaction-time filter).
pub(crate) fn live_from(table: &str, superseded: &str, state: &DerivedState) -> String {
    let bounds = format!("t.gen >= {} AND t.gen <= {}", state.floor, state.cycle);
    if state.superseded_rows == 0 {
        return format!("{table} t WHERE {bounds}");
    }
    // The small side (the superseded women) is the join's build side: a RIGHT join keeps every
    // row of `t` and streams it.
    format!(
        "(SELECT person_key AS sk_, max(gen) AS sg_ FROM {superseded} \
         WHERE gen > {floor} AND gen <= {g} GROUP BY person_key) s \
         RIGHT JOIN {table} t ON s.sk_ = t.person_key \
         WHERE {bounds} AND (s.sg_ IS NULL OR s.sg_ <= t.gen)",
        floor = state.floor,
        g = state.cycle
    )
}

/// A column of `b` as plain UTF-8.
pub(crate) fn utf8(b: &RecordBatch, name: &str) -> Result<StringArray> {
    let col = b.column_by_name(name).ok_or_else(|| {
        WarehouseError::Deriver(format!("column {name} is missing from the input"))
    })?;
    let cast = datafusion::arrow::compute::cast(col, &DataType::Utf8)?;
    Ok(cast.as_string::<i32>().clone())
}

/// The schema a derived table's rows are built with: the stored one without `person_id`,
/// which [`with_person_id`] adds.
fn built(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != PERSON_ID)
        .cloned()
        .collect();
    Arc::new(Schema::new(fields))
}

/// `b` (built with [`built`]`(schema)`) with its `person_id` column, from `person_key`, in
/// its place in `schema`.
fn with_person_id(b: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let keys = utf8(&b, "person_key")?;
    let ids: arrow_array::Int64Array = keys.iter().map(|k| k.and_then(person_id)).collect();
    let mut cols = b.columns().to_vec();
    cols.insert(schema.index_of(PERSON_ID)?, Arc::new(ids));
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// Casts a scanned batch to `schema` (Delta scans may return string views or dictionaries).
fn conform(b: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = match b.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => c.clone(),
            Some(c) => datafusion::arrow::compute::cast(c, f.data_type())?,
            None => arrow_array::new_null_array(f.data_type(), b.num_rows()),
        };
        cols.push(col);
    }
    Ok(RecordBatch::try_new(nullable(schema), cols)?)
}

/// One visible interval of a row of a pushed table's current view.
#[derive(Debug, Clone, Copy)]
struct Visible {
    row: usize,
    from: i64,
    to: Option<i64>,
}

/// Which rows of one pushed table's history were ever current, and when: per record, a row
/// holds from its `ingested_at` until a row that outranks it (a higher `record_version`, or the
/// same one ingested later) is ingested. Retractions end a row and show none.
fn current_rows(b: &RecordBatch, member: &dyn Fn(&str) -> bool) -> Result<Vec<Visible>> {
    let src = utf8(b, "source")?;
    let rid = utf8(b, "record_id")?;
    let op = utf8(b, "op")?;
    let pk = utf8(b, "person_key")?;
    let batch = utf8(b, "batch_id")?;
    let ver = datafusion::arrow::compute::cast(
        b.column_by_name("record_version").expect("record_version"),
        &DataType::Int64,
    )?;
    let ver = ver.as_primitive::<Int64Type>();
    let ing = b
        .column_by_name("ingested_at")
        .expect("ingested_at")
        .as_primitive::<TimestampMicrosecondType>();
    let mut records: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for i in 0..b.num_rows() {
        records
            .entry((src.value(i), rid.value(i)))
            .or_default()
            .push(i);
    }
    let mut out = Vec::new();
    for rows in records.values_mut() {
        rows.sort_by(|&x, &y| {
            (ver.value(x), ing.value(x), batch.value(x), x).cmp(&(
                ver.value(y),
                ing.value(y),
                batch.value(y),
                y,
            ))
        });
        // Walking from the highest rank down: the earliest ingestion of anything above.
        let mut above: Option<i64> = None;
        for &r in rows.iter().rev() {
            let from = ing.value(r);
            let shown = op.value(r) == "upsert"
                && !pk.is_null(r)
                && member(pk.value(r))
                && above.is_none_or(|to| to > from);
            if shown {
                out.push(Visible {
                    row: r,
                    from,
                    to: above,
                });
            }
            above = Some(above.map_or(from, |a| a.min(from)));
        }
    }
    out.sort_by_key(|v| v.row);
    Ok(out)
}

/// Appends `gen`, `known_from`, `known_to` to the chosen rows of `b`, and `extra` (one value
/// per chosen row: `current_services`' `in_episode`) when given.
fn with_intervals(
    b: &RecordBatch,
    rows: &[Visible],
    cycle: i64,
    schema: &SchemaRef,
    extra: Option<ArrayRef>,
) -> Result<RecordBatch> {
    let idx = UInt32Array::from(rows.iter().map(|v| v.row as u32).collect::<Vec<_>>());
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for c in b.columns() {
        cols.push(datafusion::arrow::compute::take(c, &idx, None)?);
    }
    cols.push(Arc::new(arrow_array::Int64Array::from(vec![
        cycle;
        rows.len()
    ])));
    let mut from = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut to = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for v in rows {
        from.append_value(v.from);
        to.append_option(v.to);
    }
    cols.push(Arc::new(from.finish()));
    cols.push(Arc::new(to.finish()));
    cols.extend(extra);
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// An episode's days: `[start, end)`, open-ended when `end` is None (epoch days).
type EpisodeSpan = (i32, Option<i32>);

/// The services' current rows with `in_episode`: each row's interval split at the instants
/// her episodes changed whether its date falls inside one (`spans_at`: per woman, her
/// episodes from each instant they changed on; none before the first). A woman with no
/// episodes, or no `women` record, gives false.
fn in_episode(
    b: &RecordBatch,
    rows: &[Visible],
    spans_at: &HashMap<&str, Vec<(i64, Vec<EpisodeSpan>)>>,
) -> Result<(Vec<Visible>, ArrayRef)> {
    let pk = utf8(b, "person_key")?;
    let day = datafusion::arrow::compute::cast(
        b.column_by_name("service_date").ok_or_else(|| {
            WarehouseError::Deriver("column service_date is missing from the input".into())
        })?,
        &DataType::Date32,
    )?;
    let day = day.as_primitive::<Date32Type>();
    let mut out = Vec::with_capacity(rows.len());
    let mut flags = arrow_array::builder::BooleanBuilder::with_capacity(rows.len());
    for v in rows {
        let d = (!day.is_null(v.row)).then(|| day.value(v.row));
        let inside = |spans: &[EpisodeSpan]| {
            d.is_some_and(|d| {
                spans
                    .iter()
                    .any(|(s, e)| d >= *s && e.is_none_or(|e| d < e))
            })
        };
        let steps = if pk.is_null(v.row) {
            &[][..]
        } else {
            spans_at.get(pk.value(v.row)).map_or(&[][..], Vec::as_slice)
        };
        // Her episodes at `v.from`: those of the last change at or before it.
        let mut i = steps.partition_point(|(t, _)| *t <= v.from);
        let mut now = i > 0 && inside(&steps[i - 1].1);
        let mut from = v.from;
        while let Some((t, spans)) = steps.get(i) {
            if v.to.is_some_and(|to| *t >= to) {
                break;
            }
            let next = inside(spans);
            if next != now {
                out.push(Visible {
                    row: v.row,
                    from,
                    to: Some(*t),
                });
                flags.append_value(now);
                from = *t;
                now = next;
            }
            i += 1;
        }
        out.push(Visible {
            row: v.row,
            from,
            to: v.to,
        });
        flags.append_value(now);
    }
    Ok((out, Arc::new(flags.finish())))
}

/// A woman's `women` row with its interval and what orders it among her others.
struct WomanRow {
    from: i64,
    to: Option<i64>,
    order: (i64, String, String),
    rec: PersonRec,
}

struct EventRow {
    from: i64,
    to: Option<i64>,
    event: LifeEvent,
}

fn holds(from: i64, to: Option<i64>, t: i64) -> bool {
    from <= t && to.is_none_or(|to| to > t)
}

/// Row builders of the four derived tables, with the interval columns.
#[derive(Default)]
struct Builders {
    current_women: usize,
    p_key: StringBuilder,
    p_region: StringBuilder,
    p_marital: StringBuilder,
    p_eth: StringBuilder,
    p_birth: Date32Builder,
    p_iv: Intervals,
    e_key: StringBuilder,
    e_no: Int32Builder,
    e_start: Date32Builder,
    e_end: Date32Builder,
    e_entry: StringBuilder,
    e_exit: StringBuilder,
    e_rs: StringBuilder,
    e_re: StringBuilder,
    e_rule: StringBuilder,
    e_iv: Intervals,
    r_key: StringBuilder,
    r_from: Date32Builder,
    r_to: Date32Builder,
    r_region: StringBuilder,
    r_iv: Intervals,
    u_level: StringBuilder,
    u_region: StringBuilder,
    u_key: StringBuilder,
    u_no: Int32Builder,
    u_start: Date32Builder,
    u_end: Date32Builder,
    u_entry: StringBuilder,
    u_exit: StringBuilder,
    u_iv: Intervals,
}

#[derive(Default)]
struct Intervals {
    cycle: Int64Builder,
    from: Vec<i64>,
    to: Vec<Option<i64>>,
}

impl Intervals {
    fn push(&mut self, cycle: i64, from: i64, to: Option<i64>) {
        self.cycle.append_value(cycle);
        self.from.push(from);
        self.to.push(to);
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        let mut from = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let mut to = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for v in self.from.drain(..) {
            from.append_value(v);
        }
        for v in self.to.drain(..) {
            to.append_option(v);
        }
        vec![
            Arc::new(self.cycle.finish()),
            Arc::new(from.finish()),
            Arc::new(to.finish()),
        ]
    }
}

impl Builders {
    fn person(&mut self, key: &str, p: &PersonRec, cycle: i64, from: i64, to: Option<i64>) {
        self.p_key.append_value(key);
        self.p_region.append_option(p.region.as_deref());
        self.p_marital.append_option(p.marital.as_deref());
        self.p_eth.append_option(p.ethnicity.as_deref());
        self.p_birth
            .append_option(p.birth.map(careledger_model::epoch_days));
        self.p_iv.push(cycle, from, to);
    }

    fn episodes(
        &mut self,
        key: &str,
        rows: &[EpisodeRow],
        rule: &str,
        cycle: i64,
        from: i64,
        to: Option<i64>,
    ) {
        for e in rows {
            self.e_key.append_value(key);
            self.e_no.append_value(e.no);
            self.e_start.append_value(e.start);
            self.e_end.append_option(e.end);
            self.e_entry.append_value(e.entry);
            self.e_exit.append_option(e.exit);
            self.e_rs.append_option(e.region_at_start.as_deref());
            self.e_re.append_option(e.region_at_end.as_deref());
            self.e_rule.append_value(rule);
            self.e_iv.push(cycle, from, to);
        }
    }

    fn residence(
        &mut self,
        key: &str,
        rows: &[ResidenceRow],
        cycle: i64,
        from: i64,
        to: Option<i64>,
    ) {
        for r in rows {
            self.r_key.append_value(key);
            self.r_from.append_value(r.from);
            self.r_to.append_option(r.to);
            self.r_region.append_option(r.region.as_deref());
            self.r_iv.push(cycle, from, to);
        }
    }

    fn runs(&mut self, key: &str, rows: &[RunRow], cycle: i64, from: i64, to: Option<i64>) {
        for u in rows {
            self.u_level.append_value(u.level);
            self.u_region.append_option(u.region.as_deref());
            self.u_key.append_value(key);
            self.u_no.append_value(u.no);
            self.u_start.append_value(u.start);
            self.u_end.append_option(u.end);
            self.u_entry.append_value(u.entry);
            self.u_exit.append_option(u.exit);
            self.u_iv.push(cycle, from, to);
        }
    }

    fn finish(mut self) -> Result<(Vec<(&'static str, RecordBatch)>, usize)> {
        let schemas: HashMap<&str, SchemaRef> = derived_tables().into_iter().collect();
        let mut out = Vec::new();
        let mut p: Vec<ArrayRef> = vec![
            Arc::new(self.p_key.finish()),
            Arc::new(self.p_region.finish()),
            Arc::new(self.p_marital.finish()),
            Arc::new(self.p_eth.finish()),
            Arc::new(self.p_birth.finish()),
        ];
        p.extend(self.p_iv.finish());
        out.push((
            DERIVED_PEOPLE,
            RecordBatch::try_new(built(&schemas[DERIVED_PEOPLE]), p)?,
        ));
        let mut e: Vec<ArrayRef> = vec![
            Arc::new(self.e_key.finish()),
            Arc::new(self.e_no.finish()),
            Arc::new(self.e_start.finish()),
            Arc::new(self.e_end.finish()),
            Arc::new(self.e_entry.finish()),
            Arc::new(self.e_exit.finish()),
            Arc::new(self.e_rs.finish()),
            Arc::new(self.e_re.finish()),
            Arc::new(self.e_rule.finish()),
        ];
        e.extend(self.e_iv.finish());
        out.push((
            DERIVED_EPISODES,
            RecordBatch::try_new(built(&schemas[DERIVED_EPISODES]), e)?,
        ));
        let mut r: Vec<ArrayRef> = vec![
            Arc::new(self.r_key.finish()),
            Arc::new(self.r_from.finish()),
            Arc::new(self.r_to.finish()),
            Arc::new(self.r_region.finish()),
        ];
        r.extend(self.r_iv.finish());
        out.push((
            DERIVED_RESIDENCE,
            RecordBatch::try_new(built(&schemas[DERIVED_RESIDENCE]), r)?,
        ));
        let mut u: Vec<ArrayRef> = vec![
            Arc::new(self.u_level.finish()),
            Arc::new(self.u_region.finish()),
            Arc::new(self.u_key.finish()),
            Arc::new(self.u_no.finish()),
            Arc::new(self.u_start.finish()),
            Arc::new(self.u_end.finish()),
            Arc::new(self.u_entry.finish()),
            Arc::new(self.u_exit.finish()),
        ];
        u.extend(self.u_iv.finish());
        out.push((
            DERIVED_RUNS,
            RecordBatch::try_new(built(&schemas[DERIVED_RUNS]), u)?,
        ));
        Ok((out, self.current_women))
    }
}

/// A run of identical derivations: `(rows, from)` still open.
struct Open<T> {
    rows: Option<(T, i64)>,
}

impl<T: PartialEq> Open<T> {
    /// At instant `t` the derivation is `now`: closes the open one if it differs; returns the
    /// closed `(rows, from)` to emit.
    fn step(&mut self, now: Option<T>, t: i64) -> Option<(T, i64)> {
        let same = match (&self.rows, &now) {
            (Some((a, _)), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        };
        if same {
            return None;
        }
        let closed = self.rows.take();
        self.rows = now.map(|n| (n, t));
        closed
    }
}

/// The derived rows of the women `member` admits, from every version of their records
/// (`inputs`: the five pushed tables in [`Table::ALL`] order, stored schema).
fn compute(
    inputs: &[RecordBatch],
    member: &dyn Fn(&str) -> bool,
    cycle: i64,
    params: &RuleParams,
) -> Result<(Vec<(&'static str, RecordBatch)>, usize)> {
    let schemas: HashMap<&str, SchemaRef> = derived_tables().into_iter().collect();
    let mut out = Vec::new();
    let mut women: HashMap<String, Vec<WomanRow>> = HashMap::new();
    let mut events: HashMap<String, Vec<EventRow>> = HashMap::new();
    // The services' current rows wait for their women's episodes (`in_episode`).
    let mut services: Option<(&RecordBatch, Vec<Visible>)> = None;
    for (t, b) in Table::ALL.iter().zip(inputs) {
        let rows = current_rows(b, member)?;
        let name = derived_current(*t);
        if *t == Table::Services {
            services = Some((b, rows));
            continue;
        }
        out.push((
            name,
            with_intervals(b, &rows, cycle, &built(&schemas[name]), None)?,
        ));
        match t {
            Table::Women => {
                let pk = utf8(b, "person_key")?;
                let src = utf8(b, "source")?;
                let rid = utf8(b, "record_id")?;
                let region = utf8(b, "region_code")?;
                let marital = utf8(b, "marital_status")?;
                let eth = utf8(b, "ethnicity")?;
                let birth = datafusion::arrow::compute::cast(
                    b.column_by_name("birth_date").expect("birth_date"),
                    &DataType::Date32,
                )?;
                let birth = birth.as_primitive::<Date32Type>();
                let opt =
                    |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
                for v in rows {
                    let i = v.row;
                    women
                        .entry(pk.value(i).to_string())
                        .or_default()
                        .push(WomanRow {
                            from: v.from,
                            to: v.to,
                            order: (v.from, src.value(i).to_string(), rid.value(i).to_string()),
                            rec: PersonRec {
                                region: opt(&region, i),
                                marital: opt(&marital, i),
                                ethnicity: opt(&eth, i),
                                birth: (!birth.is_null(i)).then(|| date(birth.value(i))),
                            },
                        });
                }
            }
            Table::LifeEvents => {
                let pk = utf8(b, "person_key")?;
                let kind = utf8(b, "event_type")?;
                let region = utf8(b, "region_code")?;
                let d = datafusion::arrow::compute::cast(
                    b.column_by_name("event_date").expect("event_date"),
                    &DataType::Date32,
                )?;
                let d = d.as_primitive::<Date32Type>();
                for v in rows {
                    let i = v.row;
                    if d.is_null(i) || kind.is_null(i) {
                        continue;
                    }
                    let Some(k) = EventKind::parse(kind.value(i)) else {
                        continue;
                    };
                    events
                        .entry(pk.value(i).to_string())
                        .or_default()
                        .push(EventRow {
                            from: v.from,
                            to: v.to,
                            event: LifeEvent {
                                date: date(d.value(i)),
                                kind: k,
                                region_code: (!region.is_null(i))
                                    .then(|| region.value(i).to_string()),
                            },
                        });
                }
            }
            _ => {}
        }
    }
    let rule = params.rule_version();
    let mut ancestors = Ancestors::default();
    let mut bld = Builders::default();
    // Per woman, her episodes' days from each instant they changed on: (instant, spans).
    let mut spans_at: HashMap<&str, Vec<(i64, Vec<EpisodeSpan>)>> = HashMap::new();
    let mut keys: Vec<&String> = women.keys().collect();
    keys.sort();
    let no_events = Vec::new();
    for key in keys {
        let ws = &women[key];
        let es = events.get(key).unwrap_or(&no_events);
        let mut instants: Vec<i64> = Vec::new();
        for w in ws {
            instants.push(w.from);
            instants.extend(w.to);
        }
        for e in es {
            instants.push(e.from);
            instants.extend(e.to);
        }
        instants.sort_unstable();
        instants.dedup();
        let mut people: Open<PersonRec> = Open { rows: None };
        let mut eps: Open<Vec<EpisodeRow>> = Open { rows: None };
        let mut res: Open<Vec<ResidenceRow>> = Open { rows: None };
        let mut runs: Open<Vec<RunRow>> = Open { rows: None };
        for &t in &instants {
            let rec = ws
                .iter()
                .filter(|w| holds(w.from, w.to, t))
                .max_by(|a, b| a.order.cmp(&b.order));
            let derived = rec.map(|w| {
                let evs: Vec<LifeEvent> = es
                    .iter()
                    .filter(|e| holds(e.from, e.to, t))
                    .map(|e| e.event.clone())
                    .collect();
                derive_woman(&w.rec, &evs, params, &mut ancestors)
            });
            let spans: Vec<EpisodeSpan> = derived
                .as_ref()
                .map(|d| d.episodes.iter().map(|e| (e.start, e.end)).collect())
                .unwrap_or_default();
            let steps = spans_at.entry(key.as_str()).or_default();
            if steps
                .last()
                .map_or(!spans.is_empty(), |(_, last)| *last != spans)
            {
                steps.push((t, spans));
            }
            let (p, e, r, u) = match derived {
                Some(d) => (
                    Some(d.person),
                    Some(d.episodes).filter(|v| !v.is_empty()),
                    Some(d.residence).filter(|v| !v.is_empty()),
                    Some(d.runs).filter(|v| !v.is_empty()),
                ),
                None => (None, None, None, None),
            };
            if let Some((rows, from)) = people.step(p, t) {
                bld.person(key, &rows, cycle, from, Some(t));
            }
            if let Some((rows, from)) = eps.step(e, t) {
                bld.episodes(key, &rows, &rule, cycle, from, Some(t));
            }
            if let Some((rows, from)) = res.step(r, t) {
                bld.residence(key, &rows, cycle, from, Some(t));
            }
            if let Some((rows, from)) = runs.step(u, t) {
                bld.runs(key, &rows, cycle, from, Some(t));
            }
        }
        if let Some((rows, from)) = people.rows.take() {
            bld.person(key, &rows, cycle, from, None);
            bld.current_women += 1;
        }
        if let Some((rows, from)) = eps.rows.take() {
            bld.episodes(key, &rows, &rule, cycle, from, None);
        }
        if let Some((rows, from)) = res.rows.take() {
            bld.residence(key, &rows, cycle, from, None);
        }
        if let Some((rows, from)) = runs.rows.take() {
            bld.runs(key, &rows, cycle, from, None);
        }
    }
    if let Some((b, rows)) = services {
        let name = derived_current(Table::Services);
        let (rows, flags) = in_episode(b, &rows, &spans_at)?;
        out.push((
            name,
            with_intervals(b, &rows, cycle, &built(&schemas[name]), Some(flags))?,
        ));
    }
    let (rows, current) = bld.finish()?;
    out.extend(rows);
    let out = out
        .into_iter()
        .map(|(name, b)| Ok((name, with_person_id(b, &schemas[name])?)))
        .collect::<Result<Vec<_>>>()?;
    Ok((out, current))
}
