//! The `batches` table (every receipt, queryable) is written off the acknowledgement path.
//!
//! A group's senders get their receipts as soon as the data commit holding their rows (and
//! the receipts, in its metadata) succeeded. One task then appends the receipts of every
//! group answered meanwhile to `batches`, in one commit. Before, each group waited for its
//! own `batches` commit, so a group took two commits, or three with rejected rows.
//!
//! - **Readers.** Whoever reads `batches` first waits until the receipts answered before it
//!   asked are in the table ([`BatchesLog::settled`]). A receipt a sender holds is therefore
//!   always in the table it reads next. The wait is bounded ([`SETTLE_MAX`]).
//! - **Crashes.** A crash between the answer and the `batches` commit loses no receipt: it is
//!   in the data commit's metadata. The next start of the process that derives the store
//!   appends to `batches` the receipts of the last [`RESTORE_WINDOW`] commits of each pushed
//!   table that `batches` lacks ([`restore`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use careledger_store::{Append, BATCHES, Store, StoreError};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::commit::receipts_batch;
use crate::receipt::Receipt;

/// Groups the writer may be behind before a group commit waits for it.
const BACKLOG: usize = 4096;

/// Groups gathered into one `batches` commit at most.
const GATHER: usize = 1024;

/// The longest a reader of `batches` waits for the receipts answered before it asked.
pub const SETTLE_MAX: Duration = Duration::from_secs(10);

/// The commits of each pushed table, counted back from the latest, whose receipts a start
/// checks against `batches` (a crash can lose at most the writer's backlog, [`BACKLOG`]
/// groups, plus what another process on the same store committed meanwhile).
pub const RESTORE_WINDOW: u64 = 20_000;

/// One group's receipts, answered, waiting for `batches`.
struct Entry {
    seq: u64,
    version: u64,
    receipts: Vec<Receipt>,
}

/// The writer of the `batches` table.
#[derive(Debug)]
pub struct BatchesLog {
    /// The queue, with the number of the last group put on it (sends are made under this
    /// lock, so groups are numbered in the order the writer takes them).
    queue: Mutex<(u64, Option<mpsc::Sender<Entry>>)>,
    /// The number of the last group queued (readable without the lock).
    issued: AtomicU64,
    /// The number of the last group the writer has finished with.
    written: Arc<watch::Sender<u64>>,
    handle: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("seq", &self.seq).finish()
    }
}

impl BatchesLog {
    /// Starts the writer task.
    pub fn start(store: Arc<Store>) -> BatchesLog {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let written = Arc::new(watch::Sender::new(0));
        let handle = tokio::spawn(write(store, rx, written.clone()));
        BatchesLog {
            queue: Mutex::new((0, Some(tx))),
            issued: AtomicU64::new(0),
            written,
            handle: std::sync::Mutex::new(Some(handle)),
        }
    }

    /// Queues the receipts of a group just answered (its data commit is `version`); waits only
    /// while the writer is [`BACKLOG`] groups behind.
    pub async fn record(&self, version: u64, receipts: Vec<Receipt>) {
        let mut queue = self.queue.lock().await;
        let seq = queue.0 + 1;
        let Some(tx) = &queue.1 else {
            tracing::error!(
                "receipts answered after the batches writer stopped; the next start restores them"
            );
            return;
        };
        if tx
            .send(Entry {
                seq,
                version,
                receipts,
            })
            .await
            .is_err()
        {
            tracing::error!("the batches writer is gone; the next start restores these receipts");
            return;
        }
        queue.0 = seq;
        self.issued.store(seq, Ordering::Release);
    }

    /// Waits until every receipt answered before this call is in `batches` (at most
    /// [`SETTLE_MAX`]).
    pub async fn settled(&self) {
        let target = self.issued.load(Ordering::Acquire);
        let mut rx = self.written.subscribe();
        if tokio::time::timeout(SETTLE_MAX, rx.wait_for(|w| *w >= target))
            .await
            .is_err()
        {
            tracing::warn!(
                target,
                "batches writer still behind after {SETTLE_MAX:?}; reading batches without the latest receipts"
            );
        }
    }

    /// Stops taking receipts and waits until everything queued is written.
    pub async fn drain(&self) {
        self.queue.lock().await.1 = None;
        let handle = self.handle.lock().expect("lock").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

async fn write(store: Arc<Store>, mut rx: mpsc::Receiver<Entry>, written: Arc<watch::Sender<u64>>) {
    while let Some(first) = rx.recv().await {
        let mut entries = vec![first];
        while entries.len() < GATHER {
            match rx.try_recv() {
                Ok(e) => entries.push(e),
                Err(_) => break,
            }
        }
        let last = entries.last().map_or(0, |e| e.seq);
        let receipts: Vec<Receipt> = entries
            .into_iter()
            .flat_map(|e| {
                e.receipts.into_iter().map(move |mut r| {
                    r.table_version = Some(e.version);
                    r
                })
            })
            .collect();
        append_receipts(&store, &receipts).await;
        written.send_replace(last);
    }
}

/// Appends receipts to `batches` (three attempts; the receipts stay in their data commits'
/// metadata if all fail, and the next start restores them).
async fn append_receipts(store: &Store, receipts: &[Receipt]) {
    let batch = match receipts_batch(receipts) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(%e, "building the receipts batch failed");
            return;
        }
    };
    for attempt in 1..=3u64 {
        match store
            .append(
                BATCHES,
                Append {
                    batches: vec![batch.clone()],
                    ..Append::default()
                },
            )
            .await
        {
            Ok(_) => return,
            Err(e) if attempt < 3 => {
                tracing::warn!(%e, attempt, "recording receipts in the batches table failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => tracing::error!(
                %e,
                receipts = receipts.len(),
                "recording receipts in the batches table failed; the next start restores them from their commits"
            ),
        }
    }
}

/// At start: appends to `batches` the receipts among `candidates` (those of the last
/// [`RESTORE_WINDOW`] commits of each pushed table, as [`crate::commit::Dedup::load`] read
/// them) that `batches` does not hold: answered, then lost in a crash before the writer
/// recorded them. Returns how many were restored.
pub async fn restore(store: &Store, candidates: Vec<Receipt>) -> Result<usize, StoreError> {
    if candidates.is_empty() {
        return Ok(0);
    }
    let wanted: HashSet<String> = candidates.iter().map(|r| r.batch_id.clone()).collect();
    let present = present_batch_ids(store, &wanted).await?;
    let missing: Vec<Receipt> = candidates
        .into_iter()
        .filter(|r| !present.contains(&r.batch_id))
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let batch = receipts_batch(&missing)?;
    store
        .append(
            BATCHES,
            Append {
                batches: vec![batch],
                ..Append::default()
            },
        )
        .await?;
    tracing::warn!(
        restored = missing.len(),
        "receipts answered but missing from the batches table (a crash before they were recorded) were restored from their commits"
    );
    Ok(missing.len())
}

/// The ids among `wanted` that `batches` holds (one pass over its `batch_id` column).
async fn present_batch_ids(
    store: &Store,
    wanted: &HashSet<String>,
) -> Result<HashSet<String>, StoreError> {
    let err = |e: &dyn std::fmt::Display| {
        StoreError::Io(std::io::Error::other(format!(
            "reading the batches table: {e}"
        )))
    };
    let table = store.refresh(BATCHES).await?;
    let ctx = SessionContext::new();
    let provider = table.table_provider().await.map_err(|e| err(&e))?;
    ctx.register_table("b", provider).map_err(|e| err(&e))?;
    let mut stream = ctx
        .sql("SELECT batch_id FROM b")
        .await
        .map_err(|e| err(&e))?
        .execute_stream()
        .await
        .map_err(|e| err(&e))?;
    let mut present = HashSet::new();
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| err(&e))?;
        let ids = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .map_err(|e| err(&e))?;
        let ids = ids.as_string::<i32>();
        for i in 0..ids.len() {
            if !ids.is_null(i) && wanted.contains(ids.value(i)) {
                present.insert(ids.value(i).to_string());
            }
        }
    }
    Ok(present)
}
