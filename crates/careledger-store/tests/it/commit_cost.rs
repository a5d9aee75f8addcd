//! The cost of a commit does not grow with the table: the last of a few thousand appends
//! (each a Parquet file of its own, as a group commit of pushed rows is) takes about as long
//! as the first. Compared as a ratio of medians, not a wall time; the figures are printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, TimeUnit};
use careledger_store::{Append, BATCHES, Store};

/// `n` rows of the `batches` table (every column filled).
fn rows(k: usize, n: usize) -> RecordBatch {
    let schema = careledger_store::batches_schema();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.data_type() {
                DataType::Utf8 => Arc::new(StringArray::from(
                    (0..n)
                        .map(|i| format!("{}-{k}-{i}", f.name()))
                        .collect::<Vec<_>>(),
                )),
                DataType::Int64 => Arc::new(Int64Array::from(vec![k as i64; n])),
                DataType::Boolean => Arc::new(BooleanArray::from(vec![false; n])),
                DataType::Timestamp(TimeUnit::Microsecond, tz) => Arc::new(
                    arrow_array::TimestampMicrosecondArray::from(vec![k as i64 * 1_000_000; n])
                        .with_timezone_opt(tz.clone()),
                ),
                other => panic!("no filler for {other}"),
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_commits_cost_what_the_first_did() {
    const COMMITS: usize = 1_500;
    const WINDOW: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    let mut took = Vec::with_capacity(COMMITS);
    for k in 0..COMMITS {
        let started = Instant::now();
        store
            .append(
                BATCHES,
                Append {
                    batches: vec![rows(k, 20)],
                    txns: vec![(format!("cost-{k}"), 1)],
                    metadata: vec![("careledger.test".into(), serde_json::json!(k))],
                },
            )
            .await
            .unwrap();
        took.push(started.elapsed());
    }
    let first = median(took[..WINDOW].to_vec());
    let last = median(took[COMMITS - WINDOW..].to_vec());
    let ratio = last.as_secs_f64() / first.as_secs_f64();
    println!(
        "{COMMITS} commits, one file each: median of the first {WINDOW} {:.2} ms, of the last {WINDOW} {:.2} ms, ratio {ratio:.2}",
        first.as_secs_f64() * 1e3,
        last.as_secs_f64() * 1e3
    );
    // Every row and transaction is there, read back through a fresh snapshot.
    let table = store.refresh(BATCHES).await.unwrap();
    assert_eq!(table.version(), Some(COMMITS as i64 as u64));
    assert_eq!(
        store
            .txn_version(BATCHES, &format!("cost-{}", COMMITS - 1))
            .await
            .unwrap(),
        Some(1)
    );
    assert!(
        ratio < 3.0,
        "the last commits took {ratio:.2}× the first ({:?} vs {:?}): the commit cost grows with the table",
        last,
        first
    );
}
