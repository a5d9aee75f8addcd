//! One woman's life as it really happens: where she lives, her household, her husband's
//! comings and goings around the Spring Festival, marriage, moves and death. What the
//! departments report about it is decided in [`crate::report`].

use careledger_model::status::{EventKind, LifeEvent, Woman, derive_episodes};
use careledger_model::{Region, RegionLevel, RuleParams, StatusEpisode, regions};
use chrono::{Datelike, NaiveDate};
use rand::Rng;
use rand::rngs::StdRng;

use crate::calendar::{add_years, between, exp_days, plus, spring_festival, weighted};
use crate::wire::Sink;
use crate::world::{World, ancestor};

/// A real event of her life (reported or not).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrueEvent {
    pub(crate) date: NaiveDate,
    pub(crate) kind: EventKind,
    /// The residence moved into, for `moved_in`.
    pub(crate) region: Option<&'static str>,
    /// (destination, work type) for `spouse_departed`.
    pub(crate) departure: Option<(&'static str, &'static str)>,
}

/// One simulated woman.
#[derive(Debug)]
pub(crate) struct Person {
    pub(crate) index: u32,
    /// Her village at the start (the `women` record's residence).
    pub(crate) village: &'static str,
    /// Her county's 12-digit code.
    pub(crate) county: &'static str,
    pub(crate) birth: NaiveDate,
    pub(crate) ethnicity: &'static str,
    pub(crate) marital: &'static str,
    pub(crate) education: &'static str,
    pub(crate) children: u8,
    pub(crate) elderly: u8,
    /// Every event, by date; departures and returns before the start only for an absence
    /// still running then (the ledger keeper's first survey backfills them).
    pub(crate) events: Vec<TrueEvent>,
    pub(crate) death: Option<NaiveDate>,
    /// Residence steps `(from, code)`: a village or residents' committee code, or `None`
    /// after a move out of the villages (to a town, a city or another province).
    residence: Vec<(NaiveDate, Option<&'static str>)>,
    /// Her true ledger episodes by the model's status rule.
    pub(crate) episodes: Vec<StatusEpisode>,
}

impl Person {
    pub(crate) fn age_on(&self, d: NaiveDate) -> i32 {
        let mut age = d.year() - self.birth.year();
        if (d.month(), d.day()) < (self.birth.month(), self.birth.day()) {
            age -= 1;
        }
        age
    }

    /// Residence on day `d` (see [`Person::residence`]).
    pub(crate) fn residence_on(&self, d: NaiveDate) -> Option<&'static str> {
        self.residence
            .iter()
            .rev()
            .find(|(from, _)| *from <= d)
            .map_or(Some(self.village), |(_, code)| *code)
    }

    /// Lives in a rural village on day `d`.
    pub(crate) fn rural_on(&self, d: NaiveDate) -> bool {
        self.residence_on(d)
            .is_some_and(|c| regions().is_rural_village(c))
    }

    pub(crate) fn in_ledger_on(&self, d: NaiveDate) -> bool {
        self.episodes
            .iter()
            .any(|e| e.start <= d && e.end.is_none_or(|end| d < end))
    }
}

/// Ethnic groups by county: the autonomous counties have their own peoples.
fn ethnicity(rng: &mut StdRng, county6: &str) -> &'static str {
    let table: &[(&'static str, f64)] = match county6 {
        "450226" => &[
            ("12", 55.0),
            ("06", 15.0),
            ("01", 15.0),
            ("08", 10.0),
            ("13", 5.0),
        ],
        "450328" => &[
            ("12", 25.0),
            ("13", 20.0),
            ("06", 15.0),
            ("08", 20.0),
            ("01", 20.0),
        ],
        "450225" => &[
            ("06", 40.0),
            ("08", 20.0),
            ("01", 20.0),
            ("13", 10.0),
            ("12", 10.0),
        ],
        "450332" | "451123" => &[("13", 58.0), ("01", 35.0), ("08", 7.0)],
        "451324" => &[("13", 40.0), ("08", 35.0), ("01", 25.0)],
        "451227" | "451228" | "451229" => &[("08", 70.0), ("13", 22.0), ("01", 8.0)],
        "451225" => &[
            ("32", 35.0),
            ("08", 35.0),
            ("01", 20.0),
            ("06", 5.0),
            ("13", 5.0),
        ],
        "451226" => &[("36", 22.0), ("08", 58.0), ("01", 15.0), ("13", 5.0)],
        "451031" => &[
            ("08", 40.0),
            ("06", 25.0),
            ("01", 20.0),
            ("07", 7.0),
            ("37", 8.0),
        ],
        _ => &[
            ("08", 52.0),
            ("01", 40.0),
            ("13", 3.5),
            ("12", 1.5),
            ("06", 1.0),
            ("32", 1.0),
            ("36", 0.5),
            ("97", 0.5),
        ],
    };
    weighted(rng, table)
}

fn education(rng: &mut StdRng, age: i32) -> &'static str {
    let table: &[(&'static str, f64)] = if age >= 50 {
        &[("80", 45.0), ("90", 18.0), ("70", 32.0), ("60", 5.0)]
    } else if age >= 35 {
        &[
            ("70", 50.0),
            ("80", 25.0),
            ("60", 12.0),
            ("40", 8.0),
            ("30", 4.0),
            ("90", 1.0),
        ]
    } else {
        &[
            ("70", 40.0),
            ("60", 18.0),
            ("40", 20.0),
            ("30", 13.0),
            ("20", 6.0),
            ("80", 3.0),
        ]
    };
    weighted(rng, table)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Works at home.
    Local,
    /// Trips of one to five months, near home.
    Seasonal,
    /// Leaves after the Spring Festival, comes back for the next one.
    Annual,
    /// Away for years, home for a festival now and then.
    LongHaul,
}

fn destination(rng: &mut StdRng, pattern: Pattern) -> &'static str {
    let table: &[(&'static str, f64)] = match pattern {
        Pattern::Seasonal | Pattern::Local => &[
            ("in_county", 45.0),
            ("in_province", 45.0),
            ("out_of_province", 10.0),
        ],
        Pattern::Annual | Pattern::LongHaul => &[
            ("out_of_province", 65.0),
            ("in_province", 30.0),
            ("in_county", 5.0),
        ],
    };
    weighted(rng, table)
}

fn work_type(rng: &mut StdRng) -> &'static str {
    if rng.random_bool(0.85) {
        "labour"
    } else {
        "business"
    }
}

/// Days after the Spring Festival a migrant leaves: most within weeks (after the Lantern
/// Festival), some at any time of the year.
fn festival_offset(rng: &mut StdRng) -> i64 {
    if rng.random_bool(0.82) {
        3 + (rng.random::<f64>().powf(1.6) * 55.0) as i64
    } else {
        rng.random_range(40..=260)
    }
}

/// The husband's departures and returns, strictly after `after` and before `until`.
struct Husband {
    events: Vec<TrueEvent>,
    cursor: NaiveDate,
    until: NaiveDate,
    away: bool,
}

impl Husband {
    fn push(
        &mut self,
        rng: &mut StdRng,
        date: NaiveDate,
        departure: Option<(&'static str, &'static str)>,
    ) -> bool {
        let date = if date <= self.cursor {
            plus(self.cursor, rng.random_range(7..=40))
        } else {
            date
        };
        if date >= self.until {
            return false;
        }
        self.events.push(TrueEvent {
            date,
            kind: if departure.is_some() {
                EventKind::SpouseDeparted
            } else {
                EventKind::SpouseReturned
            },
            region: None,
            departure,
        });
        self.cursor = date;
        self.away = departure.is_some();
        true
    }
}

fn husband_moves(rng: &mut StdRng, after: NaiveDate, until: NaiveDate, age: i32) -> Vec<TrueEvent> {
    let table: &[(Pattern, f64)] = if age >= 55 {
        &[
            (Pattern::Local, 50.0),
            (Pattern::Seasonal, 20.0),
            (Pattern::Annual, 25.0),
            (Pattern::LongHaul, 5.0),
        ]
    } else {
        &[
            (Pattern::Local, 20.0),
            (Pattern::Seasonal, 18.0),
            (Pattern::Annual, 50.0),
            (Pattern::LongHaul, 12.0),
        ]
    };
    let mut pattern = weighted(rng, table);
    let mut dest = destination(rng, pattern);
    let mut work = work_type(rng);
    let mut h = Husband {
        events: Vec::new(),
        cursor: after,
        until,
        away: false,
    };
    let mut year = after.year() - 1;
    loop {
        let f = spring_festival(year);
        let next = spring_festival(year + 1);
        year += 1;
        if f >= until {
            break;
        }
        // Cycles that ended before, or were well under way at, the first day.
        if next <= h.cursor || plus(f, 120) < after {
            continue;
        }
        if pattern == Pattern::Local {
            let r: f64 = rng.random();
            if r < 0.05 {
                pattern = Pattern::Annual;
                dest = destination(rng, pattern);
            } else if r < 0.09 {
                pattern = Pattern::Seasonal;
                dest = destination(rng, pattern);
            }
        }
        let going = match pattern {
            Pattern::Local => true,
            Pattern::Seasonal => {
                let t0 = if rng.random_bool(0.55) {
                    plus(f, rng.random_range(5..=50))
                } else {
                    plus(f, rng.random_range(60..=200))
                };
                let len = rng.random_range(25..=150);
                let mut ok =
                    h.push(rng, t0, Some((dest, work))) && h.push(rng, plus(h.cursor, len), None);
                if ok && rng.random_bool(0.4) {
                    let t1 = plus(h.cursor, rng.random_range(20..=80));
                    let len2 = rng.random_range(20..=120);
                    if plus(t1, len2) < plus(next, -7) {
                        ok = h.push(rng, t1, Some((dest, work)))
                            && h.push(rng, plus(t1, len2), None);
                    }
                }
                let r: f64 = rng.random();
                if r < 0.06 {
                    pattern = Pattern::Annual;
                    dest = destination(rng, pattern);
                } else if r < 0.10 {
                    pattern = Pattern::Local;
                }
                ok
            }
            Pattern::Annual | Pattern::LongHaul => {
                let mut ok = true;
                if !h.away {
                    if rng.random_bool(0.25) {
                        dest = destination(rng, pattern);
                        work = work_type(rng);
                    }
                    let leave = plus(f, festival_offset(rng));
                    ok = h.push(rng, leave, Some((dest, work)));
                }
                // What he does at the next Spring Festival.
                let r: f64 = rng.random();
                let (visit, home, away) = if pattern == Pattern::Annual {
                    (0.48, 0.80, 0.88)
                } else {
                    (0.25, 0.35, 0.90)
                };
                if !ok {
                    false
                } else if r < visit {
                    // Home for the festival, 10-25 days, then off again.
                    let back = plus(next, -rng.random_range(1..=10));
                    let stay = rng.random_range(10..=25);
                    h.push(rng, back, None) && {
                        let leave = plus(h.cursor, stay);
                        h.push(rng, leave, Some((dest, work)))
                    }
                } else if r < home {
                    // Home in December or January, leaves again after the festival.
                    let back = plus(next, -rng.random_range(12..=55));
                    h.push(rng, back, None)
                } else if r < away {
                    // Stays away over the festival.
                    true
                } else {
                    // Comes back for good: before the festival, or in the middle of the year.
                    pattern = Pattern::Local;
                    let back = if rng.random_bool(0.3) {
                        plus(h.cursor, rng.random_range(90..=300)).min(plus(next, -5))
                    } else {
                        plus(next, -rng.random_range(3..=40))
                    };
                    h.push(rng, back, None)
                }
            }
        };
        if !going {
            break;
        }
    }
    h.events
}

/// Keeps the pre-start part of the husband's history only for an absence still running at
/// the start (with its short visits): what the first survey would record.
fn trim_before(events: Vec<TrueEvent>, start: NaiveDate, short_visit_days: i64) -> Vec<TrueEvent> {
    // Chains of absences bridged by short visits: (first index, last index).
    let mut keep = vec![true; events.len()];
    let mut chain_start = 0;
    let mut i = 0;
    while i < events.len() {
        if events[i].kind == EventKind::SpouseDeparted {
            let bridged = i > 0
                && events[i - 1].kind == EventKind::SpouseReturned
                && (events[i].date - events[i - 1].date).num_days() <= short_visit_days;
            if !bridged {
                chain_start = i;
            }
        }
        // The chain ends at a return not followed by a bridged departure.
        let ends_here = events[i].kind == EventKind::SpouseReturned
            && !events.get(i + 1).is_some_and(|n| {
                n.kind == EventKind::SpouseDeparted
                    && (n.date - events[i].date).num_days() <= short_visit_days
            });
        if ends_here && events[i].date < start {
            for k in keep.iter_mut().take(i + 1).skip(chain_start) {
                *k = false;
            }
        }
        i += 1;
    }
    events
        .into_iter()
        .zip(keep)
        .filter_map(|(e, k)| (k || e.date >= start).then_some(e))
        .collect()
}

/// A random rural village for a move: mostly in the same county.
fn another_village(
    rng: &mut StdRng,
    world: &World,
    county6: &str,
    not: Option<&str>,
) -> &'static Region {
    let pool = match world.by_county.get(county6) {
        Some(v) if v.len() > 1 && rng.random_bool(0.75) => v,
        _ => &world.villages,
    };
    for _ in 0..8 {
        let v = pool[rng.random_range(0..pool.len())];
        if Some(v.code.as_str()) != not {
            return v;
        }
    }
    pool[0]
}

/// Simulates woman `i`: her profile, her life events and her true episodes.
pub(crate) fn live(world: &World, rng: &mut StdRng, sink: &mut Sink<'_>) -> Person {
    let start = world.start;
    let horizon = world.horizon;
    let village = world.villages[rng.random_range(0..world.villages.len())];
    let county6 = &village.code[..6];
    let age = rng.random_range(20..=64);
    let birth = plus(add_years(start, -age), -rng.random_range(0..365));
    let index = sink.register(rng, county6, birth);
    let r: f64 = rng.random();
    let marital = if r < 0.84 {
        "20"
    } else if r < 0.88 {
        "21"
    } else if r < 0.91 {
        "22"
    } else if r < 0.94 {
        if age < 35 { "10" } else { "30" }
    } else if r < 0.97 {
        "40"
    } else if age >= 45 {
        "30"
    } else {
        "20"
    };
    let married_at_start = marital.starts_with('2');
    let children = match age {
        ..25 => weighted(rng, &[(0u8, 40.0), (1, 45.0), (2, 15.0)]),
        25..45 => weighted(rng, &[(0u8, 12.0), (1, 33.0), (2, 38.0), (3, 17.0)]),
        45..55 => weighted(rng, &[(0u8, 70.0), (1, 30.0)]),
        _ => 0,
    };
    let elderly = weighted(rng, &[(0u8, 45.0), (1, 25.0), (2, 30.0)]);

    // Her own death: mortality rising with age.
    let death = {
        let d = plus(start, exp_days(rng, 0.0008 + 0.00016 * f64::from(age - 20)));
        (d <= horizon).then_some(d)
    };
    // Nothing else happens on or after her death, nor after the horizon.
    let limit = death.unwrap_or(plus(horizon, 1));

    let mut events: Vec<TrueEvent> = Vec::new();
    let ev = |date, kind| TrueEvent {
        date,
        kind,
        region: None,
        departure: None,
    };

    // Marriages: the one she is in at the start, then perhaps a new one after it ends.
    let mut married = married_at_start;
    let mut since = start;
    let mut initial = true;
    for _ in 0..3 {
        let age_now = age + (since.year() - start.year());
        if married {
            let husband_age = age_now + rng.random_range(0..=5);
            let divorce = plus(since, exp_days(rng, 0.006));
            let widowed = plus(
                since,
                exp_days(rng, 0.001 + 0.00022 * f64::from((husband_age - 20).max(0))),
            );
            let end = divorce.min(widowed).min(limit);
            let after = if initial { add_years(start, -2) } else { since };
            let moves = husband_moves(rng, after, end, husband_age);
            events.extend(if initial {
                trim_before(moves, start, 30)
            } else {
                moves
            });
            if end >= limit {
                break;
            }
            events.push(ev(
                end,
                if divorce < widowed {
                    EventKind::Divorced
                } else {
                    EventKind::SpouseDied
                },
            ));
            married = false;
            since = end;
        } else {
            let rate = match (marital, age_now) {
                ("10", ..35) => 0.15,
                (_, ..40) => 0.08,
                (_, ..55) => 0.03,
                _ => 0.01,
            };
            let wed = plus(since, exp_days(rng, rate));
            if wed >= limit {
                break;
            }
            events.push(ev(wed, EventKind::Married));
            married = true;
            since = wed;
        }
        initial = false;
    }

    // Moves: out of the villages (to a town), between villages, into a residents' committee,
    // and back.
    let mut residence: Vec<(NaiveDate, Option<&'static str>)> = Vec::new();
    let mut here: Option<&'static str> = Some(village.code.as_str());
    let mut last_village: &'static str = village.code.as_str();
    let mut t = start;
    loop {
        let rural = here.is_some_and(|c| regions().is_rural_village(c));
        t = plus(t, exp_days(rng, if rural { 0.03 } else { 0.25 }));
        if t >= limit {
            break;
        }
        let r: f64 = rng.random();
        let (kind, to): (EventKind, Option<&'static str>) = if !rural {
            let back = if rng.random_bool(0.5) {
                last_village
            } else {
                another_village(rng, world, &last_village[..6], None)
                    .code
                    .as_str()
            };
            (EventKind::MovedIn, Some(back))
        } else if r < 0.5 {
            (EventKind::MovedOut, None)
        } else if r < 0.88 {
            let v = another_village(rng, world, &last_village[..6], here);
            (EventKind::MovedIn, Some(v.code.as_str()))
        } else {
            match world.urban_by_county.get(&last_village[..6]) {
                Some(urban) if !urban.is_empty() => (
                    EventKind::MovedIn,
                    Some(urban[rng.random_range(0..urban.len())].code.as_str()),
                ),
                _ => (EventKind::MovedOut, None),
            }
        };
        if let Some(code) = to
            && regions().is_rural_village(code)
        {
            last_village = code;
        }
        here = to;
        residence.push((t, to));
        events.push(TrueEvent {
            date: t,
            kind,
            region: to,
            departure: None,
        });
    }
    if let Some(d) = death {
        events.push(ev(d, EventKind::Died));
    }
    events.sort_by_key(|e| e.date);

    let model_events: Vec<LifeEvent> = events
        .iter()
        .map(|e| LifeEvent {
            date: e.date,
            kind: e.kind,
            region_code: e.region.map(str::to_string),
        })
        .collect();
    let woman = Woman {
        base_region: Some(&village.code),
        marital_status: Some(marital),
        birth_date: Some(birth),
        events: &model_events,
    };
    let rural = |c: &str| regions().is_rural_village(c);
    let episodes = derive_episodes(&woman, &rural, &RuleParams::default());

    Person {
        index,
        village: &village.code,
        county: ancestor(&village.code, RegionLevel::County),
        birth,
        ethnicity: ethnicity(rng, county6),
        marital,
        education: education(rng, age),
        children,
        elderly,
        events,
        death,
        residence,
        episodes,
    }
}

/// A uniform day in `[a, b]` clipped to her life and the window; `None` if empty.
pub(crate) fn day_in(
    rng: &mut StdRng,
    world: &World,
    p: &Person,
    a: NaiveDate,
    b: NaiveDate,
) -> Option<NaiveDate> {
    let a = a.max(world.start);
    let mut b = b.min(world.horizon);
    if let Some(d) = p.death {
        b = b.min(plus(d, -1));
    }
    (a <= b).then(|| between(rng, a, b))
}
