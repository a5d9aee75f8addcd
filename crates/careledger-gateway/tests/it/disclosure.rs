//! Disclosure control tried as an attacker would: a dashboard token requests every table it
//! can about one county (stock at every month end and level, turnover, entries and exits by
//! reason), then differences them every way a published ledger can be differenced — within a
//! table (a total minus its parts), across levels (a parent minus its children), across
//! reports (stock steps against entries and exits, the same stock in two reports) — and looks
//! for rows left out (a missing row says "zero"). The attacker knows the largest noise a
//! count can carry; a count below k is recovered when an identity leaves it one possible
//! value. The same attack on exact figures with small cells blanked (what dashboards got
//! before) recovers many; on what dashboards get now, none.

use std::collections::HashMap;

use axum::http::StatusCode;
use careledger_gateway::Role;
use careledger_gateway::disclosure::MAX_NOISE;
use careledger_model::RegionLevel;
use careledger_sim::{SimConfig, simulate};
use chrono::NaiveDate;

use crate::Harness;
use crate::query::{get, json_of};

const COUNTY: &str = "450123";
const K: i64 = 5;

/// One published count and the truth behind it.
#[derive(Debug, Clone, Copy)]
struct Cell {
    shown: Option<i64>,
    truth: i64,
}

/// A report's answer: row labels (joined) → column → value (None: not shown).
type Table = HashMap<String, HashMap<String, Option<i64>>>;

/// `Σ lhs = Σ rhs` holds for the true counts.
struct Identity {
    what: String,
    lhs: Vec<Cell>,
    rhs: Vec<Cell>,
}

/// Cells below k that an identity pins to a single value, given that every shown count is
/// within `bound` of the truth and a hidden one is below k + bound.
fn recoveries(identities: &[Identity], bound: i64) -> Vec<(String, i64)> {
    let mut found = Vec::new();
    for id in identities {
        let hidden: Vec<(bool, &Cell)> = id
            .lhs
            .iter()
            .map(|c| (true, c))
            .chain(id.rhs.iter().map(|c| (false, c)))
            .filter(|(_, c)| c.shown.is_none())
            .collect();
        let [(on_left, h)] = hidden.as_slice() else {
            continue;
        };
        // h = (Σ other side) − (Σ rest of its own side).
        let (own, other) = if *on_left {
            (&id.lhs, &id.rhs)
        } else {
            (&id.rhs, &id.lhs)
        };
        let shown_sum = |cells: &Vec<Cell>| cells.iter().filter_map(|c| c.shown).sum::<i64>();
        let visible = (own.len() - 1 + other.len()) as i64;
        let x = shown_sum(other) - shown_sum(own);
        let lo = (x - bound * visible).max(0);
        let hi = (x + bound * visible).min(K - 1 + bound);
        if lo == hi && h.truth < K {
            assert_eq!(lo, h.truth, "{}: the attack's arithmetic", id.what);
            found.push((id.what.clone(), lo));
        }
    }
    found
}

/// The simulated departments of one county, pushed through the router.
async fn county_ledger() -> (Harness, String, String) {
    let h = Harness::new().await;
    let batches = simulate(&SimConfig {
        seed: 11,
        women: 400,
        county_prefixes: vec![COUNTY.into()],
        invalid_share: 0.0,
        ..SimConfig::default()
    });
    let mut bodies: Vec<((String, String), String)> = Vec::new();
    for b in &batches {
        let key = (b.source.clone(), b.table.as_str().to_string());
        let body = careledger_sim::ndjson(&b.rows);
        match bodies.iter_mut().find(|(k, _)| *k == key) {
            Some((_, text)) => text.push_str(&body),
            None => bodies.push((key, body)),
        }
    }
    let mut source_tokens = HashMap::new();
    for ((source, table), body) in &bodies {
        let token = source_tokens
            .entry(source.clone())
            .or_insert_with(|| {
                h.tokens
                    .create(
                        &format!("src-{source}"),
                        &Role::Source(source.clone()),
                        None,
                    )
                    .unwrap()
            })
            .clone();
        let (s, _, r) = h
            .post(
                &format!("/v1/ingest/{table}"),
                &token,
                "application/x-ndjson",
                body.clone(),
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{source} {table}: {r}");
        assert_eq!(r["rows_rejected"], 0, "{r}");
    }
    let dash = h.tokens.create("dash", &Role::Dashboard, None).unwrap();
    let analyst = h.tokens.create("truth", &Role::Analyst, None).unwrap();
    (h, dash, analyst)
}

async fn fetch(h: &Harness, token: &str, report: &str, query: &str, labels: &[&str]) -> Table {
    let (s, _, body) = get(h, token, &format!("/v1/reports/{report}?{query}"), &[]).await;
    let v = json_of(&body);
    assert_eq!(s, StatusCode::OK, "{report}?{query}: {v}");
    let names: Vec<String> = v["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let mut out = Table::new();
    for row in v["rows"].as_array().unwrap() {
        let key: Vec<String> = labels
            .iter()
            .map(|l| {
                let i = names.iter().position(|n| n == l).unwrap();
                row[i].as_str().unwrap().to_string()
            })
            .collect();
        let cells = names
            .iter()
            .zip(row.as_array().unwrap())
            .filter(|(_, v)| v.is_i64() || v.is_null())
            .map(|(n, v)| (n.clone(), v.as_i64()))
            .collect();
        assert!(
            out.insert(key.join("|"), cells).is_none(),
            "{report}: one row per label"
        );
    }
    out
}

fn month_ends_2024() -> Vec<NaiveDate> {
    (2..=13)
        .map(|m| {
            let first = if m == 13 {
                NaiveDate::from_ymd_opt(2025, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(2024, m, 1)
            };
            first.unwrap().pred_opt().unwrap()
        })
        .collect()
}

fn regions_at(level: RegionLevel) -> Vec<String> {
    careledger_model::regions()
        .iter()
        .filter(|r| r.level == level && r.code.starts_with(COUNTY))
        .map(|r| r.code.clone())
        .collect()
}

/// Every table a dashboard can get about the county, as it sees them and as they are.
struct Requests {
    /// (level, as_of) → stock.
    stock: HashMap<(RegionLevel, NaiveDate), (Table, Table)>,
    /// level → turnover_and_returns over 2024, entries, exits.
    turnover: HashMap<RegionLevel, (Table, Table)>,
    entries: HashMap<RegionLevel, (Table, Table)>,
    exits: HashMap<RegionLevel, (Table, Table)>,
}

/// The cell of `column` in row `key` of a (shown, truth) pair; absent truth rows are 0.
fn cell(pair: &(Table, Table), key: &str, column: &str) -> Cell {
    let (shown, truth) = pair;
    let shown_row = shown
        .get(key)
        .unwrap_or_else(|| panic!("the published table has no row {key}: a missing row"));
    Cell {
        shown: shown_row[column],
        truth: truth
            .get(key)
            .and_then(|r| r.get(column).copied().flatten())
            .unwrap_or(0),
    }
}

fn month_key(d: NaiveDate) -> String {
    d.format("%Y-%m-01").to_string()
}

/// Every identity the attacker tries.
fn identities(r: &Requests) -> Vec<Identity> {
    let mut out = Vec::new();
    let levels = [
        RegionLevel::County,
        RegionLevel::Township,
        RegionLevel::Village,
    ];
    // Within a table: women = the age bands = the ethnic groups.
    for ((level, as_of), pair) in &r.stock {
        for region in regions_at(*level) {
            let total = cell(pair, &region, "women");
            for parts in [
                &["age_under_30", "age_30_44", "age_45_59", "age_60_plus"][..],
                &["zhuang", "han", "other_ethnicity"][..],
            ] {
                out.push(Identity {
                    what: format!("stock {region} {as_of}: women = {parts:?}"),
                    lhs: vec![total],
                    rhs: parts.iter().map(|c| cell(pair, &region, c)).collect(),
                });
            }
        }
    }
    // Across levels: a parent is the sum of its children.
    for as_of in month_ends_2024() {
        for pair_levels in levels.windows(2) {
            let (up, down) = (pair_levels[0], pair_levels[1]);
            let parents = &r.stock[&(up, as_of)];
            let children = &r.stock[&(down, as_of)];
            for parent in regions_at(up) {
                let kids: Vec<Cell> = regions_at(down)
                    .iter()
                    .filter(|c| c.starts_with(&parent[..up.prefix_len()]))
                    .map(|c| cell(children, c, "women"))
                    .collect();
                out.push(Identity {
                    what: format!("stock {as_of}: {parent} = its children"),
                    lhs: vec![cell(parents, &parent, "women")],
                    rhs: kids,
                });
            }
        }
    }
    // Across reports and dates.
    for level in [RegionLevel::Township, RegionLevel::Village] {
        let turnover = &r.turnover[&level];
        for region in regions_at(level) {
            let ends = month_ends_2024();
            for (i, end) in ends.iter().enumerate() {
                let month = month_key(*end);
                let key = format!("{region}|{month}");
                let stock_end = cell(&r.stock[&(level, *end)], &region, "women");
                if i > 0 {
                    let stock_before = cell(&r.stock[&(level, ends[i - 1])], &region, "women");
                    // Stock steps: S(m−1) + entries(m) = S(m) + exits(m).
                    out.push(Identity {
                        what: format!("{region} {month}: stock step = entries − exits"),
                        lhs: vec![stock_before, cell(turnover, &key, "entries")],
                        rhs: vec![stock_end, cell(turnover, &key, "exits")],
                    });
                    // The same stock in two reports.
                    out.push(Identity {
                        what: format!("{region} {month}: turnover's stock_before = stock"),
                        lhs: vec![cell(turnover, &key, "stock_before")],
                        rhs: vec![stock_before],
                    });
                }
                // Entries and exits by reason add up to turnover's.
                for (report, column, list) in [
                    (&r.entries[&level], "entries", "entry_reasons"),
                    (&r.exits[&level], "exits", "exit_reasons"),
                ] {
                    let parts: Vec<Cell> = careledger_model::vocabulary()
                        .list(list)
                        .codes
                        .iter()
                        .map(|c| cell(report, &format!("{key}|{}", c.code), column))
                        .collect();
                    out.push(Identity {
                        what: format!("{region} {month}: {column} by reason"),
                        lhs: vec![cell(turnover, &key, column)],
                        rhs: parts,
                    });
                }
            }
        }
    }
    out
}

/// What dashboards got before: exact counts, those below k blanked.
fn exact_with_small_cells_blanked(r: &Requests) -> Requests {
    let blank = |pair: &(Table, Table)| -> (Table, Table) {
        let (shown, truth) = pair;
        let mut exact = shown.clone();
        for (key, row) in exact.iter_mut() {
            for (col, v) in row.iter_mut() {
                let t = truth
                    .get(key)
                    .and_then(|r| r.get(col).copied().flatten())
                    .unwrap_or(0);
                *v = (t >= K).then_some(t);
            }
        }
        (exact, truth.clone())
    };
    let each =
        |m: &HashMap<RegionLevel, (Table, Table)>| m.iter().map(|(k, v)| (*k, blank(v))).collect();
    Requests {
        stock: r.stock.iter().map(|(k, v)| (*k, blank(v))).collect(),
        turnover: each(&r.turnover),
        entries: each(&r.entries),
        exits: each(&r.exits),
    }
}

#[tokio::test]
async fn differencing_every_published_table_recovers_no_small_count() {
    let (h, dash, analyst) = county_ledger().await;
    let both = |report: &'static str, query: String, labels: &'static [&'static str]| {
        let (h, dash, analyst) = (&h, &dash, &analyst);
        async move {
            (
                fetch(h, dash, report, &query, labels).await,
                fetch(h, analyst, report, &query, labels).await,
            )
        }
    };
    let mut requests = Requests {
        stock: HashMap::new(),
        turnover: HashMap::new(),
        entries: HashMap::new(),
        exits: HashMap::new(),
    };
    for level in [
        RegionLevel::County,
        RegionLevel::Township,
        RegionLevel::Village,
    ] {
        let l = level.as_str();
        for as_of in month_ends_2024() {
            let q = format!("as_of={as_of}&level={l}&region={COUNTY}");
            let pair = both("stock", q, &["region_code"]).await;
            // The frame is complete: a row for every region, none left out.
            assert_eq!(pair.0.len(), regions_at(level).len(), "stock {l} {as_of}");
            requests.stock.insert((level, as_of), pair);
        }
        if level == RegionLevel::County {
            continue;
        }
        let period = format!("from=2024-01-01&to=2025-01-01&level={l}&region={COUNTY}");
        let turnover = both(
            "turnover_and_returns",
            period.clone(),
            &["region_code", "month"],
        )
        .await;
        assert_eq!(turnover.0.len(), regions_at(level).len() * 12);
        requests.turnover.insert(level, turnover);
        let labels: &'static [&'static str] = &["region_code", "month", "reason"];
        let entries = both("entries", period.clone(), labels).await;
        let exits = both("exits", period.clone(), labels).await;
        assert_eq!(entries.0.len(), regions_at(level).len() * 12 * 5);
        assert_eq!(exits.0.len(), regions_at(level).len() * 12 * 7);
        requests.entries.insert(level, entries);
        requests.exits.insert(level, exits);
    }

    // Daily steps are not to be had.
    let (s, _, body) = get(
        &h,
        &dash,
        &format!("/v1/reports/stock?as_of=2024-06-14&level=village&region={COUNTY}"),
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", json_of(&body));
    let (s, _, _) = get(
        &h,
        &dash,
        "/v1/reports/entries?from=2024-06-14&to=2024-06-15&level=village",
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Source health: counts of rows perturbed like the others; a lag percentile is shown
    // where the count of dated rows it rests on is shown, and only there.
    let (s, _, body) = get(&h, &dash, "/v1/reports/source_health", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let v = json_of(&body);
    let col = |name: &str| {
        v["columns"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c["name"] == name)
            .unwrap()
    };
    let (dated, lag) = (col("dated_rows"), col("lag_days_median"));
    let rows = v["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r[lag].is_f64()), "{v}");
    for r in rows {
        assert_eq!(r[dated].is_null(), r[lag].is_null(), "{r}");
    }

    let exact = identities(&exact_with_small_cells_blanked(&requests));
    let before = recoveries(&exact, 0);
    assert!(
        before.len() >= 10,
        "the attack works on exact figures with small cells blanked: {} recovered",
        before.len()
    );

    let published = identities(&requests);
    assert_eq!(published.len(), exact.len());
    // Cells hidden now that the attack would have had to use.
    let hidden_small = published
        .iter()
        .flat_map(|i| i.lhs.iter().chain(&i.rhs))
        .filter(|c| c.shown.is_none() && c.truth > 0 && c.truth < K)
        .count();
    assert!(
        hidden_small > 100,
        "the data has small cells: {hidden_small}"
    );
    let now = recoveries(&published, MAX_NOISE);
    assert!(
        now.is_empty(),
        "recovered from dashboard tables: {:?}",
        &now[..now.len().min(10)]
    );
    // Published counts are close to the truth: most exact, all within the bound.
    let shown: Vec<Cell> = published
        .iter()
        .flat_map(|i| i.lhs.iter().chain(&i.rhs).copied())
        .filter(|c| c.shown.is_some())
        .collect();
    assert!(!shown.is_empty());
    assert!(
        shown
            .iter()
            .all(|c| (c.shown.unwrap() - c.truth).abs() <= MAX_NOISE && c.truth >= K)
    );
    let exactly = shown.iter().filter(|c| c.shown == Some(c.truth)).count();
    eprintln!(
        "{} identities; on exact figures with small cells blanked {} small counts recovered; \
         on dashboard tables 0 ({hidden_small} hidden small cells used, {} shown counts, {exactly} of them exact)",
        published.len(),
        before.len(),
        shown.len()
    );
    assert!(
        exactly * 3 > shown.len(),
        "{exactly} of {} shown exactly",
        shown.len()
    );
    // The same women, the same noise: the county's stock in the stock report equals its
    // stock_before in turnover wherever both are shown.
    let mut same = 0;
    for id in &published {
        if id.what.contains("turnover's stock_before")
            && let (Some(a), Some(b)) = (id.lhs[0].shown, id.rhs[0].shown)
        {
            assert_eq!(a, b, "{}", id.what);
            same += 1;
        }
    }
    assert!(same > 0);
}
