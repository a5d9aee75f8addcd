//! The HTTP gateway: the only crate that knows HTTP. Integrating systems push ledger updates to
//! `POST /v1/ingest/{table}`; the gateway validates, pseudonymises and group-commits them.

pub mod auth;
pub mod commit;
pub mod decode;
pub mod ingest;
pub mod problem;
pub mod receipt;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use careledger_model::PseudonymKey;
use careledger_store::Store;

pub use auth::{Principal, Role, TokenRegistry};
pub use commit::{CommitConfig, Committer, Dedup};
pub use problem::Problem;
pub use receipt::Receipt;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub commit: CommitConfig,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            max_body_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(60),
            commit: CommitConfig::default(),
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
}

impl AppState {
    /// Starts the commit tasks after loading the keys and sequences the store already holds.
    pub async fn start(
        store: Arc<Store>,
        tokens: Arc<TokenRegistry>,
        key: PseudonymKey,
        config: GatewayConfig,
    ) -> Result<Arc<AppState>, careledger_store::StoreError> {
        let dedup = Arc::new(Dedup::default());
        dedup.load(&store).await?;
        let committer = Committer::start(store.clone(), dedup, config.commit);
        Ok(Arc::new(AppState {
            store,
            tokens,
            key,
            committer,
            config,
        }))
    }
}

async fn healthz() -> &'static str {
    "ok"
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

/// Every route of the server.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.config.request_timeout;
    Router::new()
        .merge(ingest_router(state))
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .fallback(not_found)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
}
