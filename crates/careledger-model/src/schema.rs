//! Table contracts (`schemas/v1/tables/*.json`, JSON Schema) and the Arrow schemas derived from
//! them: the *wire* schema a body is decoded into, and the *stored* schema that lands in Delta.
//! The raw ID number is in the wire schema only.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

use crate::region::RegionLevel;

/// The pushed tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Women,
    LifeEvents,
    GroupFlags,
    Services,
    Registrations,
}

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Women,
        Table::LifeEvents,
        Table::GroupFlags,
        Table::Services,
        Table::Registrations,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Table::Women => "women",
            Table::LifeEvents => "life_events",
            Table::GroupFlags => "group_flags",
            Table::Services => "services",
            Table::Registrations => "registrations",
        }
    }

    pub fn parse(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The contract of this table.
    pub fn spec(self) -> &'static TableSpec {
        &specs()[&self]
    }

    /// The contract's JSON Schema text (`schemas/v1/tables/<table>.json`).
    pub fn schema_text(self) -> &'static str {
        match self {
            Table::Women => include_str!("../../../schemas/v1/tables/women.json"),
            Table::LifeEvents => include_str!("../../../schemas/v1/tables/life_events.json"),
            Table::GroupFlags => include_str!("../../../schemas/v1/tables/group_flags.json"),
            Table::Services => include_str!("../../../schemas/v1/tables/services.json"),
            Table::Registrations => include_str!("../../../schemas/v1/tables/registrations.json"),
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a field holds, from its JSON Schema (`type`, `format`, `x-*` keywords).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    Text {
        min_len: usize,
        max_len: Option<usize>,
    },
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    Date {
        allow_future: bool,
    },
    Decimal {
        precision: u8,
        scale: i8,
    },
    Code {
        list: String,
    },
    Region {
        level: Option<RegionLevel>,
    },
    PersonalId,
}

/// One field of a pushed table.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
    pub description: String,
    /// Required on every row (`required`).
    pub required_always: bool,
    /// Required on upserts (`x-required-for-upsert`); a retraction may omit it.
    pub required_for_upsert: bool,
}

/// A pushed table's contract.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub table: Table,
    pub version: String,
    pub description: String,
    pub fields: Vec<FieldSpec>,
    wire: SchemaRef,
    stored: SchemaRef,
}

/// Columns the gateway adds to every stored row, after the pushed fields.
pub const PERSON_COLUMNS: [&str; 4] = ["person_key", "sex", "birth_date", "hukou_county"];
pub const BATCH_COLUMNS: [&str; 2] = ["batch_id", "ingested_at"];

impl TableSpec {
    fn parse(table: Table, text: &str) -> Result<TableSpec, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let names = |key: &str| -> Vec<String> {
            doc[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let required = names("required");
        let upsert = names("x-required-for-upsert");
        let props = doc["properties"].as_object().ok_or("no properties")?;
        let mut fields = Vec::new();
        for (name, p) in props {
            let kind = if p["x-personal-id"].as_bool() == Some(true) {
                FieldKind::PersonalId
            } else if let Some(list) = p["x-codelist"].as_str() {
                FieldKind::Code {
                    list: list.to_string(),
                }
            } else if let Some(level) = p["x-region-level"].as_str() {
                FieldKind::Region {
                    level: RegionLevel::parse(level),
                }
            } else if let Some(d) = p.get("x-decimal") {
                FieldKind::Decimal {
                    precision: d["precision"].as_u64().ok_or("decimal precision")? as u8,
                    scale: d["scale"].as_u64().ok_or("decimal scale")? as i8,
                }
            } else if p["format"].as_str() == Some("date") {
                FieldKind::Date {
                    allow_future: p["x-allow-future"].as_bool() == Some(true),
                }
            } else if p["type"].as_str() == Some("integer") {
                FieldKind::Integer {
                    min: p["minimum"].as_i64(),
                    max: p["maximum"].as_i64(),
                }
            } else if p["type"].as_str() == Some("string") {
                FieldKind::Text {
                    min_len: p["minLength"].as_u64().unwrap_or(0) as usize,
                    max_len: p["maxLength"].as_u64().map(|n| n as usize),
                }
            } else {
                return Err(format!("field {name}: unsupported type {}", p["type"]));
            };
            fields.push(FieldSpec {
                name: name.clone(),
                kind,
                description: p["description"].as_str().unwrap_or_default().to_string(),
                required_always: required.contains(name),
                required_for_upsert: required.contains(name) || upsert.contains(name),
            });
        }
        let version = doc["x-version"].as_str().unwrap_or("v1").to_string();
        let description = doc["description"].as_str().unwrap_or_default().to_string();
        let wire = Arc::new(Schema::new(
            fields
                .iter()
                .map(|f| Field::new(&f.name, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        let mut stored_fields = Vec::new();
        let described = |f: Field, d: &str| {
            f.with_metadata(HashMap::from([("description".to_string(), d.to_string())]))
        };
        for f in &fields {
            // Pushed fields are nullable in Arrow: invalid cells are null until their rows are
            // filtered out, and retractions may omit fields. Validation enforces presence.
            let (dt, nullable) = match (&f.kind, f.name.as_str()) {
                (FieldKind::PersonalId, _) => {
                    stored_fields.push(described(
                        Field::new("person_key", DataType::Utf8, true),
                        "Pseudonym of the woman: HMAC-SHA256 of her ID number under the operator's secret (32 hex digits).",
                    ));
                    stored_fields.push(described(
                        Field::new("sex", DataType::Utf8, true),
                        "F or M, from the ID number.",
                    ));
                    stored_fields.push(described(
                        Field::new("birth_date", DataType::Date32, true),
                        "Birth date, from the ID number.",
                    ));
                    stored_fields.push(described(
                        Field::new("hukou_county", DataType::Utf8, true),
                        "First six digits of the ID number: the issuing (hukou) county.",
                    ));
                    continue;
                }
                (FieldKind::Integer { .. }, _) => (DataType::Int64, true),
                (FieldKind::Date { .. }, _) => (DataType::Date32, true),
                (FieldKind::Decimal { precision, scale }, _) => {
                    (DataType::Decimal128(*precision, *scale), true)
                }
                _ => (DataType::Utf8, true),
            };
            stored_fields.push(described(Field::new(&f.name, dt, nullable), &f.description));
        }
        stored_fields.push(described(
            Field::new("batch_id", DataType::Utf8, false),
            "The ingest batch that stored this row.",
        ));
        stored_fields.push(described(
            Field::new(
                "ingested_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            "Transaction time: when the warehouse committed this row.",
        ));
        Ok(TableSpec {
            table,
            version,
            description,
            fields,
            wire,
            stored: Arc::new(Schema::new(stored_fields)),
        })
    }

    /// The schema a body is decoded into: every pushed field as nullable UTF-8, so that every
    /// type or presence problem becomes a per-row validation error rather than a decode failure.
    pub fn wire_schema(&self) -> SchemaRef {
        self.wire.clone()
    }

    /// The schema of the Delta table. Has no `id_number` column.
    pub fn stored_schema(&self) -> SchemaRef {
        self.stored.clone()
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }
}

fn specs() -> &'static HashMap<Table, TableSpec> {
    static SPECS: OnceLock<HashMap<Table, TableSpec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        Table::ALL
            .into_iter()
            .map(|t| {
                let spec = TableSpec::parse(t, t.schema_text())
                    .unwrap_or_else(|e| panic!("schemas/v1/tables/{t}.json: {e}"));
                (t, spec)
            })
            .collect()
    })
}
