//! Reliability with real processes: the server killed with SIGKILL while senders push, over
//! several rounds; and two server processes writing one store at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use careledger_model::ResidentId;
use chrono::NaiveDate;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::Server;

const VILLAGE: &str = "450123100201";
const ROWS_PER_BATCH: usize = 25;

/// A batch a sender tried: its key, its rows' record ids, and whether it was acknowledged.
#[derive(Debug, Clone)]
struct Sent {
    key: String,
    body: String,
    record_ids: Vec<String>,
    acked: bool,
}

fn id(n: u32) -> String {
    let birth =
        NaiveDate::from_ymd_opt(1960, 1, 1).unwrap() + chrono::TimeDelta::days(i64::from(n % 9000));
    ResidentId::synthesize("450123", birth, ((n / 9000) * 2 % 1000) as u16)
        .as_str()
        .to_string()
}

/// A batch of women, numbered from `first`, tagged so its rows can be found again.
fn batch(tag: &str, first: u32) -> Sent {
    let mut body = String::new();
    let mut record_ids = Vec::new();
    for i in 0..ROWS_PER_BATCH as u32 {
        let rid = format!("{tag}-{i}");
        body.push_str(
            &json!({"source": "civil_affairs", "record_id": rid, "record_version": 1,
                    "op": "upsert", "id_number": id(first + i), "region_code": VILLAGE})
            .to_string(),
        );
        body.push('\n');
        record_ids.push(rid);
    }
    Sent {
        key: format!("key-{tag}"),
        body,
        record_ids,
        acked: false,
    }
}

async fn post(client: &reqwest::Client, url: &str, token: &str, b: &Sent) -> Result<Value, String> {
    let resp = client
        .post(format!("{url}/v1/ingest/women"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .header("idempotency-key", &b.key)
        .timeout(Duration::from_secs(20))
        .body(b.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let v: Value = resp.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("{status}: {v}"))
    }
}

/// How many stored rows each record id has, over every Delta row of `women` (not the
/// deduplicated view: a duplicate would show here).
async fn stored_counts(client: &reqwest::Client, url: &str, admin: &str) -> HashMap<String, u64> {
    let resp = client
        .post(format!("{url}/v1/sql"))
        .bearer_auth(admin)
        .json(&json!({"sql": "SELECT record_id, count(*) AS n FROM raw_women GROUP BY record_id"}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let v: Value = resp.json().await.unwrap();
    v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap()))
        .collect()
}

/// Every batch is whole or absent, never doubled; acknowledged ones are whole.
fn check(sent: &[Sent], counts: &HashMap<String, u64>, when: &str) -> (usize, usize) {
    let (mut whole, mut absent) = (0, 0);
    for b in sent {
        let present: Vec<u64> = b
            .record_ids
            .iter()
            .map(|r| counts.get(r).copied().unwrap_or(0))
            .collect();
        assert!(
            present.iter().all(|&n| n <= 1),
            "{when}: batch {} has duplicated rows: {present:?}",
            b.key
        );
        let n: u64 = present.iter().sum();
        assert!(
            n == 0 || n == ROWS_PER_BATCH as u64,
            "{when}: batch {} is half-present ({n} of {ROWS_PER_BATCH} rows)",
            b.key
        );
        if b.acked {
            assert_eq!(
                n, ROWS_PER_BATCH as u64,
                "{when}: acknowledged batch {} is missing",
                b.key
            );
        }
        if n == 0 { absent += 1 } else { whole += 1 }
    }
    (whole, absent)
}

#[test]
fn sigkill_mid_push_loses_no_acknowledged_batch_and_half_stores_none() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261128);
    eprintln!("crash test seed {seed} (set CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let mut sent: Vec<Sent> = Vec::new();
    let mut next_row = 0u32;
    let rounds = 5;
    for round in 0..rounds {
        let mut server = Server::start_with(dir.path(), &["--commit-window-ms", "20"]);
        let (url, source, admin) = (
            server.url.clone(),
            server.token("civil_affairs"),
            server.token("admin"),
        );
        // The server is back: what the last round left must be whole or absent, and resending
        // the unacknowledged batches with their keys completes them without duplicates.
        rt.block_on(async {
            let counts = stored_counts(&client, &url, &admin).await;
            let (whole, absent) = check(&sent, &counts, &format!("after round {round}"));
            eprintln!(
                "round {round}: {} batches so far, {} acknowledged, {whole} stored, {absent} absent",
                sent.len(),
                sent.iter().filter(|b| b.acked).count()
            );
            for b in sent.iter_mut().filter(|b| !b.acked) {
                let v = post(&client, &url, &source, b).await.unwrap();
                assert_eq!(v["rows_accepted"], ROWS_PER_BATCH, "{v}");
                b.acked = true;
            }
            let counts = stored_counts(&client, &url, &admin).await;
            let (whole, absent) = check(&sent, &counts, &format!("resent after round {round}"));
            assert_eq!((whole, absent), (sent.len(), 0));
        });
        if round + 1 == rounds {
            server.stop();
            break;
        }
        // Four senders push until the server dies under them, at a random moment.
        let kill_after = Duration::from_millis(rng.random_range(150..1200));
        let senders = 4;
        let mut plans: Vec<Vec<Sent>> = Vec::new();
        for s in 0..senders {
            let mut plan = Vec::new();
            for k in 0..200 {
                plan.push(batch(&format!("r{round}s{s}b{k}"), next_row));
                next_row += ROWS_PER_BATCH as u32;
            }
            plans.push(plan);
        }
        let results: Vec<Vec<Sent>> = rt.block_on(async {
            let tasks: Vec<_> = plans
                .into_iter()
                .map(|plan| {
                    let client = client.clone();
                    let url = url.clone();
                    let source = source.clone();
                    tokio::spawn(async move {
                        let mut tried = Vec::new();
                        for mut b in plan {
                            let outcome = post(&client, &url, &source, &b).await;
                            b.acked = outcome.is_ok();
                            let failed = outcome.is_err();
                            tried.push(b);
                            if failed {
                                break;
                            }
                        }
                        tried
                    })
                })
                .collect();
            tokio::time::sleep(kill_after).await;
            server.child.kill().unwrap(); // SIGKILL
            server.child.wait().unwrap();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        for r in results {
            sent.extend(r);
        }
    }
    let acked = sent.iter().filter(|b| b.acked).count();
    assert!(acked > 20, "the rounds pushed something: {acked}");
}

#[test]
fn two_server_processes_on_one_store_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The first start creates the store, secret and tokens; the second shares them.
    let mut a = Server::start(dir.path());
    let mut b = Server::start(dir.path());
    let (source, admin) = (a.token("civil_affairs"), a.token("admin"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let urls = [a.url.clone(), b.url.clone()];
    let mut all: Vec<Sent> = Vec::new();
    let mut next_row = 0u32;
    let mut plans: Vec<(String, Vec<Sent>)> = Vec::new();
    for s in 0..6 {
        let mut plan = Vec::new();
        for k in 0..15 {
            plan.push(batch(&format!("p{s}b{k}"), next_row));
            next_row += ROWS_PER_BATCH as u32;
        }
        all.extend(plan.clone());
        plans.push((urls[s % 2].clone(), plan));
    }
    // The same batches, same keys, sent to both processes at once: stored once.
    let racing: Vec<Sent> = (0..10)
        .map(|k| {
            let b = batch(&format!("race{k}"), next_row);
            next_row += ROWS_PER_BATCH as u32;
            b
        })
        .collect();
    let outcomes: BTreeMap<String, Vec<Result<Value, String>>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for (url, plan) in plans {
            let client = client.clone();
            let source = source.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for b in plan {
                    out.push((b.key.clone(), post(&client, &url, &source, &b).await));
                }
                out
            }));
        }
        for b in racing.clone() {
            for url in urls.clone() {
                let client = client.clone();
                let source = source.clone();
                let b = b.clone();
                tasks.push(tokio::spawn(async move {
                    vec![(b.key.clone(), post(&client, &url, &source, &b).await)]
                }));
            }
        }
        let mut map: BTreeMap<String, Vec<Result<Value, String>>> = BTreeMap::new();
        for t in tasks {
            for (k, r) in t.await.unwrap() {
                map.entry(k).or_default().push(r);
            }
        }
        map
    });
    // Every planned batch was acknowledged by the process it went to.
    for b in all.iter_mut() {
        let r = &outcomes[&b.key];
        if r[0].is_err() {
            for e in std::fs::read_dir(dir.path()).unwrap() {
                let path = e.unwrap().path();
                if path.extension().is_some_and(|x| x == "log") {
                    eprintln!(
                        "{}:\n{}",
                        path.display(),
                        std::fs::read_to_string(&path).unwrap()
                    );
                }
            }
        }
        assert!(r[0].is_ok(), "batch {}: {:?}", b.key, r[0]);
        b.acked = true;
    }
    // A raced key: at least one process acknowledged it; a refusal is a clear conflict, not
    // a second copy.
    for b in &racing {
        let r = &outcomes[&b.key];
        assert!(r.iter().any(Result::is_ok), "race {}: {r:?}", b.key);
        for e in r.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                e.starts_with("409") || e.starts_with("503"),
                "race {}: {e}",
                b.key
            );
        }
    }
    let counts = rt.block_on(stored_counts(&client, &b.url, &admin));
    all.extend(racing.iter().cloned().map(|mut b| {
        b.acked = true;
        b
    }));
    let (whole, absent) = check(&all, &counts, "two writers");
    assert_eq!((whole, absent), (all.len(), 0));
    let total: u64 = counts.values().sum();
    assert_eq!(total, (all.len() * ROWS_PER_BATCH) as u64);
    a.stop();
    b.stop();
}
