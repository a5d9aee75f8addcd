//! The status rule (DOMAIN.md §1): from one woman's dated life events to her episodes in the
//! ledger (信息台账). Pure: the same events, in any order of arrival, give the same episodes.
//!
//! She is in the ledger on day t when all of these hold on t:
//! - a *qualifying absence* is running: her husband left on d (continuously, short visits home
//!   of at most `short_visit_days` not breaking it) and t ≥ d + `min_absence_months`;
//! - she is married (to him: a divorce or his death ends the absence as well as the marriage);
//! - she is alive;
//! - her residence on t is a rural village (村委会);
//! - her age is within the optional bounds.
//!
//! Episodes are the maximal runs of such days, `[start, end)`; events take effect on their
//! date. The reason an episode starts or ends is the condition that changed on that day.

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
    /// A return followed by a new departure within this many days does not break continuity.
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
pub const RULE_LOGIC_VERSION: u32 = 1;

impl RuleParams {
    /// `r1;m6;v30` (plus `;a20-59` with age bounds): the logic version and the parameters.
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
    /// Married at the start of her history (from the record's marital status).
    pub initially_married: bool,
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

#[derive(Debug, Clone)]
struct Absence {
    start: NaiveDate,
    end: Option<NaiveDate>,
    /// Closed by a return that a prompt re-departure may still bridge.
    resumable: bool,
}

fn canonical(events: &[LifeEvent]) -> Vec<LifeEvent> {
    let mut sorted = events.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted
}

/// Continuous absences of the husband, short visits bridged.
fn absences(events: &[LifeEvent], params: &RuleParams) -> Vec<Absence> {
    let mut out: Vec<Absence> = Vec::new();
    let mut open: Option<NaiveDate> = None;
    for e in events {
        match e.kind {
            EventKind::SpouseDeparted if open.is_none() => {
                let bridge = out.last().is_some_and(|last| {
                    last.resumable
                        && last.end.is_some_and(|r| {
                            (e.date - r).num_days() <= i64::from(params.short_visit_days)
                        })
                });
                open = Some(if bridge {
                    out.pop().expect("checked").start
                } else {
                    e.date
                });
            }
            EventKind::SpouseReturned => {
                if let Some(start) = open.take() {
                    out.push(Absence {
                        start,
                        end: Some(e.date),
                        resumable: true,
                    });
                }
            }
            EventKind::Divorced | EventKind::SpouseDied | EventKind::Died | EventKind::Married => {
                if let Some(start) = open.take_if(|_| e.kind != EventKind::Married) {
                    out.push(Absence {
                        start,
                        end: Some(e.date),
                        resumable: false,
                    });
                }
                // A change of marriage between a return and a departure: the next departure
                // is another absence, not the same one resumed.
                if let Some(last) = out.last_mut() {
                    last.resumable = false;
                }
            }
            _ => {}
        }
    }
    if let Some(start) = open {
        out.push(Absence {
            start,
            end: None,
            resumable: false,
        });
    }
    out
}

fn add_years(d: NaiveDate, years: u32) -> Option<NaiveDate> {
    d.checked_add_months(Months::new(years * 12))
}

/// Residence history: `(from, region)` steps, `None` meaning not in a village (moved out).
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

struct DayState {
    married: bool,
    alive: bool,
    residence: Option<String>,
}

/// Derives her episodes. `is_rural` says whether a 12-digit village code is a rural village.
pub fn derive_episodes(
    w: &Woman<'_>,
    is_rural: &dyn Fn(&str) -> bool,
    params: &RuleParams,
) -> Vec<StatusEpisode> {
    let events = canonical(w.events);
    let absences = absences(&events, params);
    // Qualifying windows [start + months, end).
    let windows: Vec<(NaiveDate, Option<NaiveDate>)> = absences
        .iter()
        .filter_map(|a| {
            let q = a
                .start
                .checked_add_months(Months::new(params.min_absence_months))?;
            a.end.is_none_or(|e| q < e).then_some((q, a.end))
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

    let mut points: Vec<NaiveDate> = events.iter().map(|e| e.date).collect();
    for (s, e) in &windows {
        points.push(*s);
        points.extend(*e);
    }
    points.extend(age_from);
    points.extend(age_until);
    points.sort();
    points.dedup();

    let mut state = DayState {
        married: w.initially_married,
        alive: true,
        residence: w.base_region.map(str::to_string),
    };
    let mut next_event = 0;
    let mut episodes: Vec<StatusEpisode> = Vec::new();
    let mut inside = false;
    for t in points {
        let before_residence = state.residence.clone();
        let day_start = next_event;
        while next_event < events.len() && events[next_event].date <= t {
            let e = &events[next_event];
            match e.kind {
                EventKind::Married => state.married = true,
                EventKind::Divorced | EventKind::SpouseDied => state.married = false,
                EventKind::Died => state.alive = false,
                EventKind::MovedIn => state.residence = e.region_code.clone(),
                EventKind::MovedOut => state.residence = None,
                EventKind::SpouseDeparted | EventKind::SpouseReturned => {}
            }
            next_event += 1;
        }
        let today = &events[day_start..next_event];
        let happened = |k: EventKind| today.iter().any(|e| e.kind == k && e.date == t);
        let qualifying = windows
            .iter()
            .any(|(s, e)| *s <= t && e.is_none_or(|e| t < e));
        let rural = state.residence.as_deref().is_some_and(is_rural);
        let age_ok = age_from.is_none_or(|a| t >= a) && age_until.is_none_or(|a| t < a);
        let now_in = qualifying && state.married && state.alive && rural && age_ok;
        if now_in && !inside {
            let entry_reason = if windows.iter().any(|(s, _)| *s == t) {
                "absence_6_months"
            } else if happened(EventKind::MovedIn) {
                "moved_in"
            } else if happened(EventKind::Married) {
                "married"
            } else if age_from == Some(t) {
                "age_reached"
            } else {
                "absence_6_months"
            };
            episodes.push(StatusEpisode {
                start: t,
                end: None,
                entry_reason,
                exit_reason: None,
                region_at_start: state.residence.clone(),
                region_at_end: state.residence.clone(),
            });
        } else if !now_in && inside {
            let exit_reason = if happened(EventKind::Died) {
                "died"
            } else if happened(EventKind::SpouseDied) {
                "spouse_died"
            } else if happened(EventKind::Divorced) {
                "divorced"
            } else if !rural {
                "moved_out"
            } else if !qualifying {
                "spouse_returned"
            } else if age_until == Some(t) {
                "age_limit"
            } else {
                "spouse_returned"
            };
            let ep = episodes.last_mut().expect("inside an episode");
            ep.end = Some(t);
            ep.exit_reason = Some(exit_reason);
            ep.region_at_end = before_residence;
        } else if now_in {
            episodes
                .last_mut()
                .expect("inside an episode")
                .region_at_end = state.residence.clone();
        }
        inside = now_in;
    }
    episodes
}
