//! The receipt a sender gets for a batch, and the stable names of the Delta transactions that
//! make its idempotency key and sequence number durable.

use careledger_model::{MAX_MESSAGE_CHARS, RowError, redact_ids};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// At most this many row errors are listed in a receipt (`error_count` has the total).
pub const MAX_RECEIPT_ERRORS: usize = 100;

/// A reported gap in a source's `Batch-Seq`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SeqGap {
    pub expected: i64,
    pub got: i64,
}

/// What the gateway answers for a batch (and records in the `batches` table).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    pub batch_id: String,
    pub table: String,
    pub source: String,
    pub format: String,
    pub atomic: bool,
    pub dry_run: bool,
    pub duplicate: bool,
    pub rows_received: usize,
    pub rows_accepted: usize,
    pub rows_rejected: usize,
    pub error_count: usize,
    pub errors: Vec<RowError>,
    pub idempotency_key: Option<String>,
    /// The stored receipt's `idempotency_key` had an ID-like run masked ([`Receipt::redacted`]),
    /// so it no longer matches the key the sender used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotency_key_redacted: bool,
    pub batch_seq: Option<i64>,
    pub seq_gap: Option<SeqGap>,
    /// Delta version of the table commit that holds the rows.
    pub table_version: Option<u64>,
    /// How many batches shared that commit (group commit).
    pub commit_group: Option<usize>,
    pub received_at: DateTime<Utc>,
    pub committed_at: Option<DateTime<Utc>>,
}

impl Receipt {
    /// The receipt as it is stored (commit metadata, the `batches` table): every text the sender
    /// chose (the idempotency key, the row errors' messages) passes [`redact_ids`], messages
    /// cut to [`MAX_MESSAGE_CHARS`]. Senders get the receipt as it was.
    pub fn redacted(&self) -> Receipt {
        let mut r = self.clone();
        if let Some(key) = &self.idempotency_key
            && let std::borrow::Cow::Owned(masked) = redact_ids(key)
        {
            r.idempotency_key = Some(masked);
            r.idempotency_key_redacted = true;
        }
        for e in &mut r.errors {
            let m = redact_ids(&e.message);
            let m = match m.char_indices().nth(MAX_MESSAGE_CHARS) {
                None => m.into_owned(),
                Some((i, _)) => format!("{}…", &m[..i]),
            };
            e.message = m;
        }
        r
    }
}

/// Commit-metadata key under which a data commit lists its receipts.
pub const RECEIPTS_KEY: &str = "careledger.receipts";

/// Delta `txn` app id recording a source's latest `Batch-Seq`.
pub fn seq_app_id(source: &str) -> String {
    format!("careledger.seq.{source}")
}

/// Delta `txn` app id recording that a source used an idempotency key (hashed: keys are the
/// sender's text and may be long).
pub fn idem_app_id(source: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("careledger.idem.{source}.{}", hex::encode(&digest[..12]))
}
