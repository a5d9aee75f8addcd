//! Store tests: creation, additive schema evolution, refusal of unknown columns, memory://.

mod commit_cost;

use arrow_array::RecordBatch;
use arrow_schema::{Field, Schema};
use careledger_model::Table;
use careledger_store::{Append, BATCHES, Store, StoreError, all_tables};
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;

async fn create_table_with(dir: &std::path::Path, name: &str, schema: &Schema) {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    let url = url::Url::from_directory_path(&path).unwrap();
    let table = deltalake::DeltaTableBuilder::from_url(url)
        .unwrap()
        .build()
        .unwrap();
    let kernel: StructType = schema.try_into_kernel().unwrap();
    table
        .create()
        .with_columns(kernel.fields().cloned())
        .await
        .unwrap();
}

#[tokio::test]
async fn open_creates_every_table_and_reopens_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    for (name, schema) in all_tables() {
        let t = store.table(name).await.unwrap();
        assert_eq!(t.version(), Some(0), "{name}");
        assert_eq!(
            t.snapshot()
                .unwrap()
                .snapshot()
                .arrow_schema()
                .fields()
                .len(),
            schema.fields().len(),
            "{name}"
        );
        assert!(dir.path().join(name).join("_delta_log").is_dir());
    }
    drop(store);
    let again = Store::open(&format!("file://{}", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(
        again.table("women").await.unwrap().version(),
        Some(0),
        "reopening creates nothing new"
    );
}

#[tokio::test]
async fn a_column_added_to_the_contract_is_added_to_the_stored_table() {
    let dir = tempfile::tempdir().unwrap();
    // A `women` table written by an older contract that had no `education` column.
    let full = Table::Women.spec().stored_schema();
    let older = Schema::new(
        full.fields()
            .iter()
            .filter(|f| f.name() != "education")
            .cloned()
            .collect::<Vec<_>>(),
    );
    create_table_with(dir.path(), "women", &older).await;
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    let t = store.table("women").await.unwrap();
    let schema = t.snapshot().unwrap().snapshot().arrow_schema();
    assert!(schema.field_with_name("education").unwrap().is_nullable());
    assert_eq!(t.version(), Some(1), "one commit added the column");
}

#[tokio::test]
async fn an_unknown_column_in_the_store_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let full = Table::Women.spec().stored_schema();
    let mut fields: Vec<Field> = full.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(
        "added_by_a_newer_version",
        arrow_schema::DataType::Utf8,
        true,
    ));
    create_table_with(dir.path(), "women", &Schema::new(fields)).await;
    let err = Store::open(dir.path().to_str().unwrap()).await.unwrap_err();
    assert!(matches!(err, StoreError::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("added_by_a_newer_version"));
}

#[tokio::test]
async fn memory_store_appends_with_transactions_and_metadata() {
    let store = Store::open("memory://").await.unwrap();
    let schema = careledger_store::batches_schema();
    let empty = RecordBatch::new_empty(schema.clone());
    let v = store
        .append(
            BATCHES,
            Append {
                batches: vec![empty],
                txns: vec![("app.a".into(), 7)],
                metadata: vec![("careledger.test".into(), serde_json::json!([1, 2]))],
            },
        )
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(
        store
            .txn_versions(BATCHES, &["app.a".into(), "app.b".into()])
            .await
            .unwrap(),
        vec![Some(7), None]
    );
    assert_eq!(
        store
            .commit_metadata_versions(BATCHES, "careledger.test")
            .await
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect::<Vec<_>>(),
        vec![serde_json::json!([1, 2])]
    );
}

/// Two `Store`s on one directory (as two server processes are) appending at once: every
/// append commits, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_directory_append_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::sync::Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
    let b = std::sync::Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
    let schema = careledger_store::batches_schema();
    let mut tasks = Vec::new();
    for (i, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        let schema = schema.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for k in 0..15 {
                let batch = RecordBatch::new_empty(schema.clone());
                let v = store
                    .append(
                        BATCHES,
                        Append {
                            batches: vec![batch],
                            txns: vec![(format!("app-{i}-{k}"), 1)],
                            metadata: vec![],
                        },
                    )
                    .await
                    .unwrap_or_else(|e| panic!("writer {i} append {k}: {e}"));
                versions.push(v);
            }
            versions
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 30, "every append got its own version: {all:?}");
    let latest = a.refresh(BATCHES).await.unwrap().version().unwrap();
    assert_eq!(latest, 30);
    for i in 0..2 {
        for k in 0..15 {
            assert_eq!(
                a.txn_version(BATCHES, &format!("app-{i}-{k}"))
                    .await
                    .unwrap(),
                Some(1)
            );
        }
    }
}

/// The transaction index follows later commits, its own and another store's: a later `txn`
/// of an id wins, and an id first committed elsewhere after the index was built is found.
#[tokio::test]
async fn transaction_versions_follow_later_commits_of_either_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    let b = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    let schema = careledger_store::batches_schema();
    let append = |app: &str, v: i64| Append {
        batches: vec![RecordBatch::new_empty(schema.clone())],
        txns: vec![(app.to_string(), v)],
        metadata: vec![],
    };
    a.append(BATCHES, append("app.a", 7)).await.unwrap();
    let ids = ["app.a".to_string(), "app.b".to_string()];
    assert_eq!(
        b.txn_versions(BATCHES, &ids).await.unwrap(),
        vec![Some(7), None]
    );
    a.append(BATCHES, append("app.a", 9)).await.unwrap();
    a.append(BATCHES, append("app.b", 1)).await.unwrap();
    assert_eq!(
        b.txn_versions(BATCHES, &ids).await.unwrap(),
        vec![Some(9), Some(1)]
    );
    b.append(BATCHES, append("app.c", 2)).await.unwrap();
    assert_eq!(a.txn_version(BATCHES, "app.c").await.unwrap(), Some(2));
    assert_eq!(a.txn_version(BATCHES, "app.d").await.unwrap(), None);
}

/// Commit files hold the receipts and idempotency keys: a commit after a checkpoint must not
/// delete those older than delta-rs's log retention (30 days by default).
#[tokio::test]
async fn commits_older_than_the_log_retention_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    let schema = careledger_store::batches_schema();
    let append = |k: i64| Append {
        batches: vec![RecordBatch::new_empty(schema.clone())],
        txns: vec![(format!("app-{k}"), k)],
        metadata: vec![],
    };
    for k in 0..3 {
        store.append(BATCHES, append(k)).await.unwrap();
    }
    store.checkpoint(BATCHES).await.unwrap();
    let log = dir.path().join(BATCHES).join("_delta_log");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60 * 86_400);
    let commits: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(commits.len(), 4, "{commits:?}");
    for p in &commits {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    store.append(BATCHES, append(3)).await.unwrap();
    for p in &commits {
        assert!(p.exists(), "{} was deleted", p.display());
    }
    assert_eq!(store.txn_version(BATCHES, "app-0").await.unwrap(), Some(0));
}

/// `n` audit rows whose `request` says `{tag}-{i}`.
fn audit_rows(tag: &str, n: usize) -> RecordBatch {
    use arrow_array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
    let text = |v: &str| -> ArrayRef { std::sync::Arc::new(StringArray::from(vec![v; n])) };
    let requests: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    RecordBatch::try_new(
        careledger_store::audit_schema(),
        vec![
            std::sync::Arc::new(
                TimestampMicrosecondArray::from(vec![1_700_000_000_000_000i64; n])
                    .with_timezone("UTC"),
            ),
            text("t"),
            text("admin"),
            std::sync::Arc::new(StringArray::from(vec![None::<&str>; n])),
            text("sql"),
            std::sync::Arc::new(StringArray::from(requests)),
            std::sync::Arc::new(StringArray::from(vec![None::<&str>; n])),
            std::sync::Arc::new(Int64Array::from(vec![Some(1i64); n])),
            std::sync::Arc::new(Int64Array::from(vec![1i64; n])),
            std::sync::Arc::new(Int64Array::from(vec![200i64; n])),
            text("ok"),
        ],
    )
    .unwrap()
}

/// Compactions of one table never overlap: three at once, from this store twice and from a
/// second store on the same directory (as a second process would), while appends go on, keep
/// every row exactly once. (Two overlapping OPTIMIZEs used to both commit and store the rows
/// they rewrote twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_compactions_of_one_table_keep_every_row_once() {
    use careledger_store::AUDIT;
    let dir = tempfile::tempdir().unwrap();
    let a = std::sync::Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
    let b = std::sync::Arc::new(Store::open(dir.path().to_str().unwrap()).await.unwrap());
    for k in 0..40 {
        a.append(
            AUDIT,
            Append {
                batches: vec![audit_rows(&format!("a{k}"), 5)],
                ..Append::default()
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(a.file_count(AUDIT).await.unwrap(), 40);
    let appender = {
        let a = a.clone();
        tokio::spawn(async move {
            for k in 0..20 {
                a.append(
                    AUDIT,
                    Append {
                        batches: vec![audit_rows(&format!("late{k}"), 5)],
                        ..Append::default()
                    },
                )
                .await
                .unwrap();
            }
        })
    };
    let (x, y, z) = tokio::join!(
        a.compact(AUDIT, 64 << 20),
        a.compact(AUDIT, 64 << 20),
        b.compact(AUDIT, 64 << 20)
    );
    for s in [x, y, z] {
        s.unwrap();
    }
    appender.await.unwrap();
    let table = b.refresh(AUDIT).await.unwrap();
    let mut requests = Vec::new();
    for uri in table.get_file_uris().unwrap() {
        let path = uri.strip_prefix("file://").unwrap_or(&uri).to_string();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = arrow::compute::cast(
                batch.column_by_name("request").unwrap(),
                &arrow_schema::DataType::Utf8,
            )
            .unwrap();
            let col = arrow_array::cast::AsArray::as_string::<i32>(&col);
            requests.extend((0..batch.num_rows()).map(|i| col.value(i).to_string()));
        }
    }
    let total = requests.len();
    requests.sort();
    requests.dedup();
    assert_eq!(total, 300, "40 + 20 appends of 5 rows, each once");
    assert_eq!(requests.len(), 300);
    assert!(b.file_count(AUDIT).await.unwrap() <= 21, "compacted");
}

/// The rows that commits added, counted from the commits' file statistics (how the deriver
/// tells a bulk load without reading it): appends count, a compaction's rewrite does not.
/// Staged rows are invisible until their one commit, which carries its transactions.
#[tokio::test]
async fn added_rows_are_counted_from_the_commits_and_staged_rows_commit_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    for (k, n) in [(1, 3), (2, 4)] {
        store
            .append(
                BATCHES,
                Append {
                    batches: vec![commit_cost::rows(k, n)],
                    ..Append::default()
                },
            )
            .await
            .unwrap();
    }
    assert_eq!(store.added_row_count(BATCHES, 0, 2).await.unwrap(), 7);
    assert_eq!(store.added_row_count(BATCHES, 1, 2).await.unwrap(), 4);
    let compacted = store.compact(BATCHES, 1 << 20).await.unwrap();
    assert_eq!((compacted.files_removed, compacted.version), (2, 3));
    assert_eq!(store.added_row_count(BATCHES, 2, 3).await.unwrap(), 0);

    let mut staged = store.stage(BATCHES).await.unwrap();
    staged.write(commit_cost::rows(3, 5)).await.unwrap();
    staged.write(commit_cost::rows(4, 6)).await.unwrap();
    assert_eq!(store.refresh(BATCHES).await.unwrap().version(), Some(3));
    let v = store
        .commit_staged(BATCHES, vec![staged], vec![("app.x".into(), 9)])
        .await
        .unwrap();
    assert_eq!(v, 4);
    assert_eq!(store.added_row_count(BATCHES, 3, 4).await.unwrap(), 11);
    assert_eq!(
        store
            .txn_versions(BATCHES, &["app.x".into()])
            .await
            .unwrap(),
        vec![Some(9)]
    );
    let table = store.refresh(BATCHES).await.unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("b", table.table_provider().await.unwrap())
        .unwrap();
    let n = ctx
        .sql("SELECT count(*) FROM b")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        datafusion::arrow::util::display::array_value_to_string(n[0].column(0), 0).unwrap(),
        "18"
    );
}
