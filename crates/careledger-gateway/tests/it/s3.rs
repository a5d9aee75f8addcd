//! An `s3://` store: the gateway against a real S3 API (moto's server on loopback, installed
//! from PyPI if missing), through the router: push, read back with SQL, restart, replay.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use careledger_gateway::{AppState, GatewayConfig, Role, TokenRegistry, router};
use careledger_store::Store;
use serde_json::{Value, json};

use crate::{key, ndjson, post_to, woman};

const MOTO: &str = "moto[server]==5.2.1";

/// moto's S3 server on a free loopback port; stopped on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_has_moto() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn moto() -> Moto {
    if !python_has_moto() {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", MOTO])
            .status()
            .expect("python3 runs");
        assert!(status.success(), "installing {MOTO} from PyPI failed");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto's server starts");
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    loop {
        // Create the bucket (moto takes unsigned requests); success means it is up.
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let req = format!(
                "PUT /careledger HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if s.write_all(req.as_bytes()).is_ok() {
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.1 200") {
                    return moto;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "moto's server did not come up on port {port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn options(endpoint: &str) -> HashMap<String, String> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

async fn gateway(endpoint: &str, tokens: Arc<TokenRegistry>) -> Arc<AppState> {
    let store = Store::open_with_options("s3://careledger/ledger", options(endpoint))
        .await
        .expect("opening the s3 store");
    let mut config = GatewayConfig::default();
    config.query.read_your_writes = true;
    AppState::start(Arc::new(store), tokens, key(), config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_store_takes_pushes_answers_sql_and_survives_a_restart() {
    let moto = tokio::task::spawn_blocking(moto).await.unwrap();
    let tokens = Arc::new(TokenRegistry::in_memory());
    let source = tokens
        .create("civil_affairs", &Role::Source("civil_affairs".into()), None)
        .unwrap();
    let analyst = tokens.create("analyst", &Role::Analyst, None).unwrap();
    let state = gateway(&moto.endpoint, tokens.clone()).await;
    let app = router(state.clone());
    let rows: Vec<Value> = (0..20).map(|n| woman(n, "civil_affairs")).collect();
    let push = |app: axum::Router| {
        let (source, body) = (source.clone(), ndjson(&rows));
        async move {
            let (s, _, r) = post_to(
                &app,
                "/v1/ingest/women",
                &source,
                "application/x-ndjson",
                body,
                &[("idempotency-key", "s3-first")],
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{r}");
            r
        }
    };
    assert_eq!(push(app.clone()).await["rows_accepted"], 20);
    let count = |app: axum::Router| {
        let analyst = analyst.clone();
        async move {
            let (s, _, v) = post_to(
                &app,
                "/v1/sql",
                &analyst,
                "application/json",
                json!({"sql": "SELECT count(*) AS n FROM women"}).to_string(),
                &[],
            )
            .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["rows"][0][0].as_i64().unwrap()
        }
    };
    assert_eq!(count(app.clone()).await, 20);
    state.drain().await;

    // A new gateway process on the same bucket: the rows are there, the key is remembered.
    let again = gateway(&moto.endpoint, tokens.clone()).await;
    let app = router(again.clone());
    assert_eq!(count(app.clone()).await, 20);
    let r = push(app.clone()).await;
    assert_eq!(r["duplicate"], true, "{r}");
    assert_eq!(count(app).await, 20);
    // With unsafe rename (for S3-compatible stores without conditional writes), appends still
    // commit, in order, with their transactions.
    let mut unsafe_rename = options(&moto.endpoint);
    unsafe_rename.insert("AWS_S3_ALLOW_UNSAFE_RENAME".into(), "true".into());
    let renamed = Store::open_with_options("s3://careledger/renamed", unsafe_rename)
        .await
        .unwrap();
    let schema = careledger_store::batches_schema();
    for k in 1..=3 {
        let v = renamed
            .append(
                careledger_store::BATCHES,
                careledger_store::Append {
                    batches: vec![arrow_array::RecordBatch::new_empty(schema.clone())],
                    txns: vec![(format!("renamed-{k}"), k)],
                    metadata: vec![],
                },
            )
            .await
            .unwrap();
        assert_eq!(v, k as u64);
    }
    assert_eq!(
        renamed
            .txn_version(careledger_store::BATCHES, "renamed-3")
            .await
            .unwrap(),
        Some(3)
    );
    // The objects are in the bucket, under the store's prefix.
    let listing = tokio::task::spawn_blocking(move || {
        let port = moto.endpoint.rsplit(':').next().unwrap().to_string();
        let mut s = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        let req = format!(
            "GET /careledger?list-type=2&prefix=ledger/women/_delta_log/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        drop(moto);
        answer
    })
    .await
    .unwrap();
    assert!(
        listing.contains("ledger/women/_delta_log/00000000000000000001.json"),
        "{listing}"
    );
}
