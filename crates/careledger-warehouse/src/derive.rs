//! The derived rows of one woman: the status rule applied to her current records.
//!
//! - `people`: her `women` record (the most recently ingested one, when several sources have
//!   one).
//! - `status_episodes`: her episodes in the ledger (the model's rule).
//! - `residence`: which village (or none: moved out) on which days.
//! - `ledger_runs`: for each level (province … village), the maximal pieces of an episode spent
//!   in one region at that level. A move across a region's border inside an episode ends a run
//!   there (`transfer_out`) and starts one in the new region (`transfer_in`); at province level
//!   every episode is one run. Stock, entries, exits and balance all count runs, so the balance
//!   identity holds at every level by construction.
//!
//! The deriver ([`crate::deriver`]) calls [`derive_woman`] for each woman a commit touched, at
//! each instant her records changed, and stores the rows.

use std::collections::HashMap;

use careledger_model::status::{LifeEvent, RuleParams, Woman, derive_episodes, residence_history};
use careledger_model::{RegionLevel, epoch_days as days, regions};
use chrono::NaiveDate;

/// Her `women` record as the rule reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PersonRec {
    pub region: Option<String>,
    pub marital: Option<String>,
    pub ethnicity: Option<String>,
    pub birth: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EpisodeRow {
    pub no: i32,
    pub start: i32,
    pub end: Option<i32>,
    pub entry: &'static str,
    pub exit: Option<&'static str>,
    pub region_at_start: Option<String>,
    pub region_at_end: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResidenceRow {
    pub from: i32,
    pub to: Option<i32>,
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunRow {
    pub level: &'static str,
    pub region: Option<String>,
    pub no: i32,
    pub start: i32,
    pub end: Option<i32>,
    pub entry: &'static str,
    pub exit: Option<&'static str>,
}

/// Everything derived from one woman at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WomanRows {
    pub person: PersonRec,
    pub episodes: Vec<EpisodeRow>,
    pub residence: Vec<ResidenceRow>,
    pub runs: Vec<RunRow>,
}

const LEVELS: [RegionLevel; 5] = RegionLevel::ALL;

/// Each village's ancestors at the five levels, looked up once.
#[derive(Debug, Default)]
pub(crate) struct Ancestors(HashMap<String, [Option<String>; 5]>);

impl Ancestors {
    fn get(&mut self, village: &str, level: usize) -> Option<String> {
        let table = regions();
        self.0
            .entry(village.to_string())
            .or_insert_with(|| LEVELS.map(|l| table.ancestor(village, l).map(|r| r.code.clone())))
            [level]
            .clone()
    }
}

/// The rule over one woman's record and events (`docs/status-rule.md`).
pub(crate) fn derive_woman(
    rec: &PersonRec,
    evs: &[LifeEvent],
    params: &RuleParams,
    ancestors: &mut Ancestors,
) -> WomanRows {
    let table = regions();
    let rural = |c: &str| table.is_rural_village(c);
    let history = residence_history(rec.region.as_deref(), evs);
    let mut residence = Vec::with_capacity(history.len());
    for (i, (from, region)) in history.iter().enumerate() {
        let to = history.get(i + 1).and_then(|(f, _)| *f);
        residence.push(ResidenceRow {
            from: from.map_or(
                days(NaiveDate::from_ymd_opt(1900, 1, 1).expect("date")),
                days,
            ),
            to: to.map(days),
            region: region.clone(),
        });
    }
    // The record's marital code as it is: the rule reads it (docs/status-rule.md).
    let woman = Woman {
        base_region: rec.region.as_deref(),
        marital_status: rec.marital.as_deref(),
        birth_date: rec.birth,
        events: evs,
    };
    let mut episodes = Vec::new();
    let mut runs_out = Vec::new();
    for (n, ep) in derive_episodes(&woman, &rural, params).iter().enumerate() {
        let no = n as i32 + 1;
        episodes.push(EpisodeRow {
            no,
            start: days(ep.start),
            end: ep.end.map(days),
            entry: ep.entry_reason,
            exit: ep.exit_reason,
            region_at_start: ep.region_at_start.clone(),
            region_at_end: ep.region_at_end.clone(),
        });
        // Pieces of the episode in one village: split at residence changes inside it.
        let mut pieces: Vec<(NaiveDate, Option<NaiveDate>, Option<&str>)> = Vec::new();
        for (i, (from, region)) in history.iter().enumerate() {
            let to = history.get(i + 1).and_then(|(f, _)| *f);
            let s = from.map_or(ep.start, |f| f.max(ep.start));
            let e = match (to, ep.end) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if e.is_none_or(|e| s < e)
                && to.is_none_or(|t| t > ep.start)
                && ep.end.is_none_or(|end| s < end)
            {
                pieces.push((s, e, region.as_deref()));
            }
        }
        for (li, level) in LEVELS.iter().enumerate() {
            let mut runs: Vec<(NaiveDate, Option<NaiveDate>, Option<String>)> = Vec::new();
            for (s, e, village) in &pieces {
                let code = village.and_then(|v| ancestors.get(v, li));
                match runs.last_mut() {
                    Some(last) if last.2 == code => last.1 = *e,
                    _ => runs.push((*s, *e, code)),
                }
            }
            let count = runs.len();
            for (ri, (s, e, code)) in runs.into_iter().enumerate() {
                runs_out.push(RunRow {
                    level: level.as_str(),
                    region: code,
                    no,
                    start: days(s),
                    end: e.map(days),
                    entry: if ri == 0 {
                        ep.entry_reason
                    } else {
                        "transfer_in"
                    },
                    exit: if ri + 1 < count {
                        Some("transfer_out")
                    } else {
                        ep.exit_reason
                    },
                });
            }
        }
    }
    WomanRows {
        person: rec.clone(),
        episodes,
        residence,
        runs: runs_out,
    }
}
