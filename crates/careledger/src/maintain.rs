//! `careledger maintain`: compacts small files, writes checkpoints and vacuums replaced files,
//! table by table, with progress. Safe while a server is running on the same store: compaction
//! is a Delta commit that concurrent appends do not conflict with, and vacuum keeps every file
//! a version inside the retention window still needs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use careledger_store::{Store, all_tables};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, clap::Args)]
pub(crate) struct MaintainArgs {
    /// Store location: a directory or file:///abs/dir.
    #[arg(long, env = "CARELEDGER_STORE", default_value = "./careledger-data")]
    store: String,
    /// Only these steps (comma-separated: compact, checkpoint, vacuum). All three by default.
    #[arg(long, default_value = "compact,checkpoint,vacuum")]
    steps: String,
    /// Target size of compacted files, in MiB.
    #[arg(long, default_value_t = 128)]
    target_mib: u64,
    /// Vacuum keeps files that versions of the last this many hours still need.
    #[arg(long, default_value_t = 168)]
    retain_hours: u64,
    /// Allow a retention shorter than the tables' own (7 days): readers of older versions
    /// may then fail.
    #[arg(long)]
    force: bool,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) async fn run(args: MaintainArgs) -> Result<()> {
    let steps: Vec<&str> = args.steps.split(',').map(str::trim).collect();
    for s in &steps {
        if !matches!(*s, "compact" | "checkpoint" | "vacuum") {
            anyhow::bail!("--steps: unknown step {s:?}; use compact, checkpoint, vacuum");
        }
    }
    let local = args.store.strip_prefix("file://").unwrap_or(&args.store);
    if !args.store.contains("://") || args.store.starts_with("file://") {
        let women = std::path::Path::new(local).join("women").join("_delta_log");
        if !women.is_dir() {
            anyhow::bail!("no careledger store at {}", args.store);
        }
    }
    let store = Store::open(&args.store)
        .await
        .with_context(|| format!("opening store {}", args.store))?;
    let tables = all_tables();
    let bar = ProgressBar::new((tables.len() * steps.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("  {bar:30} {pos}/{len} steps  {msg}").expect("template"),
    );
    let started = Instant::now();
    let mut lines = Vec::new();
    for (name, _) in &tables {
        let before = store.file_stats(name).await?;
        let mut line = format!(
            "{name:<30} {:>6} files {:>10}",
            before.files,
            mib(before.bytes)
        );
        for step in &steps {
            bar.set_message(format!("{step} {name}"));
            match *step {
                "compact" => {
                    let c = store.compact(name, args.target_mib * 1024 * 1024).await?;
                    line.push_str(&format!(
                        "  compact: {} → {} files",
                        c.files_removed, c.files_added
                    ));
                }
                "checkpoint" => {
                    let v = store.checkpoint(name).await?;
                    line.push_str(&format!("  checkpoint at v{v}"));
                }
                "vacuum" => {
                    let v = store
                        .vacuum(
                            name,
                            Duration::from_secs(args.retain_hours * 3600),
                            args.force,
                        )
                        .await
                        .with_context(|| format!("vacuuming {name}"))?;
                    line.push_str(&format!("  vacuum: {} files deleted", v.files_deleted));
                }
                _ => unreachable!("checked above"),
            }
            bar.inc(1);
        }
        let after = store.file_stats(name).await?;
        line.push_str(&format!("  now {} files {}", after.files, mib(after.bytes)));
        lines.push(line);
    }
    bar.finish_and_clear();
    for l in lines {
        println!("{l}");
    }
    println!(
        "maintained {} tables in {:.1} s",
        tables.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
