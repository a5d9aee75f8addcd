//! Gateway integration tests: real HTTP requests through the router, a real Delta store in a
//! temporary directory, real commits read back from the Parquet files.

mod auth;
mod disclosure;
mod encoding;
mod formats;
mod freshness;
mod hostile;
mod idempotency;
mod ingest;
mod query;
mod s3;
mod scope;
mod serve;
mod sheets;
mod sources;
mod sql_abuse;
mod time_zone;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use careledger_gateway::{AppState, CommitConfig, GatewayConfig, Role, TokenRegistry, router};
use careledger_model::{PseudonymKey, ResidentId};
use careledger_store::Store;
use chrono::NaiveDate;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub(crate) const VILLAGE: &str = "450123100201";

pub(crate) struct Harness {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) state: Arc<AppState>,
    pub(crate) app: Router,
    pub(crate) tokens: Arc<TokenRegistry>,
    pub(crate) token: HashMap<&'static str, String>,
}

pub(crate) fn key() -> PseudonymKey {
    PseudonymKey::new(b"gateway-test-secret-0123456789").unwrap()
}

impl Harness {
    pub(crate) async fn new() -> Harness {
        Harness::with_config(GatewayConfig {
            commit: CommitConfig {
                window: Duration::from_millis(20),
                max_rows: 100_000,
                receipt_cache: careledger_gateway::commit::RECEIPT_CACHE,
            },
            ..GatewayConfig::default()
        })
        .await
    }

    pub(crate) async fn with_config(mut config: GatewayConfig) -> Harness {
        // A test pushes, then reads what it pushed: every query waits for the deriver.
        config.query.read_your_writes = true;
        Harness::with_config_as_is(config).await
    }

    /// With `config` as given (`read_your_writes` included).
    pub(crate) async fn with_config_as_is(config: GatewayConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(TokenRegistry::in_memory());
        let mut token = HashMap::new();
        for (name, role) in [
            ("civil_affairs", Role::Source("civil_affairs".into())),
            ("health", Role::Source("health".into())),
            ("analyst", Role::Analyst),
        ] {
            token.insert(name, tokens.create(name, &role, None).unwrap());
        }
        let state = start(dir.path(), tokens.clone(), config).await;
        Harness {
            app: router(state.clone()),
            dir,
            state,
            tokens,
            token,
        }
    }

    /// A second gateway on the same directory, as after a restart.
    pub(crate) async fn reopen(&self) -> (Arc<AppState>, Router) {
        let state = start(
            self.dir.path(),
            self.tokens.clone(),
            self.state.config.clone(),
        )
        .await;
        (state.clone(), router(state))
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: impl Into<Body>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        post_to(&self.app, path, token, content_type, body, extra).await
    }

    pub(crate) fn tok(&self, name: &str) -> &str {
        &self.token[name]
    }

    /// Every stored row of a table, read back from its Parquet files (`batches` once the
    /// receipts answered so far are written to it).
    pub(crate) async fn rows(&self, table: &str) -> Vec<RecordBatch> {
        self.state.committer.batches.settled().await;
        read_table(&self.state.store, table).await
    }

    pub(crate) async fn count(&self, table: &str) -> usize {
        self.rows(table)
            .await
            .iter()
            .map(RecordBatch::num_rows)
            .sum()
    }

    pub(crate) async fn version(&self, table: &str) -> u64 {
        self.state
            .store
            .refresh(table)
            .await
            .unwrap()
            .version()
            .unwrap()
    }
}

async fn start(
    dir: &std::path::Path,
    tokens: Arc<TokenRegistry>,
    config: GatewayConfig,
) -> Arc<AppState> {
    let store = Arc::new(Store::open(dir.to_str().unwrap()).await.unwrap());
    AppState::start(store, tokens, key(), config).await.unwrap()
}

pub(crate) async fn post_to(
    app: &Router,
    path: &str,
    token: &str,
    content_type: &str,
    body: impl Into<Body>,
    extra: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::post(path).header("content-type", content_type);
    if !token.is_empty() {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, value)
}

pub(crate) async fn read_table(store: &Store, table: &str) -> Vec<RecordBatch> {
    let t = store.refresh(table).await.unwrap();
    let mut out = Vec::new();
    for uri in t.get_file_uris().unwrap() {
        let path = uri.strip_prefix("file://").unwrap_or(&uri).to_string();
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            out.push(b.unwrap());
        }
    }
    out
}

/// A valid woman's ID number, distinct for each `n`.
pub(crate) fn id(n: u32) -> String {
    let birth =
        NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::TimeDelta::days(i64::from(n % 9000));
    ResidentId::synthesize("450123", birth, ((n / 9000) * 2 % 1000) as u16)
        .as_str()
        .to_string()
}

pub(crate) fn woman(n: u32, source: &str) -> Value {
    json!({"source": source, "record_id": format!("w-{n}"), "record_version": 1, "op": "upsert",
           "id_number": id(n), "region_code": VILLAGE, "ethnicity": "08", "marital_status": "20"})
}

pub(crate) fn ndjson(rows: &[Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

pub(crate) fn assert_problem(
    headers: &HeaderMap,
    body: &Value,
    status: StatusCode,
    got: StatusCode,
) {
    assert_eq!(got, status, "{body}");
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{body}"
    );
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}
