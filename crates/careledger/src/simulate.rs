//! `careledger simulate`: the simulated departments' rows written to files,
//! `<out>/<source>/<table>.ndjson` (in push order, invalid rows included; rows carry no
//! `source`: the pushing token gives it), for `push`, the load script and benchmarks.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use careledger_sim::{SimConfig, simulate_each};

/// What to simulate (shared by `demo` and `simulate`).
#[derive(Debug, clap::Args)]
pub(crate) struct SimArgs {
    /// Women simulated (the departments' records follow from them).
    #[arg(long, default_value_t = 2000)]
    women: usize,
    /// Seed of the simulation (the same seed gives the same history).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// County code prefixes to simulate (comma-separated; empty = all of Guangxi).
    #[arg(long, default_value = "")]
    counties: String,
}

impl SimArgs {
    pub(crate) fn config(&self) -> SimConfig {
        SimConfig {
            seed: self.seed,
            women: self.women,
            county_prefixes: self
                .counties
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            ..SimConfig::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Directory for <source>/<table>.ndjson files (created).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(args: SimulateArgs) -> Result<()> {
    let config = args.sim.config();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut files: BTreeMap<String, std::io::BufWriter<std::fs::File>> = BTreeMap::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    // Batch by batch: holding every batch's JSON at once does not fit at a million women.
    let mut failure: Option<anyhow::Error> = None;
    simulate_each(&config, |batch| {
        if failure.is_some() {
            return;
        }
        let table = format!("{}/{}.ndjson", batch.source, batch.table.as_str());
        let written = (|| -> Result<()> {
            if !files.contains_key(&table) {
                std::fs::create_dir_all(args.out.join(&batch.source))?;
                let path = args.out.join(&table);
                let f = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                files.insert(table.clone(), std::io::BufWriter::new(f));
            }
            let w = files.get_mut(&table).expect("just inserted");
            for row in &batch.rows {
                serde_json::to_writer(&mut *w, row)?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => *counts.entry(table).or_default() += batch.rows.len(),
            Err(e) => failure = Some(e),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    for (table, mut w) in files {
        w.flush()?;
        println!(
            "{}: {} rows",
            args.out.join(&table).display(),
            counts[&table]
        );
    }
    Ok(())
}
