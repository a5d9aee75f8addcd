//! Loads a `.ledger` file (see tests/ledger/two_counties.ledger) into a real Delta store:
//! each batch validated by the model as the gateway does, and committed with its own
//! transaction time.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use careledger_model::{PseudonymKey, ResidentId, Table, ValidationContext, validate_batch};
use careledger_store::{Append, Store};
use chrono::{DateTime, NaiveDate, Utc};

pub(crate) fn key() -> PseudonymKey {
    PseudonymKey::new(b"warehouse-test-secret-0123456789").unwrap()
}

/// One batch of NDJSON rows for a table, from a source, at a transaction time.
#[derive(Debug, Clone)]
pub(crate) struct Batch {
    pub(crate) table: Table,
    pub(crate) source: String,
    pub(crate) ingested_at: DateTime<Utc>,
    pub(crate) rows: Vec<String>,
}

/// A parsed ledger: labels → ID numbers, and the batches in file order.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) ids: HashMap<String, String>,
    pub(crate) batches: Vec<Batch>,
}

pub(crate) fn parse(text: &str) -> Ledger {
    let mut ledger = Ledger::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# person:") {
            let mut w = rest.split_whitespace();
            let label = w.next().unwrap().to_string();
            let birth = NaiveDate::parse_from_str(w.next().unwrap(), "%Y-%m-%d").unwrap();
            let seq = 2 * (ledger.ids.len() as u16 + 1);
            ledger.ids.insert(
                label,
                ResidentId::synthesize("450123", birth, seq)
                    .as_str()
                    .to_string(),
            );
        } else if let Some(rest) = line.strip_prefix("# batch:") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            ledger.batches.push(Batch {
                table: Table::parse(w[0]).unwrap(),
                source: w[1].to_string(),
                ingested_at: DateTime::parse_from_rfc3339(w[2])
                    .unwrap()
                    .with_timezone(&Utc),
                rows: Vec::new(),
            });
        } else if line.starts_with('{') {
            let mut row = line.to_string();
            for (label, id) in &ledger.ids {
                row = row.replace(&format!("\"@{label}\""), &format!("\"{id}\""));
            }
            ledger
                .batches
                .last_mut()
                .expect("rows follow a batch line")
                .rows
                .push(row);
        }
    }
    ledger
}

/// Validates and commits one batch; panics on any row error (the ledger is meant valid).
pub(crate) async fn commit(store: &Store, batch: &Batch, n: usize) {
    commit_edited(store, batch, n, |b| b).await
}

/// [`commit`], with the stored rows changed by `edit` before they are appended.
pub(crate) async fn commit_edited(
    store: &Store,
    batch: &Batch,
    n: usize,
    edit: impl Fn(arrow_array::RecordBatch) -> arrow_array::RecordBatch,
) {
    let spec = batch.table.spec();
    let body = batch.rows.join("\n");
    let mut reader = arrow_json::ReaderBuilder::new(spec.wire_schema())
        .with_coerce_primitive(true)
        .build(Cursor::new(body.into_bytes()))
        .unwrap();
    let wire = reader.next().unwrap().unwrap();
    let key = key();
    let batch_id = format!("ledger-{n}");
    let ctx = ValidationContext {
        source: &batch.source,
        today: Utc::now().date_naive(),
        key: &key,
        batch_id: &batch_id,
        ingested_at: batch.ingested_at,
    };
    let v = validate_batch(spec, &wire, &ctx, 0).unwrap();
    assert!(
        v.errors.is_empty(),
        "batch {n} ({}): {:?}",
        batch.table,
        v.errors
    );
    store
        .append(
            batch.table.as_str(),
            Append {
                batches: vec![edit(v.stored)],
                ..Append::default()
            },
        )
        .await
        .unwrap();
}

/// A store in `dir` holding the ledger's batches (those with `ingested_at <= until`, if given).
pub(crate) async fn load(dir: &std::path::Path, ledger: &Ledger) -> Arc<Store> {
    let store = Arc::new(Store::open(dir.to_str().unwrap()).await.unwrap());
    // Derived after every commit: the slt expectations then check incremental derivation.
    let deriver = careledger_warehouse::Deriver::new(
        store.clone(),
        careledger_model::status::RuleParams::default(),
    );
    for (n, b) in ledger.batches.iter().enumerate() {
        commit(&store, b, n).await;
        deriver.catch_up().await.unwrap();
    }
    store
}

/// Labels by person_key.
pub(crate) fn labels(ledger: &Ledger) -> HashMap<String, String> {
    let key = key();
    ledger
        .ids
        .iter()
        .map(|(label, id)| {
            (
                key.person_key(&ResidentId::parse(id, Utc::now().date_naive()).unwrap()),
                label.clone(),
            )
        })
        .collect()
}

pub(crate) fn two_counties() -> Ledger {
    parse(include_str!("../../../../tests/ledger/two_counties.ledger"))
}

/// The ledger file `name` of `tests/ledger/`.
pub(crate) fn named(name: &str) -> Ledger {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/ledger/").to_string() + name;
    parse(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}
