//! Integration tests of the simulated departments: determinism, the wire contract (every row
//! that is not a deliberate clerk's mistake passes the model's validation), the share of
//! mistakes, and the realism the warehouse's reports rely on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Cursor;
use std::sync::OnceLock;
use std::time::Instant;

use careledger_model::resident_id::check_char;
use careledger_model::status::{EventKind, LifeEvent, Woman, derive_episodes};
use careledger_model::{
    FieldKind, PseudonymKey, RuleParams, Table, ValidationContext, regions, validate_batch,
    vocabulary,
};
use careledger_sim::{MAX_BATCH_ROWS, SimBatch, SimConfig, ndjson, simulate, simulate_each};
use chrono::{Datelike, Months, NaiveDate, Utc};
use serde_json::Value;

fn two_counties(women: usize, seed: u64) -> SimConfig {
    SimConfig {
        seed,
        women,
        county_prefixes: vec!["450123".into(), "450125".into()],
        ..SimConfig::default()
    }
}

/// The default run (2,000 women, all of Guangxi), simulated once for all tests.
fn guangxi() -> &'static (SimConfig, Vec<SimBatch>) {
    static RUN: OnceLock<(SimConfig, Vec<SimBatch>)> = OnceLock::new();
    RUN.get_or_init(|| {
        let config = SimConfig::default();
        let batches = simulate(&config);
        (config, batches)
    })
}

/// 1,500 women of 隆安县 and 马山县, simulated once.
fn counties() -> &'static (SimConfig, Vec<SimBatch>) {
    static RUN: OnceLock<(SimConfig, Vec<SimBatch>)> = OnceLock::new();
    RUN.get_or_init(|| {
        let config = two_counties(1500, 11);
        let batches = simulate(&config);
        (config, batches)
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn field<'a>(row: &'a Value, name: &str) -> Option<&'a str> {
    row.get(name).and_then(Value::as_str)
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("a date")
}

/// A clerk's mistake the simulator makes on purpose, recognised from the row alone: a check
/// character that does not fit, a village code ending in 999999, a day no calendar has, or a
/// Chinese label where a code belongs.
fn deliberately_invalid(table: Table, row: &Value) -> bool {
    let obj = row.as_object().expect("rows are objects");
    table.spec().fields.iter().any(|f| {
        let Some(v) = obj.get(&f.name) else {
            return false;
        };
        let t = text(v);
        match &f.kind {
            FieldKind::PersonalId => {
                t.len() == 18 && check_char(&t.as_bytes()[..17]) != t.as_bytes()[17] as char
            }
            FieldKind::Region { .. } => t.ends_with("999999"),
            FieldKind::Date { .. } => NaiveDate::parse_from_str(&t, "%Y-%m-%d").is_err(),
            FieldKind::Code { .. } => !t.is_ascii(),
            _ => false,
        }
    })
}

/// Decodes a batch as the gateway does and validates it; returns the rejected row indices
/// and the error codes.
fn validate(batch: &SimBatch) -> (HashSet<usize>, Vec<String>) {
    let spec = batch.table.spec();
    let body = ndjson(&batch.rows);
    let reader = arrow_json::ReaderBuilder::new(spec.wire_schema())
        .with_coerce_primitive(true)
        .build(Cursor::new(body.into_bytes()))
        .expect("reader");
    let key = PseudonymKey::new(b"careledger-sim-test-secret").expect("key");
    let now = Utc::now();
    let ctx = ValidationContext {
        source: &batch.source,
        today: now.date_naive(),
        key: &key,
        batch_id: &batch.idempotency_key,
        ingested_at: now,
    };
    let mut rejected = HashSet::new();
    let mut codes = Vec::new();
    let mut first = 0;
    for decoded in reader {
        let decoded = decoded.unwrap_or_else(|e| panic!("{}: decode: {e}", batch.idempotency_key));
        let v = validate_batch(spec, &decoded, &ctx, first).expect("validate");
        rejected.extend(v.rejected.iter().map(|i| first + i));
        codes.extend(v.errors.into_iter().map(|e| e.code));
        first += decoded.num_rows();
    }
    assert_eq!(first, batch.rows.len(), "every row decoded");
    (rejected, codes)
}

fn check_contract(config: &SimConfig, batches: &[SimBatch]) {
    let mut keys = HashSet::new();
    let mut previous: Option<(NaiveDate, Table, String)> = None;
    for b in batches {
        assert!(
            keys.insert(b.idempotency_key.clone()),
            "duplicate key {}",
            b.idempotency_key
        );
        let order = (b.day, b.table, b.source.clone());
        if let Some(p) = &previous {
            assert!(*p <= order, "batches out of order: {p:?} then {order:?}");
        }
        previous = Some(order);
        assert!(
            b.day >= config.start && b.day <= config.end,
            "{} outside the run",
            b.day
        );
        assert!(!b.rows.is_empty() && b.rows.len() <= MAX_BATCH_ROWS);

        let (rejected, codes) = validate(b);
        let deliberate: HashSet<usize> = b
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| deliberately_invalid(b.table, r))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            rejected, deliberate,
            "{}: rejected rows differ from the deliberate mistakes; errors: {codes:?}",
            b.idempotency_key
        );
        for code in &codes {
            assert!(
                code == "id_number.check_digit"
                    || code.ends_with(".unknown")
                    || code.ends_with(".invalid_date")
                    || code.ends_with(".unknown_code"),
                "{}: unexpected error {code}",
                b.idempotency_key
            );
        }
        for row in &b.rows {
            let obj = row.as_object().expect("object");
            assert!(
                !obj.contains_key("source"),
                "rows leave source to the token"
            );
            assert!(obj["record_version"].as_u64().is_some_and(|v| v >= 1));
            let op = field(row, "op").expect("op");
            if op == "delete" {
                let keys: HashSet<&str> = obj.keys().map(String::as_str).collect();
                let common: HashSet<&str> =
                    ["record_id", "record_version", "op", "id_number"].into();
                assert_eq!(keys, common, "a retraction carries only the common fields");
            }
            for f in &b.table.spec().fields {
                if let (FieldKind::Date { allow_future }, Some(v)) = (&f.kind, field(row, &f.name))
                    && let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d")
                {
                    let bound = if *allow_future { config.end } else { b.day };
                    assert!(
                        d <= bound,
                        "{}: {} {d} after {bound}",
                        b.idempotency_key,
                        f.name
                    );
                }
            }
            if deliberately_invalid(b.table, row) || op == "delete" {
                continue;
            }
            check_responsible(b, row);
        }
    }
}

/// Each row comes from a department responsible for it.
fn check_responsible(b: &SimBatch, row: &Value) {
    let src = b.source.as_str();
    match b.table {
        Table::Women => assert!(matches!(src, "civil_affairs" | "womens_federation")),
        Table::LifeEvents => {
            let kind = field(row, "event_type").expect("event_type");
            let ok = match kind {
                "died" => src == "public_security",
                "spouse_died" => matches!(src, "public_security" | "civil_affairs"),
                _ => matches!(src, "civil_affairs" | "womens_federation"),
            };
            assert!(ok, "{kind} from {src}");
            if kind == "moved_in" {
                assert!(
                    regions()
                        .get(field(row, "region_code").expect("village"))
                        .is_some()
                );
            }
        }
        Table::GroupFlags => {
            let want = match field(row, "group").expect("group") {
                "hardship" => "civil_affairs",
                "disabled" => "disabled_federation",
                "seriously_ill" => "health",
                _ => "rural_revitalisation",
            };
            assert_eq!(src, want);
        }
        Table::Services => {
            let ty = field(row, "service_type").expect("type");
            let code = vocabulary()
                .list("service_types")
                .get(ty)
                .expect("known type");
            assert!(code.units.iter().any(|u| u == src), "{ty} from {src}");
            let money = row.get("amount_yuan").is_some();
            assert!(
                !money || code.measure.as_deref() == Some("M1"),
                "amount on {ty}"
            );
            if let Some(a) = field(row, "amount_yuan") {
                let (_, cents) = a.split_once('.').expect("two decimals");
                assert_eq!(cents.len(), 2, "{a}");
            }
        }
        Table::Registrations => assert_eq!(src, "civil_affairs"),
    }
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let a = simulate(&two_counties(300, 7));
    let b = simulate(&two_counties(300, 7));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    let c = simulate(&two_counties(300, 8));
    assert_ne!(a, c);
    let text = |bs: &[SimBatch]| bs.iter().map(|b| ndjson(&b.rows)).collect::<String>();
    assert_eq!(text(&a), text(&b));
    assert_ne!(text(&a), text(&c));
}

#[test]
fn every_row_but_the_deliberate_mistakes_passes_validation() {
    let (config, batches) = guangxi();
    check_contract(config, batches);
    let (config, batches) = counties();
    check_contract(config, batches);
    for b in batches {
        for row in &b.rows {
            if let Some(id) = field(row, "id_number") {
                assert!(id.starts_with("450123") || id.starts_with("450125"));
            }
        }
    }
}

fn invalid_share(batches: &[SimBatch]) -> (usize, usize) {
    let mut bad = 0;
    let mut all = 0;
    for b in batches {
        all += b.rows.len();
        bad += b
            .rows
            .iter()
            .filter(|r| deliberately_invalid(b.table, r))
            .count();
    }
    (bad, all)
}

#[test]
fn the_share_of_invalid_rows_is_close_to_the_configured_one() {
    let (bad, all) = invalid_share(&guangxi().1);
    let share = bad as f64 / all as f64;
    assert!((0.007..0.013).contains(&share), "{bad} of {all} = {share}");

    let config = SimConfig {
        invalid_share: 0.05,
        ..two_counties(1000, 3)
    };
    let batches = simulate(&config);
    let (bad, all) = invalid_share(&batches);
    let share = bad as f64 / all as f64;
    assert!((0.043..0.057).contains(&share), "{bad} of {all} = {share}");
    check_contract(&config, &batches);

    let clean = simulate(&SimConfig {
        invalid_share: 0.0,
        ..two_counties(500, 3)
    });
    assert_eq!(invalid_share(&clean).0, 0);
}

/// The latest valid version of every record, retractions removed: what the warehouse's
/// current views hold at the end.
fn current(batches: &[SimBatch], table: Table) -> Vec<&Value> {
    let mut latest: HashMap<(String, String), (u64, &Value)> = HashMap::new();
    for b in batches.iter().filter(|b| b.table == table) {
        for row in &b.rows {
            if deliberately_invalid(table, row) {
                continue;
            }
            let key = (
                b.source.clone(),
                field(row, "record_id").expect("id").to_string(),
            );
            let v = row["record_version"].as_u64().expect("version");
            if latest.get(&key).is_none_or(|(old, _)| *old < v) {
                latest.insert(key, (v, row));
            }
        }
    }
    let mut rows: Vec<&Value> = latest
        .into_values()
        .filter(|(_, r)| field(r, "op") == Some("upsert"))
        .map(|(_, r)| r)
        .collect();
    rows.sort_by_key(|r| field(r, "record_id").map(str::to_string));
    rows
}

#[test]
fn husbands_leave_after_the_spring_festival() {
    let mut by_month = [0usize; 13];
    for row in current(&guangxi().1, Table::LifeEvents) {
        if field(row, "event_type") == Some("spouse_departed") {
            by_month[date(field(row, "event_date").expect("date")).month() as usize] += 1;
        }
    }
    let peak = by_month[2] + by_month[3];
    let summer = by_month[8] + by_month[9];
    assert!(
        peak > 2 * summer,
        "Feb-Mar {peak} vs Aug-Sep {summer}: {by_month:?}"
    );
    let mut returns = [0usize; 13];
    for row in current(&guangxi().1, Table::LifeEvents) {
        if field(row, "event_type") == Some("spouse_returned") {
            returns[date(field(row, "event_date").expect("date")).month() as usize] += 1;
        }
    }
    let before = returns[12] + returns[1];
    let mid = returns[6] + returns[7];
    assert!(
        before > 2 * mid,
        "returns Dec-Jan {before} vs Jun-Jul {mid}: {returns:?}"
    );
}

#[test]
fn some_batches_are_sent_twice() {
    let batches = &guangxi().1;
    let twice = batches.iter().filter(|b| b.send_twice).count();
    assert!(twice > 0);
    let share = twice as f64 / batches.len() as f64;
    assert!(share < 0.05, "{twice} of {}", batches.len());
}

/// Departure-to-return absences per woman, short visits (≤ 30 days) bridged; an absence
/// still running is counted to the run's end.
fn absences(batches: &[SimBatch], end: NaiveDate) -> HashMap<String, Vec<(NaiveDate, NaiveDate)>> {
    let mut events: HashMap<String, Vec<(NaiveDate, bool)>> = HashMap::new();
    for row in current(batches, Table::LifeEvents) {
        let away = match field(row, "event_type") {
            Some("spouse_departed") => true,
            Some("spouse_returned") => false,
            _ => continue,
        };
        let id = field(row, "id_number").expect("id").to_string();
        events
            .entry(id)
            .or_default()
            .push((date(field(row, "event_date").expect("date")), away));
    }
    let mut out = HashMap::new();
    for (id, mut evs) in events {
        evs.sort();
        let mut spans: Vec<(NaiveDate, NaiveDate)> = Vec::new();
        let mut open: Option<NaiveDate> = None;
        for (d, away) in evs {
            match (away, open) {
                (true, None) => {
                    let bridged = spans.last().is_some_and(|(_, r)| (d - *r).num_days() <= 30);
                    open = Some(if bridged {
                        spans.pop().expect("last").0
                    } else {
                        d
                    });
                }
                (false, Some(s)) => {
                    spans.push((s, d));
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(s) = open {
            spans.push((s, end));
        }
        out.insert(id, spans);
    }
    out
}

#[test]
fn a_third_of_300_women_have_an_absence_of_six_months() {
    let config = SimConfig {
        women: 300,
        ..SimConfig::default()
    };
    let batches = simulate(&config);
    let long = absences(&batches, config.end)
        .values()
        .filter(|spans| {
            spans.iter().any(|(s, e)| {
                s.checked_add_months(Months::new(6))
                    .is_some_and(|q| q <= *e)
            })
        })
        .count();
    assert!(long * 3 >= config.women, "{long} of {}", config.women);
    let spans = absences(&batches, config.end);
    let short = spans
        .values()
        .flatten()
        .filter(|(s, e)| s.checked_add_months(Months::new(6)).is_some_and(|q| q > *e))
        .count();
    assert!(short > 0, "some absences are shorter than six months");
}

/// The run as the warehouse would see it: current rows, the status rule, group shares.
#[test]
fn the_ledger_looks_like_a_ledger() {
    let (config, batches) = guangxi();
    let women = current(batches, Table::Women);
    let mut base: HashMap<&str, (&str, Option<&str>)> = HashMap::new();
    for w in &women {
        base.insert(
            field(w, "id_number").expect("id"),
            (
                field(w, "region_code").expect("region"),
                field(w, "marital_status"),
            ),
        );
    }
    let n = config.women as f64;
    assert!(base.len() as f64 > 0.95 * n, "{} women records", base.len());
    for w in &women {
        let r = regions()
            .get(field(w, "region_code").expect("region"))
            .expect("known");
        assert!(r.rural, "women live in village committees");
    }

    let mut events: BTreeMap<&str, Vec<LifeEvent>> = BTreeMap::new();
    for row in current(batches, Table::LifeEvents) {
        let kind = EventKind::parse(field(row, "event_type").expect("type")).expect("kind");
        events
            .entry(field(row, "id_number").expect("id"))
            .or_default()
            .push(LifeEvent {
                date: date(field(row, "event_date").expect("date")),
                kind,
                region_code: field(row, "region_code").map(str::to_string),
            });
    }
    let rural = |c: &str| regions().is_rural_village(c);
    let mut in_ledger = 0;
    let mut episodes = 0;
    let mut stock_end = 0;
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, (region, marital)) in &base {
        let evs = events.get(id).cloned().unwrap_or_default();
        let w = Woman {
            base_region: Some(region),
            marital_status: *marital,
            birth_date: None,
            events: &evs,
        };
        let eps = derive_episodes(&w, &rural, &RuleParams::default());
        if !eps.is_empty() {
            in_ledger += 1;
        }
        episodes += eps.len();
        if eps
            .iter()
            .any(|e| e.start <= config.end && e.end.is_none_or(|x| x > config.end))
        {
            stock_end += 1;
        }
        for e in &eps {
            *reasons.entry(e.exit_reason.unwrap_or("open")).or_default() += 1;
        }
    }
    eprintln!(
        "women in the ledger at some time: {in_ledger} ({episodes} episodes), at the end: \
         {stock_end}; exits: {reasons:?}"
    );
    assert!(in_ledger as f64 > 0.33 * n && (in_ledger as f64) < 0.85 * n);
    assert!(reasons.get("spouse_returned").copied().unwrap_or(0) > 0);
    assert!(reasons.get("moved_out").copied().unwrap_or(0) > 0);

    let mut groups: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for row in current(batches, Table::GroupFlags) {
        groups
            .entry(field(row, "group").expect("group"))
            .or_default()
            .insert(field(row, "id_number").expect("id"));
    }
    let share = |g: &str| groups.get(g).map_or(0, HashSet::len) as f64 / n;
    eprintln!(
        "groups: hardship {:.3}, disabled {:.3}, seriously_ill {:.3}, registered_poor {:.3}",
        share("hardship"),
        share("disabled"),
        share("seriously_ill"),
        share("registered_poor")
    );
    assert!((0.05..0.12).contains(&share("hardship")));
    assert!((0.02..0.06).contains(&share("disabled")));
    assert!((0.015..0.05).contains(&share("seriously_ill")));
    assert!((0.07..0.13).contains(&share("registered_poor")));

    let services = current(batches, Table::Services);
    let per_woman = services.len() as f64 / n;
    let measures: HashSet<&str> = services
        .iter()
        .filter_map(|r| field(r, "measure"))
        .collect();
    eprintln!("services per woman: {per_woman:.2}, measures {measures:?}");
    assert!((4.0..12.0).contains(&per_woman), "{per_woman}");
    assert_eq!(measures.len(), 7, "every measure area is served");

    let regs = current(batches, Table::Registrations);
    let registered = regs
        .iter()
        .filter(|r| field(r, "action") == Some("registered"))
        .count();
    let deregistered = regs.len() - registered;
    eprintln!("registrations: {registered} registered, {deregistered} deregistered");
    assert!(registered > 0 && deregistered > 0 && registered < episodes);

    // Corrections, retractions and late reports are there.
    let mut corrected = 0;
    let mut retracted = 0;
    let mut late = 0;
    for b in batches {
        for row in &b.rows {
            let v = row["record_version"].as_u64().expect("version");
            match field(row, "op") {
                Some("delete") => retracted += 1,
                _ if v > 1 => corrected += 1,
                _ => {}
            }
            if let Some(d) = field(row, "event_date").or(field(row, "service_date"))
                && let Ok(d) = NaiveDate::parse_from_str(d, "%Y-%m-%d")
                && d >= config.start
                && (b.day - d).num_days() > 90
            {
                late += 1;
            }
        }
    }
    eprintln!(
        "{corrected} new versions, {retracted} retractions, {late} reports over 90 days late"
    );
    assert!(corrected > 0 && retracted > 0 && late > 0);
}

#[test]
fn departments_push_at_most_weekly() {
    let mut days: HashMap<(Table, &str), Vec<NaiveDate>> = HashMap::new();
    for b in &guangxi().1 {
        days.entry((b.table, b.source.as_str()))
            .or_default()
            .push(b.day);
    }
    for ((table, source), mut ds) in days {
        ds.dedup();
        for pair in ds.windows(2) {
            assert!(
                (pair[1] - pair[0]).num_days() >= 7,
                "{source} pushed {table} on {} and {}",
                pair[0],
                pair[1]
            );
        }
    }
}

#[test]
fn nothing_after_an_early_end_and_nothing_before_a_late_start() {
    let config = SimConfig {
        start: date("2024-03-01"),
        end: date("2024-09-30"),
        ..two_counties(200, 5)
    };
    let batches = simulate(&config);
    assert!(!batches.is_empty());
    check_contract(&config, &batches);
    let none = simulate(&SimConfig {
        start: date("2024-03-01"),
        end: date("2024-02-01"),
        ..two_counties(10, 5)
    });
    assert!(none.is_empty());
}

/// Timing at scale: `cargo test -p careledger-sim -- --ignored --nocapture scale`, the sizes
/// from `CARELEDGER_SIM_SCALE` (default `10000,100000`); `simulate` collects every row as JSON,
/// so above 100,000 women only the streaming `simulate_each` runs.
#[test]
#[ignore = "slow: measures 100,000 women"]
fn scale() {
    let sizes = std::env::var("CARELEDGER_SIM_SCALE").unwrap_or_else(|_| "10000,100000".into());
    for women in sizes
        .split(',')
        .map(|n| n.trim().parse::<usize>().expect("a number"))
    {
        let config = SimConfig {
            women,
            ..SimConfig::default()
        };
        let mut rows = None;
        if women <= 100_000 {
            let t = Instant::now();
            let batches = simulate(&config);
            let n: usize = batches.iter().map(|b| b.rows.len()).sum();
            eprintln!(
                "simulate({women}): {} batches, {n} rows in {:.2?}",
                batches.len(),
                t.elapsed()
            );
            rows = Some(n);
        }
        let t = Instant::now();
        let mut streamed = 0;
        let mut batches = 0;
        simulate_each(&config, |b| {
            streamed += b.rows.len();
            batches += 1;
        });
        eprintln!(
            "simulate_each({women}): {batches} batches, {streamed} rows in {:.2?}",
            t.elapsed()
        );
        assert!(rows.is_none_or(|n| n == streamed));
    }
}
