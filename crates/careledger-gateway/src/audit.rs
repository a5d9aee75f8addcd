//! The `audit` table: every query and report run (token, role, request, rows, duration,
//! outcome), written in the background in small batches so a query never waits for it.
//!
//! The entries waiting to be written are bounded, never dropped: they are counted in bytes,
//! and while they pass the backlog limit (the store is not taking the writes, or takes them
//! slower than queries come) new queries and reports are refused with 503 `audit-backlog`
//! and `Retry-After`, through every door. A write that fails is retried with the same entries
//! until it succeeds (or, at shutdown, a few times; then the loss is logged).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use careledger_store::{AUDIT, Append, Store, audit_schema};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::Principal;
use crate::problem::Problem;

/// One audited request.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub token_name: String,
    pub role: String,
    pub scope: Option<String>,
    pub kind: &'static str,
    pub request: String,
    pub params: Option<String>,
    pub rows: Option<i64>,
    pub duration_ms: i64,
    pub status: i64,
    pub outcome: String,
}

impl AuditEntry {
    /// What the entry holds in memory, roughly: its texts and a fixed part.
    fn size(&self) -> usize {
        128 + self.token_name.len()
            + self.role.len()
            + self.scope.as_ref().map_or(0, String::len)
            + self.request.len()
            + self.params.as_ref().map_or(0, String::len)
            + self.outcome.len()
    }

    pub fn new<T>(
        p: &Principal,
        kind: &'static str,
        request: &str,
        params: Option<String>,
        outcome: &Result<(usize, T), Problem>,
        started: Instant,
    ) -> AuditEntry {
        let (rows, status, outcome) = match outcome {
            Ok((rows, _)) => (Some(*rows as i64), 200, "ok".to_string()),
            Err(e) => (None, i64::from(e.status.as_u16()), e.slug.to_string()),
        };
        AuditEntry {
            at: Utc::now(),
            token_name: p.name.clone(),
            role: p.role.as_string(),
            scope: p.scope.clone(),
            kind,
            // An analyst may look a person up by her ID number: the audit keeps it masked.
            request: careledger_model::redact_ids(request)
                .chars()
                .take(20_000)
                .collect(),
            params: params.map(|p| careledger_model::redact_ids(&p).into_owned()),
            rows,
            duration_ms: started.elapsed().as_millis() as i64,
            status,
            outcome,
        }
    }
}

/// The default limit of entries waiting to be written.
pub const AUDIT_BACKLOG_BYTES: usize = 64 << 20;

/// The background writer.
#[derive(Debug)]
pub struct AuditLog {
    tx: std::sync::Mutex<Option<mpsc::UnboundedSender<AuditEntry>>>,
    handle: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// Bytes of entries recorded and not yet written.
    pending: Arc<AtomicUsize>,
    limit: usize,
}

impl AuditLog {
    /// A writer holding at most about `limit` bytes of entries before [`AuditLog::admit`]
    /// refuses new queries.
    pub fn start(store: Arc<Store>, limit: usize) -> AuditLog {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let handle = tokio::spawn(run(store, rx, pending.clone()));
        AuditLog {
            tx: std::sync::Mutex::new(Some(tx)),
            handle: std::sync::Mutex::new(Some(handle)),
            pending,
            limit,
        }
    }

    pub fn record(&self, entry: AuditEntry) {
        if let Some(tx) = self.tx.lock().expect("lock").as_ref() {
            let size = entry.size();
            self.pending.fetch_add(size, Ordering::SeqCst);
            if tx.send(entry).is_err() {
                self.pending.fetch_sub(size, Ordering::SeqCst);
            }
        }
    }

    /// Bytes of entries waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Refuses a new query (503 `audit-backlog`, Retry-After) while the entries waiting to be
    /// written pass the limit: a query that could not be audited is not run.
    pub fn admit(&self) -> Result<(), Problem> {
        let pending = self.pending_bytes();
        if pending <= self.limit {
            return Ok(());
        }
        Err(Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            AUDIT_BACKLOG,
            format!(
                "the audit log has {} KiB of entries not yet written (the limit is {} KiB): the store is behind, and no query runs unaudited; retry in a few seconds",
                pending / 1024,
                self.limit / 1024
            ),
        ))
    }

    /// Writes what is pending and stops.
    pub async fn drain(&self) {
        self.tx.lock().expect("lock").take();
        let handle = self.handle.lock().expect("lock").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

/// The slug of the refusal while the audit log is behind (answered with Retry-After).
pub const AUDIT_BACKLOG: &str = "audit-backlog";

async fn run(
    store: Arc<Store>,
    mut rx: mpsc::UnboundedReceiver<AuditEntry>,
    pending: Arc<AtomicUsize>,
) {
    while let Some(first) = rx.recv().await {
        let mut entries = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while entries.len() < 1000 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => entries.push(e),
                _ => break,
            }
        }
        let size: usize = entries.iter().map(AuditEntry::size).sum();
        let b = match batch(&entries) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(%e, lost = entries.len(), "building the audit batch failed");
                pending.fetch_sub(size, Ordering::SeqCst);
                continue;
            }
        };
        // The same entries again until the store takes them; while it does not, the backlog
        // grows and new queries are refused. Once the server stops taking entries (shutdown),
        // a few more tries.
        let mut wait = Duration::from_millis(200);
        let mut tries_after_close = 0;
        loop {
            let append = Append {
                batches: vec![b.clone()],
                ..Append::default()
            };
            match store.append(AUDIT, append).await {
                Ok(_) => break,
                Err(e) => {
                    let closing = rx.is_closed();
                    tries_after_close += usize::from(closing);
                    if tries_after_close > 3 {
                        tracing::error!(%e, lost = entries.len(), "writing the audit log failed at shutdown");
                        break;
                    }
                    tracing::warn!(%e, entries = entries.len(), retry_in_ms = wait.as_millis() as u64, "writing the audit log failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
        pending.fetch_sub(size, Ordering::SeqCst);
    }
}

fn batch(entries: &[AuditEntry]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut name, mut role, mut scope, mut kind, mut request, mut params, mut outcome) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut rows, mut ms, mut status) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    for e in entries {
        at.append_value(e.at.timestamp_micros());
        name.append_value(&e.token_name);
        role.append_value(&e.role);
        scope.append_option(e.scope.as_deref());
        kind.append_value(e.kind);
        request.append_value(&e.request);
        params.append_option(e.params.as_deref());
        rows.append_option(e.rows);
        ms.append_value(e.duration_ms);
        status.append_value(e.status);
        outcome.append_value(&e.outcome);
    }
    RecordBatch::try_new(
        audit_schema(),
        vec![
            Arc::new(at.finish()),
            Arc::new(name.finish()),
            Arc::new(role.finish()),
            Arc::new(scope.finish()),
            Arc::new(kind.finish()),
            Arc::new(request.finish()),
            Arc::new(params.finish()),
            Arc::new(rows.finish()),
            Arc::new(ms.finish()),
            Arc::new(status.finish()),
            Arc::new(outcome.finish()),
        ],
    )
}
