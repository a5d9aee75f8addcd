//! Disclosure control for published (dashboard) tables. ARCHITECTURE.md ("Disclosure
//! control") has the design and what it protects against; in short:
//!
//! 1. **Reference periods only**: a dashboard's `as_of` is a month's last day and its periods
//!    are whole months, so daily steps cannot show the day a single woman left.
//! 2. **A complete frame**: every region at the level (under the requested prefix and the
//!    token's scope), month and code of the row labels has a row, so a missing row does not
//!    reveal a zero.
//! 3. **Cell-key perturbation**: every count gets a small noise (most often 0, rarely more
//!    than ±2, never more than ±10) drawn
//!    from its cell key (the sum of the secret record keys of the women it counts) and its
//!    value. The same women give the same noise in every report, date and request, so
//!    repeating or differencing requests averages nothing away, and no published total is
//!    known to equal the sum of its published parts.
//! 4. **Suppression**: a count below k (zero included), before or after the noise, is not
//!    shown. Rates are recomputed from the published counts; other derived numbers are shown
//!    only where a report declares them safe (`exact`), and only where the count they rest on
//!    (or every count of the row) is shown.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use axum::http::StatusCode;
use careledger_model::RegionLevel;
use careledger_warehouse::publish::{CELL_KEY_SUFFIX, LabelDomain, PublishSpec};
use careledger_warehouse::{ParamKind, ReportSpec};
use chrono::{Datelike, NaiveDate};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::problem::Problem;

/// Suppressed cells as (row, column), rows counted across all batches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub cells: BTreeSet<(usize, usize)>,
}

/// Most rows a published table may have after its frame is completed.
pub const MAX_PUBLISHED_ROWS: usize = 200_000;

/// The noise is two-sided geometric (discrete Laplace): P(n) ∝ NOISE_ALPHA^|n| for
/// |n| ≤ MAX_NOISE. Most counts are shown as they are (P(0) ≈ 0.54), 99.7 % within ±4; the
/// rare large values keep the bound an attacker can rely on wide, so that subtracting
/// published cells never pins a hidden one.
const NOISE_ALPHA: f64 = 0.3;

/// The largest noise a published count can carry.
pub const MAX_NOISE: i64 = 10;

/// P(noise ≤ n) for n = −MAX_NOISE..=MAX_NOISE.
fn noise_cdf() -> &'static [f64] {
    static CDF: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    CDF.get_or_init(|| {
        let weights: Vec<f64> = (-MAX_NOISE..=MAX_NOISE)
            .map(|n| NOISE_ALPHA.powi(n.unsigned_abs() as i32))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect()
    })
}

/// The settings of publication.
#[derive(Clone)]
pub struct Publisher {
    /// Counts below k are not shown.
    pub k: i64,
    secret: [u8; 32],
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

fn is_count(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

fn is_float(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..)
    )
}

fn month_start(d: NaiveDate) -> bool {
    d.day() == 1
}

fn month_end(d: NaiveDate) -> bool {
    d.succ_opt().is_none_or(|n| n.day() == 1)
}

/// Refuses a dashboard request whose dates are not reference periods: `as_of` must be the
/// last day of a month, every other date parameter (`from`, `to`) the first day of one.
pub fn check_reference_periods(
    spec: &ReportSpec,
    given: &HashMap<String, String>,
) -> Result<(), Problem> {
    if spec.publish.is_none() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("report {} is not published to dashboards", spec.name),
        ));
    }
    for p in spec.params.iter().filter(|p| p.kind == ParamKind::Date) {
        let Some(text) = given.get(&p.name).or(p.default.as_ref()) else {
            continue;
        };
        let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") else {
            continue; // binding names the malformed date
        };
        let (ok, want) = if p.name == "as_of" {
            (month_end(d), "the last day of a month")
        } else {
            (month_start(d), "the first day of a month")
        };
        if !ok {
            return Err(Problem::bad_request(
                "reference-period",
                format!(
                    "dashboards get figures for reference periods only: {} must be {want}, got {text}",
                    p.name
                ),
            ));
        }
    }
    Ok(())
}

impl Publisher {
    pub fn new(k: i64, secret: [u8; 32]) -> Publisher {
        Publisher { k, secret }
    }

    /// The noise of a count `value` whose cell key is `cell_key`: a function of the two and
    /// the secret only. Zero stays zero (no women, no key).
    pub fn noise(&self, value: i64, cell_key: i64) -> i64 {
        if value == 0 {
            return 0;
        }
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        mac.update(b"noise");
        mac.update(&value.to_le_bytes());
        mac.update(&cell_key.rem_euclid(1 << 32).to_le_bytes());
        let d = mac.finalize().into_bytes();
        // 53 random bits: a uniform draw in [0, 1).
        let draw = (u64::from_le_bytes(d[..8].try_into().expect("8 bytes")) >> 11) as f64
            / (1u64 << 53) as f64;
        let i = noise_cdf()
            .iter()
            .position(|&upto| draw < upto)
            .unwrap_or(noise_cdf().len() - 1);
        i as i64 - MAX_NOISE
    }

    /// A cell key for a count that has no companion column (counts of rows, not of women):
    /// from the column, the row's labels and the value.
    fn fallback_key(&self, column: &str, labels: &str) -> i64 {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        mac.update(b"cell");
        mac.update(column.as_bytes());
        mac.update(&[0]);
        mac.update(labels.as_bytes());
        let d = mac.finalize().into_bytes();
        i64::from(u32::from_le_bytes(d[..4].try_into().expect("4 bytes")))
    }

    /// The published table: the frame completed, counts perturbed and the small ones marked,
    /// rates recomputed, other derived numbers kept only where declared safe, cell keys gone.
    pub fn publish(
        &self,
        spec: &ReportSpec,
        given: &HashMap<String, String>,
        scope: Option<&str>,
        batch: &RecordBatch,
    ) -> Result<(RecordBatch, Suppression), Problem> {
        let publish = spec.publish.as_ref().ok_or_else(|| {
            Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("report {} is not published to dashboards", spec.name),
            )
        })?;
        let param = |name: &str| {
            given.get(name).cloned().or_else(|| {
                spec.params
                    .iter()
                    .find(|p| p.name == name)
                    .and_then(|p| p.default.clone())
            })
        };
        let frame = Frame::build(publish, &param, scope)?;
        let schema = batch.schema();
        let label_cols: Vec<usize> = publish
            .labels
            .iter()
            .map(|(name, _)| {
                schema.index_of(name).map_err(|_| {
                    Problem::internal("publication", &format!("label {name} is not a column"))
                })
            })
            .collect::<Result<_, _>>()?;
        let text = |c: usize, r: usize| -> String {
            arrow_cast::display::array_value_to_string(batch.column(c), r).unwrap_or_default()
        };
        // Where each computed row lands in the frame.
        let mut row_of: HashMap<Vec<String>, usize> = HashMap::new();
        for r in 0..batch.num_rows() {
            row_of.insert(label_cols.iter().map(|&c| text(c, r)).collect(), r);
        }
        let source_rows: Vec<Option<usize>> = frame
            .rows
            .iter()
            .map(|labels| row_of.get(labels).copied())
            .collect();
        let n = frame.rows.len();

        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let mut hidden: BTreeSet<(usize, usize)> = BTreeSet::new();
        let mut published: HashMap<String, Vec<Option<i64>>> = HashMap::new();
        let mut pending_floats = Vec::new();
        for (c, field) in schema.fields().iter().enumerate() {
            let name = field.name();
            if name.ends_with(CELL_KEY_SUFFIX) {
                continue;
            }
            let out_c = fields.len();
            if let Some(li) = label_cols.iter().position(|&lc| lc == c) {
                let values: Vec<Option<String>> =
                    frame.rows.iter().map(|l| Some(l[li].clone())).collect();
                columns.push(typed_strings(values, field.data_type())?);
                fields.push(Field::new(name, field.data_type().clone(), false));
            } else if let Some(values) = frame.derived_label(name, &publish.labels) {
                columns.push(typed_strings(values, field.data_type())?);
                fields.push(Field::new(name, field.data_type().clone(), true));
            } else if is_count(field.data_type()) {
                let values = arrow_cast::cast(batch.column(c), &DataType::Int64)
                    .map_err(|e| Problem::internal("publication", &e))?;
                let values = values.as_primitive::<Int64Type>();
                let keys = match schema.index_of(&format!("{name}{CELL_KEY_SUFFIX}")) {
                    Ok(kc) => Some(
                        arrow_cast::cast(batch.column(kc), &DataType::Int64)
                            .map_err(|e| Problem::internal("publication", &e))?,
                    ),
                    Err(_) => None,
                };
                let mut out = Vec::with_capacity(n);
                for (fr, src) in source_rows.iter().enumerate() {
                    let (value, key) = match src {
                        Some(r) if !values.is_null(*r) => {
                            let key = match &keys {
                                Some(k) if !k.is_null(*r) => {
                                    k.as_primitive::<Int64Type>().value(*r)
                                }
                                Some(_) => 0,
                                None => self.fallback_key(name, &frame.rows[fr].join("\u{1f}")),
                            };
                            (values.value(*r), key)
                        }
                        _ => (0, 0),
                    };
                    let shown = (value + self.noise(value, key)).max(0);
                    if value < self.k || shown < self.k {
                        hidden.insert((fr, out_c));
                        out.push(None);
                    } else {
                        out.push(Some(shown));
                    }
                }
                published.insert(name.clone(), out.clone());
                columns.push(Arc::new(Int64Array::from(out)));
                fields.push(Field::new(name, DataType::Int64, true));
            } else if is_float(field.data_type()) {
                // Filled in once every count is published (rates read them).
                pending_floats.push((out_c, c, name.clone()));
                columns.push(Arc::new(Float64Array::from(vec![None::<f64>; n])));
                fields.push(Field::new(name, DataType::Float64, true));
            } else if field.data_type() == &DataType::Boolean {
                // Derived from exact counts (e.g. `balanced`): never published.
                for fr in 0..n {
                    hidden.insert((fr, out_c));
                }
                columns.push(arrow_array::new_null_array(&DataType::Boolean, n));
                fields.push(Field::new(name, DataType::Boolean, true));
            } else {
                // Other values (a last batch's time): as computed, null where the frame added
                // the row.
                let indices = arrow_array::UInt32Array::from(
                    source_rows
                        .iter()
                        .map(|r| r.map(|r| r as u32))
                        .collect::<Vec<_>>(),
                );
                columns.push(
                    arrow_select::take::take(batch.column(c), &indices, None)
                        .map_err(|e| Problem::internal("publication", &e))?,
                );
                fields.push(Field::new(name, field.data_type().clone(), true));
            }
        }
        let count_cols: Vec<usize> = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| published.contains_key(f.name()))
            .map(|(i, _)| i)
            .collect();
        let rows_hiding: Vec<bool> = (0..n)
            .map(|fr| count_cols.iter().any(|c| hidden.contains(&(fr, *c))))
            .collect();
        let row_has_hidden_count = |fr: usize| rows_hiding[fr];
        // Where a report's exact columns may be shown: its guard count is, or every count.
        let exact_hidden = |fr: usize| match &publish.exact_guard {
            Some(guard) => published.get(guard).is_none_or(|v| v[fr].is_none()),
            None => row_has_hidden_count(fr),
        };
        for (out_c, c, name) in pending_floats {
            let values: Vec<Option<f64>> =
                if let Some(rate) = publish.rates.iter().find(|r| r.column == name) {
                    let get = |col: &str, fr: usize| published.get(col).and_then(|v| v[fr]);
                    (0..n)
                        .map(|fr| {
                            let den = get(&rate.denominator, fr)?;
                            let mut num = 0;
                            for col in &rate.numerators {
                                num += get(col, fr)?;
                            }
                            careledger_warehouse::publish::exact_rate(num, den)
                        })
                        .collect()
                } else if publish.exact.contains(&name) {
                    let computed = arrow_cast::cast(batch.column(c), &DataType::Float64)
                        .map_err(|e| Problem::internal("publication", &e))?;
                    let computed = computed.as_primitive::<arrow_array::types::Float64Type>();
                    source_rows
                        .iter()
                        .enumerate()
                        .map(|(fr, r)| {
                            r.filter(|r| !computed.is_null(*r) && !exact_hidden(fr))
                                .map(|r| computed.value(r))
                        })
                        .collect()
                } else {
                    vec![None; n]
                };
            for (fr, v) in values.iter().enumerate() {
                let exact = publish.exact.contains(&name);
                if v.is_none() && (!exact || exact_hidden(fr)) {
                    hidden.insert((fr, out_c));
                }
            }
            columns[out_c] = Arc::new(Float64Array::from(values));
        }
        let out = RecordBatch::try_new(
            Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
            columns,
        )
        .map_err(|e| Problem::internal("publication", &e))?;
        Ok((out, Suppression { cells: hidden }))
    }
}

/// Label texts as an array of the column's type (strings, or dates as `YYYY-MM-DD`).
fn typed_strings(values: Vec<Option<String>>, dt: &DataType) -> Result<ArrayRef, Problem> {
    let strings: ArrayRef = Arc::new(StringArray::from(values));
    arrow_cast::cast(&strings, dt).map_err(|e| Problem::internal("publication", &e))
}

/// The rows a published table must have: every combination of its labels' domains.
struct Frame {
    rows: Vec<Vec<String>>,
}

impl Frame {
    fn build(
        publish: &PublishSpec,
        param: &dyn Fn(&str) -> Option<String>,
        scope: Option<&str>,
    ) -> Result<Frame, Problem> {
        let mut domains: Vec<Vec<String>> = Vec::new();
        for (name, domain) in &publish.labels {
            domains.push(match domain {
                LabelDomain::Regions => {
                    let level = param("level")
                        .and_then(|l| RegionLevel::parse(&l))
                        .unwrap_or(RegionLevel::County);
                    let prefix = param("region").unwrap_or_default();
                    let scope = scope.unwrap_or("");
                    careledger_model::regions()
                        .iter()
                        .filter(|r| r.level == level)
                        .filter(|r| r.code.starts_with(&prefix))
                        .filter(|r| r.code.starts_with(scope) || scope.starts_with(&r.code))
                        .map(|r| r.code.clone())
                        .collect()
                }
                LabelDomain::Months => {
                    let date = |p: &str| {
                        param(p).and_then(|t| NaiveDate::parse_from_str(&t, "%Y-%m-%d").ok())
                    };
                    let (Some(mut m), Some(to)) = (date("from"), date("to")) else {
                        return Err(Problem::bad_request(
                            "bad-parameter",
                            "from and to must be dates",
                        ));
                    };
                    m = m.with_day(1).expect("day 1");
                    let mut months = Vec::new();
                    while m < to {
                        months.push(m.format("%Y-%m-%d").to_string());
                        m = m
                            .checked_add_months(chrono::Months::new(1))
                            .ok_or_else(|| {
                                Problem::bad_request("bad-parameter", "the period is too long")
                            })?;
                        if months.len() > 1200 {
                            return Err(Problem::bad_request(
                                "bad-parameter",
                                "a published period spans at most 100 years",
                            ));
                        }
                    }
                    months
                }
                LabelDomain::Codes(list) => match param(name).filter(|v| !v.is_empty()) {
                    Some(one) => vec![one],
                    None => careledger_model::vocabulary()
                        .list(list)
                        .codes
                        .iter()
                        .map(|c| c.code.clone())
                        .collect(),
                },
            });
        }
        let total = domains
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(d.len()))
            .unwrap_or(usize::MAX);
        if total > MAX_PUBLISHED_ROWS {
            return Err(Problem::bad_request(
                "table-too-large",
                format!(
                    "the published table would have {total} rows, more than {MAX_PUBLISHED_ROWS}; choose a higher level, a narrower region or a shorter period"
                ),
            ));
        }
        let mut rows: Vec<Vec<String>> = vec![Vec::new()];
        for d in &domains {
            rows = rows
                .into_iter()
                .flat_map(|prefix| {
                    d.iter().map(move |v| {
                        let mut row = prefix.clone();
                        row.push(v.clone());
                        row
                    })
                })
                .collect();
        }
        Ok(Frame { rows })
    }

    /// A label that names another: `region_name` (of `region_code`), `<x>_zh` (the Chinese
    /// label of code column `<x>`).
    fn derived_label(
        &self,
        name: &str,
        labels: &[(String, LabelDomain)],
    ) -> Option<Vec<Option<String>>> {
        if name == "region_name" {
            let i = labels.iter().position(|(n, _)| n == "region_code")?;
            return Some(
                self.rows
                    .iter()
                    .map(|r| {
                        careledger_model::regions()
                            .get(&r[i])
                            .map(|g| g.name.clone())
                    })
                    .collect(),
            );
        }
        let base = name.strip_suffix("_zh")?;
        let i = labels.iter().position(|(n, _)| n == base)?;
        let LabelDomain::Codes(list) = &labels[i].1 else {
            return None;
        };
        let list = careledger_model::vocabulary().list(list);
        Some(
            self.rows
                .iter()
                .map(|r| list.get(&r[i]).map(|c| c.zh.clone()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher() -> Publisher {
        Publisher::new(5, [7; 32])
    }

    #[test]
    fn noise_is_a_function_of_value_and_key_and_is_bounded() {
        let p = publisher();
        let mut seen = std::collections::BTreeMap::new();
        for key in 0..20_000i64 {
            let n = p.noise(12, key * 7919);
            assert_eq!(n, p.noise(12, key * 7919), "the same cell, the same noise");
            assert!(n.abs() <= MAX_NOISE);
            *seen.entry(n).or_insert(0) += 1;
        }
        assert_eq!(p.noise(0, 12345), 0, "an empty cell stays empty");
        // Zero most often, then ±1, ±2, …: about 54 % zero, 16 % each of ±1.
        let share = |n: i64| f64::from(seen.get(&n).copied().unwrap_or(0)) / 20_000.0;
        assert!((0.50..0.58).contains(&share(0)), "{seen:?}");
        for n in 1..=2 {
            assert!(
                share(n) < share(n - 1) && share(-n) < share(1 - n),
                "{seen:?}"
            );
            assert!((share(n) - share(-n)).abs() < 0.02, "symmetric: {seen:?}");
        }
        assert!(
            seen.keys().any(|n| n.abs() >= 3),
            "the tails occur: {seen:?}"
        );
        // Another secret, other noise.
        let other = Publisher::new(5, [8; 32]);
        assert!((0..200).any(|key| other.noise(12, key) != p.noise(12, key)));
    }

    #[test]
    fn reference_periods_are_month_ends_and_month_starts() {
        assert!(month_end(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()));
        assert!(!month_end(NaiveDate::from_ymd_opt(2024, 2, 28).unwrap()));
        assert!(month_start(NaiveDate::from_ymd_opt(2024, 3, 1).unwrap()));
        let stock = careledger_warehouse::reports::find("stock").unwrap();
        let given = |d: &str| HashMap::from([("as_of".to_string(), d.to_string())]);
        assert!(check_reference_periods(stock, &given("2024-06-30")).is_ok());
        let e = check_reference_periods(stock, &given("2024-06-29")).unwrap_err();
        assert_eq!(e.slug, "reference-period");
    }
}
