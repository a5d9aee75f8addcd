//! Background compaction: every `interval`, each pushed table and `batches`, `rejects` and
//! `audit` whose data files pass `max_files` is compacted (Delta OPTIMIZE into files of about
//! `target_bytes`), so that file counts stay bounded without anyone running `maintain`.
//!
//! It never blocks a push or a reader: appends are blind appends that an OPTIMIZE commit does
//! not conflict with, and readers keep the table they have until the rewrite is committed
//! (`Store::compact`). Two compactions of one table never overlap, in this process or (on a
//! local store) in another (`Store::compact` holds a lock per table). Rows, receipts (in the
//! commits' metadata) and `known_at` answers (by `ingested_at`) are unchanged by it.

use std::sync::Arc;
use std::time::Duration;

use careledger_store::{AUDIT, BATCHES, REJECTS, Store};
use tokio::task::JoinHandle;

/// Background compaction settings.
#[derive(Debug, Clone, Copy)]
pub struct CompactionConfig {
    /// Off: file counts grow until `careledger maintain` runs.
    pub enabled: bool,
    /// A table with more data files than this is compacted.
    pub max_files: usize,
    /// How often the file counts are looked at.
    pub interval: Duration,
    /// The size of the files compaction writes.
    pub target_bytes: u64,
}

impl Default for CompactionConfig {
    fn default() -> CompactionConfig {
        CompactionConfig {
            enabled: false,
            max_files: 64,
            // At 30 s, 16 senders loading 1M women (25 s) left 489 files in `batches`.
            interval: Duration::from_secs(5),
            target_bytes: 128 << 20,
        }
    }
}

/// The tables the compactor looks after (the derived ones are the deriver's).
fn tables() -> Vec<&'static str> {
    careledger_model::Table::ALL
        .iter()
        .map(|t| t.as_str())
        .chain([BATCHES, REJECTS, AUDIT])
        .collect()
}

/// Starts the compactor on `runtime` (nothing when the config is off).
pub fn start(
    store: Arc<Store>,
    config: CompactionConfig,
    runtime: &tokio::runtime::Handle,
) -> Option<JoinHandle<()>> {
    if !config.enabled {
        return None;
    }
    Some(runtime.spawn(async move {
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for name in tables() {
                let files = match store.file_count(name).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(%e, table = name, "counting files for compaction failed");
                        continue;
                    }
                };
                if files <= config.max_files {
                    continue;
                }
                // One bin at a time: ingest and the deriver need the cores, and each bin
                // rewritten at once holds its rows in flight.
                match store.compact_with(name, config.target_bytes, 1).await {
                    Ok(s) => tracing::info!(
                        table = name,
                        files_before = files,
                        files_removed = s.files_removed,
                        files_added = s.files_added,
                        version = s.version,
                        "compacted in the background"
                    ),
                    Err(e) => tracing::warn!(%e, table = name, "background compaction failed"),
                }
            }
        }
    }))
}
