//! Ingest throughput: 10k-row NDJSON batches of `services` through the real router (in
//! process, no socket) into a Delta store in a temporary directory, acknowledged only after
//! their commit. Prints a table; asserts nothing about time.
//!
//! cargo bench -p careledger-gateway --bench ingest -- [total_rows]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use careledger_gateway::{AppState, CommitConfig, GatewayConfig, Role, TokenRegistry, router};
use careledger_model::{PseudonymKey, ResidentId};
use careledger_store::Store;
use chrono::NaiveDate;
use http_body_util::BodyExt;
use tower::ServiceExt;

const BATCH_ROWS: usize = 10_000;

fn body(batch: usize) -> String {
    let measures = [
        ("M1", "dibao_enrolment"),
        ("M2", "skills_training"),
        ("M3", "two_cancers_screening"),
        ("M4", "legal_aid"),
        ("M5", "parenting_class"),
    ];
    let mut out = String::with_capacity(BATCH_ROWS * 330);
    for i in 0..BATCH_ROWS {
        let n = batch * BATCH_ROWS + i;
        let birth = NaiveDate::from_ymd_opt(1965, 1, 1).unwrap()
            + chrono::TimeDelta::days((n % 12_000) as i64);
        let id = ResidentId::synthesize("450123", birth, ((n / 12_000) * 2 % 1000) as u16);
        let (m, t) = measures[n % measures.len()];
        out.push_str(&format!(
            "{{\"record_id\":\"svc-{n}\",\"record_version\":1,\"op\":\"upsert\",\"id_number\":\"{}\",\"measure\":\"{m}\",\"service_type\":\"{t}\",\"service_date\":\"2024-0{}-1{}\",\"provider_unit\":\"隆安县妇联\",\"region_code\":\"450123100201\",\"amount_yuan\":\"{}.50\",\"quantity\":1}}\n",
            id.as_str(),
            1 + n % 9,
            n % 10,
            n % 900
        ));
    }
    out
}

async fn run(total_rows: usize, concurrency: usize) -> (Duration, usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
    let tokens = Arc::new(TokenRegistry::in_memory());
    let token = tokens
        .create("health", &Role::Source("health".into()), None)
        .unwrap();
    let config = GatewayConfig {
        commit: CommitConfig {
            window: Duration::from_millis(50),
            max_rows: 200_000,
            receipt_cache: careledger_gateway::commit::RECEIPT_CACHE,
        },
        ..GatewayConfig::default()
    };
    let state = AppState::start(
        store.clone(),
        tokens,
        PseudonymKey::new(b"bench-secret-0123456789").unwrap(),
        config,
    )
    .await
    .unwrap();
    let app = router(state.clone());
    let batches = total_rows / BATCH_ROWS;
    let bodies: Vec<String> = (0..batches).map(body).collect();
    let bytes: usize = bodies.iter().map(String::len).sum();
    let before = store.refresh("services").await.unwrap().version().unwrap();
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let app = app.clone();
        let queue = queue.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(b) = queue.lock().unwrap().pop() else {
                    break;
                };
                let req = Request::post("/v1/ingest/services")
                    .header("content-type", "application/x-ndjson")
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::from(b))
                    .unwrap();
                let resp = app.clone().oneshot(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(
                    status.is_success(),
                    "{status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let commits = store.refresh("services").await.unwrap().version().unwrap() - before;
    state.committer.drain().await;
    (elapsed, bytes, commits)
}

fn main() {
    let total: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "ingest: {total} rows of services in {BATCH_ROWS}-row NDJSON batches, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>11} | {:>9} | {:>11} | {:>7} | {:>7}",
        "concurrency", "seconds", "rows/s", "MB/s", "commits"
    );
    for c in [1, 4, 16] {
        let (elapsed, bytes, commits) = rt.block_on(run(total, c));
        let secs = elapsed.as_secs_f64();
        println!(
            "{c:>11} | {secs:>9.2} | {:>11.0} | {:>7.1} | {commits:>7}",
            total as f64 / secs,
            bytes as f64 / secs / 1e6
        );
    }
}
