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
//! -- compose: stock coverage_by_measure   (revisions only: run those reports at two
//!                                          instants, as tables frozen_<name>, current_<name>)
//! -- publish: labels region_code month reason=exit_reasons   (how dashboards get it,
//! -- publish: rate coverage = women_served / women_in_ledger  see crate::publish)
//! ```
//!
//! A count column `x` may have a companion `x__ck` (the sum of `cell_key(person_key)` over
//! the women it counts): kept in answers for publication only, dropped from all others.

use std::collections::HashMap;
use std::sync::OnceLock;

use arrow_array::RecordBatch;
use careledger_model::LocalZone;
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use serde::Serialize;

use crate::publish::{CELL_KEY_SUFFIX, PublishSpec};
use crate::{Access, Result, Snapshot, Warehouse, WarehouseError};

/// A parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Date,
    Text,
    Int,
    Timestamp,
}

/// One declared parameter.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ParamSpec {
    pub name: String,
    pub kind: ParamKind,
    pub default: Option<String>,
    /// Allowed values, for text parameters that take a closed set.
    pub choices: Vec<String>,
    pub description: String,
}

/// One named report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// How dashboards get it (`-- publish:` lines); a report without them is not published.
    #[schema(value_type = Option<Object>)]
    pub publish: Option<PublishSpec>,
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
    let mut publish: Option<PublishSpec> = None;
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
        if key == "publish" {
            publish
                .get_or_insert_with(PublishSpec::default)
                .add_line(value)?;
        } else if key == "param" {
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
        publish,
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
pub fn parse_value(p: &ParamSpec, text: &str, zone: &LocalZone) -> Result<ScalarValue> {
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
            let t = parse_instant(text, zone)
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

/// An instant: RFC 3339, or a date (the start of that day in the configured zone).
pub fn parse_instant(text: &str, zone: &LocalZone) -> Option<DateTime<Utc>> {
    zone.parse_instant(text)
}

/// The parameters of `spec` as a region-scoped `access` may ask them (unchanged without a
/// scope). A `level` above the scope is refused: its regions hold women outside the scope,
/// whose rows the scoped snapshot does not have, so the figure would be wrong (see
/// [`crate::scope_levels`] for the rule). A `region` prefix that contains the scope is
/// narrowed to the scope, and one outside it is refused, so every row of a scoped answer is a
/// region inside the scope.
pub fn scoped_params(
    spec: &ReportSpec,
    given: &HashMap<String, String>,
    access: &Access,
) -> Result<HashMap<String, String>> {
    let mut out = given.clone();
    let Some(scope) = access.scope.as_deref() else {
        return Ok(out);
    };
    let value = |name: &str| {
        given.get(name).cloned().or_else(|| {
            spec.params
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.default.clone())
        })
    };
    let declares = |name: &str| spec.params.iter().any(|p| p.name == name);
    if declares("level") {
        let allowed = crate::scope_levels(scope);
        let asked = value("level").and_then(|l| careledger_model::RegionLevel::parse(&l));
        if let Some(level) = asked.filter(|l| !allowed.contains(l)) {
            let names: Vec<&str> = allowed.iter().map(|l| l.as_str()).collect();
            return Err(WarehouseError::OutOfScope {
                name: "level".into(),
                message: format!(
                    "level {} is above this token's region scope {scope} (a {} scope): its figures would count women outside the scope. This token may ask for level {}",
                    level.as_str(),
                    names.first().copied().unwrap_or("village"),
                    names.join(", ")
                ),
            });
        }
    }
    if let Some(region) = value("region").filter(|_| declares("region")) {
        if scope.starts_with(region.as_str()) {
            out.insert("region".into(), scope.to_string());
        } else if !region.starts_with(scope) {
            return Err(WarehouseError::OutOfScope {
                name: "region".into(),
                message: format!(
                    "region {region} is outside this token's region scope {scope}; ask for {scope} or a region inside it"
                ),
            });
        }
    }
    Ok(out)
}

/// Binds the declared parameters from `given` (text values), with defaults; refuses unknown
/// and missing ones.
pub fn bind(
    spec: &ReportSpec,
    given: &HashMap<String, String>,
    zone: &LocalZone,
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
            Ok((p.name.clone(), parse_value(p, text, zone)?))
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
        Ok(without_cell_keys(self.report_frame(spec, given).await?)?
            .collect()
            .await?)
    }

    /// The planned report, parameters bound, not yet run.
    pub async fn report_frame(
        &self,
        spec: &ReportSpec,
        given: &HashMap<String, String>,
    ) -> Result<DataFrame> {
        let values = bind(spec, given, &self.zone)?;
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
        let scoped = scoped_params(spec, given, access)?;
        let given = &scoped;
        let known_at = given
            .get("known_at")
            .map(|t| {
                parse_instant(t, &self.zone).ok_or_else(|| {
                    bad(
                        "known_at",
                        format!("{t:?} is not an RFC 3339 instant or a date"),
                    )
                })
            })
            .transpose()?;
        let df = if let Some(inner) = &spec.compose {
            self.revisions_frame(spec, inner, given, access).await?
        } else {
            let snapshot = self.snapshot_as(known_at, access).await?;
            snapshot.report_frame(spec, given).await?
        };
        collect_with_schema(if access.publication {
            df
        } else {
            without_cell_keys(df)?
        })
        .await
    }

    /// `revisions`: the inner report at `frozen_at` and now, joined by the SQL of the
    /// revisions file over the two results (`frozen`, `current`).
    async fn revisions_frame(
        &self,
        spec: &ReportSpec,
        inner: &str,
        given: &HashMap<String, String>,
        access: &Access,
    ) -> Result<DataFrame> {
        bind(spec, given, &self.zone)?; // refuses unknown or malformed parameters
        let instant = |name: &str| -> Result<Option<DateTime<Utc>>> {
            let text = given.get(name).or(spec
                .params
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.default.as_ref()));
            text.map(|t| {
                parse_instant(t, &self.zone)
                    .ok_or_else(|| bad(name, format!("{t:?} is not an instant")))
            })
            .transpose()
        };
        let frozen_at = instant("frozen_at")?.ok_or_else(|| bad("frozen_at", "is required"))?;
        // The later instant: `known_at`, or now.
        let later = instant("known_at")?;
        if later.is_some_and(|t| t < frozen_at) {
            return Err(bad("known_at", "must not be before frozen_at"));
        }
        let ctx = datafusion::prelude::SessionContext::new();
        for (prefix, at) in [("frozen", Some(frozen_at)), ("current", later)] {
            let snapshot = self.snapshot_as(at, access).await?;
            for inner_name in inner.split_whitespace() {
                let inner_spec = find(inner_name)?;
                let inner_params: HashMap<String, String> = given
                    .iter()
                    .filter(|(k, _)| inner_spec.params.iter().any(|p| &p.name == *k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .chain(
                        // The composed reports' parameters that revisions declares, with
                        // revisions' defaults when not given.
                        spec.params
                            .iter()
                            .filter(|p| !given.contains_key(&p.name))
                            .filter(|p| inner_spec.params.iter().any(|q| q.name == p.name))
                            .filter_map(|p| Some((p.name.clone(), p.default.clone()?))),
                    )
                    .collect();
                let df = snapshot.report_frame(inner_spec, &inner_params).await?;
                let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
                let batches = df.collect().await?;
                let t = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
                ctx.register_table(format!("{prefix}_{inner_name}"), std::sync::Arc::new(t))?;
            }
        }
        Ok(ctx.sql(&spec.sql).await?)
    }
}

/// The answer without its cell-key columns. The projection goes on top of the plan, so the
/// optimiser drops the aggregates that computed them and the order of the rows stays.
pub fn without_cell_keys(df: DataFrame) -> Result<DataFrame> {
    let keep: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !n.ends_with(CELL_KEY_SUFFIX))
        .collect();
    if keep.len() == df.schema().fields().len() {
        return Ok(df);
    }
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    Ok(df.select_columns(&keep)?)
}

async fn collect_with_schema(df: DataFrame) -> Result<(arrow_schema::SchemaRef, Vec<RecordBatch>)> {
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    Ok((schema, df.collect().await?))
}
