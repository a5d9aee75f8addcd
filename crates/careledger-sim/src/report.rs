//! What the departments record about one woman and when they report it: her base record,
//! her life events, priority-group memberships, care services and the ledger keeper's
//! registrations, with the lags, corrections, double entries and retractions of real clerks.

use careledger_model::status::EventKind;
use careledger_model::{RegionLevel, Table, regions};
use chrono::NaiveDate;
use rand::Rng;
use rand::rngs::StdRng;

use crate::calendar::{
    add_years, between, first_of_month, next_month, plus, poisson, report_lag, weighted,
};
use crate::life::{Person, day_in};
use crate::wire::{Clerk, EventRec, FlagRec, Payload, RegRec, Send, ServiceRec, Sink, WomanRec};
use crate::world::{Src, World, ancestor};

/// Writes one woman's records into the sink.
struct Out<'a, 'w> {
    sink: &'a mut Sink<'w>,
    clerk: &'a mut Clerk,
    woman: u32,
    next_rec: u16,
}

impl Out<'_, '_> {
    fn record(&mut self, table: Table, src: Src, sends: &[Send]) {
        let rec = self.next_rec;
        self.next_rec += 1;
        self.sink
            .emit(self.clerk, self.woman, rec, table, src, sends);
    }
}

/// The day a fact known before the start is reported: during the first survey.
fn first_survey(rng: &mut StdRng, world: &World) -> NaiveDate {
    plus(world.start, rng.random_range(0..=56))
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
}

/// Reports everything about `p`.
pub(crate) fn report(
    world: &World,
    p: &Person,
    rng: &mut StdRng,
    clerk: &mut Clerk,
    sink: &mut Sink<'_>,
) {
    let mut out = Out {
        sink,
        clerk,
        woman: p.index,
        next_rec: 1,
    };
    women(world, p, rng, &mut out);
    life_events(world, p, rng, &mut out);
    let spells = spells(world, p, rng);
    flags(world, &spells, rng, &mut out);
    let registered = registrations(world, p, rng, &mut out);
    services(world, p, &spells, &registered, rng, &mut out);
}

fn women(world: &World, p: &Person, rng: &mut StdRng, out: &mut Out<'_, '_>) {
    let src = if rng.random_bool(0.9) {
        Src::CivilAffairs
    } else {
        Src::WomensFederation
    };
    let report = if rng.random_bool(0.92) {
        first_survey(rng, world)
    } else {
        // Found late: her events may arrive before her record does.
        plus(world.start, rng.random_range(57..=300))
    };
    let rec = WomanRec {
        region: p.village,
        ethnicity: p.ethnicity,
        marital: p.marital,
        education: p.education,
        children: p.children,
        elderly: p.elderly,
    };
    let mut sends = vec![Send::on(report, Payload::Woman(rec))];
    if rng.random_bool(0.04) {
        // First entered with a neighbouring village or a wrong count, corrected later.
        let neighbours = world
            .by_township
            .get(&p.village[..9])
            .map(Vec::as_slice)
            .unwrap_or_default();
        let wrong = match neighbours.iter().find(|v| v.code != p.village) {
            Some(v) if rng.random_bool(0.5) => WomanRec {
                region: v.code.as_str(),
                ..rec
            },
            _ => WomanRec {
                children: rec.children + 1,
                ..rec
            },
        };
        sends[0].payload = Payload::Woman(wrong);
        sends.push(Send::after(rng.random_range(7..=90), Payload::Woman(rec)));
    }
    out.record(Table::Women, src, &sends);
    if rng.random_bool(0.05) {
        // The other department keeps a record of her too.
        let other = if src == Src::CivilAffairs {
            Src::WomensFederation
        } else {
            Src::CivilAffairs
        };
        let later = plus(report, rng.random_range(14..=120));
        out.record(Table::Women, other, &[Send::on(later, Payload::Woman(rec))]);
    }
}

fn event_source(rng: &mut StdRng, kind: EventKind) -> Src {
    match kind {
        EventKind::Died => Src::PublicSecurity,
        EventKind::SpouseDied if rng.random_bool(0.75) => Src::PublicSecurity,
        EventKind::SpouseDied => Src::CivilAffairs,
        EventKind::Married | EventKind::Divorced if rng.random_bool(0.92) => Src::CivilAffairs,
        _ if rng.random_bool(0.8) => Src::CivilAffairs,
        _ => Src::WomensFederation,
    }
}

fn life_events(world: &World, p: &Person, rng: &mut StdRng, out: &mut Out<'_, '_>) {
    let start = world.start;
    for (i, e) in p.events.iter().enumerate() {
        if e.kind != EventKind::Died && e.date >= start && rng.random_bool(0.02) {
            // Never reported: the village cadre did not hear of it.
            continue;
        }
        let src = event_source(rng, e.kind);
        let report = if e.date < start {
            first_survey(rng, world)
        } else {
            plus(e.date, report_lag(rng, 35, 0.04))
        };
        let rec = EventRec {
            kind: e.kind,
            date: e.date,
            region: e.region,
            departure: e.departure,
        };
        let mut sends = vec![Send::on(report, Payload::Event(rec))];
        if rng.random_bool(0.03) {
            // A wrong day first (a slip, or the day of entry), corrected later; it stays
            // between her neighbouring events.
            let prev = i.checked_sub(1).map(|k| p.events[k].date);
            let next = p.events.get(i + 1).map(|n| n.date);
            let slip = rng.random_range(1..=20);
            let mut wrong = if rng.random_bool(0.5) {
                plus(e.date, -slip)
            } else {
                plus(e.date, slip)
            };
            if rng.random_bool(0.3) {
                wrong = report;
            }
            let fits = wrong != e.date
                && wrong <= report
                && prev.is_none_or(|d| d < wrong)
                && next.is_none_or(|d| wrong < d);
            if fits {
                sends[0].payload = Payload::Event(EventRec { date: wrong, ..rec });
                sends.push(Send::after(rng.random_range(7..=90), Payload::Event(rec)));
            }
        }
        out.record(Table::LifeEvents, src, &sends);
        if e.kind != EventKind::Died && rng.random_bool(0.02) {
            // The other department reports it as well.
            let other = if src == Src::CivilAffairs {
                Src::WomensFederation
            } else {
                Src::CivilAffairs
            };
            let when = plus(report, rng.random_range(0..=40));
            out.record(
                Table::LifeEvents,
                other,
                &[Send::on(when, Payload::Event(rec))],
            );
        }
        if rng.random_bool(0.01) {
            // Entered twice by mistake; the double is retracted.
            out.record(
                Table::LifeEvents,
                src,
                &[
                    Send::on(report, Payload::Event(rec)),
                    Send::after(rng.random_range(5..=60), Payload::Retraction),
                ],
            );
        }
    }
}

/// A priority-group membership. `approved_to` is known when it is first reported (an
/// approval until a date); `closed` is learned later and sent as a new version.
#[derive(Debug, Clone, Copy)]
struct Spell {
    group: &'static str,
    detail: Option<&'static str>,
    src: Src,
    from: NaiveDate,
    approved_to: Option<NaiveDate>,
    closed: Option<NaiveDate>,
}

impl Spell {
    fn active(&self, d: NaiveDate) -> bool {
        self.from <= d
            && self.approved_to.is_none_or(|t| d <= t)
            && self.closed.is_none_or(|t| d <= t)
    }
}

const CANCERS: [&str; 2] = ["宫颈癌", "乳腺癌"];

fn spells(world: &World, p: &Person, rng: &mut StdRng) -> Vec<Spell> {
    let start = world.start;
    let horizon = world.horizon;
    let last = p.death.map_or(horizon, |d| plus(d, -1)).min(horizon);
    let mut out = Vec::new();
    let poor = rng.random_bool(0.10);
    let disabled = rng.random_bool(0.04);
    let ill = rng.random_bool(0.03);
    let spell = |group, detail, src, from| Spell {
        group,
        detail,
        src,
        from,
        approved_to: None,
        closed: None,
    };
    if poor {
        // Registered in 2014-2019; most stay under monitoring, some are taken off.
        let from = between(rng, date(2014, 10, 1), date(2019, 12, 31));
        let detail = if rng.random_bool(0.7) {
            "脱贫户"
        } else {
            "防返贫监测对象"
        };
        let mut s = spell(
            "registered_poor",
            Some(detail),
            Src::RuralRevitalisation,
            from,
        );
        if start <= last && rng.random_bool(0.2) {
            s.closed = Some(between(rng, start, last));
        }
        out.push(s);
    }
    if disabled {
        let grade = weighted(rng, &[("1", 10.0), ("2", 20.0), ("3", 30.0), ("4", 40.0)]);
        let from = if rng.random_bool(0.85) {
            let earliest = add_years(p.birth, 16).max(date(2005, 1, 1));
            between(rng, earliest, plus(start, -1))
        } else {
            between(rng, start, last)
        };
        if from <= last {
            out.push(spell(
                "disabled",
                Some(grade),
                Src::DisabledFederation,
                from,
            ));
        }
    }
    if ill {
        let from = between(rng, add_years(start, -1), last);
        let detail = weighted(
            rng,
            &[
                (CANCERS[0], 25.0),
                (CANCERS[1], 25.0),
                ("尿毒症", 15.0),
                ("恶性肿瘤", 20.0),
                ("重症精神疾病", 15.0),
            ],
        );
        if from <= last {
            let mut s = spell("seriously_ill", Some(detail), Src::Health, from);
            let over = plus(from, rng.random_range(60..=400));
            if rng.random_bool(0.45) && over <= last {
                s.closed = Some(over);
            }
            out.push(s);
        }
    }
    let hardship = 0.062
        * (1.0
            + 1.5 * f64::from(u8::from(poor))
            + f64::from(u8::from(disabled))
            + f64::from(u8::from(ill)));
    if rng.random_bool(hardship.min(1.0)) {
        let extreme_weight = if disabled { 30.0 } else { 10.0 };
        let kind = weighted(
            rng,
            &[
                ("dibao", 70.0),
                ("extreme_poverty", extreme_weight),
                ("temporary_assistance", 20.0),
            ],
        );
        match kind {
            "dibao" => {
                // Yearly approvals (年审), each valid for a year, renewed or not.
                let mut a = between(rng, add_years(start, -3), last);
                loop {
                    let to = plus(add_years(a, 1), -1);
                    if to >= start {
                        out.push(Spell {
                            approved_to: (to <= horizon).then_some(to),
                            ..spell("hardship", Some("dibao"), Src::CivilAffairs, a)
                        });
                    }
                    a = plus(to, 1);
                    if a > last || !rng.random_bool(0.85) {
                        break;
                    }
                }
            }
            "extreme_poverty" => {
                let from = if rng.random_bool(0.8) {
                    between(rng, date(2015, 1, 1), plus(start, -1))
                } else {
                    between(rng, start, last)
                };
                if from <= last {
                    out.push(spell(
                        "hardship",
                        Some("extreme_poverty"),
                        Src::CivilAffairs,
                        from,
                    ));
                }
            }
            _ => {
                for _ in 0..rng.random_range(1..=2) {
                    if start > last {
                        break;
                    }
                    let from = between(rng, start, last);
                    let to = plus(from, rng.random_range(30..=90));
                    out.push(Spell {
                        approved_to: (to <= horizon).then_some(to),
                        ..spell(
                            "hardship",
                            Some("temporary_assistance"),
                            Src::CivilAffairs,
                            from,
                        )
                    });
                }
            }
        }
    }
    // Memberships over before the start are not in the departments' first pushes.
    out.retain(|s| s.closed.is_none_or(|c| c >= start) && s.approved_to.is_none_or(|t| t >= start));
    if let Some(death) = p.death {
        for s in &mut out {
            if s.active(death) && s.closed.is_none() && rng.random_bool(0.5) {
                s.closed = Some(death);
            }
        }
    }
    out
}

fn flags(world: &World, spells: &[Spell], rng: &mut StdRng, out: &mut Out<'_, '_>) {
    for s in spells {
        let report = if s.from < world.start {
            first_survey(rng, world)
        } else {
            plus(s.from, report_lag(rng, 30, 0.03))
        };
        let rec = FlagRec {
            group: s.group,
            from: s.from,
            to: s.approved_to,
            detail: s.detail,
        };
        let mut sends = vec![Send::on(report, Payload::Flag(rec))];
        if rng.random_bool(0.03) {
            let slip = rng.random_range(1..=30);
            let wrong = if rng.random_bool(0.5) {
                plus(s.from, -slip)
            } else {
                plus(s.from, slip)
            };
            if wrong <= report && s.approved_to.is_none_or(|t| wrong <= t) {
                sends[0].payload = Payload::Flag(FlagRec { from: wrong, ..rec });
                sends.push(Send::after(rng.random_range(7..=90), Payload::Flag(rec)));
            }
        }
        if let Some(closed) = s.closed {
            let when = plus(closed, report_lag(rng, 30, 0.03));
            sends.push(Send::on(
                when,
                Payload::Flag(FlagRec {
                    to: Some(closed),
                    ..rec
                }),
            ));
        }
        out.record(Table::GroupFlags, s.src, &sends);
        if rng.random_bool(0.01) {
            out.record(
                Table::GroupFlags,
                s.src,
                &[
                    Send::on(report, Payload::Flag(rec)),
                    Send::after(rng.random_range(5..=60), Payload::Retraction),
                ],
            );
        }
    }
}

const REGISTER_REASONS: [(&str, f64); 3] = [
    ("丈夫外出务工满半年，摸底排查登记", 60.0),
    ("村委会上报，核实后纳入台账", 30.0),
    ("妇联走访发现，核实后纳入台账", 10.0),
];

fn deregister_reason(exit: Option<&str>) -> &'static str {
    match exit {
        Some("spouse_returned") => "丈夫返乡，不再符合留守条件",
        Some("moved_out") => "本人迁出农村",
        Some("divorced") => "离婚",
        Some("spouse_died") => "丈夫死亡",
        Some("died") => "本人死亡",
        _ => "核实后退出台账",
    }
}

/// The ledger keeper's registrations of the true episodes; returns the registered intervals.
fn registrations(
    world: &World,
    p: &Person,
    rng: &mut StdRng,
    out: &mut Out<'_, '_>,
) -> Vec<(NaiveDate, NaiveDate)> {
    let start = world.start;
    let horizon = world.horizon;
    let mut registered = Vec::new();
    for ep in &p.episodes {
        if ep.end.is_some_and(|e| e < start) || rng.random_bool(0.10) {
            // Over before the ledger started, or never registered (漏登).
            continue;
        }
        let eff = plus(ep.start, rng.random_range(30..=90));
        if eff > horizon || ep.end.is_some_and(|e| eff >= e) {
            continue;
        }
        let Some(region) = p.residence_on(eff) else {
            continue;
        };
        let report = if eff < start {
            first_survey(rng, world)
        } else {
            plus(eff, report_lag(rng, 14, 0.02))
        };
        let rec = RegRec {
            registered: true,
            date: eff,
            reason: weighted(rng, &REGISTER_REASONS),
            region,
        };
        let mut sends = vec![Send::on(report, Payload::Registration(rec))];
        if rng.random_bool(0.05) {
            let wrong = plus(eff, -rng.random_range(1..=20));
            sends[0].payload = Payload::Registration(RegRec { date: wrong, ..rec });
            sends.push(Send::after(
                rng.random_range(7..=60),
                Payload::Registration(rec),
            ));
        }
        out.record(Table::Registrations, Src::CivilAffairs, &sends);
        let mut until = horizon;
        if let Some(end) = ep.end
            && !rng.random_bool(0.15)
        {
            let deff = plus(end, rng.random_range(15..=120));
            if deff <= horizon {
                let region = ep
                    .region_at_end
                    .as_deref()
                    .and_then(|c| regions().get(c))
                    .map_or(region, |r| r.code.as_str());
                let rec = RegRec {
                    registered: false,
                    date: deff,
                    reason: deregister_reason(ep.exit_reason),
                    region,
                };
                let report = plus(deff, report_lag(rng, 14, 0.02));
                out.record(
                    Table::Registrations,
                    Src::CivilAffairs,
                    &[Send::on(report, Payload::Registration(rec))],
                );
                until = deff;
            }
        }
        registered.push((eff, until));
    }
    registered
}

/// Who may receive a randomly drawn service.
#[derive(Debug, Clone, Copy)]
enum Need {
    Anyone,
    Mother,
    WorkingAge,
    Young,
}

/// (type, base weight per month, multiplier while she is in the ledger, who, group activity)
const RANDOM_SERVICES: [(&str, f64, f64, Need, bool); 25] = [
    ("home_visit", 8.0, 3.0, Need::Anyone, false),
    ("culture_sport_activity", 6.0, 1.5, Need::Anyone, true),
    ("legal_education", 6.0, 1.5, Need::Anyone, true),
    ("parenting_class", 5.0, 2.0, Need::Mother, true),
    ("parent_child_activity", 3.0, 2.0, Need::Mother, true),
    ("one_to_one_guidance", 1.0, 4.0, Need::Mother, false),
    ("skills_training", 5.0, 1.5, Need::WorkingAge, true),
    ("ecommerce_training", 2.0, 1.5, Need::Young, true),
    (
        "entrepreneurship_support",
        1.0,
        1.5,
        Need::WorkingAge,
        false,
    ),
    ("job_placement", 2.0, 1.5, Need::WorkingAge, false),
    ("counselling", 1.5, 3.0, Need::Anyone, false),
    ("marriage_family_guidance", 1.0, 2.0, Need::Anyone, false),
    ("mutual_aid_group", 2.5, 3.0, Need::Anyone, true),
    ("volunteer_pairing", 0.4, 6.0, Need::Anyone, false),
    (
        "village_governance_participation",
        2.0,
        1.5,
        Need::Anyone,
        true,
    ),
    ("dispute_mediation", 1.0, 1.0, Need::Anyone, false),
    ("hotline_12338_case", 0.3, 1.5, Need::Anyone, false),
    ("legal_aid", 0.3, 1.5, Need::Anyone, false),
    ("land_rights_registration", 1.0, 1.0, Need::Anyone, false),
    ("criminal_case_handled", 0.05, 1.0, Need::Anyone, false),
    ("charity_parcel", 0.8, 2.0, Need::Anyone, false),
    ("two_cancers_insurance", 1.0, 1.0, Need::Anyone, false),
    ("charity_water_cellar", 0.2, 1.0, Need::Anyone, false),
    ("charity_startup_fund", 0.3, 1.5, Need::WorkingAge, false),
    ("temporary_assistance", 0.3, 1.0, Need::Anyone, false),
];

/// Builds one woman's services.
struct Services<'a> {
    world: &'a World,
    p: &'a Person,
    list: Vec<(Src, ServiceRec)>,
}

impl Services<'_> {
    /// Adds a service of type `code` on `day` (nothing if the code list lacks the type).
    fn add(
        &mut self,
        rng: &mut StdRng,
        code: &str,
        day: NaiveDate,
        group_activity: bool,
        amount_cents: Option<u32>,
    ) {
        let Some(kind) = self.world.service(code) else {
            return;
        };
        let ty = &self.world.services[kind as usize];
        let src = if ty.units.len() == 1 || rng.random_bool(0.6) {
            ty.units[0]
        } else {
            ty.units[rng.random_range(1..ty.units.len())]
        };
        let place = match self.p.residence_on(day) {
            None => self.p.county,
            Some(home) if group_activity => {
                let r: f64 = rng.random();
                if r < 0.45 {
                    ancestor(home, RegionLevel::Township)
                } else if r < 0.8 {
                    home
                } else {
                    ancestor(home, RegionLevel::County)
                }
            }
            Some(home) => home,
        };
        let last = self
            .p
            .death
            .map_or(self.world.horizon, |d| plus(d, -1))
            .min(self.world.horizon);
        let span = match code {
            "skills_training" if rng.random_bool(0.7) => rng.random_range(2..=14),
            "ecommerce_training" => rng.random_range(1..=5),
            "parenting_class" if rng.random_bool(0.25) => rng.random_range(1..=2),
            "culture_sport_activity" if rng.random_bool(0.15) => rng.random_range(1..=3),
            _ => 0,
        };
        let end = (span > 0).then(|| plus(day, span)).filter(|e| *e <= last);
        let quantity = match code {
            "skills_training" | "ecommerce_training" => {
                Some(end.map_or(1, |e| (e - day).num_days() as u16 + 1))
            }
            "charity_parcel" => Some(rng.random_range(1..=2)),
            "rehab_service" => Some(rng.random_range(1..=10)),
            _ => rng.random_bool(0.75).then_some(1),
        };
        self.list.push((
            src,
            ServiceRec {
                kind,
                date: day,
                end,
                place,
                township_unit: place != self.p.county && rng.random_bool(0.6),
                amount_cents,
                quantity,
            },
        ));
    }
}

/// Yuan `lo..=hi` in steps of `step`, as cents; sometimes with 50 fen.
fn yuan(rng: &mut StdRng, lo: u32, hi: u32, step: u32) -> Option<u32> {
    let y = rng.random_range(lo / step..=hi / step) * step;
    let fen = if rng.random_bool(0.15) { 50 } else { 0 };
    Some(y * 100 + fen)
}

fn services(
    world: &World,
    p: &Person,
    spells: &[Spell],
    registered: &[(NaiveDate, NaiveDate)],
    rng: &mut StdRng,
    out: &mut Out<'_, '_>,
) {
    let start = world.start;
    let horizon = world.horizon;
    let mut s = Services {
        world,
        p,
        list: Vec::new(),
    };
    let in_group = |d: NaiveDate| spells.iter().filter(|s| s.active(d)).count();

    // Everyday services, month by month, more while she is in the ledger or in a group.
    let mut month = first_of_month(start);
    while month <= horizon {
        let lo = month.max(start);
        let hi = plus(next_month(month), -1).min(horizon);
        month = next_month(month);
        let alive_until = p.death.map_or(hi, |d| plus(d, -1)).min(hi);
        if alive_until < lo {
            continue;
        }
        let mid = plus(lo, (alive_until - lo).num_days() / 2);
        let in_ledger = p.in_ledger_on(mid);
        let groups = in_group(mid);
        let rate = if !p.rural_on(mid) {
            0.06
        } else if in_ledger {
            0.40
        } else {
            0.17
        } + 0.06 * groups as f64;
        let share = ((hi - lo).num_days() + 1) as f64 / 30.4;
        let age = p.age_on(mid);
        let weights: Vec<(usize, f64)> = RANDOM_SERVICES
            .iter()
            .enumerate()
            .map(|(i, (code, w, ledger, need, _))| {
                let allowed = match need {
                    Need::Anyone => true,
                    Need::Mother => p.children > 0,
                    Need::WorkingAge => age < 55,
                    Need::Young => age < 45,
                };
                let mut w = if allowed { *w } else { 0.0 };
                if in_ledger {
                    w *= ledger;
                }
                if groups > 0 && matches!(*code, "charity_parcel" | "temporary_assistance") {
                    w *= 3.0;
                }
                (i, w)
            })
            .collect();
        for _ in 0..poisson(rng, rate * share) {
            let Some(day) = day_in(rng, world, p, lo, hi) else {
                break;
            };
            let (code, _, _, _, group_activity) = RANDOM_SERVICES[weighted(rng, &weights)];
            let amount = match code {
                "temporary_assistance" => yuan(rng, 300, 3000, 10),
                "charity_startup_fund" => yuan(rng, 5000, 20000, 1000),
                _ => None,
            };
            s.add(rng, code, day, group_activity, amount);
        }
    }

    // Yearly family-doctor contracts, a two-cancers screening for women of 35-64.
    for year in world.years() {
        let jan = date(year, 1, 1);
        let p_sign = if in_group(jan.max(start)) > 0 {
            0.75
        } else {
            0.3
        };
        if rng.random_bool(p_sign)
            && let Some(day) = day_in(rng, world, p, jan, date(year, 4, 30))
        {
            s.add(rng, "family_doctor_contract", day, false, None);
        }
    }
    if (35..=64).contains(&p.age_on(start))
        && rng.random_bool(0.45)
        && let Some(day) = day_in(rng, world, p, start, horizon)
    {
        s.add(rng, "two_cancers_screening", day, true, None);
    }

    // Priority-group services from the responsible departments.
    for sp in spells {
        match (sp.group, sp.detail) {
            ("hardship", Some("dibao")) if sp.from >= start => {
                if let Some(day) = day_in(rng, world, p, sp.from, plus(sp.from, 10)) {
                    let amount = yuan(rng, 280, 650, 10);
                    s.add(rng, "dibao_enrolment", day, false, amount);
                }
            }
            ("hardship", Some("temporary_assistance")) => {
                if let Some(day) = day_in(rng, world, p, sp.from, plus(sp.from, 7)) {
                    let amount = yuan(rng, 300, 3000, 10);
                    s.add(rng, "temporary_assistance", day, false, amount);
                }
            }
            ("seriously_ill", Some(d)) if CANCERS.contains(&d) && rng.random_bool(0.3) => {
                if let Some(day) = day_in(rng, world, p, plus(sp.from, 10), plus(sp.from, 90)) {
                    s.add(rng, "two_cancers_relief", day, false, Some(1_000_000));
                }
            }
            _ => {}
        }
        for year in world.years() {
            let (a, b) = (date(year, 1, 1), date(year, 12, 31));
            let Some(day) = day_in(rng, world, p, a.max(sp.from), b) else {
                continue;
            };
            if !sp.active(day) {
                continue;
            }
            match sp.group {
                "registered_poor" if rng.random_bool(0.5) => {
                    let amount = yuan(rng, 500, 5000, 10);
                    s.add(rng, "poverty_alleviation_support", day, false, amount);
                }
                "disabled" => {
                    if rng.random_bool(0.6) {
                        let amount = yuan(rng, 200, 2000, 10);
                        s.add(rng, "disability_rehabilitation", day, false, amount);
                    }
                    if rng.random_bool(0.5)
                        && let Some(day) = day_in(rng, world, p, a.max(sp.from), b)
                    {
                        s.add(rng, "rehab_service", day, false, None);
                    }
                }
                _ => {}
            }
        }
    }

    // The ledger keeper's survey at registration, and its visits while she is registered.
    for &(from, until) in registered {
        if rng.random_bool(0.7)
            && let Some(day) = day_in(rng, world, p, plus(from, -20), from)
        {
            s.add(rng, "registration_survey", day, false, None);
        }
        let mut q = from;
        while q <= until {
            let q_end = plus(q, 90).min(until);
            if rng.random_bool(0.5)
                && let Some(day) = day_in(rng, world, p, q, q_end)
            {
                s.add(rng, "ledger_visit", day, false, None);
            }
            q = plus(q, 91);
        }
    }

    let list = std::mem::take(&mut s.list);
    for (src, rec) in list {
        let report = plus(rec.end.unwrap_or(rec.date), report_lag(rng, 25, 0.04));
        let mut sends = vec![Send::on(report, Payload::Service(rec))];
        if rng.random_bool(0.03) {
            let wrong = match rec.amount_cents {
                Some(cents) if rng.random_bool(0.5) => ServiceRec {
                    // A slipped digit in the amount.
                    amount_cents: Some(if cents >= 100_000 {
                        cents / 10
                    } else {
                        cents * 10
                    }),
                    ..rec
                },
                _ => {
                    let slip = rng.random_range(1..=15);
                    ServiceRec {
                        date: plus(rec.date, -slip),
                        end: rec.end.map(|e| plus(e, -slip)),
                        ..rec
                    }
                }
            };
            sends[0].payload = Payload::Service(wrong);
            sends.push(Send::after(rng.random_range(7..=90), Payload::Service(rec)));
        }
        out.record(Table::Services, src, &sends);
        if rng.random_bool(0.015) {
            out.record(
                Table::Services,
                src,
                &[
                    Send::on(report, Payload::Service(rec)),
                    Send::after(rng.random_range(5..=60), Payload::Retraction),
                ],
            );
        }
    }
}
