//! Named reports: SQL files in `queries/` with a header declaring name, titles, description
//! and typed parameters. Parameters are bound as `$name` values, never spliced into SQL.
//!
//! Header lines (before the SQL):
//! ```text
//! -- name: stock
//! -- title_zh: …
//! -- title_en: …
//! -- description: …
//! -- param: as_of date 2024-12-31 | what it is
//! -- param: level text county {province,city,county,township,village} | …
//! -- compose: stock           (revisions only: run that report at two instants)
//! ```

use std::collections::HashMap;
use std::sync::OnceLock;

use arrow_array::RecordBatch;
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use serde::Serialize;

use crate::{Access, Result, Snapshot, Warehouse, WarehouseError};

/// A parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Date,
    Text,
    Int,
    Timestamp,
}

/// One declared parameter.
#[derive(Debug, Clone, Serialize)]
pub struct ParamSpec {
    pub name: String,
    pub kind: ParamKind,
    pub default: Option<String>,
    /// Allowed values, for text parameters that take a closed set.
    pub choices: Vec<String>,
    pub description: String,
}

/// One named report.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSpec {
    pub name: String,
    pub title_zh: String,
    pub title_en: String,
    pub description: String,
    pub params: Vec<ParamSpec>,
    /// For `revisions`: the report run at the frozen instant and now.
    pub compose: Option<String>,
    /// `analyst` for case lists (one row per woman): never shown to dashboards.
    pub audience: Option<String>,
    #[serde(skip)]
    pub sql: String,
}

macro_rules! query_files {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../queries/", $name, ".sql")))),*]
    };
}

const QUERY_FILES: &[(&str, &str)] = query_files!(
    "stock",
    "entries",
    "exits",
    "balance",
    "turnover_and_returns",
    "coverage_by_measure",
    "group_coverage",
    "priority_gaps",
    "priority_gap_counts",
    "breadth",
    "registration_discrepancies",
    "source_health",
    "revisions",
);

fn parse_report(file: &str, text: &str) -> std::result::Result<ReportSpec, String> {
    let mut fields: HashMap<&str, String> = HashMap::new();
    let mut params = Vec::new();
    let mut sql = String::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("-- ").filter(|_| sql.is_empty()) else {
            sql.push_str(line);
            sql.push('\n');
            continue;
        };
        let Some((key, value)) = rest.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key == "param" {
            let (decl, description) = value.split_once('|').unwrap_or((value, ""));
            let mut words = decl.split_whitespace();
            let name = words.next().ok_or("param without a name")?.to_string();
            let kind = match words.next() {
                Some("date") => ParamKind::Date,
                Some("text") => ParamKind::Text,
                Some("int") => ParamKind::Int,
                Some("timestamp") => ParamKind::Timestamp,
                other => return Err(format!("param {name}: unknown type {other:?}")),
            };
            let mut default = None;
            let mut choices = Vec::new();
            for w in words {
                if let Some(list) = w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    choices = list.split(',').map(str::to_string).collect();
                } else if w == "required" {
                    default = None;
                } else {
                    default = Some(if w == "''" {
                        String::new()
                    } else {
                        w.to_string()
                    });
                }
            }
            params.push(ParamSpec {
                name,
                kind,
                default,
                choices,
                description: description.trim().to_string(),
            });
        } else {
            fields.insert(key, value.to_string());
        }
    }
    let get = |k: &str| {
        fields
            .get(k)
            .cloned()
            .ok_or_else(|| format!("{file}.sql has no `-- {k}:` line"))
    };
    let name = get("name")?;
    if name != file {
        return Err(format!("{file}.sql declares name {name}"));
    }
    Ok(ReportSpec {
        name,
        title_zh: get("title_zh")?,
        title_en: get("title_en")?,
        description: get("description")?,
        params,
        compose: fields.get("compose").cloned(),
        audience: fields.get("audience").cloned(),
        sql: sql.trim().to_string(),
    })
}

/// Every named report of this build.
pub fn catalog() -> &'static [ReportSpec] {
    static CATALOG: OnceLock<Vec<ReportSpec>> = OnceLock::new();
    CATALOG.get_or_init(|| {
        QUERY_FILES
            .iter()
            .map(|(f, t)| parse_report(f, t).unwrap_or_else(|e| panic!("queries/{f}.sql: {e}")))
            .collect()
    })
}

pub fn find(name: &str) -> Result<&'static ReportSpec> {
    catalog()
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| WarehouseError::UnknownReport(name.to_string()))
}

fn bad(name: &str, message: impl Into<String>) -> WarehouseError {
    WarehouseError::BadParam {
        name: name.to_string(),
        message: message.into(),
    }
}

/// Parses a parameter value given as text.
pub fn parse_value(p: &ParamSpec, text: &str) -> Result<ScalarValue> {
    match p.kind {
        ParamKind::Date => {
            let d = NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| bad(&p.name, format!("{text:?} is not a date YYYY-MM-DD")))?;
            Ok(ScalarValue::Date32(Some(careledger_model::epoch_days(d))))
        }
        ParamKind::Int => text
            .parse::<i64>()
            .map(|v| ScalarValue::Int64(Some(v)))
            .map_err(|_| bad(&p.name, format!("{text:?} is not an integer"))),
        ParamKind::Timestamp => {
            let t = parse_instant(text)
                .ok_or_else(|| bad(&p.name, format!("{text:?} is not an RFC 3339 instant")))?;
            Ok(ScalarValue::TimestampMicrosecond(
                Some(t.timestamp_micros()),
                Some("UTC".into()),
            ))
        }
        ParamKind::Text => {
            if !p.choices.is_empty() && !p.choices.iter().any(|c| c == text) {
                return Err(bad(
                    &p.name,
                    format!("{text:?} is not one of {}", p.choices.join(", ")),
                ));
            }
            Ok(ScalarValue::Utf8(Some(text.to_string())))
        }
    }
}

/// An instant: RFC 3339, or a date (its start, UTC).
pub fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        })
}

/// Binds the declared parameters from `given` (text values), with defaults; refuses unknown
/// and missing ones.
pub fn bind(
    spec: &ReportSpec,
    given: &HashMap<String, String>,
) -> Result<Vec<(String, ScalarValue)>> {
    for k in given.keys() {
        if k != "known_at" && !spec.params.iter().any(|p| &p.name == k) {
            let names: Vec<&str> = spec.params.iter().map(|p| p.name.as_str()).collect();
            let takes = if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            };
            return Err(bad(
                k,
                format!(
                    "report {} has no such parameter; its parameters: {takes}",
                    spec.name
                ),
            ));
        }
    }
    spec.params
        .iter()
        .map(|p| {
            let text = given
                .get(&p.name)
                .or(p.default.as_ref())
                .ok_or_else(|| bad(&p.name, "is required"))?;
            Ok((p.name.clone(), parse_value(p, text)?))
        })
        .collect()
}

impl Snapshot {
    /// Runs a plain (non-composed) report on this snapshot.
    pub async fn run_sql_report(
        &self,
        spec: &ReportSpec,
        given: &HashMap<String, String>,
    ) -> Result<Vec<RecordBatch>> {
        Ok(self.report_frame(spec, given).await?.collect().await?)
    }

    /// The planned report, parameters bound, not yet run.
    pub async fn report_frame(
        &self,
        spec: &ReportSpec,
        given: &HashMap<String, String>,
    ) -> Result<DataFrame> {
        let values = bind(spec, given)?;
        Ok(self.ctx.sql(&spec.sql).await?.with_param_values(values)?)
    }
}

impl Warehouse {
    /// Runs a named report with full access. `known_at` in `given` selects the snapshot.
    pub async fn run_report(
        &self,
        name: &str,
        given: &HashMap<String, String>,
    ) -> Result<Vec<RecordBatch>> {
        self.run_report_as(name, given, &Access::all()).await
    }

    /// Runs a named report on a snapshot limited by `access`. `known_at` in `given` selects
    /// the snapshot (default: now).
    pub async fn run_report_as(
        &self,
        name: &str,
        given: &HashMap<String, String>,
        access: &Access,
    ) -> Result<Vec<RecordBatch>> {
        Ok(self.run_report_with_schema(name, given, access).await?.1)
    }

    /// Like [`Warehouse::run_report_as`], with the result's schema (known even when the
    /// report returns no rows).
    pub async fn run_report_with_schema(
        &self,
        name: &str,
        given: &HashMap<String, String>,
        access: &Access,
    ) -> Result<(arrow_schema::SchemaRef, Vec<RecordBatch>)> {
        let spec = find(name)?;
        let known_at = given
            .get("known_at")
            .map(|t| {
                parse_instant(t).ok_or_else(|| {
                    bad(
                        "known_at",
                        format!("{t:?} is not an RFC 3339 instant or a date"),
                    )
                })
            })
            .transpose()?;
        if let Some(inner) = &spec.compose {
            return self.run_revisions(spec, inner, given, access).await;
        }
        let snapshot = self.snapshot_as(known_at, access).await?;
        collect_with_schema(snapshot.report_frame(spec, given).await?).await
    }

    /// `revisions`: the inner report at `frozen_at` and now, joined by the SQL of the
    /// revisions file over the two results (`frozen`, `current`).
    async fn run_revisions(
        &self,
        spec: &ReportSpec,
        inner: &str,
        given: &HashMap<String, String>,
        access: &Access,
    ) -> Result<(arrow_schema::SchemaRef, Vec<RecordBatch>)> {
        let inner_spec = find(inner)?;
        bind(spec, given)?; // refuses unknown or malformed parameters
        let frozen_text = given
            .get("frozen_at")
            .or(spec
                .params
                .iter()
                .find(|p| p.name == "frozen_at")
                .and_then(|p| p.default.as_ref()))
            .ok_or_else(|| bad("frozen_at", "is required"))?;
        let frozen_at = parse_instant(frozen_text)
            .ok_or_else(|| bad("frozen_at", format!("{frozen_text:?} is not an instant")))?;
        let mut inner_params: HashMap<String, String> = given
            .iter()
            .filter(|(k, _)| inner_spec.params.iter().any(|p| &p.name == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        inner_params.remove("known_at");
        let ctx = datafusion::prelude::SessionContext::new();
        for (name, at) in [("frozen", Some(frozen_at)), ("current", None)] {
            let df = self
                .snapshot_as(at, access)
                .await?
                .report_frame(inner_spec, &inner_params)
                .await?;
            let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            let t = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
            ctx.register_table(name, std::sync::Arc::new(t))?;
        }
        collect_with_schema(ctx.sql(&spec.sql).await?).await
    }
}

async fn collect_with_schema(df: DataFrame) -> Result<(arrow_schema::SchemaRef, Vec<RecordBatch>)> {
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    Ok((schema, df.collect().await?))
}
