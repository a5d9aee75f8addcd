//! Counters for `/metrics` (Prometheus text format).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    ingest_batches: AtomicU64,
    ingest_rows_accepted: AtomicU64,
    ingest_rows_rejected: AtomicU64,
    commits: AtomicU64,
    commit_micros: AtomicU64,
    queries: AtomicU64,
    query_micros: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    not_modified: AtomicU64,
    /// Woken after every data commit (the deriver waits on it).
    pub committed: tokio::sync::Notify,
    derive_cycles: AtomicU64,
    derive_errors: AtomicU64,
    derive_micros: AtomicU64,
    derive_women: AtomicU64,
    /// Pushed-table commits not yet reflected in the derived tables.
    derive_pending_commits: AtomicU64,
    /// Since when (µs since the Unix epoch) a commit has been waiting for the deriver; 0: none.
    derive_behind_since: AtomicU64,
}

impl Metrics {
    pub fn ingest(&self, accepted: usize, rejected: usize) {
        self.ingest_batches.fetch_add(1, Relaxed);
        self.ingest_rows_accepted
            .fetch_add(accepted as u64, Relaxed);
        self.ingest_rows_rejected
            .fetch_add(rejected as u64, Relaxed);
    }

    pub fn commit(&self, took: Duration) {
        self.commits.fetch_add(1, Relaxed);
        self.commit_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        let now = chrono::Utc::now().timestamp_micros().max(1) as u64;
        let _ = self
            .derive_behind_since
            .compare_exchange(0, now, Relaxed, Relaxed);
        self.committed.notify_one();
    }

    /// One deriver cycle done.
    pub fn derive_cycle(&self, took: Duration, women: usize) {
        self.derive_cycles.fetch_add(1, Relaxed);
        self.derive_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        self.derive_women.fetch_add(women as u64, Relaxed);
    }

    pub fn derive_error(&self) {
        self.derive_errors.fetch_add(1, Relaxed);
    }

    /// What the deriver has left: commits not yet reflected (0: caught up).
    pub fn derive_pending(&self, commits: u64) {
        self.derive_pending_commits.store(commits, Relaxed);
        if commits == 0 {
            self.derive_behind_since.store(0, Relaxed);
        }
    }

    pub fn query(&self, took: Duration) {
        self.queries.fetch_add(1, Relaxed);
        self.query_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Relaxed);
    }

    pub fn not_modified(&self) {
        self.not_modified.fetch_add(1, Relaxed);
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let secs = |m: &AtomicU64| m.load(Relaxed) as f64 / 1e6;
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        };
        counter(
            "careledger_ingest_batches_total",
            "Batches acknowledged.",
            self.ingest_batches.load(Relaxed).to_string(),
        );
        counter(
            "careledger_ingest_rows_accepted_total",
            "Rows stored.",
            self.ingest_rows_accepted.load(Relaxed).to_string(),
        );
        counter(
            "careledger_ingest_rows_rejected_total",
            "Rows refused.",
            self.ingest_rows_rejected.load(Relaxed).to_string(),
        );
        counter(
            "careledger_commits_total",
            "Delta commits of ingested data.",
            self.commits.load(Relaxed).to_string(),
        );
        counter(
            "careledger_commit_seconds_total",
            "Time spent in data commits.",
            secs(&self.commit_micros).to_string(),
        );
        counter(
            "careledger_queries_total",
            "SQL queries and report runs.",
            self.queries.load(Relaxed).to_string(),
        );
        counter(
            "careledger_query_seconds_total",
            "Time spent answering queries and reports.",
            secs(&self.query_micros).to_string(),
        );
        counter(
            "careledger_report_cache_hits_total",
            "Report answers served from the result cache.",
            self.cache_hits.load(Relaxed).to_string(),
        );
        counter(
            "careledger_report_cache_misses_total",
            "Report answers computed.",
            self.cache_misses.load(Relaxed).to_string(),
        );
        counter(
            "careledger_report_not_modified_total",
            "Report requests answered 304.",
            self.not_modified.load(Relaxed).to_string(),
        );
        counter(
            "careledger_derive_cycles_total",
            "Deriver cycles completed (each rewrites the women its commits touched).",
            self.derive_cycles.load(Relaxed).to_string(),
        );
        counter(
            "careledger_derive_seconds_total",
            "Time spent in deriver cycles.",
            secs(&self.derive_micros).to_string(),
        );
        counter(
            "careledger_derive_women_total",
            "Women re-derived.",
            self.derive_women.load(Relaxed).to_string(),
        );
        counter(
            "careledger_derive_errors_total",
            "Deriver cycles that failed (retried).",
            self.derive_errors.load(Relaxed).to_string(),
        );
        let since = self.derive_behind_since.load(Relaxed);
        let lag = if since == 0 {
            0.0
        } else {
            (chrono::Utc::now().timestamp_micros() as f64 - since as f64).max(0.0) / 1e6
        };
        out.push_str(&format!(
            "# HELP careledger_derive_lag_seconds How long the oldest commit not yet in the derived tables has waited (0: caught up).\n\
             # TYPE careledger_derive_lag_seconds gauge\ncareledger_derive_lag_seconds {lag}\n\
             # HELP careledger_derive_pending_commits Pushed-table commits not yet in the derived tables.\n\
             # TYPE careledger_derive_pending_commits gauge\ncareledger_derive_pending_commits {}\n",
            self.derive_pending_commits.load(Relaxed)
        ));
        out
    }
}
