//! Query serving: read-only SQL (`POST /v1/sql`), named reports (`GET /v1/reports/{name}`),
//! the report catalog and the table list. Who may see what is decided here, once: the role of
//! the token and its region scope select a [`careledger_warehouse::Access`], and every table a
//! query can name is already filtered to it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use careledger_warehouse::{Access, WarehouseError, catalog, reports};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::prelude::SQLOptions;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::audit::AuditEntry;
use crate::auth::{Principal, Role};
use crate::disclosure::check_reference_periods;
use crate::output::{Format, concat, encode};
use crate::problem::Problem;

/// Query limits and disclosure settings.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    pub timeout: Duration,
    /// Bytes of memory all queries together may hold (one pool; spilling where DataFusion
    /// can). It also sets the per-batch and per-value limits of user SQL (see `sql_guard`).
    pub memory_limit: usize,
    /// `POST /v1/sql` queries running at once; past it, 503 with Retry-After.
    pub max_concurrent: usize,
    pub json_row_cap: usize,
    /// Disclosure threshold k for dashboard output.
    pub disclosure_k: i64,
    /// Report responses kept for repeated identical requests.
    pub cache_entries: usize,
    /// Bytes of SQL text one `POST /v1/sql` may carry.
    pub max_sql_bytes: usize,
    /// Every query waits (within `timeout`) until the derived tables reflect every commit
    /// made before it arrived, as if it asked `wait_for=latest` (`serve --read-your-writes`).
    pub read_your_writes: bool,
}

impl Default for QueryConfig {
    fn default() -> QueryConfig {
        QueryConfig {
            timeout: Duration::from_secs(30),
            memory_limit: 2 << 30,
            max_concurrent: 4,
            json_row_cap: 100_000,
            disclosure_k: 5,
            cache_entries: 64,
            max_sql_bytes: 100 * 1024,
            read_your_writes: false,
        }
    }
}

/// A bounded cache of encoded report responses by ETag (least recently used out first):
/// at most `cache_entries` answers and [`RESULT_CACHE_BYTES`] bytes together.
#[derive(Debug, Default)]
pub struct ResultCache {
    entries: Mutex<VecDeque<(String, Bytes)>>,
}

/// The bytes the report cache holds at most; an answer larger than an eighth of it is not kept.
pub const RESULT_CACHE_BYTES: usize = 64 << 20;

impl ResultCache {
    fn get(&self, key: &str) -> Option<Bytes> {
        let mut e = self.entries.lock().expect("lock");
        let i = e.iter().position(|(k, _)| k == key)?;
        let hit = e.remove(i).expect("present");
        let body = hit.1.clone();
        e.push_back(hit);
        Some(body)
    }

    fn put(&self, key: String, body: Bytes, cap: usize) {
        let mut e = self.entries.lock().expect("lock");
        e.retain(|(k, _)| *k != key);
        if body.len() > RESULT_CACHE_BYTES / 8 {
            return;
        }
        e.push_back((key, body));
        let mut bytes: usize = e.iter().map(|(_, b)| b.len()).sum();
        while e.len() > cap || bytes > RESULT_CACHE_BYTES {
            match e.pop_front() {
                Some((_, b)) => bytes -= b.len(),
                None => break,
            }
        }
    }
}

fn access_of(p: &Principal) -> Access {
    Access {
        scope: p.scope.clone(),
        // Rejected rows cannot be attributed to a region: never for a scoped token, even an
        // admin's (the warehouse enforces this too).
        rejects: p.role == Role::Admin && p.scope.is_none(),
        publication: p.role == Role::Dashboard,
    }
}

fn forbid(p: &Principal, what: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "token {} (role {}) may not {what}",
            p.name,
            p.role.as_string()
        ),
    )
}

/// Maps warehouse and engine errors to HTTP: the caller's mistakes are 400, limits 503.
fn query_problem(e: WarehouseError) -> Problem {
    match e {
        WarehouseError::BadParam { name, message } => {
            Problem::bad_request("bad-parameter", format!("parameter {name}: {message}"))
        }
        WarehouseError::OutOfScope { name, message } => {
            Problem::bad_request("outside-scope", format!("parameter {name}: {message}"))
        }
        WarehouseError::UnknownReport(n) => Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-report",
            format!("there is no report named {n:?}; GET /v1/reports lists them"),
        ),
        WarehouseError::DataFusion(e) => datafusion_problem(e),
        other => Problem::internal("the query", &other),
    }
}

fn datafusion_problem(e: DataFusionError) -> Problem {
    match e.find_root() {
        DataFusionError::External(limit) if limit.is::<crate::sql_guard::QueryLimit>() => {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "query-limit",
                format!("the query was stopped: {limit}"),
            )
        }
        DataFusionError::ResourcesExhausted(m) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "query-memory-limit",
            format!(
                "the query needed more memory than one query may use ({m}); narrow it or aggregate first"
            ),
        ),
        DataFusionError::SQL(parse, _)
            if matches!(
                parse.as_ref(),
                datafusion::sql::sqlparser::parser::ParserError::RecursionLimitExceeded
            ) =>
        {
            Problem::bad_request(
                "bad-query",
                format!(
                    "the query nests expressions or subqueries deeper than the SQL parser's recursion limit ({}); flatten it",
                    e.find_root()
                ),
            )
        }
        DataFusionError::SQL(..)
        | DataFusionError::Plan(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(..) => {
            Problem::bad_request("bad-query", e.find_root().to_string())
        }
        DataFusionError::Execution(m) => Problem::bad_request("query-failed", m.clone()),
        other => Problem::internal("the query", &other),
    }
}

fn timeout_problem(t: Duration) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "query-timeout",
        format!(
            "the query ran longer than {} and was stopped",
            crate::duration_text(t)
        ),
    )
}

fn json_to_scalar(name: &str, v: &Value) -> Result<ScalarValue, Problem> {
    Ok(match v {
        Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Value::Number(n) if n.is_i64() => ScalarValue::Int64(n.as_i64()),
        Value::Number(n) => ScalarValue::Float64(n.as_f64()),
        Value::Null => ScalarValue::Null,
        _ => {
            return Err(Problem::bad_request(
                "bad-parameter",
                format!("parameter {name} must be a string, number, boolean or null"),
            ));
        }
    })
}

/// Body of `POST /v1/sql`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SqlRequest {
    /// One read-only statement; `$name` placeholders take `params`.
    #[schema(
        example = "SELECT exit_reason, count(*) AS women FROM status_episodes WHERE start_date >= $from GROUP BY 1 ORDER BY 1"
    )]
    pub sql: String,
    /// Values of the `$name` placeholders.
    #[serde(default)]
    #[schema(example = json!({"from": "2024-01-01"}))]
    pub params: BTreeMap<String, Value>,
    /// Answer as the ledger was known at this instant.
    pub known_at: Option<String>,
    /// A receipt's batch id, or `latest`: wait until the answer reflects it.
    #[schema(example = "latest")]
    pub wait_for: Option<String>,
}

/// `format=` and `wait_for=` beside the report parameters (`known_at` is one of them).
fn split_query(q: &HashMap<String, String>) -> (Option<String>, HashMap<String, String>) {
    let format = q.get("format").cloned();
    let params = q
        .iter()
        .filter(|(k, _)| k.as_str() != "format" && k.as_str() != "wait_for")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (format, params)
}

/// What an answer reflects, as JSON: the deriver's cycle, the latest commit time of pushed
/// rows it includes, and the version of every pushed table it has read.
pub(crate) fn reflects_json(d: &careledger_warehouse::DerivedState) -> Value {
    json!({
        "cycle": d.cycle,
        "ingested_at": d.reflects_at().map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        "table_versions": d.sources,
    })
}

/// The freshness headers: `Careledger-Reflects-Ingested-At` (the latest commit time of pushed
/// rows the answer includes) and `Careledger-Derived-Cycle`.
fn freshness_headers(resp: &mut Response, d: &careledger_warehouse::DerivedState) {
    if let Some(t) = d.reflects_at()
        && let Ok(v) =
            HeaderValue::from_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    {
        resp.headers_mut()
            .insert("careledger-reflects-ingested-at", v);
    }
    resp.headers_mut().insert(
        "careledger-derived-cycle",
        HeaderValue::from_str(&d.cycle.to_string()).expect("digits"),
    );
}

/// Waits, at most the query timeout, until the derived tables reflect what `wait_for` names:
/// a batch id (its table's version at its commit), or `latest` (every commit made before
/// now). Without `wait_for`, only when the server reads its own writes. An unknown batch is a
/// 404; not reflected in time, a 503 with Retry-After.
pub(crate) async fn wait_if_asked(state: &AppState, wait_for: Option<&str>) -> Result<(), Problem> {
    let wait_for = match wait_for {
        Some(w) => w.trim(),
        None if state.query.read_your_writes => "latest",
        None => return Ok(()),
    };
    let mut targets = Vec::new();
    if wait_for == "latest" {
        for t in careledger_model::Table::ALL {
            let v = state
                .store
                .refresh(t.as_str())
                .await
                .map_err(|e| Problem::internal("reading table versions", &e))?
                .version()
                .unwrap_or(0);
            targets.push((t.as_str().to_string(), v));
        }
    } else {
        let found = state
            .warehouse
            .batch_version(wait_for)
            .await
            .map_err(query_problem)?;
        let Some((table, version)) = found else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-batch",
                format!(
                    "wait_for {wait_for:?} names no committed batch (give the batch_id of a receipt, or latest)"
                ),
            ));
        };
        targets.push((table, version));
    }
    if state.deriver.wait_for(&targets, state.query.timeout).await {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-reflected-yet",
        format!(
            "the derived ledger does not reflect {wait_for} after {} s; retry, or ask without wait_for for what it reflects now",
            state.query.timeout.as_secs()
        ),
    ))
}

fn respond(format: Format, body: Bytes, etag: Option<&str>, accept: &HeaderMap) -> Response {
    let (body, encoding) = compress_for(accept, body);
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(e) = encoding {
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    if let Some(v) = etag.and_then(|tag| HeaderValue::from_str(tag).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// A whole answer of more than 1 KiB compressed as the client accepts (`Accept-Encoding`: zstd
/// preferred, then gzip); streamed answers go as they are.
fn compress_for(headers: &HeaderMap, body: Bytes) -> (Bytes, Option<&'static str>) {
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let offered = |name: &str| {
        accept.split(',').any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let refused = it.any(|q| matches!(q.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            coding.eq_ignore_ascii_case(name) && !refused
        })
    };
    if body.len() <= 1024 {
        return (body, None);
    }
    if offered("zstd")
        && let Ok(z) = zstd::bulk::compress(&body, 3)
    {
        return (Bytes::from(z), Some("zstd"));
    }
    if offered("gzip") {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if enc.write_all(&body).is_ok()
            && let Ok(z) = enc.finish()
        {
            return (Bytes::from(z), Some("gzip"));
        }
    }
    (body, None)
}

fn known_at_of(
    state: &AppState,
    text: Option<&String>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Problem> {
    text.map(|t| {
        reports::parse_instant(t, state.warehouse.zone()).ok_or_else(|| {
            Problem::bad_request(
                "bad-parameter",
                format!("known_at {t:?} is not an RFC 3339 instant or a date"),
            )
        })
    })
    .transpose()
}

/// Plans `df` and starts it, every operator guarded and made cooperative
/// ([`crate::sql_guard::guard_plan`]): each batch an operator hands up is counted against the
/// memory pool and cut to the batch budget, and spends the task's scheduling budget, so a
/// long-running query yields to the runtime regularly and its timeout fires and aborts it on
/// time. DataFusion makes only the leaves cooperative; an operator that emits many batches per
/// input batch (a cross join: a billion rows from one probe batch) otherwise holds a worker
/// thread for tens of seconds. `collect`: the result is to be held whole (counted until the
/// stream ends).
async fn execute(
    df: datafusion::dataframe::DataFrame,
    limits: &crate::sql_guard::Limits,
    collect: bool,
    cancel: Arc<AtomicBool>,
) -> Result<datafusion::physical_plan::SendableRecordBatchStream, DataFusionError> {
    let task = Arc::new(df.task_ctx());
    let batch_rows = task.session_config().batch_size();
    let plan = df.create_physical_plan().await?;
    let plan = crate::sql_guard::guard_plan(plan, limits, batch_rows, collect, cancel)?;
    datafusion::physical_plan::execute_stream(plan, task)
}

/// Deepest expression nesting user SQL may have. The parser bounds recursion (50 levels), but
/// a chain of binary operators (`a OR b OR …`, `1 + 1 + …`) is parsed in a loop into a tree
/// as deep as the chain is long, and planning it costs time quadratic in that depth.
pub const MAX_SQL_EXPR_DEPTH: usize = 500;
/// Most set operations (`UNION`, `INTERSECT`, `EXCEPT`) in one query body: a chain of them is
/// one deep plan, like an operator chain.
pub const MAX_SQL_SET_OPERATIONS: usize = 500;
/// Most table references (tables, subqueries, functions in `FROM` and joins) in one statement.
pub const MAX_SQL_TABLES: usize = 256;

/// Counts what makes a plan deep or wide, stopping at the first limit passed.
#[derive(Default)]
struct Shape {
    depth: usize,
    set_operations: usize,
    tables: usize,
}

/// Set operations in one query body, counted without recursion (nested queries are counted
/// when the visitor reaches them).
fn set_operations(body: &datafusion::sql::sqlparser::ast::SetExpr) -> usize {
    use datafusion::sql::sqlparser::ast::SetExpr;
    let (mut n, mut todo) = (0, vec![body]);
    while let Some(e) = todo.pop() {
        if let SetExpr::SetOperation { left, right, .. } = e {
            n += 1;
            todo.push(left);
            todo.push(right);
        }
    }
    n
}

impl datafusion::sql::sqlparser::ast::Visitor for Shape {
    type Break = String;

    fn pre_visit_expr(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Expr,
    ) -> std::ops::ControlFlow<String> {
        self.depth += 1;
        if self.depth > MAX_SQL_EXPR_DEPTH {
            return std::ops::ControlFlow::Break(format!(
                "the query nests expressions more than {MAX_SQL_EXPR_DEPTH} deep (each operator of a chain like a OR b OR … is one level); use IN (…) lists, or split the query"
            ));
        }
        std::ops::ControlFlow::Continue(())
    }

    fn post_visit_expr(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::Expr,
    ) -> std::ops::ControlFlow<String> {
        self.depth -= 1;
        std::ops::ControlFlow::Continue(())
    }

    fn pre_visit_query(
        &mut self,
        q: &datafusion::sql::sqlparser::ast::Query,
    ) -> std::ops::ControlFlow<String> {
        self.set_operations += set_operations(&q.body);
        if self.set_operations > MAX_SQL_SET_OPERATIONS {
            return std::ops::ControlFlow::Break(format!(
                "the query has more than {MAX_SQL_SET_OPERATIONS} UNION / INTERSECT / EXCEPT operations; split it"
            ));
        }
        std::ops::ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(
        &mut self,
        _: &datafusion::sql::sqlparser::ast::TableFactor,
    ) -> std::ops::ControlFlow<String> {
        self.tables += 1;
        if self.tables > MAX_SQL_TABLES {
            return std::ops::ControlFlow::Break(format!(
                "the query names more than {MAX_SQL_TABLES} tables, subqueries or table functions; split it"
            ));
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// Refuses SQL whose shape would make planning deep or slow (see the limits above). SQL the
/// generic parser cannot read is left to DataFusion, which names the syntax error.
fn check_shape(sql: &str) -> Result<(), Problem> {
    use datafusion::sql::sqlparser::ast::Visit;
    let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
    let Ok(statements) = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql)
    else {
        return Ok(());
    };
    let mut shape = Shape::default();
    match statements.visit(&mut shape) {
        std::ops::ControlFlow::Break(detail) => {
            Err(Problem::bad_request("query-too-complex", detail))
        }
        std::ops::ControlFlow::Continue(()) => Ok(()),
    }
}

/// Stack of each thread of the query runtime. User SQL decides how deep the engine recurses:
/// within the SQL length limit a chain of `1 + 1 + …` or of `UNION ALL`s is thousands of
/// levels deep, and DataFusion formats and plans such trees recursively (a few KiB of stack
/// per level, more in debug builds). 2 MiB, tokio's default, overflowed at ~300 levels and
/// aborted the process. The stacks are reserved, not committed: unused pages cost nothing.
const QUERY_STACK_BYTES: usize = 256 * 1024 * 1024;

/// The runtime that plans and runs user SQL, apart from the one serving HTTP: deep plans get
/// large stacks, and a query busy in one long synchronous step (planning, an operator that
/// does not yield) cannot hold up ingest or stop its own timeout from answering.
pub(crate) fn query_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            // More threads than cores: a stopped query's operator can keep a thread busy
            // until it next yields, and the queries after it should still find threads.
            .worker_threads(
                std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .max(2)
                    * 2,
            )
            .thread_name("careledger-sql")
            .thread_stack_size(QUERY_STACK_BYTES)
            .enable_all()
            .build()
            .expect("starting the query runtime")
    })
}

/// How a query's result is wanted.
enum Want {
    /// Collected whole, at most this many rows (JSON) and at most the memory limit in bytes.
    Whole(Option<usize>),
    /// Started, to be streamed batch by batch.
    Stream,
}

enum Ran {
    Whole(SchemaRef, Vec<RecordBatch>),
    /// The stream, and what the query holds until the stream is dropped.
    Stream(
        datafusion::physical_plan::SendableRecordBatchStream,
        Running,
    ),
}

/// What a running SQL query holds until it ends: its slot among the queries running at once,
/// and the watchdog of its deadline, which cancels the query's operators at the deadline
/// even while its task is busy in a long step (see `sql_guard::guard_plan`). Dropping this
/// ends the watchdog.
struct Running {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _done: tokio::sync::oneshot::Sender<()>,
    cancel: Arc<AtomicBool>,
}

impl Running {
    /// Starts the watchdog (on the current runtime, not the query runtime it watches).
    fn start(slot: tokio::sync::OwnedSemaphorePermit, deadline: tokio::time::Instant) -> Running {
        let cancel = Arc::new(AtomicBool::new(false));
        let (done, ended) = tokio::sync::oneshot::channel::<()>();
        let flag = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => flag.store(true, Ordering::Relaxed),
                _ = ended => {}
            }
        });
        Running {
            _slot: slot,
            _done: done,
            cancel,
        }
    }

    /// Stops the query's operators at their next batch or join filter evaluation.
    fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Takes one of the slots for SQL queries running at once (None: all taken).
fn sql_slot(state: &AppState) -> Option<tokio::sync::OwnedSemaphorePermit> {
    state.sql_slots.clone().try_acquire_owned().ok()
}

/// The answer when every slot is taken: 503 with Retry-After.
fn too_many_queries(state: &AppState) -> Response {
    let mut resp = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too-many-queries",
        format!(
            "{} SQL queries are running, the most the server runs at once; retry after the time in Retry-After",
            state.query.max_concurrent
        ),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Plans and runs `sql` on the query runtime, under the query timeout counted from `started`
/// (planning included): at the deadline the task is aborted (at its next yield; the guards
/// keep every step between yields short) and the answer is a 503 problem. The query holds
/// `slot` until its task ends, even after an abort. What the query builds is bounded by
/// [`crate::sql_guard`]: capped functions, batches counted against the shared memory pool. A
/// result held whole is bounded too: past the row cap (JSON) or past the query memory limit
/// in bytes, collecting stops with a problem instead of growing until the timeout.
async fn run_sql(
    state: &AppState,
    snap: careledger_warehouse::Snapshot,
    sql: String,
    params: Vec<(String, ScalarValue)>,
    want: Want,
    slot: tokio::sync::OwnedSemaphorePermit,
    started: Instant,
) -> Result<Ran, Problem> {
    use futures::StreamExt;
    let t = state.query.timeout;
    let deadline = tokio::time::Instant::from_std(started + t);
    let byte_cap = state.query.memory_limit;
    let limits = crate::sql_guard::Limits::for_memory(state.query.memory_limit);
    let running = Running::start(slot, deadline);
    let cancel = running.cancel.clone();
    let mut task = query_runtime().spawn(async move {
        let running = running;
        check_shape(&sql)?;
        let budget =
            crate::sql_guard::install(&snap.ctx, &limits).map_err(datafusion_problem)?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let mut df = snap
            .ctx
            .sql_with_options(&sql, options)
            .await
            .map_err(datafusion_problem)?;
        crate::sql_guard::check_logical(df.logical_plan(), &limits, &budget)
            .map_err(datafusion_problem)?;
        if !params.is_empty() {
            df = df.with_param_values(params).map_err(datafusion_problem)?;
        }
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let collect = matches!(want, Want::Whole(_));
        let mut stream = execute(df, &limits, collect, running.cancel.clone())
            .await
            .map_err(datafusion_problem)?;
        let Want::Whole(row_cap) = want else {
            return Ok(Ran::Stream(stream, running));
        };
        let (mut rows, mut bytes, mut out) = (0usize, 0usize, Vec::new());
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(datafusion_problem)?;
            rows += batch.num_rows();
            bytes += batch.get_array_memory_size();
            out.push(batch);
            if let Some(cap) = row_cap.filter(|cap| rows > *cap) {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "too-many-rows",
                    format!(
                        "the result has more than {cap} rows, the JSON limit; ask for format=csv or arrow (streamed), or add a LIMIT"
                    ),
                ));
            }
            if bytes > byte_cap {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "query-memory-limit",
                    format!(
                        "the result is larger than one query may hold ({byte_cap} bytes); ask for format=csv or arrow (streamed), aggregate, or add a LIMIT"
                    ),
                ));
            }
        }
        Ok(Ran::Whole(schema, out))
    });
    match tokio::time::timeout_at(deadline, &mut task).await {
        // The watchdog cancelled the query at the deadline a moment before this timeout:
        // whatever its operators failed with, it ran out of time.
        Ok(Ok(Err(_))) if cancel.load(Ordering::Relaxed) => Err(timeout_problem(t)),
        Ok(joined) => joined.map_err(|e| Problem::internal("the query task", &e))?,
        Err(_) => {
            cancel.store(true, Ordering::Relaxed);
            task.abort();
            Err(timeout_problem(t))
        }
    }
}

/// The body of `POST /v1/sql`, read up to `limit` bytes: past it, a 413 problem.
async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, Problem> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("the request body exceeds the limit of {limit} bytes for POST /v1/sql"),
            )
        } else {
            Problem::bad_request("body-read", format!("could not read the body: {e}"))
        }
    })
}

/// `POST /v1/sql`: analysts and admins; read-only, single statement, bound parameters.
pub async fn sql(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let p = state.tokens.authenticate(&headers)?;
    if !matches!(p.role, Role::Analyst | Role::Admin) {
        return Err(forbid(
            &p,
            "run SQL (dashboards use GET /v1/reports/{name}; sources only push)",
        ));
    }
    // The SQL text plus parameters: room for the longest SQL accepted, and at least 1 MiB.
    let body = read_body(body, (state.query.max_sql_bytes * 2).max(1 << 20)).await?;
    let req: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "malformed-body",
            format!("body must be JSON {{\"sql\": …, \"params\": {{…}}, \"known_at\": …}}: {e}"),
        )
    })?;
    let format = Format::choose(
        q.get("format").map(String::as_str),
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    )?;
    if req.sql.len() > state.query.max_sql_bytes {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "sql-too-long",
            format!(
                "the SQL text is {} bytes, more than the limit of {} bytes; write a shorter query (bind values with params instead of splicing them in)",
                req.sql.len(),
                state.query.max_sql_bytes
            ),
        ));
    }
    let known_at = known_at_of(&state, req.known_at.as_ref())?;
    wait_if_asked(
        &state,
        q.get("wait_for")
            .or(req.wait_for.as_ref())
            .map(String::as_str),
    )
    .await?;
    let Some(slot) = sql_slot(&state) else {
        return Ok(too_many_queries(&state));
    };
    let mut reflects = careledger_warehouse::DerivedState::default();
    let outcome = async {
        let snap = state
            .warehouse
            .snapshot_as(known_at, &access_of(&p))
            .await
            .map_err(query_problem)?;
        reflects = snap.derived.clone();
        let values: Vec<(String, ScalarValue)> = req
            .params
            .iter()
            .map(|(k, v)| Ok((k.clone(), json_to_scalar(k, v)?)))
            .collect::<Result<_, Problem>>()?;
        // Large results stream (CSV, Arrow): batch by batch, never held whole.
        let want = match format {
            Format::Csv | Format::Arrow => Want::Stream,
            Format::Json => Want::Whole(Some(state.query.json_row_cap)),
            Format::Parquet => Want::Whole(None),
        };
        match run_sql(&state, snap, req.sql.clone(), values, want, slot, started).await? {
            Ran::Stream(stream, running) => Ok::<_, Problem>(Answer::Stream(stream, running)),
            Ran::Whole(schema, batches) => {
                let batch = concat(&schema, &batches)?;
                let bytes = encode(
                    format,
                    &batch,
                    None,
                    state.query.json_row_cap,
                    Some(&reflects_json(&reflects)),
                )?;
                Ok::<_, Problem>(Answer::Whole(batch.num_rows(), bytes))
            }
        }
    }
    .await;
    let params_text = Some(json!(req.params).to_string());
    match outcome {
        Ok(Answer::Stream(stream, running)) => {
            let mut resp = stream_response(
                state,
                p,
                req.sql,
                params_text,
                format,
                stream,
                running,
                started,
            );
            freshness_headers(&mut resp, &reflects);
            Ok(resp)
        }
        Ok(Answer::Whole(rows, bytes)) => {
            state.audit(AuditEntry::new(
                &p,
                "sql",
                &req.sql,
                params_text,
                &Ok::<_, Problem>((rows, ())),
                started,
            ));
            state.metrics.query(started.elapsed());
            let mut resp = respond(format, bytes, None, &headers);
            freshness_headers(&mut resp, &reflects);
            Ok(resp)
        }
        Err(e) => {
            state.audit(AuditEntry::new(
                &p,
                "sql",
                &req.sql,
                params_text,
                &Err::<(usize, ()), _>(Problem::new(e.status, e.slug, "")),
                started,
            ));
            state.metrics.query(started.elapsed());
            Err(e)
        }
    }
}

/// A planned SQL answer: encoded whole (JSON, Parquet) or to be streamed (CSV, Arrow).
enum Answer {
    Whole(usize, Bytes),
    Stream(
        datafusion::physical_plan::SendableRecordBatchStream,
        Running,
    ),
}

/// Streams a result as it is computed, under the query timeout (counted from `started`, so
/// planning included); audits when it ends. An error after the first bytes can only cut the
/// body short (the status is already sent). The query is cancelled and the stream and the
/// query's slot dropped as soon as the stream ends, fails or passes the deadline, which stops
/// the query's operators and the tasks they spawned.
#[allow(clippy::too_many_arguments)]
fn stream_response(
    state: Arc<AppState>,
    p: Principal,
    sql: String,
    params: Option<String>,
    format: Format,
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    running: Running,
    started: Instant,
) -> Response {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let deadline = tokio::time::Instant::from_std(started + state.query.timeout);
    // Polled on the query runtime: the stream's operators run there, with its stacks.
    query_runtime().spawn(async move {
        let mut rows = 0usize;
        let result: Result<(), Problem> = async {
            let mut encoder = crate::output::StreamEncoder::new(format, &stream.schema())?;
            let late = || timeout_problem(state.query.timeout);
            // The deadline is checked before every batch, not only while waiting for one: a
            // stream whose batches are always ready would never hit a timeout on `next`.
            // Sending is bounded by it too, so a client that stops reading cannot hold the
            // query open.
            loop {
                if tokio::time::Instant::now() >= deadline {
                    return Err(late());
                }
                let next = tokio::time::timeout_at(deadline, stream.next())
                    .await
                    .map_err(|_| late())?;
                let last = next.is_none();
                let bytes = match next {
                    None => encoder.finish()?,
                    Some(Err(_)) if running.cancel.load(Ordering::Relaxed) => return Err(late()),
                    Some(batch) => {
                        let batch = batch.map_err(datafusion_problem)?;
                        rows += batch.num_rows();
                        encoder.batch(&batch)?
                    }
                };
                match tokio::time::timeout_at(deadline, tx.send(Ok(bytes))).await {
                    Err(_) => return Err(late()),
                    Ok(Err(_)) => return Ok(()), // the client went away
                    Ok(Ok(())) if last => return Ok(()),
                    Ok(Ok(())) => {}
                }
            }
        }
        .await;
        running.cancel();
        drop(stream);
        drop(running);
        if let Err(e) = &result {
            // Cut the body with an error (not a clean end a client could take for the whole
            // result); waits for the client to read what is queued, within bounds.
            let error = Err(std::io::Error::other(e.detail.clone()));
            let _ = tokio::time::timeout(state.query.timeout, tx.send(error)).await;
        }
        let outcome = result.map(|()| (rows, ()));
        state.audit(AuditEntry::new(&p, "sql", &sql, params, &outcome, started));
        state.metrics.query(started.elapsed());
    });
    let body = axum::body::Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp
}

/// `GET /v1/reports`: the catalog (dashboards see the publishable reports only).
pub async fn list_reports(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let p = state.tokens.authenticate(&headers)?;
    if matches!(p.role, Role::Source(_)) {
        return Err(forbid(&p, "read reports"));
    }
    let list: Vec<&careledger_warehouse::ReportSpec> = catalog()
        .iter()
        .filter(|r| p.role != Role::Dashboard || r.audience.as_deref() != Some("analyst"))
        .collect();
    Ok(Json(json!({"reports": list})).into_response())
}

/// `GET /v1/reports/{name}`: with ETag / If-None-Match and a bounded result cache.
pub async fn run_report(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let p = state.tokens.authenticate(&headers)?;
    if matches!(p.role, Role::Source(_)) {
        return Err(forbid(&p, "read reports"));
    }
    let spec = reports::find(&name).map_err(query_problem)?;
    if p.role == Role::Dashboard && spec.audience.as_deref() == Some("analyst") {
        return Err(forbid(
            &p,
            &format!("read the case list {name}; it is for analysts only"),
        ));
    }
    let (format_param, params) = split_query(&q);
    let format = Format::choose(
        format_param.as_deref(),
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    )?;
    reports::bind(spec, &params, state.warehouse.zone()).map_err(query_problem)?;
    // Checked again where the report runs; here so a refusal comes before ETag and cache.
    reports::scoped_params(spec, &params, &access_of(&p)).map_err(query_problem)?;
    known_at_of(&state, params.get("known_at"))?;
    if p.role == Role::Dashboard {
        check_reference_periods(spec, &params)?;
    }
    wait_if_asked(&state, q.get("wait_for").map(String::as_str)).await?;
    // What the derived tables reflect: part of the ETag (a report reads them), and stated in
    // the answer. A cycle completing before the report's own snapshot makes the answer newer
    // than stated, never older.
    let derived = careledger_warehouse::DerivedState::read(&state.store)
        .await
        .map_err(query_problem)?;

    // The ETag names everything the answer depends on: report, parameters, who asks (role
    // and scope), the format, and the version of every table read.
    let mut versions = BTreeMap::new();
    for t in careledger_model::Table::ALL
        .iter()
        .map(|t| t.as_str())
        .chain([careledger_store::BATCHES])
    {
        let v = state
            .store
            .refresh(t)
            .await
            .map_err(|e| Problem::internal("reading table versions", &e))?
            .version();
        versions.insert(t, v);
    }
    let sorted: BTreeMap<&String, &String> = params.iter().collect();
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&json!({
        "report": name, "params": sorted, "role": p.role.as_string(), "scope": p.scope,
        "format": format.as_str(), "versions": versions, "rule": state.warehouse.rule().rule_version(),
        "derived": [derived.cycle, derived.floor],
        "k": state.query.disclosure_k,
    })).expect("json"));
    let etag = format!("\"{}\"", hex::encode(&h.finalize()[..16]));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        state.metrics.not_modified();
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
        freshness_headers(&mut resp, &derived);
        return Ok(resp);
    }
    if let Some(body) = state.cache.get(&etag) {
        state.metrics.cache_hit();
        let mut resp = respond(format, body, Some(&etag), &headers);
        freshness_headers(&mut resp, &derived);
        return Ok(resp);
    }
    state.metrics.cache_miss();
    let outcome = async {
        let t = state.query.timeout;
        let warehouse_state = state.clone();
        let access = access_of(&p);
        let (report, report_params) = (name.clone(), params.clone());
        // On the query runtime: a report's long synchronous steps (deriving the status
        // tables) hold one of its threads, not one serving HTTP.
        let mut task = query_runtime().spawn(async move {
            warehouse_state
                .warehouse
                .run_report_with_schema(&report, &report_params, &access)
                .await
        });
        let (schema, batches) = match tokio::time::timeout(t, &mut task).await {
            Ok(joined) => joined
                .map_err(|e| Problem::internal("the report task", &e))?
                .map_err(query_problem)?,
            Err(_) => {
                task.abort();
                return Err(timeout_problem(t));
            }
        };
        let batch = concat(&schema, &batches)?;
        let (batch, suppression) = if p.role == Role::Dashboard {
            let (batch, s) = state
                .publisher
                .publish(spec, &params, p.scope.as_deref(), &batch)?;
            (batch, Some(s))
        } else {
            (batch, None)
        };
        let bytes = encode(
            format,
            &batch,
            suppression.as_ref(),
            state.query.json_row_cap,
            Some(&reflects_json(&derived)),
        )?;
        Ok::<_, Problem>((batch.num_rows(), bytes))
    }
    .await;
    state.audit(AuditEntry::new(
        &p,
        "report",
        &name,
        Some(json!(sorted).to_string()),
        &outcome,
        started,
    ));
    state.metrics.query(started.elapsed());
    let (_, bytes) = outcome?;
    state
        .cache
        .put(etag.clone(), bytes.clone(), state.query.cache_entries);
    let mut resp = respond(format, bytes, Some(&etag), &headers);
    freshness_headers(&mut resp, &derived);
    Ok(resp)
}

/// Table-level descriptions for `GET /v1/tables`.
fn table_description(name: &str) -> &'static str {
    match name {
        "women" | "life_events" | "group_flags" | "services" | "registrations" => {
            "Current view: per (source, record_id) the highest record_version known at known_at, retractions removed."
        }
        n if n.starts_with("raw_") => {
            "History: every stored version of the pushed table known at known_at."
        }
        "batches" => {
            "One row per acknowledged batch: the receipt (who sent what, when). For a region-scoped token: the batches holding rows of women in scope, rows_accepted counting those rows, and NULL for what cannot be split by region (receipt, rows received and rejected, idempotency key, Batch-Seq, table version)."
        }
        "rejects" => {
            "Rows refused in non-atomic batches, ID numbers masked (unscoped admins only)."
        }
        "access" => {
            "One row: what this caller's SQL sees: scope (region code prefix, NULL = all of Guangxi) and whether rejects is readable."
        }
        "people" => "One row per woman with a women record (the most recently ingested wins).",
        "status_episodes" => {
            "Her stays in the ledger [start_date, end_date) derived by the status rule, with entry and exit reasons."
        }
        "residence" => {
            "Her village over time [valid_from, valid_to); region_code null = moved out of rural residence."
        }
        "ledger_runs" => {
            "Pieces of an episode inside one region at each level; stock, entries and exits count these."
        }
        "group_episodes" => "Priority-group memberships [valid_from, valid_until).",
        "regions" => "Guangxi division codes (2023) with the rural flag.",
        "region_levels" => "Each code's ancestor at every level at or above its own.",
        "codes" => "Every code list with Chinese and English labels.",
        "calendar_months" => "Months 2000-2049 [month_start, month_end).",
        _ => "",
    }
}

/// `GET /v1/tables`: what the caller's SQL can name, with columns and types.
pub async fn tables(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let p = state.tokens.authenticate(&headers)?;
    if !matches!(p.role, Role::Analyst | Role::Admin) {
        return Err(forbid(&p, "list the SQL tables"));
    }
    let snap = state
        .warehouse
        .snapshot_as(None, &access_of(&p))
        .await
        .map_err(query_problem)?;
    let schema = snap
        .ctx
        .catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .ok_or_else(|| Problem::internal("catalog", &"no public schema"))?;
    let mut names = schema.table_names();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(table) = schema.table(&name).await.map_err(datafusion_problem)? else {
            continue;
        };
        let columns: Vec<Value> = table
            .schema()
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable(), "description": f.metadata().get("description")}))
            .collect();
        out.push(
            json!({"name": name, "description": table_description(&name), "columns": columns}),
        );
    }
    Ok(Json(json!({"tables": out, "scope": p.scope})).into_response())
}
