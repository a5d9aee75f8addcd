//! `/metrics` in the Prometheus text format: counters, latency histograms (requests by route,
//! method and status; commits), rows and batches by table and source, the deriver's lag,
//! process figures and build info.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A latency histogram (cumulative buckets when rendered).
#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i];
            out.push_str(&format!(
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}\n",
            self.count, self.sum, self.count
        ));
    }
}

/// A label value with `\`, `"` and line breaks escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

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
    /// (route, method, status) → request latency.
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
    commit_latency: Mutex<Histogram>,
    /// (table, source) → [batches, rows accepted, rows rejected].
    ingested: Mutex<BTreeMap<(String, String), [u64; 3]>>,
}

impl Metrics {
    pub fn ingest(&self, table: &str, source: &str, accepted: usize, rejected: usize) {
        {
            let mut m = self.ingested.lock().expect("lock");
            let e = m
                .entry((table.to_string(), source.to_string()))
                .or_default();
            e[0] += 1;
            e[1] += accepted as u64;
            e[2] += rejected as u64;
        }
        self.ingest_batches.fetch_add(1, Relaxed);
        self.ingest_rows_accepted
            .fetch_add(accepted as u64, Relaxed);
        self.ingest_rows_rejected
            .fetch_add(rejected as u64, Relaxed);
    }

    /// One HTTP request answered (the time to its response head; a streamed body may go on).
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .lock()
            .expect("lock")
            .entry((route.to_string(), method.to_string(), status))
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn commit(&self, took: Duration) {
        self.commit_latency
            .lock()
            .expect("lock")
            .observe(took.as_secs_f64());
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
        out.push_str("# HELP careledger_http_request_duration_seconds Time from a request to its response head, by route template, method and status.\n# TYPE careledger_http_request_duration_seconds histogram\n");
        for ((route, method, status), h) in self.requests.lock().expect("lock").iter() {
            h.render(
                &mut out,
                "careledger_http_request_duration_seconds",
                &format!(
                    "route=\"{}\",method=\"{}\",status=\"{status}\"",
                    label(route),
                    label(method)
                ),
            );
        }
        out.push_str("# HELP careledger_commit_duration_seconds Delta commits of ingested data.\n# TYPE careledger_commit_duration_seconds histogram\n");
        self.commit_latency.lock().expect("lock").render(
            &mut out,
            "careledger_commit_duration_seconds",
            "",
        );
        out.push_str("# HELP careledger_ingested_batches_total Batches acknowledged, by table and source.\n# TYPE careledger_ingested_batches_total counter\n");
        let ingested = self.ingested.lock().expect("lock").clone();
        for ((table, source), v) in &ingested {
            out.push_str(&format!(
                "careledger_ingested_batches_total{{table=\"{}\",source=\"{}\"}} {}\n",
                label(table),
                label(source),
                v[0]
            ));
        }
        out.push_str("# HELP careledger_ingested_rows_total Rows acknowledged, by table, source and outcome (accepted or rejected).\n# TYPE careledger_ingested_rows_total counter\n");
        for ((table, source), v) in &ingested {
            for (outcome, n) in [("accepted", v[1]), ("rejected", v[2])] {
                out.push_str(&format!(
                    "careledger_ingested_rows_total{{table=\"{}\",source=\"{}\",outcome=\"{outcome}\"}} {n}\n",
                    label(table),
                    label(source)
                ));
            }
        }
        out.push_str(&format!(
            "# HELP careledger_build_info The running build.\n# TYPE careledger_build_info gauge\ncareledger_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        ));
        out.push_str(&process_metrics());
        out
    }
}

/// The process's resident memory, CPU time, open files and start time (Linux `/proc`; empty
/// elsewhere).
fn process_metrics() -> String {
    let mut out = String::new();
    let page = 4096.0;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(rss) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
    {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
            rss * page
        ));
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r)
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command: utime is field 14 and stime 15 (1-based over the whole line).
        let ticks = 100.0;
        if let (Some(u), Some(s)) = (
            f.get(11).and_then(|v| v.parse::<f64>().ok()),
            f.get(12).and_then(|v| v.parse::<f64>().ok()),
        ) {
            out.push_str(&format!(
                "# HELP process_cpu_seconds_total User and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n",
                (u + s) / ticks
            ));
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push_str(&format!(
            "# HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}\n",
            fds.count()
        ));
    }
    out
}
