//! From records to batches: each department's push calendar, the versions of a record as it is
//! sent, corrected and retracted, clerks' mistakes, and the JSON rows of `schemas/v1/tables`.
//!
//! Rows are kept compact (codes as `&'static str`, dates as `NaiveDate`) per batch while the
//! women are simulated one by one, and become `serde_json::Value`s only when their batch is
//! handed out, so memory grows with the number of rows, not with their JSON.

use std::collections::{HashMap, HashSet};

use careledger_model::resident_id::check_char;
use careledger_model::status::EventKind;
use careledger_model::{RegionLevel, ResidentId, Table, regions, vocabulary};
use chrono::{Datelike, NaiveDate};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Value};

use crate::SimBatch;
use crate::calendar::{days, mix, name_hash, plus};
use crate::world::{Src, World};

/// Rows per batch at most; a bigger push is split into several batches of one day.
pub const MAX_BATCH_ROWS: usize = 5_000;
/// Share of push days a department misses (its interface job did not run).
const MISSED_PUSH_PER_MILLE: u64 = 30;
/// Share of batches sent twice with the same idempotency key (a client retry).
const SEND_TWICE_PER_MILLE: u64 = 20;
/// Share of rejected rows a clerk fixes and sends again.
const FIX_SHARE: f64 = 0.8;

/// A woman's base record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WomanRec {
    pub(crate) region: &'static str,
    pub(crate) ethnicity: &'static str,
    pub(crate) marital: &'static str,
    pub(crate) education: &'static str,
    pub(crate) children: u8,
    pub(crate) elderly: u8,
}

/// A life event; `departure` is (destination, work type) for `spouse_departed`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventRec {
    pub(crate) kind: EventKind,
    pub(crate) date: NaiveDate,
    pub(crate) region: Option<&'static str>,
    pub(crate) departure: Option<(&'static str, &'static str)>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FlagRec {
    pub(crate) group: &'static str,
    pub(crate) from: NaiveDate,
    pub(crate) to: Option<NaiveDate>,
    pub(crate) detail: Option<&'static str>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ServiceRec {
    /// Index into [`World::services`].
    pub(crate) kind: u16,
    pub(crate) date: NaiveDate,
    pub(crate) end: Option<NaiveDate>,
    /// Where it was delivered (village, township or county code).
    pub(crate) place: &'static str,
    /// Delivered by the township outpost rather than the county unit.
    pub(crate) township_unit: bool,
    pub(crate) amount_cents: Option<u32>,
    pub(crate) quantity: Option<u16>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct RegRec {
    pub(crate) registered: bool,
    pub(crate) date: NaiveDate,
    pub(crate) reason: &'static str,
    pub(crate) region: &'static str,
}

/// What one version of a record says.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Payload {
    Woman(WomanRec),
    Event(EventRec),
    Flag(FlagRec),
    Service(ServiceRec),
    Registration(RegRec),
    /// `op = delete`: only the common fields.
    Retraction,
}

/// A clerk's mistake that the gateway must reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Invalid {
    /// A transposed digit: the check character no longer fits.
    CheckDigit,
    /// A village code that does not exist (`450123999999`).
    UnknownVillage,
    /// A day that no calendar has (`2024-02-30`, day and month swapped).
    ImpossibleDate,
    /// The Chinese label typed where the code belongs (`丈夫外出` for `spouse_departed`).
    UnknownCode,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    woman: u32,
    rec: u16,
    version: u16,
    invalid: Option<Invalid>,
    payload: Payload,
}

/// The clerks' slips for one woman's rows: a counter-based hash stream rather than an RNG, as
/// it is asked once per row; kept apart from her life's RNG so that the share of mistakes
/// never changes the lives.
#[derive(Debug)]
pub(crate) struct Clerk {
    seed: u64,
    n: u64,
}

impl Clerk {
    pub(crate) fn new(seed: u64) -> Clerk {
        Clerk { seed, n: 0 }
    }

    fn next(&mut self) -> u64 {
        self.n += 1;
        mix(self.seed, self.n)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// When a version is reported to the department's system.
#[derive(Debug, Clone, Copy)]
pub(crate) enum At {
    /// On this day (or the day after the previous version's push, if later).
    Day(NaiveDate),
    /// This many days after the previous version's push.
    After(i64),
}

/// One version of a record: version numbers are 1, 2, … in order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Send {
    pub(crate) at: At,
    pub(crate) payload: Payload,
}

impl Send {
    pub(crate) fn on(day: NaiveDate, payload: Payload) -> Send {
        Send {
            at: At::Day(day),
            payload,
        }
    }

    pub(crate) fn after(days: i64, payload: Payload) -> Send {
        Send {
            at: At::After(days),
            payload,
        }
    }
}

/// The push calendar: each (source, table) pushes every `push_period` days on its weekday,
/// from the first such day on or after the start, missing a few days.
#[derive(Debug)]
struct Schedule {
    seed: u64,
    start: NaiveDate,
    horizon: NaiveDate,
}

impl Schedule {
    /// The push that carries a row reported on `report`; `None` after the horizon.
    fn next_push(&self, src: Src, table: Table, report: NaiveDate) -> Option<NaiveDate> {
        let report = report.max(self.start);
        let offset = (i64::from(src.push_weekday())
            - i64::from(self.start.weekday().num_days_from_monday()))
        .rem_euclid(7);
        let anchor = plus(self.start, offset);
        let period = src.push_period();
        let mut k = (days(anchor, report).max(0) + period - 1) / period;
        loop {
            let day = plus(anchor, k * period);
            if day > self.horizon {
                return None;
            }
            let h = mix(
                mix(self.seed, name_hash(src.code()) ^ name_hash(table.as_str())),
                k as u64,
            );
            if h % 1000 >= MISSED_PUSH_PER_MILLE {
                return Some(day);
            }
            k += 1;
        }
    }
}

/// Collects every woman's rows into their batches, then hands the batches out in order.
#[derive(Debug)]
pub(crate) struct Sink<'w> {
    world: &'w World,
    schedule: Schedule,
    invalid_share: f64,
    batches: HashMap<(NaiveDate, Table, Src), Vec<Row>>,
    /// Every woman's ID number, by woman index.
    ids: Vec<[u8; 18]>,
    /// First 17 digits of every ID handed out, to keep them unique.
    taken: HashSet<u64>,
}

impl<'w> Sink<'w> {
    pub(crate) fn new(world: &'w World, invalid_share: f64, women: usize) -> Sink<'w> {
        Sink {
            world,
            schedule: Schedule {
                seed: world.seed,
                start: world.start,
                horizon: world.horizon,
            },
            invalid_share: if invalid_share.is_finite() {
                invalid_share.clamp(0.0, 1.0)
            } else {
                0.0
            },
            batches: HashMap::new(),
            ids: Vec::with_capacity(women),
            taken: HashSet::with_capacity(women),
        }
    }

    /// Gives a new woman a unique ID number (even sequence digit) and returns her index.
    pub(crate) fn register(&mut self, rng: &mut StdRng, area6: &str, birth: NaiveDate) -> u32 {
        let mut birth = birth;
        let mut tries = 0;
        loop {
            let seq: u16 = 2 * rng.random_range(0..500);
            let id = ResidentId::synthesize(area6, birth, seq);
            let bytes: [u8; 18] = id.as_str().as_bytes().try_into().expect("18 characters");
            let key: u64 = id.as_str()[..17].parse().expect("17 digits");
            if self.taken.insert(key) {
                self.ids.push(bytes);
                return (self.ids.len() - 1) as u32;
            }
            tries += 1;
            if tries % 20 == 0 {
                birth = plus(birth, -1);
            }
        }
    }

    /// Sends the versions of one record of `woman` (her `rec`-th) through `src`'s pushes.
    /// A version whose push would fall after the horizon, and every later one, is not sent.
    /// `clerk` draws the mistakes, so that the share of them does not change the lives.
    pub(crate) fn emit(
        &mut self,
        clerk: &mut Clerk,
        woman: u32,
        rec: u16,
        table: Table,
        src: Src,
        sends: &[Send],
    ) {
        let mut last: Option<NaiveDate> = None;
        for (n, send) in sends.iter().enumerate() {
            let report = match (send.at, last) {
                (At::Day(d), None) => d,
                (At::Day(d), Some(l)) => d.max(plus(l, 1)),
                (At::After(k), Some(l)) => plus(l, k.max(1)),
                (At::After(k), None) => plus(self.world.start, k),
            };
            let Some(day) = self.schedule.next_push(src, table, report) else {
                return;
            };
            let invalid = if self.invalid_share > 0.0 && clerk.chance(self.invalid_share) {
                pick_invalid(clerk, &send.payload)
            } else {
                None
            };
            let row = Row {
                woman,
                rec,
                version: n as u16 + 1,
                invalid,
                payload: send.payload,
            };
            self.batches.entry((day, table, src)).or_default().push(row);
            last = Some(day);
            if invalid.is_some() && clerk.chance(FIX_SHARE) {
                let again = plus(day, 3 + clerk.below(19) as i64);
                let Some(fix_day) = self.schedule.next_push(src, table, again) else {
                    return;
                };
                self.batches
                    .entry((fix_day, table, src))
                    .or_default()
                    .push(Row {
                        invalid: None,
                        ..row
                    });
                last = Some(fix_day);
            }
        }
    }

    /// Hands out every batch, sorted by (day, table, source), splitting big ones.
    pub(crate) fn finish(mut self, each: &mut dyn FnMut(SimBatch)) {
        let mut keys: Vec<(NaiveDate, Table, Src)> = self.batches.keys().copied().collect();
        keys.sort_by(|a, b| (a.0, a.1, a.2.code()).cmp(&(b.0, b.1, b.2.code())));
        for key in keys {
            let rows = self.batches.remove(&key).expect("listed key");
            let (day, table, src) = key;
            for (n, chunk) in rows.chunks(MAX_BATCH_ROWS).enumerate() {
                let n = n + 1;
                let rendered = chunk.iter().map(|r| self.render(table, src, r)).collect();
                let h = mix(
                    mix(
                        self.world.seed ^ 0x5EED,
                        name_hash(src.code()) ^ name_hash(table.as_str()),
                    ),
                    (i64::from(day.num_days_from_ce()) * 1000 + n as i64) as u64,
                );
                each(SimBatch {
                    table,
                    source: src.code().to_string(),
                    day,
                    rows: rendered,
                    idempotency_key: format!(
                        "sim{}-{}-{}-{}-{n}",
                        self.world.seed,
                        src.code(),
                        table.as_str(),
                        day.format("%Y-%m-%d")
                    ),
                    send_twice: h % 1000 < SEND_TWICE_PER_MILLE,
                });
            }
        }
    }

    fn render(&self, table: Table, src: Src, row: &Row) -> Value {
        let mut m = Map::new();
        let tag = match table {
            Table::Women => "wm",
            Table::LifeEvents => "ev",
            Table::GroupFlags => "gf",
            Table::Services => "sv",
            Table::Registrations => "rg",
        };
        m.insert(
            "record_id".into(),
            // Letters between the numbers: joined by dashes they would look like an ID number
            // (15+ digits), which the gateway refuses in free text.
            format!(
                "{}-{tag}-s{}-w{:07}-r{:03}",
                src.abbr(),
                self.world.seed,
                row.woman,
                row.rec
            )
            .into(),
        );
        m.insert("record_version".into(), row.version.into());
        let delete = matches!(row.payload, Payload::Retraction);
        m.insert("op".into(), if delete { "delete" } else { "upsert" }.into());
        let mut id = self.ids[row.woman as usize];
        if row.invalid == Some(Invalid::CheckDigit) {
            spoil_check_digit(&mut id);
        }
        let id = std::str::from_utf8(&id).expect("ASCII digits").to_string();
        let county = &id[..6];
        let bad = row.invalid;
        let region = |code: &str| -> Value {
            if bad == Some(Invalid::UnknownVillage) {
                format!("{county}999999").into()
            } else {
                code.into()
            }
        };
        let date = |d: NaiveDate| -> Value {
            if bad == Some(Invalid::ImpossibleDate) {
                impossible_date(d).into()
            } else {
                d.to_string().into()
            }
        };
        let code = |list: &str, code: &'static str| -> Value {
            if bad == Some(Invalid::UnknownCode) {
                vocabulary()
                    .list(list)
                    .get(code)
                    .map_or("未知", |c| c.zh.as_str())
                    .into()
            } else {
                code.into()
            }
        };
        m.insert("id_number".into(), id.clone().into());
        match row.payload {
            Payload::Retraction => {}
            Payload::Woman(w) => {
                m.insert("region_code".into(), region(w.region));
                m.insert("ethnicity".into(), code("ethnicity", w.ethnicity));
                m.insert("marital_status".into(), w.marital.into());
                m.insert("education".into(), w.education.into());
                m.insert("children_under_16".into(), w.children.into());
                m.insert("elderly_dependants".into(), w.elderly.into());
            }
            Payload::Event(e) => {
                m.insert("event_type".into(), code("event_types", e.kind.as_str()));
                m.insert("event_date".into(), date(e.date));
                if let Some(r) = e.region {
                    m.insert("region_code".into(), region(r));
                }
                if let Some((dest, work)) = e.departure {
                    m.insert("destination".into(), dest.into());
                    m.insert("work_type".into(), work.into());
                }
            }
            Payload::Flag(f) => {
                m.insert("group".into(), code("priority_groups", f.group));
                m.insert("valid_from".into(), date(f.from));
                if let Some(to) = f.to {
                    m.insert("valid_to".into(), to.to_string().into());
                }
                if let Some(detail) = f.detail {
                    m.insert("detail".into(), detail.into());
                }
            }
            Payload::Service(s) => {
                let ty = &self.world.services[s.kind as usize];
                m.insert("measure".into(), ty.measure.into());
                m.insert(
                    "service_type".into(),
                    if bad == Some(Invalid::UnknownCode) {
                        ty.zh.into()
                    } else {
                        ty.code.into()
                    },
                );
                m.insert("service_date".into(), date(s.date));
                if let Some(end) = s.end {
                    m.insert("service_end".into(), end.to_string().into());
                }
                m.insert(
                    "provider_unit".into(),
                    provider_unit(src, s.place, s.township_unit).into(),
                );
                m.insert("region_code".into(), region(s.place));
                if let Some(cents) = s.amount_cents {
                    m.insert(
                        "amount_yuan".into(),
                        format!("{}.{:02}", cents / 100, cents % 100).into(),
                    );
                }
                if let Some(q) = s.quantity {
                    m.insert("quantity".into(), q.into());
                }
            }
            Payload::Registration(r) => {
                let action = if r.registered {
                    "registered"
                } else {
                    "deregistered"
                };
                m.insert("action".into(), code("registration_actions", action));
                m.insert("effective_date".into(), date(r.date));
                m.insert("reason".into(), r.reason.into());
                m.insert("region_code".into(), region(r.region));
            }
        }
        Value::Object(m)
    }
}

/// The mistakes that fit a payload, one drawn at random.
fn pick_invalid(clerk: &mut Clerk, payload: &Payload) -> Option<Invalid> {
    use Invalid::*;
    let options: &[Invalid] = match payload {
        Payload::Retraction => &[CheckDigit],
        Payload::Woman(_) => &[CheckDigit, UnknownVillage, UnknownCode],
        Payload::Event(e) if e.region.is_some() => {
            &[CheckDigit, UnknownVillage, ImpossibleDate, UnknownCode]
        }
        Payload::Event(_) | Payload::Flag(_) => &[CheckDigit, ImpossibleDate, UnknownCode],
        Payload::Service(_) | Payload::Registration(_) => {
            &[CheckDigit, UnknownVillage, ImpossibleDate, UnknownCode]
        }
    };
    Some(options[clerk.below(options.len())])
}

/// Swaps two adjacent, different digits of the sequence part (a typing slip the check
/// character always catches), or changes the check character when they are all equal.
fn spoil_check_digit(id: &mut [u8; 18]) {
    for i in [15, 14, 13] {
        if id[i] != id[i + 1] {
            id.swap(i, i + 1);
            if check_char(&id[..17]) as u8 != id[17] {
                return;
            }
            id.swap(i, i + 1);
        }
    }
    let right = check_char(&id[..17]) as u8;
    id[17] = if right == b'0' { b'1' } else { b'0' };
}

/// A date a clerk could type but no calendar has: day and month swapped when the day is
/// above 12, the 31st of a 30-day month, or 30 February.
fn impossible_date(d: NaiveDate) -> String {
    let (y, m, day) = (d.year(), d.month(), d.day());
    if day > 12 {
        format!("{y}-{day:02}-{m:02}")
    } else if matches!(m, 4 | 6 | 9 | 11) {
        format!("{y}-{m:02}-31")
    } else {
        format!("{y}-02-30")
    }
}

/// `隆安县妇联`, or `城厢镇卫生院` for a township outpost.
fn provider_unit(src: Src, place: &str, township: bool) -> String {
    let table = regions();
    if township && let Some(t) = table.ancestor(place, RegionLevel::Township) {
        return format!("{}{}", t.name, src.township_unit());
    }
    match table.ancestor(place, RegionLevel::County) {
        Some(c) => format!("{}{}", c.name, src.county_unit()),
        None => src.county_unit().to_string(),
    }
}
