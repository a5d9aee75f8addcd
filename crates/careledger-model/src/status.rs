//! The status rule: from one woman's dated life events to her episodes in the ledger
//! (信息台账). The rule is written out in the project's own words in `docs/status-rule.md`;
//! this module is its one implementation. Pure: the same events, in any order of arrival,
//! give the same episodes.
//!
//! She is in the ledger on day t when all of these hold on t (docs/status-rule.md, "The five
//! conditions"):
//! - a *qualifying absence* is running: her husband left on d and has not come home for good
//!   since (a return followed by a departure within `short_visit_days` is a visit, whatever
//!   else happens in between), and t ≥ d + `min_absence_months`. Absences are made of
//!   `spouse_departed` and `spouse_returned` events alone;
//! - she is married, by the marital rule ([`married_before_events`], then her `married`,
//!   `divorced` and `spouse_died` events);
//! - she is alive;
//! - her residence on t is a rural village (村委会);
//! - her age is within the optional bounds.
//!
//! Episodes are the maximal runs of such days, `[start, end)`. Events take effect on their
//! date, in the same-day order of [`EventKind::same_day_rank`]. An episode starts for the
//! condition that became true that day and ends for the condition that became false; when
//! several did, the reason is taken by the precedence of docs/status-rule.md ("Episodes,
//! entry and exit reasons").

use chrono::{Months, NaiveDate};
use serde::Serialize;

/// Life event types that the rule reads (`schemas/v1/codes/event_types.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum EventKind {
    SpouseReturned,
    Divorced,
    SpouseDied,
    MovedOut,
    MovedIn,
    Married,
    SpouseDeparted,
    Died,
}

impl EventKind {
    pub fn parse(code: &str) -> Option<EventKind> {
        Some(match code {
            "spouse_departed" => EventKind::SpouseDeparted,
            "spouse_returned" => EventKind::SpouseReturned,
            "moved_in" => EventKind::MovedIn,
            "moved_out" => EventKind::MovedOut,
            "married" => EventKind::Married,
            "divorced" => EventKind::Divorced,
            "spouse_died" => EventKind::SpouseDied,
            "died" => EventKind::Died,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SpouseDeparted => "spouse_departed",
            EventKind::SpouseReturned => "spouse_returned",
            EventKind::MovedIn => "moved_in",
            EventKind::MovedOut => "moved_out",
            EventKind::Married => "married",
            EventKind::Divorced => "divorced",
            EventKind::SpouseDied => "spouse_died",
            EventKind::Died => "died",
        }
    }

    /// The order in which events of one day apply (docs/status-rule.md, "Same-day events"):
    /// `married` first (so a `divorced` or `spouse_died` of the same day leaves her not
    /// married); moves out, then in (she ends the day in the `moved_in` village); returns,
    /// then departures (a return and a departure on one day is a visit of no days); her own
    /// death last.
    pub fn same_day_rank(self) -> u8 {
        match self {
            EventKind::Married => 0,
            EventKind::Divorced => 1,
            EventKind::SpouseDied => 2,
            EventKind::MovedOut => 3,
            EventKind::MovedIn => 4,
            EventKind::SpouseReturned => 5,
            EventKind::SpouseDeparted => 6,
            EventKind::Died => 7,
        }
    }
}

/// One dated event of one woman. `region_code` is the village moved into, for `moved_in`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LifeEvent {
    pub date: NaiveDate,
    pub kind: EventKind,
    pub region_code: Option<String>,
}

impl LifeEvent {
    pub fn new(date: NaiveDate, kind: EventKind) -> LifeEvent {
        LifeEvent {
            date,
            kind,
            region_code: None,
        }
    }

    pub fn moved_in(date: NaiveDate, region: &str) -> LifeEvent {
        LifeEvent {
            date,
            kind: EventKind::MovedIn,
            region_code: Some(region.to_string()),
        }
    }
}

/// The rule's parameters. Every derived row records [`RuleParams::rule_version`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleParams {
    /// Calendar months an absence must last before she enters (policy: six).
    pub min_absence_months: u32,
    /// A return followed by a new departure within this many days (inclusive) is a visit: it
    /// does not break the absence.
    pub short_visit_days: u32,
    /// Optional age bounds (years, inclusive); off by default, some local rules used 20–59.
    pub min_age: Option<u32>,
    pub max_age: Option<u32>,
}

impl Default for RuleParams {
    fn default() -> RuleParams {
        RuleParams {
            min_absence_months: 6,
            short_visit_days: 30,
            min_age: None,
            max_age: None,
        }
    }
}

/// Version of the rule's logic; bumped whenever derivation changes for the same input.
///
/// - 1: first rule.
/// - 2: absences are made of departures and returns alone (a marriage change between a return
///   and a departure no longer stops the departure from bridging the visit; a divorce or the
///   husband's death no longer ends the absence, only the marriage); the marital rule
///   (marital status 90 and a missing value alike, presumed married; marital events govern
///   the state before the first of them); same-day order `married` first; entry and exit
///   reasons by the conditions that changed.
pub const RULE_LOGIC_VERSION: u32 = 2;

impl RuleParams {
    /// `r2;m6;v30` (plus `;a20-59` with age bounds): the logic version and the parameters.
    pub fn rule_version(&self) -> String {
        let mut v = format!(
            "r{RULE_LOGIC_VERSION};m{};v{}",
            self.min_absence_months, self.short_visit_days
        );
        if self.min_age.is_some() || self.max_age.is_some() {
            let lo = self.min_age.map_or(String::new(), |a| a.to_string());
            let hi = self.max_age.map_or(String::new(), |a| a.to_string());
            v.push_str(&format!(";a{lo}-{hi}"));
        }
        v
    }
}

/// Everything the rule needs to know about one woman.
#[derive(Debug, Clone)]
pub struct Woman<'a> {
    /// Residence from her `women` record, used until her first move.
    pub base_region: Option<&'a str>,
    /// The marital status code on her `women` record (GB/T 2261.2), as recorded: `None` when
    /// the record has none. The rule reads it through [`married_before_events`].
    pub marital_status: Option<&'a str>,
    pub birth_date: Option<NaiveDate>,
    pub events: &'a [LifeEvent],
}

/// One stay in the ledger, `[start, end)`; `end` is `None` while she is still in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusEpisode {
    pub start: NaiveDate,
    pub end: Option<NaiveDate>,
    /// `entry_reasons` code: absence_6_months, moved_in, married, age_reached.
    pub entry_reason: &'static str,
    /// `exit_reasons` code: spouse_returned, moved_out, divorced, spouse_died, died, age_limit.
    pub exit_reason: Option<&'static str>,
    /// Residence on the first day.
    pub region_at_start: Option<String>,
    /// Residence on the last day (on the latest known day while open).
    pub region_at_end: Option<String>,
}

/// Her events in the order they apply: by date, then [`EventKind::same_day_rank`]; exact
/// duplicates (two departments reporting one event) once.
fn canonical(events: &[LifeEvent]) -> Vec<LifeEvent> {
    let mut sorted = events.to_vec();
    sorted.sort_by(|a, b| {
        (a.date, a.kind.same_day_rank(), &a.region_code).cmp(&(
            b.date,
            b.kind.same_day_rank(),
            &b.region_code,
        ))
    });
    sorted.dedup();
    sorted
}

/// Whether she was married before any of her events (docs/status-rule.md, "The five
/// conditions", 2: the marital rule).
///
/// Where she has a `married`, `divorced` or `spouse_died` event, the first of them (in the
/// order events apply) decides, whatever the record says now: not married before `married`,
/// married before `divorced` or `spouse_died`. Otherwise the record's code: 20–23 married;
/// 10, 30, 40 not married; 90 (not stated), a missing value (and a code the list does not
/// have) alike: presumed married. The presumption matters only while her events report a
/// spouse, since no day counts without a departure (which implies one).
pub fn married_before_events(marital_status: Option<&str>, events: &[LifeEvent]) -> bool {
    let first_marital = canonical(events).into_iter().find(|e| {
        matches!(
            e.kind,
            EventKind::Married | EventKind::Divorced | EventKind::SpouseDied
        )
    });
    match first_marital {
        Some(e) => e.kind != EventKind::Married,
        None => !matches!(marital_status, Some("10" | "30" | "40")),
    }
}

/// The husband's absences, short visits bridged: `[start, end)`, `end` the day of the return
/// for good (`None`: still away). Departures and returns alone make them: a departure while
/// she is already waiting for him and a return while he is already home are ignored.
fn absences(events: &[LifeEvent], params: &RuleParams) -> Vec<(NaiveDate, Option<NaiveDate>)> {
    // Stretches away: from a departure to the next return.
    let mut away: Vec<(NaiveDate, Option<NaiveDate>)> = Vec::new();
    let mut open: Option<NaiveDate> = None;
    for e in events {
        match e.kind {
            EventKind::SpouseDeparted if open.is_none() => open = Some(e.date),
            EventKind::SpouseReturned => {
                if let Some(start) = open.take() {
                    away.push((start, Some(e.date)));
                }
            }
            _ => {}
        }
    }
    if let Some(start) = open {
        away.push((start, None));
    }
    // A stretch home of at most `short_visit_days` between two stretches away is a visit.
    let mut out: Vec<(NaiveDate, Option<NaiveDate>)> = Vec::new();
    for (start, end) in away {
        if let Some(last) = out.last_mut()
            && last
                .1
                .is_some_and(|back| (start - back).num_days() <= i64::from(params.short_visit_days))
        {
            last.1 = end;
        } else {
            out.push((start, end));
        }
    }
    out
}

fn add_years(d: NaiveDate, years: u32) -> Option<NaiveDate> {
    d.checked_add_months(Months::new(years * 12))
}

/// Residence history: `(from, region)` steps, `None` meaning not in a village (moved out).
/// Same-day moves apply out, then in; of two moves in on one day the one with the higher
/// code is the last.
pub fn residence_history(
    base_region: Option<&str>,
    events: &[LifeEvent],
) -> Vec<(Option<NaiveDate>, Option<String>)> {
    let mut out = vec![(None, base_region.map(str::to_string))];
    for e in canonical(events) {
        match e.kind {
            EventKind::MovedIn => out.push((Some(e.date), e.region_code.clone())),
            EventKind::MovedOut => out.push((Some(e.date), None)),
            _ => {}
        }
    }
    out
}

/// The five conditions on one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conditions {
    qualifying: bool,
    married: bool,
    alive: bool,
    rural: bool,
    age_ok: bool,
}

impl Conditions {
    fn all(self) -> bool {
        self.qualifying && self.married && self.alive && self.rural && self.age_ok
    }
}

/// Derives her episodes. `is_rural` says whether a 12-digit village code is a rural village.
pub fn derive_episodes(
    w: &Woman<'_>,
    is_rural: &dyn Fn(&str) -> bool,
    params: &RuleParams,
) -> Vec<StatusEpisode> {
    let events = canonical(w.events);
    // Qualifying windows [start + months, end).
    let windows: Vec<(NaiveDate, Option<NaiveDate>)> = absences(&events, params)
        .into_iter()
        .filter_map(|(start, end)| {
            let q = start.checked_add_months(Months::new(params.min_absence_months))?;
            end.is_none_or(|e| q < e).then_some((q, end))
        })
        .collect();
    if windows.is_empty() {
        return Vec::new();
    }
    let age_from = w
        .birth_date
        .zip(params.min_age)
        .and_then(|(b, a)| add_years(b, a));
    let age_until = w
        .birth_date
        .zip(params.max_age)
        .and_then(|(b, a)| add_years(b, a + 1));
    let age_ok = |t: NaiveDate| age_from.is_none_or(|a| t >= a) && age_until.is_none_or(|a| t < a);
    let qualifying = |t: NaiveDate| {
        windows
            .iter()
            .any(|(s, e)| *s <= t && e.is_none_or(|e| t < e))
    };

    // The days on which a condition may change.
    let mut points: Vec<NaiveDate> = events.iter().map(|e| e.date).collect();
    for (s, e) in &windows {
        points.push(*s);
        points.extend(*e);
    }
    points.extend(age_from);
    points.extend(age_until);
    points.sort();
    points.dedup();

    let mut married = married_before_events(w.marital_status, &events);
    let mut alive = true;
    let mut residence: Option<String> = w.base_region.map(str::to_string);
    // The conditions on the day before the first point (nothing has happened yet).
    let mut before = Conditions {
        qualifying: false,
        married,
        alive,
        rural: residence.as_deref().is_some_and(is_rural),
        age_ok: points[0].pred_opt().is_some_and(age_ok),
    };
    let mut next_event = 0;
    let mut episodes: Vec<StatusEpisode> = Vec::new();
    for t in points {
        let residence_before = residence.clone();
        let day_start = next_event;
        while next_event < events.len() && events[next_event].date <= t {
            let e = &events[next_event];
            match e.kind {
                EventKind::Married => married = true,
                EventKind::Divorced | EventKind::SpouseDied => married = false,
                EventKind::Died => alive = false,
                EventKind::MovedIn => residence = e.region_code.clone(),
                EventKind::MovedOut => residence = None,
                EventKind::SpouseDeparted | EventKind::SpouseReturned => {}
            }
            next_event += 1;
        }
        let today = &events[day_start..next_event];
        let now = Conditions {
            qualifying: qualifying(t),
            married,
            alive,
            rural: residence.as_deref().is_some_and(is_rural),
            age_ok: age_ok(t),
        };
        if now.all() && !before.all() {
            // The condition that became true; several: in this order.
            let entry_reason = if !before.qualifying {
                "absence_6_months"
            } else if !before.rural {
                "moved_in"
            } else if !before.married {
                "married"
            } else {
                "age_reached"
            };
            episodes.push(StatusEpisode {
                start: t,
                end: None,
                entry_reason,
                exit_reason: None,
                region_at_start: residence.clone(),
                region_at_end: residence.clone(),
            });
        } else if !now.all() && before.all() {
            // The condition that became false; several: in this order (died, spouse_died,
            // divorced, moved_out, spouse_returned, then the age limit).
            let exit_reason = if !now.alive {
                "died"
            } else if !now.married {
                if today.iter().any(|e| e.kind == EventKind::SpouseDied) {
                    "spouse_died"
                } else {
                    "divorced"
                }
            } else if !now.rural {
                "moved_out"
            } else if !now.qualifying {
                "spouse_returned"
            } else {
                "age_limit"
            };
            let ep = episodes.last_mut().expect("inside an episode");
            ep.end = Some(t);
            ep.exit_reason = Some(exit_reason);
            ep.region_at_end = residence_before;
        } else if now.all() {
            episodes
                .last_mut()
                .expect("inside an episode")
                .region_at_end = residence.clone();
        }
        before = now;
    }
    episodes
}
