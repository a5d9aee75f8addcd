//! `careledger derive`: brings the derived ledger of a local store up to date, rebuilds it
//! from scratch (`--rebuild`), or rewrites it without dead rows (`--compact`), with no server
//! running. A running server derives by itself; the two are kept apart by [`DeriverLock`].

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use careledger_model::status::RuleParams;
use careledger_store::Store;
use careledger_warehouse::{DerivedState, Deriver};

#[derive(Debug, clap::Args)]
pub(crate) struct DeriveArgs {
    /// Store location: a directory or file:///abs/dir.
    #[arg(long, env = "CARELEDGER_STORE", default_value = "./careledger-data")]
    store: String,
    /// Derive every woman again (a new floor), not only the commits since the watermark.
    #[arg(long)]
    rebuild: bool,
    /// Afterwards, rewrite the derived tables without rows that later cycles replaced.
    #[arg(long)]
    compact: bool,
    /// A rebuild derives the women in buckets of about this many MiB of stored Parquet of the
    /// pushed tables: one bucket's rows, and their derivation, are in memory at once.
    #[arg(long, value_name = "MIB", default_value_t = careledger_warehouse::deriver::REBUILD_BUCKET_BYTES >> 20)]
    rebuild_bucket_mib: u64,
}

/// An exclusive lock on a local store's deriver (`derived/.deriver.lock`), held by a server
/// for its lifetime and by `careledger derive` while it runs: two processes never derive one
/// store at once. (Stores on S3 have no such lock: run one server per bucket prefix.)
#[derive(Debug)]
pub(crate) struct DeriverLock {
    _file: Option<std::fs::File>,
}

impl DeriverLock {
    pub(crate) fn take(store: &Store) -> Result<DeriverLock> {
        let Some(dir) = store.local_dir() else {
            return Ok(DeriverLock { _file: None });
        };
        let path = dir.join("derived").join(".deriver.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        use rustix::fs::{FlockOperation, flock};
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            bail!(
                "another process derives the store at {} (a running `careledger serve`?); \
                 it keeps the ledger up to date by itself",
                dir.display()
            );
        }
        Ok(DeriverLock { _file: Some(file) })
    }
}

pub(crate) async fn run(args: DeriveArgs) -> Result<()> {
    let local = args.store.strip_prefix("file://").unwrap_or(&args.store);
    if (!args.store.contains("://") || args.store.starts_with("file://"))
        && !std::path::Path::new(local)
            .join("women")
            .join("_delta_log")
            .is_dir()
    {
        bail!("no careledger store at {}", args.store);
    }
    let store = Arc::new(
        Store::open(&args.store)
            .await
            .with_context(|| format!("opening store {}", args.store))?,
    );
    let _lock = DeriverLock::take(&store)?;
    let deriver = Deriver::new(store.clone(), RuleParams::default())
        .with_rebuild_bucket_bytes(args.rebuild_bucket_mib.max(1) << 20);
    let started = Instant::now();
    let cycles = if args.rebuild {
        vec![deriver.rebuild().await?]
    } else {
        deriver.catch_up().await?
    };
    for c in &cycles {
        println!(
            "cycle {}{}: {} women, {} rows written (read {:.1} s, rule {:.1} s, write {:.1} s)",
            c.cycle,
            if c.rebuild { " (full rebuild)" } else { "" },
            c.women.max(c.women_current),
            c.rows_written,
            c.read.as_secs_f64(),
            c.derive.as_secs_f64(),
            c.write.as_secs_f64()
        );
    }
    if args.compact {
        let dropped = deriver.compact().await?;
        println!("compacted: {dropped} replaced rows dropped");
    }
    let state = DerivedState::read(&store).await?;
    println!(
        "derived ledger at cycle {}, reflecting commits up to {} ({:.1} s)",
        state.cycle,
        state
            .reflects_at()
            .map_or_else(|| "none".to_string(), |t| t.to_rfc3339()),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
