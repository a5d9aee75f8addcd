//! One query engine below every door. HTTP (`/v1/sql`), the PostgreSQL wire protocol and
//! Arrow Flight SQL hand their SQL here, and get back the same decisions: who may run SQL
//! (analysts and admins), what their snapshot holds (the token's region scope, `known_at`),
//! read-only single statements, the shape limits, the SQL guard's bounds on memory and
//! capped functions, the query timeout, the slots for queries at once, and one audit entry
//! per query naming the door it came through. The doors only translate: their own framing,
//! parameters and errors in, rows out.
//!
//! Named reports can be called from SQL as table functions (`SELECT * FROM stock(as_of =>
//! '2024-06-30', level => 'county')`, or its parameters in the catalog's order): each call is
//! run as the report itself (its parameters checked and narrowed to the caller's scope, as
//! `GET /v1/reports/{name}` does) before the statement is planned, and its answer stands in
//! for the call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use axum::http::StatusCode;
use careledger_warehouse::{Access, WarehouseError, reports};
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SQLOptions, SessionContext};
use datafusion::sql::sqlparser::ast::Statement;

use careledger_warehouse::Warehouse;

use crate::audit::{AuditEntry, AuditLog};
use crate::auth::{Principal, Role};
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::query::QueryConfig;

/// What every door's queries share: the warehouse they read, the limits, the slots for
/// queries at once, and where their audit entries and timings go. The server holds one
/// (`AppState::engine`); `careledger sql --store DIR` builds one over a local store
/// ([`Engine::local`]), so a local query has the same limits as a served one.
pub struct Engine {
    pub(crate) warehouse: Arc<Warehouse>,
    pub(crate) query: QueryConfig,
    slots: Arc<tokio::sync::Semaphore>,
    audit: Option<Arc<AuditLog>>,
    metrics: Option<Arc<Metrics>>,
    /// The server's `batches` writer: a query waits for the receipts answered before it.
    batches: Option<Arc<crate::batches_log::BatchesLog>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("query", &self.query)
            .field("audited", &self.audit.is_some())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// The server's engine: its queries are audited and timed.
    pub(crate) fn served(
        warehouse: Arc<Warehouse>,
        query: QueryConfig,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
        batches: Arc<crate::batches_log::BatchesLog>,
    ) -> Engine {
        let slots = Arc::new(tokio::sync::Semaphore::new(query.max_concurrent.max(1)));
        Engine {
            warehouse,
            query,
            slots,
            audit: Some(audit),
            metrics: Some(metrics),
            batches: Some(batches),
        }
    }

    /// An engine over a store opened directly (`careledger sql --store DIR`): the same
    /// read-only rules, shape limits, SQL guard, memory bound and timeout as the server's,
    /// with full access (whoever can read the directory can read everything in it) and no
    /// audit entry (a reader of the files writes nothing to them).
    pub fn local(warehouse: Warehouse, query: QueryConfig) -> Arc<Engine> {
        let warehouse = warehouse.with_memory_limit(query.memory_limit);
        let slots = Arc::new(tokio::sync::Semaphore::new(query.max_concurrent.max(1)));
        Arc::new(Engine {
            warehouse: Arc::new(warehouse),
            query,
            slots,
            audit: None,
            metrics: None,
            batches: None,
        })
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// Runs one statement over a local store and returns the whole answer
    /// (`careledger sql --store DIR`); `known_at` as in `/v1/sql`.
    pub async fn answer_locally(
        self: &Arc<Self>,
        sql: &str,
        known_at: Option<&str>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Problem> {
        let started = Instant::now();
        let principal = Principal {
            name: "local-store".into(),
            role: Role::Admin,
            scope: None,
        };
        let ask = Ask {
            sql: sql.to_string(),
            params: None,
            params_text: None,
            known_at: known_at_of(self, known_at)?,
            want: Want::Whole(None),
        };
        let (ran, _, audit) = run(self, &principal, Door::Local, ask, started).await?;
        match ran {
            Ran::Whole(schema, batches) => {
                audit.finish(Ok(batches.iter().map(RecordBatch::num_rows).sum()));
                Ok((schema, batches))
            }
            _ => Err(Problem::internal(
                "the query",
                &"asked whole, answered otherwise",
            )),
        }
    }
}

/// The way a query came in: named in its audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `POST /v1/sql` and `GET /v1/sql`.
    Http,
    /// The PostgreSQL wire protocol (`--pg-listen`).
    Postgres,
    /// Arrow Flight SQL (`--flight-listen`).
    Flight,
    /// `careledger sql --store DIR`: a store opened directly (not audited).
    Local,
}

impl Door {
    /// The audit entry's `kind`.
    pub fn audit_kind(self) -> &'static str {
        match self {
            Door::Http => "sql",
            Door::Postgres => "pg-sql",
            Door::Flight => "flight-sql",
            Door::Local => "local-sql",
        }
    }
}

/// Only analysts and admins run SQL, whatever the door.
pub(crate) fn may_run_sql(p: &Principal) -> Result<(), Problem> {
    if matches!(p.role, Role::Analyst | Role::Admin) {
        Ok(())
    } else {
        Err(forbid(
            p,
            "run SQL (dashboards read GET /v1/reports/{name}; sources only push)",
        ))
    }
}

pub(crate) fn access_of(p: &Principal) -> Access {
    Access {
        scope: p.scope.clone(),
        // Rejected rows cannot be attributed to a region: never for a scoped token, even an
        // admin's (the warehouse enforces this too).
        rejects: p.role == Role::Admin && p.scope.is_none(),
        publication: p.role == Role::Dashboard,
    }
}

pub(crate) fn forbid(p: &Principal, what: &str) -> Problem {
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
pub(crate) fn query_problem(e: WarehouseError) -> Problem {
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
        e @ WarehouseError::Rederiving { .. } => {
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "rederiving", e.to_string())
        }
        other => Problem::internal("the query", &other),
    }
}

pub(crate) fn datafusion_problem(e: DataFusionError) -> Problem {
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

pub(crate) fn timeout_problem(t: Duration) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "query-timeout",
        format!(
            "the query ran longer than {} and was stopped",
            crate::duration_text(t)
        ),
    )
}

pub(crate) fn known_at_of(
    engine: &Engine,
    text: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Problem> {
    text.map(|t| {
        reports::parse_instant(t, engine.warehouse.zone()).ok_or_else(|| {
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
fn check_shape(sql: &str) -> Result<Option<Vec<Statement>>, Problem> {
    use datafusion::sql::sqlparser::ast::Visit;
    let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
    let Ok(statements) = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql)
    else {
        return Ok(None);
    };
    let mut shape = Shape::default();
    match statements.visit(&mut shape) {
        std::ops::ControlFlow::Break(detail) => {
            Err(Problem::bad_request("query-too-complex", detail))
        }
        std::ops::ControlFlow::Continue(()) => Ok(Some(statements)),
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

/// Nice value of the background threads (the deriver, compaction): on a machine busy with
/// pushes, the threads that acknowledge them come first, and the derived ledger catches up
/// in what is left. Measured at 1M women with one sender on 2 cores: 73.3k rows/s with the
/// deriver at ingest's priority, 87.8k at nice 10 (BENCHMARKS.md).
#[cfg(target_os = "linux")]
const BACKGROUND_NICE: i32 = 10;

/// The runtime of the server's background work, the deriver and compaction: apart from the
/// queries' and from HTTP, on threads of lower priority (Linux: the nice value is per thread;
/// elsewhere they run at the process's priority). Its blocking threads, where the deriver
/// runs the rule, are lowered too.
pub(crate) fn background_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name("careledger-background")
            // DataFusion plans the deriver's fixed SQL recursively too (reserved, not committed).
            .thread_stack_size(16 * 1024 * 1024)
            .on_thread_start(lower_priority)
            .enable_all()
            .build()
            .expect("starting the background runtime")
    })
}

fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
        tracing::warn!(error = %e, "could not lower a background thread's priority");
    }
}

/// What a running SQL query holds until it ends: its slot among the queries running at once,
/// and the watchdog of its deadline, which cancels the query's operators at the deadline
/// even while its task is busy in a long step (see `sql_guard::guard_plan`). Dropping this
/// ends the watchdog.
pub(crate) struct Running {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _done: tokio::sync::oneshot::Sender<()>,
    pub(crate) cancel: Arc<AtomicBool>,
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
    pub(crate) fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// How a query's result is wanted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Want {
    /// Collected whole, at most this many rows (JSON) and at most the memory limit in bytes.
    Whole(Option<usize>),
    /// Started, to be streamed batch by batch.
    Stream,
    /// Planned only: the result's columns and the parameters' types (a prepared statement).
    Describe,
}

/// A query's answer.
pub(crate) enum Ran {
    Whole(SchemaRef, Vec<RecordBatch>),
    /// The stream, and what the query holds until the stream is dropped.
    Stream(
        datafusion::physical_plan::SendableRecordBatchStream,
        Running,
    ),
    /// The result's columns, and the type of each `$1`, `$2`, … (None where nothing in the
    /// statement decides it).
    Described(SchemaRef, Vec<Option<DataType>>),
}

/// One SQL question, from whichever door.
#[derive(Debug)]
pub(crate) struct Ask {
    pub(crate) sql: String,
    /// `$name` (HTTP) or `$1`… (PostgreSQL, Flight SQL) values.
    pub(crate) params: Option<ParamValues>,
    /// The parameters as the audit log shows them.
    pub(crate) params_text: Option<String>,
    pub(crate) known_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) want: Want,
}

/// The audit entry of one query, written when its answer is complete (or refused).
#[derive(Debug)]
pub(crate) struct Audit {
    engine: Arc<Engine>,
    principal: Principal,
    door: Door,
    sql: String,
    params: Option<String>,
    started: Instant,
}

impl Audit {
    /// Records the query's outcome (rows sent, or the problem) and its time.
    pub(crate) fn finish(self, outcome: Result<usize, &Problem>) {
        let outcome = match outcome {
            Ok(rows) => Ok((rows, ())),
            Err(e) => Err(Problem::new(e.status, e.slug, "")),
        };
        if let Some(log) = &self.engine.audit {
            log.record(AuditEntry::new(
                &self.principal,
                self.door.audit_kind(),
                &self.sql,
                self.params,
                &outcome,
                self.started,
            ));
        }
        if let Some(metrics) = &self.engine.metrics {
            metrics.query(self.started.elapsed());
        }
    }
}

/// The problem when every slot for queries at once is taken (the HTTP door adds Retry-After).
pub(crate) fn too_many_queries(engine: &Engine) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too-many-queries",
        format!(
            "{} SQL queries are running, the most the server runs at once; retry in a second",
            engine.query.max_concurrent
        ),
    )
}

/// Runs one SQL question for `p`: the role check, the length limit, a slot, the snapshot of
/// `p`'s scope at `known_at`, then [`run_sql`]. A refusal or failure is audited here; on
/// success the caller finishes the returned [`Audit`] when the answer is sent (for
/// [`Want::Describe`] it may drop it: the execution is audited).
pub(crate) async fn run(
    engine: &Arc<Engine>,
    p: &Principal,
    door: Door,
    ask: Ask,
    started: Instant,
) -> Result<(Ran, careledger_warehouse::DerivedState, Audit), Problem> {
    let audit = Audit {
        engine: engine.clone(),
        principal: p.clone(),
        door,
        sql: ask.sql.clone(),
        params: ask.params_text.clone(),
        started,
    };
    let describe = matches!(ask.want, Want::Describe);
    let outcome = async {
        may_run_sql(p)?;
        if ask.sql.len() > engine.query.max_sql_bytes {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "sql-too-long",
                format!(
                    "the SQL text is {} bytes, more than the limit of {} bytes; write a shorter query (bind values as parameters instead of splicing them in)",
                    ask.sql.len(),
                    engine.query.max_sql_bytes
                ),
            ));
        }
        if let Some(log) = &engine.audit {
            log.admit()?;
        }
        let slot = engine
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| too_many_queries(engine))?;
        if let Some(b) = &engine.batches {
            b.settled().await;
        }
        let snap = engine
            .warehouse
            .snapshot_as(ask.known_at, &access_of(p))
            .await
            .map_err(query_problem)?;
        let derived = snap.derived.clone();
        let ctx = match door {
            Door::Postgres => crate::pg::with_pg_catalog(&snap.ctx)
                .await
                .map_err(datafusion_problem)?,
            Door::Http | Door::Flight | Door::Local => snap.ctx.clone(),
        };
        let reports = ReportCalls {
            engine: engine.clone(),
            access: access_of(p),
            known_at: ask.known_at,
        };
        let ran = run_sql(engine, ctx, reports, ask, slot, started).await?;
        Ok((ran, derived))
    }
    .await;
    match outcome {
        Ok((ran, derived)) => Ok((ran, derived, audit)),
        Err(e) => {
            // A refusal for the audit backlog is not itself audited: that would grow the
            // backlog it refuses for.
            if !describe && e.slug != crate::audit::AUDIT_BACKLOG {
                audit.finish(Err(&e));
            }
            Err(e)
        }
    }
}

/// Named reports called in a statement, and what they need to run as the caller.
struct ReportCalls {
    engine: Arc<Engine>,
    access: Access,
    known_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ReportCalls {
    /// Runs every named report the statement calls as a table function, registers each
    /// answer in `ctx` under a name of its own, and rewrites the calls to read it. None: the
    /// statement calls no report (it is planned as written).
    async fn expand(
        &self,
        ctx: &SessionContext,
        statements: &mut Vec<Statement>,
    ) -> Result<Option<(String, SessionContext)>, Problem> {
        use datafusion::sql::sqlparser::ast::{
            FunctionArg, FunctionArgExpr, Ident, ObjectName, ObjectNamePart, TableAlias,
            TableFactor, VisitMut,
        };
        let mut calls: Vec<(String, HashMap<String, String>)> = Vec::new();
        let mut bad: Option<Problem> = None;
        let _ = statements.visit(&mut FactorVisitor(|factor: &mut TableFactor| {
            let TableFactor::Table {
                name, args, alias, ..
            } = factor
            else {
                return;
            };
            let Some(call) = args.as_ref() else { return };
            let Some(report) = name
                .0
                .last()
                .and_then(ObjectNamePart::as_ident)
                .map(|i| i.value.to_lowercase())
            else {
                return;
            };
            let Ok(spec) = reports::find(&report) else {
                return;
            };
            let mut given = HashMap::new();
            for (i, arg) in call.args.iter().enumerate() {
                let (key, value) = match arg {
                    FunctionArg::Named { name, arg, .. } => (Some(name.value.clone()), arg),
                    FunctionArg::ExprNamed { arg, .. } => (None, arg),
                    FunctionArg::Unnamed(arg) => (None, arg),
                };
                let key = key.or_else(|| spec.params.get(i).map(|p| p.name.clone()));
                let text = match value {
                    FunctionArgExpr::Expr(e) => literal_text(e),
                    _ => None,
                };
                match (key, text) {
                    (Some(k), Some(v)) => {
                        given.insert(k, v);
                    }
                    (None, _) => {
                        bad = Some(Problem::bad_request(
                            "bad-parameter",
                            format!(
                                "report {report} takes {} parameters; name the others (name => 'value')",
                                spec.params.len()
                            ),
                        ));
                    }
                    (Some(k), None) => {
                        bad = Some(Problem::bad_request(
                            "bad-parameter",
                            format!(
                                "parameter {k} of report {report}: give a literal ('2024-06-30', 'county', 12)"
                            ),
                        ));
                    }
                }
            }
            let table = format!("report_{}", calls.len());
            *name = ObjectName(vec![
                ObjectNamePart::Identifier(Ident::new(REPORTS_SCHEMA)),
                ObjectNamePart::Identifier(Ident::new(table)),
            ]);
            *args = None;
            if alias.is_none() {
                *alias = Some(TableAlias {
                    explicit: true,
                    name: Ident::new(report.clone()),
                    columns: vec![],
                    at: None,
                });
            }
            calls.push((report, given));
        }));
        if let Some(e) = bad {
            return Err(e);
        }
        if calls.is_empty() {
            return Ok(None);
        }
        // The answers go into a schema of this query's own session: the snapshot's catalog
        // is shared by every query that reuses it.
        let ctx = own_catalogs(ctx).map_err(datafusion_problem)?;
        let answers = Arc::new(datafusion::catalog::MemorySchemaProvider::new());
        let default = ctx
            .state()
            .config()
            .options()
            .catalog
            .default_catalog
            .clone();
        if let Some(catalog) = ctx.catalog(&default) {
            catalog
                .register_schema(REPORTS_SCHEMA, answers.clone())
                .map_err(datafusion_problem)?;
        }
        for (i, (report, mut given)) in calls.into_iter().enumerate() {
            if let Some(t) = self.known_at {
                given
                    .entry("known_at".into())
                    .or_insert_with(|| t.to_rfc3339());
            }
            let (schema, batches) = self
                .engine
                .warehouse
                .run_report_with_schema(&report, &given, &self.access)
                .await
                .map_err(query_problem)?;
            let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])
                .map_err(datafusion_problem)?;
            datafusion::catalog::SchemaProvider::register_table(
                answers.as_ref(),
                format!("report_{i}"),
                Arc::new(table),
            )
            .map_err(datafusion_problem)?;
        }
        let text: Vec<String> = statements.iter().map(|s| s.to_string()).collect();
        Ok(Some((text.join("; "), ctx)))
    }
}

/// The schema that holds a query's report answers.
const REPORTS_SCHEMA: &str = "careledger_report_calls";

/// A session over the same tables whose catalogs are its own: a schema registered in it (a
/// query's report answers, the PostgreSQL door's `pg_catalog`) stays out of the snapshot's
/// catalogs, which every query that reuses the snapshot shares.
pub(crate) fn own_catalogs(ctx: &SessionContext) -> datafusion::error::Result<SessionContext> {
    use datafusion::catalog::{
        CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    };
    let state = ctx.state();
    let list = Arc::new(MemoryCatalogProviderList::new());
    for name in CatalogProviderList::catalog_names(state.catalog_list().as_ref()) {
        let Some(old) = state.catalog_list().catalog(&name) else {
            continue;
        };
        let catalog = MemoryCatalogProvider::new();
        for s in old.schema_names() {
            if let Some(p) = old.schema(&s) {
                catalog.register_schema(&s, p)?;
            }
        }
        list.register_catalog(name, Arc::new(catalog));
    }
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
        .with_catalog_list(list)
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// A literal's text: strings as written, numbers and booleans as printed.
fn literal_text(e: &datafusion::sql::sqlparser::ast::Expr) -> Option<String> {
    use datafusion::sql::sqlparser::ast::{Expr, Value};
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.to_string()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Cast { expr, .. } => literal_text(expr),
        _ => None,
    }
}

/// Calls a closure on every table factor of a statement.
struct FactorVisitor<F>(F);

impl<F: FnMut(&mut datafusion::sql::sqlparser::ast::TableFactor)>
    datafusion::sql::sqlparser::ast::VisitorMut for FactorVisitor<F>
{
    type Break = ();

    fn pre_visit_table_factor(
        &mut self,
        factor: &mut datafusion::sql::sqlparser::ast::TableFactor,
    ) -> std::ops::ControlFlow<()> {
        (self.0)(factor);
        std::ops::ControlFlow::Continue(())
    }
}

/// Plans and runs `sql` on the query runtime, under the query timeout counted from `started`
/// (planning included): at the deadline the task is aborted (at its next yield; the guards
/// keep every step between yields short) and the answer is a 503 problem. The query holds
/// `slot` until its task ends, even after an abort. What the query builds is bounded by
/// [`crate::sql_guard`]: capped functions, batches counted against the shared memory pool. A
/// result held whole is bounded too: past the row cap (JSON) or past the query memory limit
/// in bytes, collecting stops with a problem instead of growing until the timeout.
async fn run_sql(
    engine: &Engine,
    ctx: SessionContext,
    reports: ReportCalls,
    ask: Ask,
    slot: tokio::sync::OwnedSemaphorePermit,
    started: Instant,
) -> Result<Ran, Problem> {
    use futures::StreamExt;
    let t = engine.query.timeout;
    let deadline = tokio::time::Instant::from_std(started + t);
    let byte_cap = engine.query.memory_limit;
    let limits = crate::sql_guard::Limits::for_memory(engine.query.memory_limit);
    let running = Running::start(slot, deadline);
    let cancel = running.cancel.clone();
    let Ask {
        sql, params, want, ..
    } = ask;
    let mut task = query_runtime().spawn(async move {
        let running = running;
        let (mut sql, mut ctx) = (sql, ctx);
        if let Some(mut statements) = check_shape(&sql)?
            && let Some((expanded, own)) = reports.expand(&ctx, &mut statements).await?
        {
            (sql, ctx) = (expanded, own);
        }
        let budget = crate::sql_guard::install(&ctx, &limits).map_err(datafusion_problem)?;
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let mut df = ctx
            .sql_with_options(&sql, options)
            .await
            .map_err(datafusion_problem)?;
        crate::sql_guard::check_logical(df.logical_plan(), &limits, &budget)
            .map_err(datafusion_problem)?;
        if matches!(want, Want::Describe) {
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let types = df
                .logical_plan()
                .get_parameter_types()
                .map_err(datafusion_problem)?;
            return Ok(Ran::Described(schema, positional_types(&types)));
        }
        if let Some(params) = params {
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

/// `$1`, `$2`, … in order (a gap is a parameter of no known type); named parameters are
/// not positional and give none.
fn positional_types(types: &HashMap<String, Option<DataType>>) -> Vec<Option<DataType>> {
    let mut numbered: Vec<(usize, Option<DataType>)> = types
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix('$')?.parse::<usize>().ok()?, t.clone())))
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    let last = numbered.last().map_or(0, |(n, _)| *n);
    let mut out = vec![None; last];
    for (n, t) in numbered {
        if n >= 1 {
            out[n - 1] = t;
        }
    }
    out
}

/// Streams a started query's batches to a door, under the query timeout (counted from
/// `started`, planning included), and audits when it ends. The batches are pulled on the
/// query runtime (where the operators run, with its stacks) and handed over a small
/// channel; a door that stops reading (its client went away) ends the query. The query is
/// cancelled and its slot given back as soon as the stream ends, fails or passes the
/// deadline. An error after the first batch arrives as the last item.
pub(crate) fn pump(
    engine: Arc<Engine>,
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    running: Running,
    audit: Audit,
    started: Instant,
) -> Batches {
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<RecordBatch, Problem>>(2);
    let deadline = tokio::time::Instant::from_std(started + engine.query.timeout);
    query_runtime().spawn(async move {
        let mut rows = 0usize;
        let late = || timeout_problem(engine.query.timeout);
        let result: Result<(), Problem> = async {
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
                let batch = match next {
                    None => return Ok(()),
                    Some(Err(_)) if running.cancel.load(Ordering::Relaxed) => return Err(late()),
                    Some(batch) => batch.map_err(datafusion_problem)?,
                };
                rows += batch.num_rows();
                match tokio::time::timeout_at(deadline, tx.send(Ok(batch))).await {
                    Err(_) => return Err(late()),
                    Ok(Err(_)) => return Ok(()), // the client went away
                    Ok(Ok(())) => {}
                }
            }
        }
        .await;
        running.cancel();
        drop(stream);
        drop(running);
        if let Err(e) = &result {
            // The door cuts its answer with the error (never a clean end a client could take
            // for the whole result); waits for the door to take what is queued, within bounds.
            let error = Problem::new(e.status, e.slug, e.detail.clone());
            let _ = tokio::time::timeout(engine.query.timeout, tx.send(Err(error))).await;
        }
        audit.finish(result.as_ref().map(|()| rows));
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// A streamed answer's batches, as [`pump`] hands them to a door.
pub(crate) type Batches =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RecordBatch, Problem>> + Send>>;

#[cfg(all(test, target_os = "linux"))]
mod background_tests {
    use rustix::process::getpriority_process;

    /// The deriver's and compaction's threads, workers and blocking alike, run below the
    /// priority of the threads that acknowledge pushes.
    #[test]
    fn background_threads_run_at_a_lower_priority() {
        let mine = getpriority_process(None).unwrap();
        let rt = super::background_runtime();
        let (worker, blocking) = rt
            .block_on(rt.spawn(async {
                let worker = getpriority_process(None).unwrap();
                let blocking = tokio::task::spawn_blocking(|| getpriority_process(None).unwrap())
                    .await
                    .unwrap();
                (worker, blocking)
            }))
            .unwrap();
        for (what, nice) in [("worker", worker), ("blocking thread", blocking)] {
            assert!(
                nice >= super::BACKGROUND_NICE && nice >= mine,
                "a background {what} runs at nice {nice} (this thread's: {mine})"
            );
        }
        assert_eq!(
            getpriority_process(None).unwrap(),
            mine,
            "this thread unchanged"
        );
    }
}
