//! A small sqllogictest runner over the hand-made ledger. Files: `tests/slt/*.slt`.
//!
//! Supported records (a subset of the sqllogictest format):
//! ```text
//! query <types> [rowsort]
//! REPORT <name> [k=v …]          -- run a named report (known_at=… selects the snapshot)
//! [SQL over the table `result`]  -- optional: project/filter the report's rows
//! ----
//! <expected rows, values separated by whitespace; NULL for null>
//! ```
//! A query without `REPORT` is SQL on the current snapshot. Every `person_key` value in the
//! output is shown as the ledger's label (A, B, …); the table `persons(label, person_key)` is
//! there for joins.
//!
//! A file runs on `tests/ledger/two_counties.ledger` unless a line `# ledger: NAME` names
//! another file of `tests/ledger/`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{RecordBatch, StringArray};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema};
use careledger_model::status::RuleParams;
use careledger_warehouse::Warehouse;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::ledger;

struct Record {
    line: usize,
    columns: usize,
    rowsort: bool,
    query: String,
    expected: Vec<String>,
}

fn parse_slt(text: &str) -> Vec<Record> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(head) = line.strip_prefix("query ") {
            let mut words = head.split_whitespace();
            let columns = words.next().unwrap().len();
            let rowsort = words.any(|w| w == "rowsort");
            let start = i + 1;
            i += 1;
            let mut query = Vec::new();
            while lines[i].trim() != "----" {
                query.push(lines[i]);
                i += 1;
            }
            i += 1;
            let mut expected = Vec::new();
            while i < lines.len() && !lines[i].trim().is_empty() {
                expected.push(normalise(lines[i]));
                i += 1;
            }
            out.push(Record {
                line: start,
                columns,
                rowsort,
                query: query.join("\n"),
                expected,
            });
        }
        i += 1;
    }
    out
}

fn normalise(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn render(batches: &[RecordBatch], labels: &HashMap<String, String>) -> (usize, Vec<String>) {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    let mut width = 0;
    for b in batches {
        width = b.num_columns();
        let formatters: Vec<ArrayFormatter<'_>> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| {
                    let v = f.value(r).to_string();
                    let v = labels.get(&v).cloned().unwrap_or(v);
                    if v.is_empty() {
                        "(empty)".to_string()
                    } else {
                        v.replace(' ', "_")
                    }
                })
                .collect();
            rows.push(cells.join(" "));
        }
    }
    (width, rows)
}

fn persons_table(labels: &HashMap<String, String>) -> Arc<MemTable> {
    let mut pairs: Vec<(&String, &String)> = labels.iter().map(|(k, l)| (l, k)).collect();
    pairs.sort();
    let schema = Arc::new(Schema::new(vec![
        Field::new("label", DataType::Utf8, false),
        Field::new("person_key", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(
                pairs.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                pairs.iter().map(|p| p.1.as_str()).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
}

async fn run_record(
    wh: &Warehouse,
    rec: &Record,
    labels: &HashMap<String, String>,
) -> Result<Vec<RecordBatch>, String> {
    let mut lines = rec.query.lines();
    let first = lines.next().unwrap_or_default().trim();
    if let Some(call) = first.strip_prefix("REPORT ") {
        let mut words = call.split_whitespace();
        let name = words.next().unwrap();
        let params: HashMap<String, String> = words
            .map(|w| {
                let (k, v) = w.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let batches = wh
            .run_report(name, &params)
            .await
            .map_err(|e| e.to_string())?;
        let rest: Vec<&str> = lines.collect();
        if rest.iter().all(|l| l.trim().is_empty()) {
            return Ok(batches);
        }
        let ctx = SessionContext::new();
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or("the report returned no batches to query")?;
        ctx.register_table(
            "result",
            Arc::new(MemTable::try_new(schema, vec![batches]).unwrap()),
        )
        .unwrap();
        ctx.register_table("persons", persons_table(labels))
            .unwrap();
        let df = ctx.sql(&rest.join("\n")).await.map_err(|e| e.to_string())?;
        return df.collect().await.map_err(|e| e.to_string());
    }
    let snap = wh.snapshot(None).await.map_err(|e| e.to_string())?;
    snap.ctx
        .register_table("persons", persons_table(labels))
        .unwrap();
    let df = snap.ctx.sql(&rec.query).await.map_err(|e| e.to_string())?;
    df.collect().await.map_err(|e| e.to_string())
}

/// The ledger a `.slt` file runs on: its `# ledger: NAME` line, else two_counties.ledger.
fn ledger_name(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("# ledger:"))
        .map_or_else(
            || "two_counties.ledger".to_string(),
            |n| n.trim().to_string(),
        )
}

#[tokio::test]
async fn hand_made_ledger_matches_the_worked_expectations() {
    // One store and warehouse per ledger file, loaded on first use.
    let mut loaded: HashMap<String, (Warehouse, HashMap<String, String>, tempfile::TempDir)> =
        HashMap::new();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {root}");
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = ledger_name(&text);
        if !loaded.contains_key(&name) {
            let ledger = ledger::named(&name);
            let labels = ledger::labels(&ledger);
            let dir = tempfile::tempdir().unwrap();
            let store = ledger::load(dir.path(), &ledger).await;
            let wh = Warehouse::new(store, RuleParams::default());
            loaded.insert(name.clone(), (wh, labels, dir));
        }
        let (wh, labels, _) = &loaded[&name];
        for rec in parse_slt(&text) {
            checked += 1;
            let place = format!(
                "{}:{}",
                file.file_name().unwrap().to_string_lossy(),
                rec.line
            );
            match run_record(wh, &rec, labels).await {
                Err(e) => failures.push(format!("{place}: {e}\n  query: {}", rec.query)),
                Ok(batches) => {
                    let (width, mut rows) = render(&batches, labels);
                    let mut expected = rec.expected.clone();
                    if rec.rowsort {
                        rows.sort();
                        expected.sort();
                    }
                    if !rows.is_empty() && width != rec.columns {
                        failures.push(format!(
                            "{place}: {width} columns, the record declares {}",
                            rec.columns
                        ));
                    } else if rows != expected {
                        failures.push(format!(
                            "{place}:\n  expected:\n    {}\n  actual:\n    {}",
                            expected.join("\n    "),
                            rows.join("\n    ")
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} records failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 12, "only {checked} records ran");
}
