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

pub mod derive;
mod reference;
pub mod reports;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use careledger_model::Table;
use careledger_model::status::RuleParams;
use careledger_store::{BATCHES, REJECTS, Store, StoreError};
use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use derive::Derived;
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
}

pub type Result<T, E = WarehouseError> = std::result::Result<T, E>;

/// What the derived tables depend on: table versions, the instant and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DerivedKey {
    versions: BTreeMap<String, u64>,
    known_at: Option<i64>,
    rule: String,
}

/// What a snapshot may show its user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Access {
    /// Region code prefix: only women who ever lived there, and regions inside it.
    pub scope: Option<String>,
    /// The `rejects` table (raw rows, IDs masked) is for operators only.
    pub rejects: bool,
}

impl Access {
    /// Everything (operators, internal use).
    pub fn all() -> Access {
        Access {
            scope: None,
            rejects: true,
        }
    }
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
    /// Bound on the memory a query may hold before it spills or fails.
    memory_limit: Option<usize>,
    /// The most recently used derived tables, newest last (a few: a revisions report reads
    /// two instants).
    cache: Mutex<Vec<(DerivedKey, Arc<Derived>)>>,
}

/// How many derived snapshots are kept.
const DERIVED_CACHE: usize = 4;

/// One consistent view of the warehouse at `known_at`.
pub struct Snapshot {
    pub ctx: SessionContext,
    pub known_at: Option<DateTime<Utc>>,
    /// Delta version of every table read.
    pub versions: BTreeMap<String, u64>,
    pub derived: Arc<Derived>,
    /// Whether the derived tables came from the cache.
    pub derived_cached: bool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("known_at", &self.known_at)
            .field("versions", &self.versions)
            .field("derived_cached", &self.derived_cached)
            .finish_non_exhaustive()
    }
}

/// Replaces every person-level table by its rows for women who ever lived inside `scope`,
/// and `ledger_runs` by its runs inside `scope`.
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
    let runs = ctx
        .sql("SELECT * FROM ledger_runs WHERE starts_with(region_code, $scope)")
        .await?
        .with_param_values(vec![("scope", prefix)])?;
    views.push(("ledger_runs".to_string(), runs.into_view()));
    for (name, view) in views {
        ctx.deregister_table(name.as_str())?;
        ctx.register_table(name.as_str(), view)?;
    }
    ctx.deregister_table("scope_persons_")?;
    Ok(())
}

fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

impl Warehouse {
    pub fn new(store: Arc<Store>, rule: RuleParams) -> Warehouse {
        Warehouse {
            store,
            rule,
            memory_limit: None,
            cache: Mutex::new(Vec::new()),
        }
    }

    /// Bounds the memory of every query (DataFusion spills sorts and aggregations, or fails
    /// the query with a resources-exhausted error).
    pub fn with_memory_limit(mut self, bytes: usize) -> Warehouse {
        self.memory_limit = Some(bytes);
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn rule(&self) -> &RuleParams {
        &self.rule
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
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_information_schema(true);
        let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
        if let Some(limit) = self.memory_limit {
            runtime = runtime.with_memory_limit(limit, 1.0);
        }
        let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
        let mut versions = BTreeMap::new();
        let mut names: Vec<&str> = Table::ALL.iter().map(|t| t.as_str()).collect();
        names.extend([BATCHES, REJECTS]);
        for name in &names {
            let table = self.store.refresh(name).await?;
            versions.insert(name.to_string(), table.version().unwrap_or(0));
            ctx.register_table(format!("delta_{name}"), table.table_provider().await?)?;
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
            let current = ctx
                .sql(&format!(
                    "SELECT {cols} FROM (SELECT {cols}, row_number() OVER (PARTITION BY source, record_id \
                     ORDER BY record_version DESC, ingested_at DESC) AS rn_ FROM raw_{name}) WHERE rn_ = 1 AND op = 'upsert'"
                ))
                .await?;
            ctx.register_table(name, current.into_view())?;
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

        let key = DerivedKey {
            versions: versions.clone(),
            known_at: known_at.map(|t| t.timestamp_micros()),
            rule: self.rule.rule_version(),
        };
        let cached = {
            let mut cache = self.cache.lock().expect("lock");
            let hit = cache.iter().position(|(k, _)| *k == key);
            hit.map(|i| {
                let entry = cache.remove(i);
                let d = entry.1.clone();
                cache.push(entry);
                d
            })
        };
        let derived_cached = cached.is_some();
        let derived = match cached {
            Some(d) => d,
            None => {
                let d = Arc::new(derive::derive(&ctx, &self.rule).await?);
                let mut cache = self.cache.lock().expect("lock");
                cache.push((key, d.clone()));
                if cache.len() > DERIVED_CACHE {
                    cache.remove(0);
                }
                d
            }
        };
        derived.register(&ctx)?;
        let groups = ctx
            .sql(
                "SELECT person_key, \"group\" AS group_code, valid_from, \
                 CAST(valid_to + INTERVAL '1 day' AS DATE) AS valid_until, detail, source \
                 FROM group_flags WHERE person_key IS NOT NULL",
            )
            .await?;
        ctx.register_table("group_episodes", groups.into_view())?;
        // The Delta providers stay reachable only through the views built on them.
        for name in &names {
            ctx.deregister_table(format!("delta_{name}"))?;
        }
        if !access.rejects {
            ctx.deregister_table(REJECTS)?;
        }
        if let Some(scope) = &access.scope {
            apply_scope(&ctx, scope).await?;
        }
        Ok(Snapshot {
            ctx,
            known_at,
            versions,
            derived,
            derived_cached,
        })
    }
}
