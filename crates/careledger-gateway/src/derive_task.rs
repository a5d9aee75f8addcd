//! The server's deriver task: beside the query engine, never inside a request. It wakes after
//! every data commit (and every second, for commits of other processes), runs cycles of
//! [`careledger_warehouse::Deriver`] until the derived tables reflect every commit, and
//! publishes what they reflect, so that a request can wait (bounded) for a batch it was
//! acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use careledger_model::Table;
use careledger_store::Store;
use careledger_warehouse::{DerivedState, Deriver};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Handle of the running deriver task; dropping it stops the task.
#[derive(Debug)]
pub struct DeriverTask {
    state: watch::Receiver<DerivedState>,
    stop: Arc<Stop>,
}

#[derive(Debug, Default)]
struct Stop {
    flag: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Drop for DeriverTask {
    fn drop(&mut self) {
        self.stop.flag.store(true, Ordering::Relaxed);
        self.stop.wake.notify_one();
    }
}

impl DeriverTask {
    /// Starts the task on `runtime` (the server's background runtime: its scans and decoding
    /// stay off the threads that serve HTTP and queries, at a lower priority; the rule itself
    /// runs on its blocking threads).
    ///
    /// With `active` false the task runs no cycle: another process derives this store, and the
    /// task only follows what the derived tables reflect (every second), for `wait_for`.
    pub fn start(
        deriver: Arc<Deriver>,
        metrics: Arc<Metrics>,
        runtime: &tokio::runtime::Handle,
        active: bool,
    ) -> DeriverTask {
        let (tx, rx) = watch::channel(DerivedState::default());
        let stop = Arc::new(Stop::default());
        let task_stop = stop.clone();
        runtime.spawn(async move {
            let store = deriver.store().clone();
            loop {
                if task_stop.flag.load(Ordering::Relaxed) {
                    return;
                }
                let mut failed = false;
                loop {
                    if !active {
                        break;
                    }
                    let started = Instant::now();
                    match deriver.run_once().await {
                        Ok(Some(stats)) => {
                            metrics.derive_cycle(started.elapsed(), stats.women);
                            if stats.rebuild {
                                check_person_ids(&deriver).await;
                            }
                            tracing::debug!(
                                cycle = stats.cycle,
                                women = stats.women,
                                rows = stats.rows_written,
                                ms = started.elapsed().as_millis() as u64,
                                read_ms = stats.read.as_millis() as u64,
                                rule_ms = stats.derive.as_millis() as u64,
                                write_ms = stats.write.as_millis() as u64,
                                "derived"
                            );
                            if let Ok(s) = DerivedState::read(&store).await {
                                let _ = tx.send(s);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            metrics.derive_error();
                            tracing::error!(error = %e, "deriver cycle failed; retrying");
                            failed = true;
                            break;
                        }
                    }
                    if task_stop.flag.load(Ordering::Relaxed) {
                        return;
                    }
                }
                if let Ok(s) = DerivedState::read(&store).await {
                    metrics.derive_pending(pending(&store, &s).await);
                    // Published before a compaction, which may take a while and changes no
                    // answer.
                    let _ = tx.send(s.clone());
                    if active && !failed && Deriver::needs_compaction(&s) {
                        let started = Instant::now();
                        match deriver.compact().await {
                            Ok(dropped) => {
                                tracing::info!(
                                    dropped,
                                    ms = started.elapsed().as_millis() as u64,
                                    "derived tables compacted"
                                );
                                check_person_ids(&deriver).await;
                            }
                            Err(e) => {
                                metrics.derive_error();
                                tracing::error!(error = %e, "compacting the derived tables failed");
                            }
                        }
                    }
                }
                let pause = if failed {
                    Duration::from_secs(2)
                } else {
                    Duration::from_secs(1)
                };
                tokio::select! {
                    _ = metrics.committed.notified() => {}
                    _ = task_stop.wake.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        });
        DeriverTask { state: rx, stop }
    }

    /// What the derived tables reflect now.
    pub fn state(&self) -> DerivedState {
        self.state.borrow().clone()
    }

    /// Waits until the derived tables reflect version `version` of every `(table, version)`,
    /// at most `bound`; whether they do.
    pub async fn wait_for(&self, targets: &[(String, u64)], bound: Duration) -> bool {
        let mut rx = self.state.clone();
        let done = |s: &DerivedState| targets.iter().all(|(t, v)| s.covers(t, *v));
        let wait = async {
            loop {
                if done(&rx.borrow_and_update()) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(bound, wait).await.unwrap_or(false)
    }
}

/// Commits of the pushed tables not yet reflected.
async fn pending(store: &Store, state: &DerivedState) -> u64 {
    let mut n = 0;
    for t in Table::ALL {
        if let Ok(table) = store.table(t.as_str()).await {
            let v = table.version().unwrap_or(0);
            n += v.saturating_sub(state.sources.get(t.as_str()).copied().unwrap_or(0));
        }
    }
    n
}

/// Logs an error when two women of the derived ledger share a `person_id` (the reports would
/// count them as one): checked after every rebuild and compaction.
async fn check_person_ids(deriver: &Deriver) {
    match deriver.person_id_collisions().await {
        Ok(0) => {}
        Ok(n) => tracing::error!(
            person_ids = n,
            "women share a person_id (the first 64 bits of their person_key): reports count \
             each such pair as one woman"
        ),
        Err(e) => tracing::warn!(error = %e, "checking person_id collisions failed"),
    }
}
