//! The warehouse: a DataFusion session over the Delta tables as known at an instant
//! (`known_at`), with the current views, the derived status tables, the reference tables and
//! the named reports of `queries/`.
//!
//! Tables a query can name in a [`Snapshot`]:
//! - `women`, `life_events`, `group_flags`, `services`, `registrations`: the *current* view of
//!   each pushed table: per `(source, record_id)` the highest `record_version` ingested at or
//!   before `known_at`, retractions removed.
//! - `raw_<table>`: every stored version (history), also cut at `known_at`.
//! - `batches`, `rejects`: the gateway's receipts and rejected rows, cut at `known_at`.
//! - `people`, `status_episodes`, `residence`, `ledger_runs`: derived (see [`derive`]).
//! - `group_episodes`: priority-group memberships as `[valid_from, valid_until)`.
//! - `regions`, `region_levels`, `codes`, `calendar_months`: reference data.
//! - `access`: one row, what the snapshot shows: `scope` (the region code prefix, NULL for the
//!   whole province) and `rejects` (whether `rejects` can be read).
//!
//! A scoped snapshot ([`Access`]) holds, under every one of these names, only what concerns
//! women who ever lived in the scope: see `apply_scope`.

mod derive;
pub mod deriver;
mod local_days;
mod partition;
pub mod publish;
mod reference;
pub mod reports;
mod runs;

use std::collections::BTreeMap;
use std::sync::Arc;

use careledger_model::status::RuleParams;
use careledger_model::{LocalZone, RegionLevel, Table};
use careledger_store::{
    BATCHES, DERIVED_EPISODES, DERIVED_PEOPLE, DERIVED_RESIDENCE, DERIVED_RUNS, DERIVED_SUPERSEDED,
    IN_EPISODE, PERSON_ID, REJECTS, Store, StoreError, derived_current, episode_fields,
    people_fields, residence_fields, run_fields,
};
use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use deriver::{CycleStats, DerivedState, Deriver};

/// The partitions a report's plan runs in (DataFusion's `target_partitions`): the cores of
/// the machine this was measured on. A rebuild writes each clustered derived table as a few
/// files per partition, each sorted throughout, so that a filter on the order still has every
/// partition reading.
pub const QUERY_PARTITIONS: usize = 2;
pub use reports::{ParamKind, ParamSpec, ReportSpec, catalog};

/// Everything that can go wrong in the warehouse.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("query: {0}")]
    DataFusion(#[from] DataFusionError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("there is no report named {0:?}")]
    UnknownReport(String),
    #[error("parameter {name}: {message}")]
    BadParam { name: String, message: String },
    /// A report parameter asks for more than the region scope allows (a level above the
    /// scope, a region outside it).
    #[error("parameter {name}: {message}")]
    OutOfScope { name: String, message: String },
    #[error("deriver: {0}")]
    Deriver(String),
    /// The derived tables were derived under another rule version or layout of the derived
    /// tables (an upgrade): the deriver rebuilds them, and no answer is given from the old rows.
    #[error(
        "the derived ledger was derived by another careledger version or rule ({rule} is this one's) and is being derived again; retry in a minute or two (start `careledger serve` on the store if none runs)"
    )]
    Rederiving { rule: String },
}

pub type Result<T, E = WarehouseError> = std::result::Result<T, E>;

/// What a snapshot may show its user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Access {
    /// Region code prefix: only women who ever lived there, and regions inside it.
    pub scope: Option<String>,
    /// The `rejects` table (raw rows, IDs masked) is for operators only, and never shown in a
    /// scoped snapshot (a rejected row cannot be attributed to a region), whatever this says.
    pub rejects: bool,
    /// For publication (dashboards): `cell_key()` gives real record keys, and report answers
    /// keep their cell-key columns for the publication layer to perturb and then drop.
    pub publication: bool,
}

impl Access {
    /// Everything (operators, internal use).
    pub fn all() -> Access {
        Access {
            scope: None,
            rejects: true,
            publication: false,
        }
    }

    /// The region levels a report may be asked about with this access, from the top down.
    pub fn levels(&self) -> Vec<RegionLevel> {
        self.scope
            .as_deref()
            .map_or_else(|| RegionLevel::ALL.to_vec(), scope_levels)
    }
}

/// The levels a region scope (a code prefix of `n` digits) may be asked about: those whose
/// regions are named by at least `n` digits (province 2, city 4, county 6, township 9,
/// village 12), because only such a region lies wholly inside or wholly outside the scope. A
/// county scope (`450123`) gets county, township and village; a city scope (`4501`) city and
/// below. A prefix of another length covers part of a region of the level above it, so it
/// counts as the next level down: `45012` (some counties of 南宁) gets county and below, since
/// a figure for the city 4501 would count women outside it.
pub fn scope_levels(scope: &str) -> Vec<RegionLevel> {
    RegionLevel::ALL
        .into_iter()
        .filter(|l| l.prefix_len() >= scope.len())
        .collect()
}

/// Tables whose rows belong to one woman (`person_key`): filtered by scope.
const PERSON_TABLES: [&str; 14] = [
    "women",
    "life_events",
    "group_flags",
    "services",
    "registrations",
    "raw_women",
    "raw_life_events",
    "raw_group_flags",
    "raw_services",
    "raw_registrations",
    "people",
    "status_episodes",
    "residence",
    "group_episodes",
];

/// Opens snapshots of a store and keeps the last derived tables while nothing changed.
#[derive(Debug)]
pub struct Warehouse {
    store: Arc<Store>,
    rule: RuleParams,
    /// The memory every query of this warehouse draws on, together: one pool, so that
    /// queries at once cannot multiply the limit (None: unbounded).
    memory_pool: Option<Arc<dyn datafusion::execution::memory_pool::MemoryPool>>,
    /// Secret of the record keys behind publication's cell keys (see [`publish`]).
    cell_key_secret: Option<[u8; 32]>,
    /// The zone of every "day" (a date-only instant, source health's lags and periods).
    zone: LocalZone,
    /// Maintains the derived tables this warehouse reads (run by the server beside the
    /// queries, never inside one).
    deriver: Arc<Deriver>,
    /// Snapshots built recently, reused while no table they read has changed (see
    /// [`Warehouse::with_snapshot_reuse`]).
    snapshots: std::sync::Mutex<Vec<CachedSnapshot>>,
    /// How long a snapshot may be reused (None: every request builds its own).
    reuse_for: Option<std::time::Duration>,
}

/// One consistent view of the warehouse at `known_at`.
pub struct Snapshot {
    pub ctx: SessionContext,
    /// The zone report parameters are read in.
    pub zone: LocalZone,
    pub known_at: Option<DateTime<Utc>>,
    /// Delta version of every table read.
    pub versions: BTreeMap<String, u64>,
    /// What the derived tables (and so the current views) reflect.
    pub derived: DerivedState,
}

impl Snapshot {
    /// The same tables and views in a session of its own: functions a query registers in it
    /// (the SQL guard's capped wrappers) stay out of this one.
    fn fork(&self) -> Snapshot {
        Snapshot {
            ctx: SessionContext::new_with_state(self.ctx.state()),
            zone: self.zone,
            known_at: self.known_at,
            versions: self.versions.clone(),
            derived: self.derived.clone(),
        }
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("known_at", &self.known_at)
            .field("versions", &self.versions)
            .field("derived", &self.derived)
            .finish_non_exhaustive()
    }
}

/// Replaces every person-level table by its rows for women who ever lived inside `scope`,
/// `ledger_runs` by its runs in regions inside `scope` (at the levels of [`scope_levels`]: a
/// region above the scope holds women outside it), and `batches` by the batches that hold rows
/// of those women, showing only what can be attributed to them. Drops `rejects`.
async fn apply_scope(ctx: &SessionContext, scope: &str) -> Result<()> {
    if scope.is_empty() || scope.len() > 12 || !scope.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WarehouseError::BadParam {
            name: "scope".into(),
            message: format!("{scope:?} is not a region code prefix"),
        });
    }
    let prefix = ScalarValue::Utf8(Some(scope.to_string()));
    let persons = ctx
        .sql("SELECT DISTINCT person_key FROM residence WHERE starts_with(region_code, $scope)")
        .await?
        .with_param_values(vec![("scope", prefix.clone())])?;
    ctx.register_table("scope_persons_", persons.into_view())?;
    let mut views = Vec::new();
    for name in PERSON_TABLES {
        let df = ctx
            .sql(&format!(
                "SELECT * FROM {name} WHERE person_key IN (SELECT person_key FROM scope_persons_)"
            ))
            .await?;
        views.push((name.to_string(), df.into_view()));
    }
    // The level names are the model's own identifiers, not caller input.
    let levels: Vec<String> = scope_levels(scope)
        .iter()
        .map(|l| format!("'{}'", l.as_str()))
        .collect();
    let runs = ctx
        .sql(&format!(
            "SELECT * FROM ledger_runs WHERE starts_with(region_code, $scope) AND level IN ({})",
            levels.join(", ")
        ))
        .await?
        .with_param_values(vec![("scope", prefix)])?;
    views.push(("ledger_runs".to_string(), runs.into_view()));
    for (name, view) in views {
        ctx.deregister_table(name.as_str())?;
        ctx.register_table(name.as_str(), view)?;
    }
    // On the scoped history just registered: a batch is shown if it holds a row of a woman in
    // scope, rows_accepted counts those rows. What describes the whole batch (the receipt
    // with its row errors, rows received and rejected, the sender's idempotency key and
    // sequence number, the table version counting every commit) cannot be split by region:
    // NULL. The columns are listed, so a column added to `batches` stays out until chosen.
    let held: Vec<String> = Table::ALL
        .iter()
        .map(|t| {
            format!(
                "SELECT '{0}' AS table_name, batch_id FROM raw_{0}",
                t.as_str()
            )
        })
        .collect();
    let batches = ctx
        .sql(&format!(
            "WITH held AS (SELECT table_name, batch_id, count(*) AS n FROM ({}) h \
             GROUP BY table_name, batch_id) \
             SELECT b.batch_id, b.table_name, b.source, \
             CAST(NULL AS VARCHAR) AS idempotency_key, CAST(NULL AS BIGINT) AS batch_seq, \
             b.format, b.atomic, CAST(NULL AS BIGINT) AS rows_received, \
             held.n AS rows_accepted, CAST(NULL AS BIGINT) AS rows_rejected, \
             CAST(NULL AS BIGINT) AS table_version, b.received_at, b.committed_at, \
             CAST(NULL AS VARCHAR) AS receipt \
             FROM {BATCHES} b JOIN held \
             ON held.batch_id = b.batch_id AND held.table_name = b.table_name",
            held.join(" UNION ALL ")
        ))
        .await?
        .into_view();
    ctx.deregister_table(BATCHES)?;
    ctx.register_table(BATCHES, batches)?;
    ctx.deregister_table(REJECTS)?;
    ctx.deregister_table("scope_persons_")?;
    Ok(())
}

/// The one-row `access` table: what a snapshot shows (`scope`, NULL for the whole province;
/// `rejects`), so SQL and reports can tell a scoped answer from a whole one.
fn access_table(
    scope: Option<&str>,
    rejects: bool,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    use arrow_array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("scope", DataType::Utf8, true),
        Field::new("rejects", DataType::Boolean, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![scope])) as ArrayRef,
            Arc::new(BooleanArray::from(vec![rejects])),
        ],
    )?;
    Ok(Arc::new(datafusion::datasource::MemTable::try_new(
        schema,
        vec![vec![batch]],
    )?))
}

fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

/// A built snapshot kept for reuse: what it was built for, and the version of every table it
/// read.
#[derive(Debug)]
struct CachedSnapshot {
    key: SnapshotKey,
    built: std::time::Instant,
    read: Vec<(&'static str, Option<u64>)>,
    snapshot: Snapshot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SnapshotKey {
    known_at: Option<DateTime<Utc>>,
    scope: Option<String>,
    rejects: bool,
    publication: bool,
}

/// At most this many snapshots are kept for reuse.
const SNAPSHOTS_KEPT: usize = 16;

/// Every table a snapshot reads.
fn snapshot_tables() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Table::ALL.iter().map(|t| t.as_str()).collect();
    names.extend([BATCHES, REJECTS, DERIVED_SUPERSEDED]);
    names.extend(Table::ALL.iter().map(|t| derived_current(*t)));
    names.extend([
        DERIVED_PEOPLE,
        DERIVED_EPISODES,
        DERIVED_RESIDENCE,
        DERIVED_RUNS,
    ]);
    names
}

impl Warehouse {
    pub fn new(store: Arc<Store>, rule: RuleParams) -> Warehouse {
        Warehouse {
            deriver: Arc::new(Deriver::new(store.clone(), rule.clone())),
            store,
            rule,
            memory_pool: None,
            cell_key_secret: None,
            zone: LocalZone::default(),
            snapshots: std::sync::Mutex::default(),
            reuse_for: None,
        }
    }

    /// Reuses a built snapshot for later requests with the same access and `known_at`, for
    /// at most `max_age`, and only while every table it read is still at the version it read
    /// (as far as this process knows: its own commits and refreshes, the deriver's included).
    /// Another process's commits are seen when something in this process refreshes the table
    /// (the deriver does, for the pushed tables), or after `max_age` at the latest. Building
    /// a snapshot refreshes about twenty Delta tables and plans the views over them; for the
    /// server that derives its store this is the fixed cost of every report.
    pub fn with_snapshot_reuse(mut self, max_age: std::time::Duration) -> Warehouse {
        self.reuse_for = Some(max_age);
        self
    }

    /// A reusable snapshot for `key`, as a session of its own (a query may register
    /// functions in its session; the tables and views are shared).
    fn reused(&self, key: &SnapshotKey) -> Option<Snapshot> {
        let max_age = self.reuse_for?;
        let mut kept = self.snapshots.lock().expect("lock");
        kept.retain(|c| {
            c.built.elapsed() < max_age
                && c.read
                    .iter()
                    .all(|(name, v)| self.store.known_version(name) == *v)
        });
        let c = kept.iter().find(|c| &c.key == key)?;
        Some(c.snapshot.fork())
    }

    fn keep(&self, key: SnapshotKey, read: Vec<(&'static str, Option<u64>)>, s: &Snapshot) {
        let mut kept = self.snapshots.lock().expect("lock");
        kept.retain(|c| c.key != key);
        if kept.len() >= SNAPSHOTS_KEPT {
            kept.remove(0);
        }
        kept.push(CachedSnapshot {
            key,
            built: std::time::Instant::now(),
            read,
            snapshot: s.fork(),
        });
    }

    /// The time zone of every "day" (default Asia/Shanghai).
    pub fn with_time_zone(mut self, zone: LocalZone) -> Warehouse {
        self.zone = zone;
        self
    }

    pub fn zone(&self) -> &LocalZone {
        &self.zone
    }

    /// The secret of publication's record keys; without one, publication snapshots are
    /// refused.
    pub fn with_cell_key_secret(mut self, secret: [u8; 32]) -> Warehouse {
        self.cell_key_secret = Some(secret);
        self
    }

    /// Bounds the memory of all queries together (DataFusion spills sorts and aggregations,
    /// or fails the query with a resources-exhausted error): every snapshot's session draws on
    /// one pool of `bytes`, so queries at once share the limit instead of each having it.
    pub fn with_memory_limit(mut self, bytes: usize) -> Warehouse {
        self.memory_pool = Some(Arc::new(
            datafusion::execution::memory_pool::FairSpillPool::new(bytes),
        ));
        self
    }

    /// The pool every query of this warehouse draws on (None: no memory limit).
    pub fn memory_pool(&self) -> Option<&Arc<dyn datafusion::execution::memory_pool::MemoryPool>> {
        self.memory_pool.as_ref()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn rule(&self) -> &RuleParams {
        &self.rule
    }

    /// The deriver of this warehouse's store.
    pub fn deriver(&self) -> &Arc<Deriver> {
        &self.deriver
    }

    /// The pushed table and its version at the commit of batch `batch_id` (None: no such
    /// committed batch).
    pub async fn batch_version(&self, batch_id: &str) -> Result<Option<(String, u64)>> {
        let ctx = SessionContext::new();
        ctx.register_table(
            "b",
            self.store.refresh(BATCHES).await?.table_provider().await?,
        )?;
        let rows = ctx
            .sql("SELECT table_name, table_version FROM b WHERE batch_id = $1 AND table_version IS NOT NULL")
            .await?
            .with_param_values(vec![ScalarValue::Utf8(Some(batch_id.to_string()))])?
            .collect()
            .await?;
        for b in rows {
            if b.num_rows() == 0 {
                continue;
            }
            let t = datafusion::arrow::compute::cast(b.column(0), &arrow_schema::DataType::Utf8)?;
            let v = datafusion::arrow::compute::cast(b.column(1), &arrow_schema::DataType::Int64)?;
            use arrow_array::cast::AsArray;
            let t = t.as_string::<i32>().value(0).to_string();
            let v = v.as_primitive::<arrow_array::types::Int64Type>().value(0);
            return Ok(Some((t, v.max(0) as u64)));
        }
        Ok(None)
    }

    /// Derives every commit present now (tests, the CLI, the demo; the server's deriver task
    /// does this in the background).
    pub async fn catch_up(&self) -> Result<Vec<CycleStats>> {
        self.deriver.catch_up().await
    }

    /// A snapshot as known at `known_at` (None: now, the latest committed versions).
    pub async fn snapshot(&self, known_at: Option<DateTime<Utc>>) -> Result<Snapshot> {
        self.snapshot_as(known_at, &Access::all()).await
    }

    /// A snapshot that shows only what `access` allows: every table a query can name is
    /// filtered to the scope before any user SQL sees it.
    pub async fn snapshot_as(
        &self,
        known_at: Option<DateTime<Utc>>,
        access: &Access,
    ) -> Result<Snapshot> {
        let key = SnapshotKey {
            known_at,
            scope: access.scope.clone(),
            rejects: access.rejects,
            publication: access.publication,
        };
        if let Some(s) = self.reused(&key) {
            return Ok(s);
        }
        // What this process knows of every table before the build: if a table moves during
        // the build, the snapshot is not kept under the older version.
        // (Only when snapshots are kept.)
        let read: Option<Vec<(&'static str, Option<u64>)>> = self.reuse_for.map(|_| {
            snapshot_tables()
                .into_iter()
                .map(|name| (name, self.store.known_version(name)))
                .collect()
        });
        let snapshot = self.build_snapshot(known_at, access).await?;
        if let Some(read) = read {
            self.keep(key, read, &snapshot);
        }
        Ok(snapshot)
    }

    async fn build_snapshot(
        &self,
        known_at: Option<DateTime<Utc>>,
        access: &Access,
    ) -> Result<Snapshot> {
        // DataFusion's own settings may be given as `DATAFUSION_*` environment variables
        // (e.g. `DATAFUSION_EXECUTION_BATCH_SIZE`), for an operator tuning the engine; the
        // partitions default to QUERY_PARTITIONS.
        let mut config = SessionConfig::from_env()?.with_information_schema(true);
        if std::env::var_os("DATAFUSION_EXECUTION_TARGET_PARTITIONS").is_none() {
            config = config.with_target_partitions(QUERY_PARTITIONS);
        }
        let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
        if let Some(pool) = &self.memory_pool {
            runtime = runtime.with_memory_pool(pool.clone());
        }
        // Each filter on a stored table reaches the Parquet reader once. delta-rs pushes the
        // filters it is given into its own Parquet scan (row filters), and keeps them inexact;
        // DataFusion's filter pushdown then adds the same predicate again above it, so every
        // conjunct was evaluated twice per row. Here delta-rs gets a session with its Parquet
        // pushdown off (it still skips files by their statistics), and DataFusion pushes the
        // predicate into the reader, once, for pruning and as row filters.
        if std::env::var_os("DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS").is_none() {
            config.options_mut().execution.parquet.pushdown_filters = true;
        }
        let delta_session = {
            let mut c = config.clone();
            c.options_mut().execution.parquet.pushdown_filters = false;
            Arc::new(
                datafusion::execution::session_state::SessionStateBuilder::new()
                    .with_config(c)
                    .build(),
            )
        };
        let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
        let mut versions = BTreeMap::new();
        let mut names: Vec<&str> = Table::ALL.iter().map(|t| t.as_str()).collect();
        names.extend([BATCHES, REJECTS]);
        for name in &names {
            let table = self.store.refresh(name).await?;
            versions.insert(name.to_string(), table.version().unwrap_or(0));
            ctx.register_table(
                format!("delta_{name}"),
                table
                    .table_provider()
                    .with_session(delta_session.clone())
                    .await?,
            )?;
        }
        let cutoff = ScalarValue::TimestampMicrosecond(
            Some(known_at.map_or(i64::MAX, |t| t.timestamp_micros())),
            Some("UTC".into()),
        );
        let bind = |df: datafusion::dataframe::DataFrame| {
            df.with_param_values(vec![("known_at", cutoff.clone())])
        };
        for t in Table::ALL {
            let cols: Vec<String> = t
                .spec()
                .stored_schema()
                .fields()
                .iter()
                .map(|f| quote(f.name()))
                .collect();
            let cols = cols.join(", ");
            let name = t.as_str();
            let raw = ctx
                .sql(&format!(
                    "SELECT {cols} FROM delta_{name} WHERE ingested_at <= $known_at"
                ))
                .await?;
            ctx.register_table(format!("raw_{name}"), bind(raw)?.into_view())?;
        }
        // The current views and the derived tables: the deriver's stored rows, live as of its
        // last complete cycle, and current at `known_at`.
        // The state and the superseded table of one version (a cycle committing in between is
        // seen on the second read, and the pair read again).
        let (derived, superseded) = loop {
            let before = DerivedState::read(&self.store).await?;
            let table = self.store.refresh(DERIVED_SUPERSEDED).await?;
            if DerivedState::read(&self.store).await? == before {
                break (before, table);
            }
        };
        if !derived.derived_under(&self.rule) {
            return Err(WarehouseError::Rederiving {
                rule: self.rule.rule_version(),
            });
        }
        ctx.register_table(
            "dx_superseded",
            superseded
                .table_provider()
                .with_session(delta_session.clone())
                .await?,
        )?;
        let known = if known_at.is_some() {
            "t.known_from <= $known_at AND (t.known_to IS NULL OR t.known_to > $known_at)"
        } else {
            "t.known_to IS NULL"
        };
        let mut stored: Vec<(&str, &'static str, Vec<String>)> = Table::ALL
            .iter()
            .map(|t| {
                let cols = t
                    .spec()
                    .stored_schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                (t.as_str(), derived_current(*t), cols)
            })
            .collect();
        let names_of = |fields: Vec<arrow_schema::Field>| -> Vec<String> {
            fields.iter().map(|f| f.name().clone()).collect()
        };
        stored.push(("people", DERIVED_PEOPLE, names_of(people_fields())));
        stored.push((
            "status_episodes",
            DERIVED_EPISODES,
            names_of(episode_fields()),
        ));
        stored.push(("residence", DERIVED_RESIDENCE, names_of(residence_fields())));
        stored.push(("ledger_runs", DERIVED_RUNS, names_of(run_fields())));
        // Every derived relation shows `person_id` last: the 64-bit number of `person_key`
        // that reports join and group on.
        for (name, _, cols) in &mut stored {
            cols.push(PERSON_ID.to_string());
            // `services` also shows whether each service is dated inside one of her episodes.
            if *name == Table::Services.as_str() {
                cols.push(IN_EPISODE.to_string());
            }
        }
        for (i, (name, table, cols)) in stored.iter().enumerate() {
            let provider = format!("dx_{i}");
            ctx.register_table(
                provider.as_str(),
                self.store
                    .refresh(table)
                    .await?
                    .table_provider()
                    .with_session(delta_session.clone())
                    .await?,
            )?;
            let cols: Vec<String> = cols.iter().map(|c| format!("t.{}", quote(c))).collect();
            let view = ctx
                .sql(&format!(
                    "SELECT {} FROM {} AND {known}",
                    cols.join(", "),
                    deriver::live_from(&provider, "dx_superseded", &derived)
                ))
                .await?;
            let view = if known_at.is_some() {
                bind(view)?
            } else {
                view
            };
            ctx.register_table(*name, view.into_view())?;
        }
        let batches = ctx
            .sql(&format!(
                "SELECT * FROM delta_{BATCHES} WHERE committed_at <= $known_at"
            ))
            .await?;
        ctx.register_table(BATCHES, bind(batches)?.into_view())?;
        let rejects = ctx
            .sql(&format!(
                "SELECT * FROM delta_{REJECTS} WHERE ingested_at <= $known_at"
            ))
            .await?;
        ctx.register_table(REJECTS, bind(rejects)?.into_view())?;
        reference::register_reference(&ctx)?;
        if access.publication && self.cell_key_secret.is_none() {
            return Err(WarehouseError::BadParam {
                name: "publication".into(),
                message: "this warehouse has no cell-key secret, so it cannot publish".into(),
            });
        }
        for udf in local_days::udfs(self.zone) {
            ctx.register_udf(udf);
        }
        ctx.register_udf(publish::cell_key_udf(
            self.cell_key_secret.filter(|_| access.publication),
        ));
        ctx.register_udf(publish::exact_rate_udf());

        let groups = ctx
            .sql(
                "SELECT person_key, \"group\" AS group_code, valid_from, \
                 CAST(valid_to + INTERVAL '1 day' AS DATE) AS valid_until, detail, source, \
                 person_id FROM group_flags WHERE person_key IS NOT NULL",
            )
            .await?;
        ctx.register_table("group_episodes", groups.into_view())?;
        // The Delta providers stay reachable only through the views built on them.
        for name in &names {
            ctx.deregister_table(format!("delta_{name}"))?;
        }
        for i in 0..stored.len() {
            ctx.deregister_table(format!("dx_{i}"))?;
        }
        ctx.deregister_table("dx_superseded")?;
        let rejects = access.rejects && access.scope.is_none();
        if !rejects {
            ctx.deregister_table(REJECTS)?;
        }
        if let Some(scope) = &access.scope {
            apply_scope(&ctx, scope).await?;
        }
        ctx.register_table("access", access_table(access.scope.as_deref(), rejects)?)?;
        Ok(Snapshot {
            ctx,
            zone: self.zone,
            known_at,
            versions,
            derived,
        })
    }
}
