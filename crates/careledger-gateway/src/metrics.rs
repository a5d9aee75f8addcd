//! `/metrics` in the OpenMetrics text format, through the Prometheus project's Rust client
//! (`prometheus-client`): counters, latency histograms (requests by route template, method
//! and status; commits), rows and batches by table and source, the deriver's lag, process
//! figures and build info. Every label takes values from a closed set (route templates,
//! methods, statuses, table names, source codes): no batch ids, tokens or paths.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableSource {
    table: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    table: String,
    source: String,
    outcome: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Process-wide metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ingest_batches: Counter,
    ingest_rows_accepted: Counter,
    ingest_rows_rejected: Counter,
    commits: Counter,
    commit_seconds: FloatCounter,
    queries: Counter,
    query_seconds: FloatCounter,
    cache_hits: Counter,
    cache_misses: Counter,
    not_modified: Counter,
    derive_cycles: Counter,
    derive_errors: Counter,
    derive_seconds: FloatCounter,
    derive_women: Counter,
    derive_lag: FloatGauge,
    /// Pushed-table commits not yet reflected in the derived tables.
    derive_pending_commits: Gauge,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    commit_latency: Histogram,
    ingested_batches: Family<TableSource, Counter>,
    ingested_rows: Family<RowLabels, Counter>,
    resident_bytes: FloatGauge,
    cpu_seconds: FloatCounter,
    /// The CPU time (f64 bits) already added to `cpu_seconds`.
    cpu_seconds_seen: AtomicU64,
    open_fds: Gauge,
    /// Woken after every data commit (the deriver waits on it).
    pub committed: tokio::sync::Notify,
    /// Since when (µs since the Unix epoch) a commit has been waiting for the deriver; 0: none.
    derive_behind_since: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            ingest_batches: Counter::default(),
            ingest_rows_accepted: Counter::default(),
            ingest_rows_rejected: Counter::default(),
            commits: Counter::default(),
            commit_seconds: FloatCounter::default(),
            queries: Counter::default(),
            query_seconds: FloatCounter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            not_modified: Counter::default(),
            derive_cycles: Counter::default(),
            derive_errors: Counter::default(),
            derive_seconds: FloatCounter::default(),
            derive_women: Counter::default(),
            derive_lag: FloatGauge::default(),
            derive_pending_commits: Gauge::default(),
            requests: Family::new_with_constructor(latency_histogram),
            commit_latency: latency_histogram(),
            ingested_batches: Family::default(),
            ingested_rows: Family::default(),
            resident_bytes: FloatGauge::default(),
            cpu_seconds: FloatCounter::default(),
            cpu_seconds_seen: AtomicU64::new(0f64.to_bits()),
            open_fds: Gauge::default(),
            committed: tokio::sync::Notify::new(),
            derive_behind_since: AtomicU64::new(0),
        };
        let r = &mut m.registry;
        // Counter names get their `_total` suffix from the encoder.
        r.register(
            "careledger_ingest_batches",
            "Batches acknowledged",
            m.ingest_batches.clone(),
        );
        r.register(
            "careledger_ingest_rows_accepted",
            "Rows stored",
            m.ingest_rows_accepted.clone(),
        );
        r.register(
            "careledger_ingest_rows_rejected",
            "Rows refused",
            m.ingest_rows_rejected.clone(),
        );
        r.register(
            "careledger_commits",
            "Delta commits of ingested data",
            m.commits.clone(),
        );
        r.register(
            "careledger_commit_seconds",
            "Time spent in data commits",
            m.commit_seconds.clone(),
        );
        r.register(
            "careledger_queries",
            "SQL queries and report runs",
            m.queries.clone(),
        );
        r.register(
            "careledger_query_seconds",
            "Time spent answering queries and reports",
            m.query_seconds.clone(),
        );
        r.register(
            "careledger_report_cache_hits",
            "Report answers served from the result cache",
            m.cache_hits.clone(),
        );
        r.register(
            "careledger_report_cache_misses",
            "Report answers computed",
            m.cache_misses.clone(),
        );
        r.register(
            "careledger_report_not_modified",
            "Report requests answered 304",
            m.not_modified.clone(),
        );
        r.register(
            "careledger_derive_cycles",
            "Deriver cycles completed (each rewrites the women its commits touched)",
            m.derive_cycles.clone(),
        );
        r.register(
            "careledger_derive_seconds",
            "Time spent in deriver cycles",
            m.derive_seconds.clone(),
        );
        r.register(
            "careledger_derive_women",
            "Women re-derived",
            m.derive_women.clone(),
        );
        r.register(
            "careledger_derive_errors",
            "Deriver cycles that failed (retried)",
            m.derive_errors.clone(),
        );
        r.register(
            "careledger_derive_lag_seconds",
            "How long the oldest commit not yet in the derived tables has waited (0: caught up)",
            m.derive_lag.clone(),
        );
        r.register(
            "careledger_derive_pending_commits",
            "Pushed-table commits not yet in the derived tables",
            m.derive_pending_commits.clone(),
        );
        r.register(
            "careledger_http_request_duration_seconds",
            "Time from a request to its response head, by route template, method and status",
            m.requests.clone(),
        );
        r.register(
            "careledger_commit_duration_seconds",
            "Delta commits of ingested data",
            m.commit_latency.clone(),
        );
        r.register(
            "careledger_ingested_batches",
            "Batches acknowledged, by table and source",
            m.ingested_batches.clone(),
        );
        r.register(
            "careledger_ingested_rows",
            "Rows acknowledged, by table, source and outcome (accepted or rejected)",
            m.ingested_rows.clone(),
        );
        r.register(
            "careledger_build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory",
            m.resident_bytes.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "User and system CPU time",
            m.cpu_seconds.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors",
            m.open_fds.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn ingest(&self, table: &str, source: &str, accepted: usize, rejected: usize) {
        let ts = TableSource {
            table: table.to_string(),
            source: source.to_string(),
        };
        self.ingested_batches.get_or_create(&ts).inc();
        for (outcome, n) in [("accepted", accepted), ("rejected", rejected)] {
            self.ingested_rows
                .get_or_create(&RowLabels {
                    table: ts.table.clone(),
                    source: ts.source.clone(),
                    outcome,
                })
                .inc_by(n as u64);
        }
        self.ingest_batches.inc();
        self.ingest_rows_accepted.inc_by(accepted as u64);
        self.ingest_rows_rejected.inc_by(rejected as u64);
    }

    /// One HTTP request answered (the time to its response head; a streamed body may go on).
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .observe(took.as_secs_f64());
    }

    pub fn commit(&self, took: Duration) {
        self.commit_latency.observe(took.as_secs_f64());
        self.commits.inc();
        self.commit_seconds.inc_by(took.as_secs_f64());
        let now = chrono::Utc::now().timestamp_micros().max(1) as u64;
        let _ = self
            .derive_behind_since
            .compare_exchange(0, now, Relaxed, Relaxed);
        self.committed.notify_one();
    }

    /// One deriver cycle done.
    pub fn derive_cycle(&self, took: Duration, women: usize) {
        self.derive_cycles.inc();
        self.derive_seconds.inc_by(took.as_secs_f64());
        self.derive_women.inc_by(women as u64);
    }

    pub fn derive_error(&self) {
        self.derive_errors.inc();
    }

    /// What the deriver has left: commits not yet reflected (0: caught up).
    pub fn derive_pending(&self, commits: u64) {
        self.derive_pending_commits
            .set(i64::try_from(commits).unwrap_or(i64::MAX));
        if commits == 0 {
            self.derive_behind_since.store(0, Relaxed);
        }
    }

    pub fn query(&self, took: Duration) {
        self.queries.inc();
        self.query_seconds.inc_by(took.as_secs_f64());
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn not_modified(&self) {
        self.not_modified.inc();
    }

    /// The OpenMetrics exposition text ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let since = self.derive_behind_since.load(Relaxed);
        self.derive_lag.set(if since == 0 {
            0.0
        } else {
            (chrono::Utc::now().timestamp_micros() as f64 - since as f64).max(0.0) / 1e6
        });
        self.sample_process();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The process's resident memory, CPU time and open files (Linux `/proc`; left at 0
    /// elsewhere).
    fn sample_process(&self) {
        let page = 4096.0;
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(rss) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        {
            self.resident_bytes.set(rss * page);
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
                let now = (u + s) / ticks;
                let seen = f64::from_bits(self.cpu_seconds_seen.swap(now.to_bits(), Relaxed));
                if now > seen {
                    self.cpu_seconds.inc_by(now - seen);
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
    }
}
