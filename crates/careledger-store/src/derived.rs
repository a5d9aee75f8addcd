//! The derived tables: what the deriver (`careledger-warehouse::deriver`) maintains from the
//! pushed tables, stored as Delta tables under `derived/` so that any Delta or Parquet reader
//! sees them.
//!
//! Every row carries three columns besides what SQL shows:
//! - `gen`: the derivation cycle that wrote it. A cycle rewrites every row of the women it
//!   touched; `derived/superseded` lists `(person_key, gen)` for each of them, and a row is
//!   *live* when no superseded entry names its woman with a higher `gen` (and its `gen` is not
//!   above the last complete cycle, nor below the floor of the last full rebuild).
//! - `known_from`, `known_to`: the transaction-time interval (`ingested_at` of the commits
//!   that made and ended it) during which the row was part of the ledger. "As known at T" is
//!   `known_from <= T AND (known_to IS NULL OR known_to > T)`; now is `known_to IS NULL`.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use careledger_model::Table;

use crate::ts;

pub const DERIVED_PEOPLE: &str = "derived/people";
pub const DERIVED_EPISODES: &str = "derived/status_episodes";
pub const DERIVED_RESIDENCE: &str = "derived/residence";
pub const DERIVED_RUNS: &str = "derived/ledger_runs";
/// `(person_key, gen)`: from cycle `gen` on, the woman's rows of earlier cycles are dead. Its
/// commits hold the deriver's watermark (Delta application transactions).
pub const DERIVED_SUPERSEDED: &str = "derived/superseded";

/// The stored current view of a pushed table.
pub fn derived_current(table: Table) -> &'static str {
    match table {
        Table::Women => "derived/current_women",
        Table::LifeEvents => "derived/current_life_events",
        Table::GroupFlags => "derived/current_group_flags",
        Table::Services => "derived/current_services",
        Table::Registrations => "derived/current_registrations",
    }
}

/// The columns every derived row has after the visible ones.
pub fn bitemporal_fields() -> [Field; 3] {
    [
        Field::new("gen", DataType::Int64, false),
        Field::new("known_from", ts(), false),
        Field::new("known_to", ts(), true),
    ]
}

/// The last column of every derived table but `superseded`: the 64-bit number of the row's
/// `person_key` (`careledger_model::pseudonym::person_id`), which reports join and group on.
pub const PERSON_ID: &str = "person_id";

/// The column `current_services` has after `person_id`: whether the service's date falls
/// inside one of the woman's status episodes, as the ledger stood while the row was known
/// (false for a woman with no episodes, or no `women` record). The deriver splits a row's
/// `known_from`..`known_to` where her episodes change it, so that it holds at every instant;
/// coverage and breadth filter on it instead of joining `status_episodes`.
pub const IN_EPISODE: &str = "in_episode";

fn with_bitemporal(fields: Vec<Field>) -> SchemaRef {
    let mut fields = fields;
    fields.extend(bitemporal_fields());
    fields.push(Field::new(PERSON_ID, DataType::Int64, true));
    Arc::new(Schema::new(fields))
}

/// The visible columns of `people`.
pub fn people_fields() -> Vec<Field> {
    vec![
        Field::new("person_key", DataType::Utf8, false),
        Field::new("region_code", DataType::Utf8, true),
        Field::new("marital_status", DataType::Utf8, true),
        Field::new("ethnicity", DataType::Utf8, true),
        Field::new("birth_date", DataType::Date32, true),
    ]
}

/// The visible columns of `status_episodes`.
pub fn episode_fields() -> Vec<Field> {
    vec![
        Field::new("person_key", DataType::Utf8, false),
        Field::new("episode_no", DataType::Int32, false),
        Field::new("start_date", DataType::Date32, false),
        Field::new("end_date", DataType::Date32, true),
        Field::new("entry_reason", DataType::Utf8, false),
        Field::new("exit_reason", DataType::Utf8, true),
        Field::new("region_at_start", DataType::Utf8, true),
        Field::new("region_at_end", DataType::Utf8, true),
        Field::new("rule_version", DataType::Utf8, false),
    ]
}

/// The visible columns of `residence`.
pub fn residence_fields() -> Vec<Field> {
    vec![
        Field::new("person_key", DataType::Utf8, false),
        Field::new("valid_from", DataType::Date32, false),
        Field::new("valid_to", DataType::Date32, true),
        Field::new("region_code", DataType::Utf8, true),
    ]
}

/// The visible columns of `ledger_runs`.
pub fn run_fields() -> Vec<Field> {
    vec![
        Field::new("level", DataType::Utf8, false),
        Field::new("region_code", DataType::Utf8, true),
        Field::new("person_key", DataType::Utf8, false),
        Field::new("episode_no", DataType::Int32, false),
        Field::new("run_start", DataType::Date32, false),
        Field::new("run_end", DataType::Date32, true),
        Field::new("entry_reason", DataType::Utf8, false),
        Field::new("exit_reason", DataType::Utf8, true),
    ]
}

/// Names and schemas of the derived tables, `derived/superseded` last.
pub fn derived_tables() -> Vec<(&'static str, SchemaRef)> {
    let mut out: Vec<(&'static str, SchemaRef)> = Table::ALL
        .iter()
        .map(|t| {
            let visible: Vec<Field> = t
                .spec()
                .stored_schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            let schema = with_bitemporal(visible);
            let schema = if *t == Table::Services {
                let mut fields: Vec<Field> =
                    schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(Field::new(IN_EPISODE, DataType::Boolean, false));
                Arc::new(Schema::new(fields))
            } else {
                schema
            };
            (derived_current(*t), schema)
        })
        .collect();
    out.push((DERIVED_PEOPLE, with_bitemporal(people_fields())));
    out.push((DERIVED_EPISODES, with_bitemporal(episode_fields())));
    out.push((DERIVED_RESIDENCE, with_bitemporal(residence_fields())));
    out.push((DERIVED_RUNS, with_bitemporal(run_fields())));
    out.push((
        DERIVED_SUPERSEDED,
        Arc::new(Schema::new(vec![
            Field::new("person_key", DataType::Utf8, false),
            Field::new("gen", DataType::Int64, false),
        ])),
    ));
    out
}
