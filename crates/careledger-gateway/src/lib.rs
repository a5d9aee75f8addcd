//! The HTTP gateway: the only crate that knows HTTP. Integrating systems push ledger updates to
//! `POST /v1/ingest/{table}`; the gateway validates, pseudonymises and group-commits them.

pub mod audit;
pub mod auth;
pub mod batches_log;
pub mod commit;
pub mod compact_task;
pub mod derive_task;
pub mod disclosure;
pub mod engine;
pub mod flight;
pub mod ingest;
mod limits;
pub mod metrics;
pub mod openapi;
pub mod output;
pub mod page;
pub mod pg;
pub mod problem;
pub mod query;
pub mod receipt;
pub mod serve;
pub mod sheet;
pub mod sources;
mod sql_guard;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use careledger_model::PseudonymKey;
use careledger_model::status::RuleParams;
use careledger_store::Store;
use careledger_warehouse::Warehouse;

pub use auth::{Principal, Role, TokenRegistry};
pub use commit::{CommitConfig, Committer, Dedup};
pub use problem::Problem;
pub use query::QueryConfig;
pub use receipt::Receipt;
pub use serve::{ServeLimits, serve};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub max_body_bytes: usize,
    /// Rows one ingest body may hold (a body of tiny rows is refused before it is expanded).
    pub max_rows_per_body: usize,
    /// The whole request, body upload included: past it the answer is a 408 problem.
    pub request_timeout: Duration,
    /// A request body must arrive at least this fast on average, in bytes per second, once
    /// `body_grace` has passed since the request began; a slower one gets a 408 problem and
    /// the connection is closed (0: no minimum). Slow senders cannot hold connection slots.
    pub min_body_rate: u64,
    pub body_grace: Duration,
    /// Requests one token may have in flight at once; past it, 429 with Retry-After before
    /// the body is read, and the connection is closed (0: no cap).
    pub max_in_flight_per_token: usize,
    /// Bytes of ingest bodies the server holds at once, all senders together (each body
    /// reserves its `Content-Length`, or the body limit when it is compressed or has none,
    /// until its batch is answered). A body that does not fit within a second gets 503 with
    /// Retry-After: overload is refused, never an out-of-memory.
    pub ingest_budget_bytes: usize,
    pub commit: CommitConfig,
    pub query: QueryConfig,
    /// The zone of every "day": a date in the future at ingest, a date-only `known_at`,
    /// source health's days (default Asia/Shanghai).
    pub time_zone: careledger_model::LocalZone,
    /// Whether this gateway derives the store's ledger (false: another process does, and this
    /// one only reads what it reflects).
    pub derive: bool,
    /// Background compaction of the pushed tables, `batches`, `rejects` and `audit` (off by
    /// default; `careledger serve` turns it on for the process that holds a local store).
    pub compaction: compact_task::CompactionConfig,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            max_body_bytes: 64 * 1024 * 1024,
            max_rows_per_body: 1_000_000,
            request_timeout: Duration::from_secs(60),
            min_body_rate: 1024,
            body_grace: Duration::from_secs(2),
            max_in_flight_per_token: 32,
            ingest_budget_bytes: 1024 * 1024 * 1024,
            commit: CommitConfig::default(),
            query: QueryConfig::default(),
            time_zone: careledger_model::LocalZone::default(),
            derive: true,
            compaction: compact_task::CompactionConfig::default(),
        }
    }
}

/// Shared state of every handler.
#[derive(Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub tokens: Arc<TokenRegistry>,
    pub key: PseudonymKey,
    pub committer: Committer,
    pub config: GatewayConfig,
    pub warehouse: Arc<Warehouse>,
    pub query: QueryConfig,
    pub cache: query::ResultCache,
    /// What every SQL door hands its queries to (shares `warehouse`, `audit_log` and
    /// `metrics`).
    pub engine: Arc<engine::Engine>,
    /// The ingest body budget, in KiB (`GatewayConfig::ingest_budget_bytes`).
    pub ingest_budget: Arc<tokio::sync::Semaphore>,
    /// Disclosure control of dashboard answers (its noise secret derives from `key`).
    pub publisher: disclosure::Publisher,
    pub metrics: Arc<metrics::Metrics>,
    pub audit_log: Arc<audit::AuditLog>,
    /// Maintains the derived tables beside the queries (stopped when the state is dropped).
    pub deriver: derive_task::DeriverTask,
    /// Background compaction (when configured), stopped at [`AppState::drain`].
    compactor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How long a query snapshot may be reused by a server that derives its store.
const SNAPSHOT_REUSE: Duration = Duration::from_secs(1);

impl AppState {
    /// Starts the commit tasks after loading the keys and sequences the store already holds.
    pub async fn start(
        store: Arc<Store>,
        tokens: Arc<TokenRegistry>,
        key: PseudonymKey,
        config: GatewayConfig,
    ) -> Result<Arc<AppState>, careledger_store::StoreError> {
        let dedup = Arc::new(Dedup::new(config.commit.receipt_cache));
        let recent_receipts = dedup.load(&store).await?;
        if config.derive {
            // Only the process that derives the store restores receipts: a second process
            // starting beside a running one would otherwise write the rows that one's writer
            // is about to write.
            batches_log::restore(&store, recent_receipts).await?;
        }
        let metrics = Arc::new(metrics::Metrics::default());
        let committer = Committer::start(store.clone(), dedup, config.commit, metrics.clone());
        let mut warehouse = Warehouse::new(store.clone(), RuleParams::default())
            .with_memory_limit(config.query.memory_limit)
            .with_cell_key_secret(key.derive_secret("publication record keys"))
            .with_time_zone(config.time_zone);
        if config.derive {
            // The derived tables change only through this process's deriver, so a snapshot
            // stays current until a table it read moves here; other processes' pushes show
            // within a second.
            warehouse = warehouse.with_snapshot_reuse(SNAPSHOT_REUSE);
        }
        let publisher = disclosure::Publisher::new(
            config.query.disclosure_k,
            key.derive_secret("publication noise"),
        );
        let audit_log = Arc::new(audit::AuditLog::start(
            store.clone(),
            config.query.audit_backlog_bytes,
        ));
        let deriver = derive_task::DeriverTask::start(
            warehouse.deriver().clone(),
            metrics.clone(),
            engine::background_runtime().handle(),
            config.derive,
        );
        let query = config.query.clone();
        let warehouse = Arc::new(warehouse);
        let engine = Arc::new(engine::Engine::served(
            warehouse.clone(),
            query.clone(),
            audit_log.clone(),
            metrics.clone(),
            committer.batches.clone(),
        ));
        let compactor = compact_task::start(
            store.clone(),
            config.compaction,
            engine::background_runtime().handle(),
        );
        let config_budget_kib = config.ingest_budget_bytes.div_ceil(1024).max(1);
        Ok(Arc::new(AppState {
            store,
            tokens,
            key,
            committer,
            config,
            warehouse,
            query,
            cache: query::ResultCache::default(),
            engine,
            ingest_budget: Arc::new(tokio::sync::Semaphore::new(config_budget_kib)),
            publisher,
            metrics,
            audit_log,
            deriver,
            compactor: std::sync::Mutex::new(compactor),
        }))
    }

    pub(crate) fn audit(&self, entry: audit::AuditEntry) {
        self.audit_log.record(entry);
    }

    /// Commits what is pending (batches, audit entries), derives what was committed (at most
    /// two minutes, so a clean stop leaves the derived ledger current for readers of the
    /// store) and stops the background tasks.
    pub async fn drain(&self) {
        // A compaction cut short commits nothing (its files are left for vacuum).
        if let Some(c) = self.compactor.lock().expect("lock").take() {
            c.abort();
        }
        self.committer.drain().await;
        self.audit_log.drain().await;
        if self.config.derive {
            let catch_up = self.warehouse.catch_up();
            match tokio::time::timeout(Duration::from_secs(120), catch_up).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "deriving at shutdown failed"),
                Err(_) => tracing::warn!(
                    "deriving at shutdown took over 2 minutes; left to the next start"
                ),
            }
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Result<&'static str, Problem> {
    state
        .store
        .refresh(careledger_store::BATCHES)
        .await
        .map_err(|e| Problem::internal("reading the store", &e))?;
    Ok("ready")
}

async fn metrics_text(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
}

/// Problem+json for paths that match no route.
async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        axum::http::StatusCode::NOT_FOUND,
        "not-found",
        format!("no route for {}", uri.path()),
    )
}

/// The ingest routes.
pub fn ingest_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/ingest/{table}", post(ingest::ingest))
        // The handler enforces the configured limit itself, with a problem+json 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The query routes (SQL, reports, tables).
pub fn query_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/sql", post(query::sql).get(query::sql_get))
        .route("/v1/reports", get(query::list_reports))
        .route("/v1/reports/{name}", get(query::run_report))
        .route("/v1/tables", get(query::tables))
        .route("/v1/sources/me", get(sources::me))
        .route("/v1/batches", get(sources::list))
        .route("/v1/batches/{id}", get(sources::one))
        .route("/v1/batches/{id}/rejects", get(sources::rejects))
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}

/// Every route of the server.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.config.request_timeout;
    let state_for_limits = state.clone();
    let metrics = state.metrics.clone();
    let service: Router = Router::new()
        .route("/", get(page::index))
        .route("/assets/{name}", get(page::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi_json))
        .with_state(state.clone());
    Router::new()
        .merge(ingest_router(state.clone()))
        .merge(query_router(state))
        .merge(service)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            limits::RequestLimits::new(state_for_limits),
            limits::limit_request,
        ))
        .layer(axum::middleware::from_fn_with_state(
            timeout,
            request_deadline,
        ))
        .layer(axum::middleware::from_fn_with_state(metrics, measure))
}

/// Times every request by its route template (`/v1/reports/{name}`, never the raw path).
async fn measure(
    axum::extract::State(metrics): axum::extract::State<Arc<metrics::Metrics>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("(no route)", |m| m.as_str())
        .to_string();
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    metrics.request(&route, &method, resp.status().as_u16(), started.elapsed());
    resp
}

/// "300 ms", "60 s".
pub(crate) fn duration_text(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Bounds the whole request, reading its body included: a sender that dribbles the body gets
/// a 408 problem naming the limit, and the connection is closed (the rest of the body is not
/// waited for).
async fn request_deadline(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            let mut resp = Problem::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                format!(
                    "the request was not received and answered within the request timeout of {}; a body sent too slowly is cut off. If the whole body had arrived, the batch may still be committed: retry with the same Idempotency-Key",
                    duration_text(limit)
                ),
            )
            .into_response();
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            resp
        }
    }
}

/// CORS for dashboards served from other origins (`serve --cors-origin`): `*` or a
/// comma-separated list of origins. Browsers may then send GET and POST with an
/// `Authorization` header, and read the freshness headers; the token still decides what
/// each request sees.
pub fn cors(origins: &str) -> Result<tower_http::cors::CorsLayer, String> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.trim() == "*" {
        AllowOrigin::any()
    } else {
        let list = origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| {
                if !(o.starts_with("http://") || o.starts_with("https://")) {
                    return Err(format!(
                        "--cors-origin {o:?} is not an origin (scheme://host[:port]) or *"
                    ));
                }
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|e| format!("--cors-origin {o:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if list.is_empty() {
            return Err("--cors-origin names no origin".into());
        }
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_NONE_MATCH,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::ETAG,
            header::RETRY_AFTER,
            HeaderName::from_static("careledger-reflects-ingested-at"),
            HeaderName::from_static("careledger-derived-cycle"),
        ])
        .max_age(Duration::from_secs(600)))
}
