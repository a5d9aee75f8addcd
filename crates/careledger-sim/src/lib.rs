//! careledger-sim: the simulated departments. Women in real rural villages of Guangxi live
//! their lives (husbands leaving after the Spring Festival and coming home before the next,
//! short visits, divorces, deaths, moves), and the departments report them in the wire format
//! of `schemas/v1/tables`, in weekly-or-slower batches, with realistic lags, corrections,
//! retractions, retries and clerks' mistakes.
//!
//! Deterministic for a seed: each woman's life is drawn from `StdRng::seed_from_u64`, seeded
//! from the run's seed and her index, and her clerks' slips from a counter-based hash of the
//! same (so that the share of mistakes never changes the lives). The work is one pass over the
//! women, linear in their number; the only run-wide state is the set of ID numbers handed out
//! (kept unique) and the compact rows waiting for their batch.
//!
//! Nothing is dated after `min(config.end, today)`: a run whose end lies in the future is cut
//! at today (and then depends on the day it runs).

mod calendar;
mod life;
mod report;
mod wire;
mod world;

use careledger_model::Table;
use chrono::NaiveDate;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

pub use wire::MAX_BATCH_ROWS;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    /// Number of women (ages 20-65 at the start).
    pub women: usize,
    /// First day of the simulated period (the departments' first push is in its first week).
    pub start: NaiveDate,
    /// Last day anything is dated or pushed.
    pub end: NaiveDate,
    /// Region code prefixes of the counties to populate, e.g. `["450123", "450125"]`;
    /// any prefix length works (`"4501"` = a city). Empty = all of Guangxi.
    pub county_prefixes: Vec<String>,
    /// Share of rows a clerk gets wrong in a way the gateway must reject.
    pub invalid_share: f64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 7,
            women: 2000,
            start: NaiveDate::from_ymd_opt(2023, 1, 1).expect("valid date"),
            end: NaiveDate::from_ymd_opt(2025, 1, 1).expect("valid date"),
            county_prefixes: Vec::new(),
            invalid_share: 0.01,
        }
    }
}

/// One push of one department to one table.
#[derive(Debug, Clone, PartialEq)]
pub struct SimBatch {
    pub table: Table,
    /// The pushing source (its token's source); rows do not carry it.
    pub source: String,
    /// The day the department pushes it: no row is dated after it (except approvals'
    /// `valid_to`, which may lie ahead, never after the run's end).
    pub day: NaiveDate,
    /// Rows in the wire format of `schemas/v1/tables/<table>.json`.
    pub rows: Vec<Value>,
    /// Unique per batch: `sim{seed}-{source}-{table}-{day}-{n}`.
    pub idempotency_key: String,
    /// The client retries this batch with the same key (the gateway must not store it twice).
    pub send_twice: bool,
}

/// Simulates the run: every batch, sorted by (day, table, source), the parts of a split
/// batch in order.
///
/// # Panics
/// When no rural village matches `config.county_prefixes`.
pub fn simulate(config: &SimConfig) -> Vec<SimBatch> {
    let mut out = Vec::new();
    simulate_each(config, |batch| out.push(batch));
    out
}

/// Like [`simulate`], handing each batch to `each` as soon as it is rendered, so that only
/// the compact rows, never all the JSON, are held at once (for millions of women).
///
/// # Panics
/// When no rural village matches `config.county_prefixes`.
pub fn simulate_each(config: &SimConfig, mut each: impl FnMut(SimBatch)) {
    let today = chrono::Utc::now().date_naive();
    let Some(world) = world::World::new(config, today) else {
        return;
    };
    let mut sink = wire::Sink::new(&world, config.invalid_share, config.women);
    for i in 0..config.women {
        let seed = calendar::mix(config.seed, i as u64);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut clerk = wire::Clerk::new(calendar::mix(seed, 0xC1E4));
        let person = life::live(&world, &mut rng, &mut sink);
        report::report(&world, &person, &mut rng, &mut clerk, &mut sink);
    }
    sink.finish(&mut each);
}

/// Rows as NDJSON: one JSON object per line, each line ending in `\n`.
pub fn ndjson(rows: &[Value]) -> String {
    let mut out = String::with_capacity(rows.len() * 256);
    for row in rows {
        out.push_str(&row.to_string());
        out.push('\n');
    }
    out
}
