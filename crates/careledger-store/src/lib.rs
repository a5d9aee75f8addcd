//! Delta tables on object storage: the only crate that knows table locations and commits.
//!
//! A store is a root URL (`file:///…` directory, `memory://`, or `s3://bucket/prefix`) holding
//! one Delta table per pushed table plus the gateway's own `batches` (receipts) and `rejects`
//! tables. Each append is one Delta commit: its rows, the Delta
//! application transactions (`txn`) that make replays detectable, and commit metadata.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use careledger_model::Table;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructField, StructType, Transaction};
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::StreamExt;
use tokio::sync::Mutex;
use url::Url;

mod derived;
pub use derived::*;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {0:?} is not usable: {1}")]
    Url(String, String),
    #[error("no table named {0}")]
    UnknownTable(String),
    #[error("table {table}: stored schema is incompatible with this build: {detail}")]
    Incompatible { table: String, detail: String },
    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// A Delta commit lost to a concurrent one (nothing of it was written).
    pub fn is_commit_conflict(&self) -> bool {
        use deltalake::DeltaTableError as E;
        use deltalake::kernel::transaction::TransactionError as T;
        matches!(
            self,
            StoreError::Delta(
                E::Transaction {
                    source: T::CommitConflict(_) | T::MaxCommitAttempts(_)
                } | E::VersionAlreadyExists(_)
            )
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The gateway's own tables besides the pushed ones.
pub const BATCHES: &str = "batches";
pub const REJECTS: &str = "rejects";
pub const AUDIT: &str = "audit";

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `batches`: one row per acknowledged batch (the receipt), the audit of who sent what, when.
pub fn batches_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("idempotency_key", DataType::Utf8, true),
        Field::new("batch_seq", DataType::Int64, true),
        Field::new("format", DataType::Utf8, false),
        Field::new("atomic", DataType::Boolean, false),
        Field::new("rows_received", DataType::Int64, false),
        Field::new("rows_accepted", DataType::Int64, false),
        Field::new("rows_rejected", DataType::Int64, false),
        Field::new("table_version", DataType::Int64, true),
        Field::new("received_at", ts(), false),
        Field::new("committed_at", ts(), false),
        Field::new("receipt", DataType::Utf8, false),
    ]))
}

/// `rejects`: rows refused in non-atomic batches, kept so nothing sent is lost. The raw row is
/// JSON with the ID number masked.
pub fn rejects_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("row", DataType::Int64, false),
        Field::new("codes", DataType::Utf8, false),
        Field::new("messages", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("ingested_at", ts(), false),
    ]))
}

/// `audit`: every query and report run: who, what, how many rows, how long, outcome.
pub fn audit_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("at", ts(), false),
        Field::new("token_name", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("scope", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, false),
        Field::new("request", DataType::Utf8, false),
        Field::new("params", DataType::Utf8, true),
        Field::new("rows", DataType::Int64, true),
        Field::new("duration_ms", DataType::Int64, false),
        Field::new("status", DataType::Int64, false),
        Field::new("outcome", DataType::Utf8, false),
    ]))
}

/// Names and schemas of every table the store holds.
pub fn all_tables() -> Vec<(&'static str, SchemaRef)> {
    let mut out: Vec<(&'static str, SchemaRef)> = Table::ALL
        .iter()
        .map(|t| (t.as_str(), t.spec().stored_schema()))
        .collect();
    out.push((BATCHES, batches_schema()));
    out.push((REJECTS, rejects_schema()));
    out.push((AUDIT, audit_schema()));
    out.extend(derived_tables());
    out
}

/// One append: rows for one table, committed atomically with its transactions and metadata.
#[derive(Debug, Default)]
pub struct Append {
    pub batches: Vec<RecordBatch>,
    /// Delta application transactions `(app_id, version)` recorded in the same commit.
    pub txns: Vec<(String, i64)>,
    /// Commit metadata (commitInfo), e.g. the receipts of the batches in this commit.
    pub metadata: Vec<(String, serde_json::Value)>,
}

/// A Delta-backed store.
#[derive(Debug)]
pub struct Store {
    root: Url,
    /// Per table: the loaded table readers share (a new version is loaded under its lock).
    tables: HashMap<&'static str, Mutex<DeltaTable>>,
    /// Per table: the writer side, taken by appends and rewrites (never by readers).
    writers: HashMap<&'static str, Mutex<Option<Appender>>>,
    /// Per table: 1 + the latest version this process has loaded or committed (0: none yet),
    /// readable without waiting for a writer or touching storage ([`Store::known_version`]).
    known: HashMap<&'static str, AtomicU64>,
    writer: WriterProperties,
    /// Per table: application-transaction versions read from the commits seen so far.
    txns: Mutex<HashMap<String, TxnIndex>>,
    /// Per table: its log store (commit files are read and put through it).
    log_stores: HashMap<&'static str, deltalake::logstore::LogStoreRef>,
    /// Per table: held for the whole of a compaction, so two never overlap in this process
    /// (two overlapping OPTIMIZEs of one table both commit, and the rows they rewrite are
    /// then stored twice).
    compactions: HashMap<&'static str, Mutex<()>>,
}

/// The application transactions (`txn` actions) of one table, kept up to date by reading only
/// the commits added since the last look. Asking delta-rs instead replays the log segment
/// (checkpoint and commits) once per id: at a thousand commits that made every group commit
/// slower than the last.
#[derive(Debug, Default)]
struct TxnIndex {
    /// The commits up to this version are in `apps`.
    version: Option<deltalake::kernel::Version>,
    /// appId → the version of its latest `txn` action.
    apps: HashMap<String, i64>,
    /// A commit file was missing (cleaned up): ids not in `apps` are then asked of the log.
    incomplete: bool,
}

fn unreadable_commit(name: &str, version: u64, e: impl std::fmt::Display) -> StoreError {
    StoreError::Delta(deltalake::DeltaTableError::Generic(format!(
        "table {name}: commit {version} does not read: {e}"
    )))
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .build()
}

fn table_url(root: &Url, name: &str) -> Result<Url> {
    let mut base = root.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join(&format!("{name}/"))
        .map_err(|e| StoreError::Url(root.to_string(), e.to_string()))
}

/// Parses a store location: a URL, or a plain directory path (made absolute, created).
pub fn parse_store_url(text: &str) -> Result<Url> {
    if text.starts_with("memory://") || text.starts_with("s3://") || text.starts_with("s3a://") {
        return Url::parse(text).map_err(|e| StoreError::Url(text.into(), e.to_string()));
    }
    let path = text.strip_prefix("file://").unwrap_or(text);
    std::fs::create_dir_all(path).map_err(|e| StoreError::Url(text.into(), e.to_string()))?;
    let abs =
        std::fs::canonicalize(path).map_err(|e| StoreError::Url(text.into(), e.to_string()))?;
    Url::from_directory_path(&abs)
        .map_err(|_| StoreError::Url(text.into(), "not an absolute directory".into()))
}

impl Store {
    /// Opens the store at `location`, creating missing tables and adding columns that this
    /// build's schemas have and the stored tables lack (additive evolution only).
    pub async fn open(location: &str) -> Result<Store> {
        Store::open_with_options(location, HashMap::new()).await
    }

    /// Opens an existing store without writing to it: no table is created and no column added
    /// (for readers such as `careledger sql --store`, which may be newer than the server).
    pub async fn open_existing(location: &str) -> Result<Store> {
        let root = parse_store_url(location)?;
        let mut tables = HashMap::new();
        for (name, _) in all_tables() {
            let url = table_url(&root, name)?;
            let mut table = DeltaTableBuilder::from_url(url.clone())?
                .with_storage_options(storage_options(&url, &HashMap::new()))
                .build()?;
            match table.load().await {
                Ok(()) => {}
                Err(deltalake::DeltaTableError::NotATable(_)) if name.starts_with("derived/") => {
                    return Err(StoreError::Url(
                        location.into(),
                        format!(
                            "no table {name}: a store written by an older careledger; \
                             start `careledger serve` on it once to derive the ledger"
                        ),
                    ));
                }
                Err(deltalake::DeltaTableError::NotATable(_)) => {
                    return Err(StoreError::Url(
                        location.into(),
                        format!("no table {name}: not a careledger store"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            tables.insert(name, Mutex::new(table));
        }
        Ok(Store::new(root, tables))
    }

    /// Like [`Store::open`], with object-store settings (for `s3://`: `AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, …) that win over the `AWS_*` environment variables.
    pub async fn open_with_options(
        location: &str,
        options: HashMap<String, String>,
    ) -> Result<Store> {
        let root = parse_store_url(location)?;
        let mut tables = HashMap::new();
        for (name, schema) in all_tables() {
            let table = open_or_create(&root, name, &schema, &options).await?;
            tables.insert(name, Mutex::new(table));
        }
        Ok(Store::new(root, tables))
    }

    fn new(root: Url, tables: HashMap<&'static str, Mutex<DeltaTable>>) -> Store {
        let known = tables
            .keys()
            .map(|name| (*name, AtomicU64::new(0)))
            .collect();
        let writers = tables
            .keys()
            .map(|name| (*name, Mutex::new(None)))
            .collect();
        let compactions = tables.keys().map(|name| (*name, Mutex::new(()))).collect();
        let log_stores = tables
            .iter()
            .map(|(name, slot)| {
                let table = slot
                    .try_lock()
                    .expect("a new store's tables are not locked");
                (*name, table.log_store())
            })
            .collect();
        let store = Store {
            log_stores,
            root,
            tables,
            writers,
            known,
            writer: writer_properties(),
            txns: Mutex::default(),
            compactions,
        };
        for (name, slot) in &store.tables {
            if let Ok(table) = slot.try_lock() {
                store.note(name, &table);
            }
        }
        store
    }

    /// Records the version of `table` as the latest this process knows of `name`.
    fn note(&self, name: &str, table: &DeltaTable) {
        if let Some(v) = table.version() {
            self.note_version(name, v);
        }
    }

    /// Records `version` as the latest this process knows of `name` (if it is newer).
    fn note_version(&self, name: &str, version: u64) {
        if let Some(known) = self.known.get(name) {
            known.fetch_max(version + 1, Ordering::AcqRel);
        }
    }

    /// The latest version of `name` this process has loaded or committed, without waiting for
    /// a writer or reading storage (None: none yet). Another process's commits show only after
    /// a [`Store::refresh`].
    pub fn known_version(&self, name: &str) -> Option<u64> {
        match self.known.get(name)?.load(Ordering::Acquire) {
            0 => None,
            v => Some(v - 1),
        }
    }

    pub fn url(&self) -> &Url {
        &self.root
    }

    /// The local directory of a `file://` store.
    pub fn local_dir(&self) -> Option<std::path::PathBuf> {
        (self.root.scheme() == "file")
            .then(|| self.root.to_file_path().ok())
            .flatten()
    }

    fn slot(&self, name: &str) -> Result<&Mutex<DeltaTable>> {
        self.tables
            .get(name)
            .ok_or_else(|| StoreError::UnknownTable(name.to_string()))
    }

    /// The table's slot, locked, with the latest version loaded (and noted).
    async fn latest(&self, name: &str) -> Result<tokio::sync::MutexGuard<'_, DeltaTable>> {
        let mut guard = self.slot(name)?.lock().await;
        guard.update_state().await?;
        self.note(name, &guard);
        Ok(guard)
    }

    /// Puts a table this process just committed in its slot (and notes its version).
    fn install(&self, name: &str, slot: &mut DeltaTable, table: DeltaTable) {
        *slot = table;
        self.note(name, slot);
    }

    /// Appends in one commit and returns the new table version. Nothing is visible if it fails.
    ///
    /// The cost of a commit does not grow with the table: the rows are written as Parquet
    /// files (delta-rs's `RecordBatchWriter`, with statistics), and the commit file (the
    /// files' `add` actions, the transactions, the metadata) is put at the next version
    /// through the table's log store (an atomic put-if-absent, as delta-rs commits). Neither
    /// step loads the table's file list, which delta-rs's `write` re-materialises on every
    /// commit. Appends take the table's writer lock, not its slot: readers loading a new
    /// version do not hold up a commit, nor a commit them. A commit that finds its version
    /// taken by another process is put at the next free one, unless that process recorded one
    /// of this commit's transactions (then it is a conflict, for the caller to check again).
    /// Every [`CHECKPOINT_INTERVAL`] versions a checkpoint is written in the background.
    pub async fn append(&self, name: &str, append: Append) -> Result<u64> {
        use deltalake::kernel::Action;
        use deltalake::writer::DeltaWriter as _;
        let mut writer = self.writer_of(name)?.lock().await;
        let app = self.appender(name, &mut writer).await?;
        let batches: Vec<RecordBatch> = append
            .batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| conform(&b, &app.schema))
            .collect::<Result<_>>()?;
        let mut actions = Vec::new();
        if !batches.is_empty() {
            let mut files = deltalake::writer::RecordBatchWriter::for_table(&app.table)?
                .with_writer_properties(self.writer.clone());
            for b in batches {
                files.write(b).await?;
            }
            actions.extend(files.flush().await?.into_iter().map(Action::Add));
        }
        self.commit_actions(name, app, actions, append.txns, append.metadata)
            .await
    }

    /// Starts rows for `name` that are written to its files over several calls
    /// ([`Staged::write`]: streamed to storage, in files of about [`STAGED_FILE_BYTES`]) and
    /// committed at once by [`Store::commit_staged`]; nothing is visible before. A rebuild of
    /// the derived tables writes its buckets so: few files, and one bucket in memory at a time.
    pub async fn stage(&self, name: &str) -> Result<Staged> {
        let mut writer = self.writer_of(name)?.lock().await;
        let app = self.appender(name, &mut writer).await?;
        // Row groups of STAGED_ROW_GROUP rows: each table's open row group is held in memory
        // until it is full, and a file sorted throughout prunes by row group.
        let properties = self
            .writer
            .clone()
            .into_builder()
            .set_max_row_group_row_count(Some(STAGED_ROW_GROUP))
            .build();
        let files = deltalake::writer::RecordBatchWriter::for_table(&app.table)?
            .with_writer_properties(properties)
            .with_target_file_size(STAGED_FILE_BYTES);
        Ok(Staged {
            files,
            schema: app.schema.clone(),
            rows: 0,
            closed: Vec::new(),
        })
    }

    /// Commits the rows of every `staged` (with `txns`) in one commit, as [`Store::append`]
    /// does.
    pub async fn commit_staged(
        &self,
        name: &str,
        staged: Vec<Staged>,
        txns: Vec<(String, i64)>,
    ) -> Result<u64> {
        use deltalake::kernel::Action;
        let mut actions: Vec<Action> = Vec::new();
        for mut s in staged {
            s.close().await?;
            actions.extend(s.closed.into_iter().map(Action::Add));
        }
        let mut writer = self.writer_of(name)?.lock().await;
        let app = self.appender(name, &mut writer).await?;
        self.commit_actions(name, app, actions, txns, Vec::new())
            .await
    }

    /// The writer side of `name`, loaded on first use.
    async fn appender<'a>(
        &self,
        name: &str,
        writer: &'a mut Option<Appender>,
    ) -> Result<&'a mut Appender> {
        if writer.is_none() {
            let table = self.slot(name)?.lock().await.clone();
            // The commit file is handed over as bytes, which delta-rs's own log stores put if
            // absent (local files, memory, S3 with or without unsafe rename). A log store that
            // takes a temporary file instead is refused here, not written to untested.
            let kind = table.log_store().name();
            if !matches!(kind.as_str(), "DefaultLogStore" | "LakeFSLogStore") {
                return Err(deltalake::DeltaTableError::Generic(format!(
                    "table {name}: its log store ({kind}) commits from temporary files, which careledger's appends do not write; use a store whose log store puts commits if absent (file://, memory://, s3://)"
                ))
                .into());
            }
            let schema = table.snapshot()?.snapshot().arrow_schema();
            let version = table.version().unwrap_or_default();
            *writer = Some(Appender {
                table,
                schema,
                version,
            });
        }
        Ok(writer.as_mut().expect("set above"))
    }

    /// Puts one commit (`actions`, `txns`, `metadata`) at the next free version of `name`.
    async fn commit_actions(
        &self,
        name: &str,
        app: &mut Appender,
        actions: Vec<deltalake::kernel::Action>,
        txns: Vec<(String, i64)>,
        metadata: Vec<(String, serde_json::Value)>,
    ) -> Result<u64> {
        use deltalake::kernel::transaction::{CommitData, TransactionError};
        use deltalake::logstore::CommitOrBytes;
        let mine: std::collections::HashSet<String> =
            txns.iter().map(|(app, _)| app.clone()).collect();
        let txns = txns
            .into_iter()
            .map(|(app, v)| Transaction::new(app, v))
            .collect();
        let operation = deltalake::protocol::DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        };
        let bytes = CommitData::new(actions, operation, metadata.into_iter().collect(), txns)
            .get_bytes()
            .map_err(deltalake::DeltaTableError::from)?;
        let log_store = app.table.log_store();
        let mut version = app.version + 1;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let entry = CommitOrBytes::LogBytes(bytes.clone());
            match log_store
                .write_commit_entry(version, entry, uuid::Uuid::new_v4())
                .await
            {
                Ok(()) => break,
                Err(TransactionError::VersionAlreadyExists(_)) if attempts < COMMIT_ATTEMPTS => {
                    // Another process committed meanwhile: a blind append goes after it,
                    // unless it recorded one of this commit's transactions.
                    let latest = log_store.get_latest_version(version).await?;
                    for v in version..=latest {
                        let mut apps = HashMap::new();
                        if let Some(commit) = log_store.read_commit_entry(v).await? {
                            read_txn_actions(&commit, &mut apps).map_err(|e| {
                                deltalake::DeltaTableError::Generic(format!(
                                    "reading commit {v} of {name}: {e}"
                                ))
                            })?;
                        }
                        if apps.keys().any(|a| mine.contains(a)) {
                            return Err(deltalake::DeltaTableError::VersionAlreadyExists(v).into());
                        }
                    }
                    version = latest + 1;
                }
                Err(e) => return Err(deltalake::DeltaTableError::from(e).into()),
            }
        }
        app.version = version;
        self.note_version(name, version);
        if (version + 1).is_multiple_of(CHECKPOINT_INTERVAL) {
            checkpoint_later(name, version, log_store);
        }
        Ok(version)
    }

    /// The writer side of `name`: appends and rewrites take it in turn.
    fn writer_of(&self, name: &str) -> Result<&Mutex<Option<Appender>>> {
        self.writers
            .get(name)
            .ok_or_else(|| StoreError::UnknownTable(name.to_string()))
    }

    /// Reloads the latest version of a table (another process may have committed).
    pub async fn refresh(&self, name: &str) -> Result<DeltaTable> {
        let guard = self.latest(name).await?;
        Ok(guard.clone())
    }

    /// The loaded table (a cheap clone of the current snapshot handle), brought up to the
    /// latest version this process committed (appends do not load it themselves).
    pub async fn table(&self, name: &str) -> Result<DeltaTable> {
        let mut guard = self.slot(name)?.lock().await;
        let behind = match (guard.version(), self.known_version(name)) {
            (Some(v), Some(known)) => v < known,
            (None, Some(_)) => true,
            _ => false,
        };
        if behind {
            guard.update_state().await?;
            self.note(name, &guard);
        }
        Ok(guard.clone())
    }

    /// Latest version of the application transaction `app_id` in `name`, after a refresh.
    pub async fn txn_version(&self, name: &str, app_id: &str) -> Result<Option<i64>> {
        Ok(self.txn_versions(name, &[app_id.to_string()]).await?[0])
    }

    /// Latest versions of several application transactions, as of the latest commit.
    ///
    /// The first call for a table loads its latest version and reads every commit file; later
    /// calls read only the commit files written since (probing the next version until one is
    /// missing: Delta versions are contiguous), without loading the table's snapshot or taking
    /// its slot. A group commit asks this before every commit, so it costs the same at the
    /// millionth row as at the first and never waits behind a reader loading the table.
    pub async fn txn_versions(&self, name: &str, app_ids: &[String]) -> Result<Vec<Option<i64>>> {
        let log_store = self
            .log_stores
            .get(name)
            .ok_or_else(|| StoreError::UnknownTable(name.to_string()))?
            .clone();
        let mut indexes = self.txns.lock().await;
        let index = indexes.entry(name.to_string()).or_default();
        if index.version.is_none() {
            let table = self.refresh(name).await?;
            let Some(latest) = table.version() else {
                return Ok(vec![None; app_ids.len()]);
            };
            for version in 0..=latest {
                match log_store.read_commit_entry(version).await? {
                    Some(bytes) => read_txn_actions(&bytes, &mut index.apps)
                        .map_err(|e| unreadable_commit(name, version, e))?,
                    None => index.incomplete = true,
                }
            }
            index.version = Some(latest);
        }
        let mut next = index.version.map_or(0, |v| v + 1);
        while let Some(bytes) = log_store.read_commit_entry(next).await? {
            read_txn_actions(&bytes, &mut index.apps)
                .map_err(|e| unreadable_commit(name, next, e))?;
            index.version = Some(next);
            self.note_version(name, next);
            next += 1;
        }
        let mut out = Vec::with_capacity(app_ids.len());
        for app in app_ids {
            match index.apps.get(app) {
                Some(v) => out.push(Some(*v)),
                None if !index.incomplete => out.push(None),
                None => {
                    let table = self.table(name).await?;
                    out.push(
                        table
                            .snapshot()?
                            .transaction_version(table.log_store().as_ref(), app)
                            .await?,
                    )
                }
            }
        }
        Ok(out)
    }

    /// How many rows the commits after version `after` up to `upto` added to `name` (their
    /// `add` actions with `dataChange`), from the files' statistics in the commit files: the
    /// data files are not read. A file without a row count counts as none.
    pub async fn added_row_count(&self, name: &str, after: u64, upto: u64) -> Result<u64> {
        let table = self.table(name).await?;
        let mut n = 0u64;
        for version in after + 1..=upto {
            let Some(bytes) = table.log_store().read_commit_entry(version).await? else {
                return Err(StoreError::Delta(deltalake::DeltaTableError::Generic(
                    format!("table {name}: commit {version} is missing"),
                )));
            };
            n += added_records(&bytes).map_err(|e| {
                StoreError::Delta(deltalake::DeltaTableError::Generic(format!(
                    "table {name}: commit {version} does not read: {e}"
                )))
            })?;
        }
        Ok(n)
    }

    /// The rows that the commits after version `after` up to `upto` added to `name` (their
    /// `add` actions with `dataChange`: an append's files, not compaction's rewrites), read
    /// from the data files those commits name, in the table's current schema.
    pub async fn added_rows(&self, name: &str, after: u64, upto: u64) -> Result<Vec<RecordBatch>> {
        let table = self.table(name).await?;
        let schema = table.snapshot()?.snapshot().arrow_schema();
        let store = table.log_store().object_store(None);
        let mut out = Vec::new();
        for version in after + 1..=upto {
            let Some(bytes) = table.log_store().read_commit_entry(version).await? else {
                return Err(StoreError::Delta(deltalake::DeltaTableError::Generic(
                    format!(
                        "table {name}: commit {version} is missing, so the rows it added cannot be read"
                    ),
                )));
            };
            let paths = added_paths(&bytes).map_err(|e| {
                StoreError::Delta(deltalake::DeltaTableError::Generic(format!(
                    "table {name}: commit {version} does not read: {e}"
                )))
            })?;
            for path in paths {
                let path = deltalake::Path::from_url_path(&path).map_err(|e| {
                    StoreError::Delta(deltalake::DeltaTableError::Generic(format!(
                        "table {name}: data file {path:?}: {e}"
                    )))
                })?;
                use deltalake::logstore::object_store::ObjectStoreExt as _;
                let bytes = store
                    .get(&path)
                    .await
                    .map_err(|e| StoreError::Delta(e.into()))?
                    .bytes()
                    .await
                    .map_err(|e| StoreError::Delta(e.into()))?;
                let reader =
                    deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                        .map_err(|e| StoreError::Delta(e.into()))?
                        .build()
                        .map_err(|e| StoreError::Delta(e.into()))?;
                let batches: Vec<RecordBatch> = reader.collect::<std::result::Result<_, _>>()?;
                for b in batches {
                    out.push(conform(&b, &schema)?);
                }
            }
        }
        Ok(out)
    }

    /// Deletes the rows matching `predicate` (SQL over the table's columns) in one commit that
    /// also records `txns`; returns the new version (unchanged if nothing matched).
    pub async fn delete_where(
        &self,
        name: &str,
        predicate: &str,
        txns: Vec<(String, i64)>,
    ) -> Result<u64> {
        // Rewrites and appends take turns; the next append starts from this version.
        let mut writer = self.writer_of(name)?.lock().await;
        *writer = None;
        let mut guard = self.latest(name).await?;
        let props = commit_properties(txns, Vec::new());
        let (table, _metrics) = guard
            .clone()
            .delete()
            .with_predicate(predicate.to_string())
            .with_writer_properties(self.writer.clone())
            .with_commit_properties(props)
            .await?;
        let version = table.version().unwrap_or_default();
        self.install(name, &mut guard, table);
        Ok(version)
    }

    /// Replaces every row of `name` by `append`'s rows in one commit (with its transactions
    /// and metadata); readers of older versions are unaffected.
    pub async fn overwrite(&self, name: &str, append: Append) -> Result<u64> {
        // Rewrites and appends take turns; the next append starts from this version.
        let mut writer = self.writer_of(name)?.lock().await;
        *writer = None;
        let mut guard = self.latest(name).await?;
        let schema = guard.snapshot()?.snapshot().arrow_schema();
        let mut batches: Vec<RecordBatch> = append
            .batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| conform(&b, &schema))
            .collect::<Result<_>>()?;
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(schema.clone()));
        }
        let props = commit_properties(append.txns, append.metadata);
        let written = guard
            .clone()
            .write(batches)
            .with_save_mode(SaveMode::Overwrite)
            .with_writer_properties(self.writer.clone())
            .with_commit_properties(props)
            .await?;
        let version = written.version().expect("a committed table has a version");
        self.install(name, &mut guard, written);
        Ok(version)
    }

    /// Replaces every row of `name` by the rows `plan` produces (streamed: never held whole),
    /// run in `session`, in one commit with `txns`. The plan may read `name` itself (it reads
    /// the version before this commit).
    pub async fn overwrite_from(
        &self,
        name: &str,
        plan: datafusion::logical_expr::LogicalPlan,
        session: Arc<dyn datafusion::catalog::Session>,
        txns: Vec<(String, i64)>,
    ) -> Result<u64> {
        // Rewrites and appends take turns; the next append starts from this version.
        let mut writer = self.writer_of(name)?.lock().await;
        *writer = None;
        let mut guard = self.latest(name).await?;
        let props = commit_properties(txns, Vec::new());
        let written = guard
            .clone()
            .write(Vec::<RecordBatch>::new())
            .with_input_plan(plan)
            .with_session_state(session)
            .with_save_mode(SaveMode::Overwrite)
            .with_writer_properties(self.writer.clone())
            .with_commit_properties(props)
            .await?;
        let version = written.version().expect("a committed table has a version");
        self.install(name, &mut guard, written);
        Ok(version)
    }

    /// The values of commit-metadata `key` over the table's history, newest first.
    /// The value under `key` in the commitInfo of every commit of `name` that has one, with
    /// the commit's version, oldest first (commit files cleaned up are skipped).
    pub async fn commit_metadata_versions(
        &self,
        name: &str,
        key: &str,
    ) -> Result<Vec<(u64, serde_json::Value)>> {
        let table = self.refresh(name).await?;
        let Some(latest) = table.version() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for version in 0..=latest {
            if let Some(v) = self.commit_metadata_at(name, version, key).await? {
                out.push((version, v));
            }
        }
        Ok(out)
    }

    /// The value under `key` in the commitInfo of commit `version` of `name` (None: the
    /// commit has no such value, or its file was cleaned up).
    pub async fn commit_metadata_at(
        &self,
        name: &str,
        version: u64,
        key: &str,
    ) -> Result<Option<serde_json::Value>> {
        let table = self.table(name).await?;
        let Some(bytes) = table.log_store().read_commit_entry(version).await? else {
            return Ok(None);
        };
        for line in bytes.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let action: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
                StoreError::Delta(deltalake::DeltaTableError::Generic(format!(
                    "table {name}: commit {version} does not read: {e}"
                )))
            })?;
            if let Some(v) = action.get("commitInfo").and_then(|c| c.get(key)) {
                return Ok(Some(v.clone()));
            }
        }
        Ok(None)
    }
}

/// Versions between checkpoints (delta-rs's default `checkpointInterval`).
pub const CHECKPOINT_INTERVAL: u64 = 100;

/// Tries at putting an append's commit file before giving up (each after another process
/// took the version).
const COMMIT_ATTEMPTS: usize = 16;

/// Rows written to a table's files and not committed yet ([`Store::stage`]).
pub struct Staged {
    files: deltalake::writer::RecordBatchWriter,
    schema: SchemaRef,
    /// Rows written since the last flush.
    rows: usize,
    /// The files finished by [`Staged::close`], not committed yet.
    closed: Vec<deltalake::kernel::Add>,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged").field("rows", &self.rows).finish()
    }
}

impl Staged {
    /// Writes `batch` (cast to the table's schema) to the open file, which is finished and a
    /// new one started once it reaches [`STAGED_FILE_BYTES`].
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        use deltalake::writer::DeltaWriter as _;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows();
        Ok(self.files.write(conform(&batch, &self.schema)?).await?)
    }

    /// Finishes the open file, so that its buffers are freed before the commit (which may
    /// wait for other staged rows). More rows may follow, in new files.
    pub async fn close(&mut self) -> Result<()> {
        use deltalake::writer::DeltaWriter as _;
        if self.rows > 0 {
            self.closed.extend(self.files.flush().await?);
            self.rows = 0;
        }
        Ok(())
    }
}

/// The size of the files [`Store::stage`] writes.
pub const STAGED_FILE_BYTES: u64 = 128 << 20;
/// The rows per row group of the files [`Store::stage`] writes.
pub const STAGED_ROW_GROUP: usize = 256 * 1024;

/// What appends to one table keep between commits: a handle for its metadata, object store
/// and log store (its file list is never loaded here), its Arrow schema, and the last version
/// this process committed. Dropped (and taken again from the table's slot) after a rewrite.
#[derive(Debug)]
struct Appender {
    table: DeltaTable,
    schema: SchemaRef,
    version: u64,
}

/// Writes a checkpoint of `name` at `version` in the background: readers and restarts replay
/// at most [`CHECKPOINT_INTERVAL`] commit files after it. It reads the file list (the one step
/// whose cost grows with the table), off every sender's path. A failure is logged; the next
/// interval tries again.
fn checkpoint_later(name: &str, version: u64, log_store: deltalake::logstore::LogStoreRef) {
    let name = name.to_string();
    tokio::spawn(async move {
        let mut table = DeltaTable::new(log_store);
        let done = async {
            table.load_version(version).await?;
            deltalake::checkpoints::create_checkpoint(&table, None).await
        }
        .await;
        if let Err(e) = done {
            tracing::warn!(table = %name, version, error = %e, "writing a checkpoint failed");
        }
    });
}

/// Commit properties with application transactions `txns` and commit metadata.
fn commit_properties(
    txns: Vec<(String, i64)>,
    metadata: Vec<(String, serde_json::Value)>,
) -> CommitProperties {
    let props = keep_logs().with_metadata(metadata);
    if txns.is_empty() {
        return props;
    }
    props.with_application_transactions(
        txns.into_iter()
            .map(|(app, v)| Transaction::new(app, v))
            .collect(),
    )
}

/// Commit properties of every commit here. delta-rs deletes commit files older than the log
/// retention (30 days) after every commit by default; they hold the receipts and idempotency
/// keys, so never here. (The clean-up also listed the whole log on every commit.)
fn keep_logs() -> CommitProperties {
    CommitProperties::default().with_cleanup_expired_logs(Some(false))
}

/// An exclusive `flock` on `path` (created if missing), waited for on the blocking pool;
/// released when the file is dropped.
async fn compaction_lock(path: std::path::PathBuf) -> Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt as _;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(std::io::Error::from)?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    .map_err(StoreError::Io)
}

/// Records the `txn` actions of one commit file (newline-delimited JSON actions) in `apps`.
fn read_txn_actions(
    commit: &[u8],
    apps: &mut HashMap<String, i64>,
) -> std::result::Result<(), serde_json::Error> {
    for line in commit.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let action: serde_json::Value = serde_json::from_slice(line)?;
        if let Some(txn) = action.get("txn") {
            let app = txn.get("appId").and_then(serde_json::Value::as_str);
            let version = txn.get("version").and_then(serde_json::Value::as_i64);
            if let (Some(app), Some(version)) = (app, version) {
                apps.insert(app.to_string(), version);
            }
        }
    }
    Ok(())
}

/// A DataFusion session set up as delta-rs plans its writes (its query planner): a plan given
/// to [`Store::overwrite_from`] must be built in one.
pub fn write_session() -> datafusion::prelude::SessionContext {
    deltalake::delta_datafusion::create_session().into_inner()
}

/// The paths of the `add` actions with `dataChange` of one commit file.
fn added_paths(commit: &[u8]) -> std::result::Result<Vec<String>, serde_json::Error> {
    let mut out = Vec::new();
    for line in commit.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let action: serde_json::Value = serde_json::from_slice(line)?;
        if let Some(add) = action.get("add") {
            let data_change = add.get("dataChange").and_then(serde_json::Value::as_bool);
            if let (Some(path), Some(true)) =
                (add.get("path").and_then(|p| p.as_str()), data_change)
            {
                out.push(path.to_string());
            }
        }
    }
    Ok(out)
}

/// The rows the data-changing `add`s of one commit file hold (`numRecords` of their stats).
fn added_records(commit: &[u8]) -> std::result::Result<u64, serde_json::Error> {
    let mut n = 0;
    for line in commit.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let action: serde_json::Value = serde_json::from_slice(line)?;
        let Some(add) = action.get("add") else {
            continue;
        };
        if add.get("dataChange").and_then(serde_json::Value::as_bool) != Some(true) {
            continue;
        }
        if let Some(stats) = add.get("stats").and_then(serde_json::Value::as_str) {
            let stats: serde_json::Value = serde_json::from_str(stats)?;
            n += stats
                .get("numRecords")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
        }
    }
    Ok(n)
}

/// What compacting one table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactStats {
    pub files_removed: u64,
    pub files_added: u64,
    pub bytes_removed: u64,
    pub bytes_added: u64,
    /// The table version after compaction (unchanged when there was nothing to do).
    pub version: u64,
}

/// What vacuuming one table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumStats {
    pub files_deleted: u64,
}

/// Live data files of a table and their total size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStats {
    pub version: u64,
    pub files: u64,
    pub bytes: u64,
}

impl Store {
    /// Live data files of `name` at its latest version.
    pub async fn file_stats(&self, name: &str) -> Result<FileStats> {
        let table = self.refresh(name).await?;
        let snapshot = table.snapshot()?;
        let mut stats = FileStats {
            version: snapshot.version(),
            ..FileStats::default()
        };
        let mut files = snapshot
            .snapshot()
            .file_views(table.log_store().as_ref(), None);
        while let Some(f) = files.next().await {
            let f = f?;
            stats.files += 1;
            stats.bytes += f.size() as u64;
        }
        Ok(stats)
    }

    /// Rewrites small data files of `name` into files of about `target_bytes` (Delta
    /// OPTIMIZE, bin-packing). Rows, and so every query answer, are unchanged; concurrent
    /// appends from a running server do not conflict with it.
    pub async fn compact(&self, name: &str, target_bytes: u64) -> Result<CompactStats> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.compact_with(name, target_bytes, cores).await
    }

    /// [`Store::compact`] rewriting at most `tasks` bins at once (each holds a bin's rows
    /// in flight): the server's background compaction uses one, beside ingest and the
    /// deriver.
    pub async fn compact_with(
        &self,
        name: &str,
        target_bytes: u64,
        tasks: usize,
    ) -> Result<CompactStats> {
        // One compaction of a table at a time: in this process by its mutex, across processes
        // sharing a local store by an exclusive lock on `.compact-<table>.lock` in its root
        // (held until the rewrite is committed; `derived/x` locks `.compact-derived-x.lock`).
        // A store elsewhere (S3) has no such lock: run
        // one `maintain` at a time there, and no background compaction.
        let _in_process = self
            .compactions
            .get(name)
            .ok_or_else(|| StoreError::UnknownTable(name.to_string()))?
            .lock()
            .await;
        let _across_processes = match self.local_dir() {
            Some(dir) => Some(
                compaction_lock(dir.join(format!(".compact-{}.lock", name.replace('/', "-"))))
                    .await?,
            ),
            None => None,
        };
        // The rewrite runs on a copy: readers keep the slot (and the version they have) until
        // it is committed.
        let start = self.latest(name).await?.clone();
        let target = std::num::NonZeroU64::new(target_bytes.max(1)).expect("at least 1");
        let (table, metrics) = start
            .optimize()
            .with_commit_properties(keep_logs())
            .with_target_size(target)
            .with_max_concurrent_tasks(tasks.max(1))
            .with_writer_properties(self.writer.clone())
            .await?;
        let version = table.version().unwrap_or_default();
        let mut slot = self.slot(name)?.lock().await;
        if slot.version() < table.version() {
            self.install(name, &mut slot, table);
        }
        Ok(CompactStats {
            files_removed: metrics.num_files_removed,
            files_added: metrics.num_files_added,
            bytes_removed: metrics.files_removed.total_size.max(0) as u64,
            bytes_added: metrics.files_added.total_size.max(0) as u64,
            version,
        })
    }

    /// The number of data files of `name` at its latest version (loads its file list).
    pub async fn file_count(&self, name: &str) -> Result<usize> {
        let table = self.refresh(name).await?;
        Ok(table.get_file_uris()?.count())
    }

    /// Writes a Delta checkpoint at the latest version of `name`, so that opening the table
    /// reads one Parquet file instead of every commit. The JSON commits stay: they hold the
    /// receipts that answer retried idempotency keys.
    pub async fn checkpoint(&self, name: &str) -> Result<u64> {
        let table = self.refresh(name).await?;
        deltalake::checkpoints::create_checkpoint(&table, None).await?;
        Ok(table.version().unwrap_or_default())
    }

    /// Deletes data files that no version newer than `retention` still needs (those that
    /// compaction replaced). `retention` below the table's own (7 days by default) is refused
    /// by Delta unless `force`, because a reader may still be on an older version.
    pub async fn vacuum(
        &self,
        name: &str,
        retention: std::time::Duration,
        force: bool,
    ) -> Result<VacuumStats> {
        let mut guard = self.latest(name).await?;
        let retention = chrono::Duration::from_std(retention)
            .map_err(|e| StoreError::Url(name.into(), format!("retention: {e}")))?;
        let (table, metrics) = guard
            .clone()
            .vacuum()
            .with_commit_properties(keep_logs())
            .with_retention_period(retention)
            .with_enforce_retention_duration(!force)
            .await?;
        self.install(name, &mut guard, table);
        Ok(VacuumStats {
            files_deleted: metrics.files_deleted.len() as u64,
        })
    }
}

/// Casts a batch to the table's schema (same columns, in the table's order and nullability).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = match batch.column_by_name(f.name()) {
            Some(c) => c.clone(),
            None => arrow_array::new_null_array(f.data_type(), batch.num_rows()),
        };
        columns.push(if col.data_type() == f.data_type() {
            col
        } else {
            arrow::compute::cast(&col, f.data_type())?
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Object-store settings for `url`: for `s3://`, every `AWS_*` environment variable
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_ALLOW_HTTP`, …). Commits rely on S3 conditional writes (If-None-Match), so several
/// gateways may write one bucket without a lock table.
fn storage_options(url: &Url, given: &HashMap<String, String>) -> HashMap<String, String> {
    if !matches!(url.scheme(), "s3" | "s3a") {
        return given.clone();
    }
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| deltalake::aws::register_handlers(None));
    let mut options: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .collect();
    options.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    options
}

async fn open_or_create(
    root: &Url,
    name: &str,
    schema: &SchemaRef,
    options: &HashMap<String, String>,
) -> Result<DeltaTable> {
    let url = table_url(root, name)?;
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|_| StoreError::Url(url.to_string(), "not a path".into()))?;
        std::fs::create_dir_all(&path)
            .map_err(|e| StoreError::Url(url.to_string(), e.to_string()))?;
    }
    let mut table = DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(storage_options(&url, options))
        .build()?;
    match table.load().await {
        Ok(()) => {}
        Err(deltalake::DeltaTableError::NotATable(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if table.version().is_none() {
        let kernel: StructType = schema.as_ref().try_into_kernel()?;
        return Ok(table
            .create()
            .with_table_name(name)
            .with_columns(kernel.fields().cloned())
            .with_save_mode(SaveMode::Ignore)
            .await?);
    }
    evolve(table, name, schema).await
}

/// Adds the columns this build has and the table lacks; refuses removed or retyped columns.
async fn evolve(table: DeltaTable, name: &str, schema: &SchemaRef) -> Result<DeltaTable> {
    let stored = table.snapshot()?.snapshot().arrow_schema();
    let mut missing: Vec<StructField> = Vec::new();
    for f in schema.fields() {
        match stored.field_with_name(f.name()) {
            Ok(existing) if existing.data_type() == f.data_type() => {}
            Ok(existing) => {
                return Err(StoreError::Incompatible {
                    table: name.to_string(),
                    detail: format!(
                        "column {} is {} in the store but {} in this build",
                        f.name(),
                        existing.data_type(),
                        f.data_type()
                    ),
                });
            }
            Err(_) => {
                let nullable = Field::new(f.name(), f.data_type().clone(), true);
                let kernel: StructField = (&nullable).try_into_kernel()?;
                missing.push(kernel);
            }
        }
    }
    for f in stored.fields() {
        if schema.field_with_name(f.name()).is_err() {
            return Err(StoreError::Incompatible {
                table: name.to_string(),
                detail: format!(
                    "the store has column {} that this build does not know (a newer schema version?)",
                    f.name()
                ),
            });
        }
    }
    if missing.is_empty() {
        return Ok(table);
    }
    tracing::info!(
        table = name,
        added = missing.len(),
        "adding columns from the current schema version"
    );
    Ok(table.add_columns().with_fields(missing).await?)
}
