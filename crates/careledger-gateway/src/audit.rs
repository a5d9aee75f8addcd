//! The `audit` table: every query and report run (token, role, request, rows, duration,
//! outcome), written in the background in small batches so a query never waits for it.

use std::sync::Arc;
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

/// The background writer.
#[derive(Debug)]
pub struct AuditLog {
    tx: std::sync::Mutex<Option<mpsc::UnboundedSender<AuditEntry>>>,
    handle: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl AuditLog {
    pub fn start(store: Arc<Store>) -> AuditLog {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(run(store, rx));
        AuditLog {
            tx: std::sync::Mutex::new(Some(tx)),
            handle: std::sync::Mutex::new(Some(handle)),
        }
    }

    pub fn record(&self, entry: AuditEntry) {
        if let Some(tx) = self.tx.lock().expect("lock").as_ref() {
            let _ = tx.send(entry);
        }
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

async fn run(store: Arc<Store>, mut rx: mpsc::UnboundedReceiver<AuditEntry>) {
    while let Some(first) = rx.recv().await {
        let mut entries = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while entries.len() < 1000 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => entries.push(e),
                _ => break,
            }
        }
        match batch(&entries) {
            Ok(b) => {
                if let Err(e) = store
                    .append(
                        AUDIT,
                        Append {
                            batches: vec![b],
                            ..Append::default()
                        },
                    )
                    .await
                {
                    tracing::error!(%e, lost = entries.len(), "writing the audit log failed");
                }
            }
            Err(e) => tracing::error!(%e, "building the audit batch failed"),
        }
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
