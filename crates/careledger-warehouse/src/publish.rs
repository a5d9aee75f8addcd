//! What publication (dashboard output) needs from the warehouse: the `cell_key` function
//! that report SQL uses to give every count a companion *cell key*, and the `-- publish:`
//! header that says how a report's rows are framed and which of its columns are rates.
//!
//! Cell keys (the cell-key method of the Australian Bureau of Statistics' TableBuilder): each
//! woman gets a secret pseudo-random record key, `cell_key(person_key)`; a count's companion
//! column `<count>__ck` sums the record keys of the women it counts. Two cells counting the
//! same women have the same cell key, whatever report, date or knowledge instant they come
//! from, so the noise that publication derives from it is the same too, and differencing or
//! repeating requests gains nothing. The keys are computed only in snapshots made for
//! publication; elsewhere `cell_key` is 0 and the companion columns are dropped from answers.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Suffix of a count's companion cell-key column.
pub const CELL_KEY_SUFFIX: &str = "__ck";

/// Record keys are below 2^32, so a sum over a million women fits an i64 with room to spare.
const RECORD_KEY_BITS: u32 = 32;

/// `cell_key(person_key or person_id) -> BIGINT`: the woman's record key (publication
/// snapshots), or 0.
#[derive(PartialEq, Eq, Hash)]
struct CellKey {
    secret: Option<[u8; 32]>,
    signature: Signature,
}

impl std::fmt::Debug for CellKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellKey")
            .field("keyed", &self.secret.is_some())
            .finish()
    }
}

/// The record key of one woman under `secret`, from her `person_id` (the 64-bit number of
/// her `person_key`), so that `cell_key(person_key)` and `cell_key(person_id)` agree.
pub fn record_key(secret: &[u8; 32], person_id: i64) -> i64 {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(&person_id.to_be_bytes());
    let d = mac.finalize().into_bytes();
    let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    (x >> (64 - RECORD_KEY_BITS)) as i64
}

impl ScalarUDFImpl for CellKey {
    fn name(&self) -> &str {
        "cell_key"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("cell_key takes one argument, a person_key");
        };
        let Some(secret) = &self.secret else {
            return Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(0))));
        };
        let array = arg.to_array(args.number_rows)?;
        let keys: Int64Array = if array.data_type() == &DataType::Int64 {
            let ids = array
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("an Int64 array");
            ids.iter()
                .map(|id| id.map(|id| record_key(secret, id)))
                .collect()
        } else {
            let text = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
            let text = text
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .expect("cast to Utf8");
            text.iter()
                .map(|k| {
                    k.and_then(careledger_model::pseudonym::person_id)
                        .map(|id| record_key(secret, id))
                })
                .collect()
        };
        Ok(ColumnarValue::Array(Arc::new(keys) as ArrayRef))
    }
}

/// The `cell_key` function: keyed for publication snapshots, 0 elsewhere.
pub(crate) fn cell_key_udf(secret: Option<[u8; 32]>) -> ScalarUDF {
    ScalarUDF::new_from_impl(CellKey {
        secret,
        signature: Signature::one_of(
            vec![
                TypeSignature::Exact(vec![DataType::Utf8]),
                TypeSignature::Exact(vec![DataType::Utf8View]),
                TypeSignature::Exact(vec![DataType::LargeUtf8]),
                TypeSignature::Exact(vec![DataType::Int64]),
            ],
            Volatility::Immutable,
        ),
    })
}

/// Decimal places of every rate a report publishes.
pub const RATE_PLACES: u32 = 4;

/// `numerator / denominator` rounded to [`RATE_PLACES`] decimal places exactly: the quotient
/// is rounded in integer arithmetic, halves away from zero (351/480 = 0.73125 → 0.7313), and
/// the result is the double nearest that decimal, which prints as it. `None` when the
/// denominator is 0. The same function rounds a report's rates in SQL (`exact_rate`) and a
/// publication's rates recomputed from its published counts, so ties round the same way
/// everywhere (a floating-point quotient rounded afterwards does not: 351/480 is
/// 0.7312499999999999… as a double, and engines differ on it).
pub fn exact_rate(numerator: i64, denominator: i64) -> Option<f64> {
    if denominator == 0 {
        return None;
    }
    let scale = 10_i128.pow(RATE_PLACES);
    let (n, d) = (i128::from(numerator) * scale, i128::from(denominator));
    let magnitude = (2 * n.abs() + d.abs()) / (2 * d.abs());
    let signed = if (n < 0) != (d < 0) {
        -magnitude
    } else {
        magnitude
    };
    // |signed| <= |numerator| * 10^4 + 1: exact in an f64 for any count below 2^39.
    Some(signed as f64 / scale as f64)
}

/// `exact_rate(numerator, denominator) -> DOUBLE`: [`exact_rate`] in SQL; NULL when either
/// argument is NULL or the denominator is 0.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExactRate {
    signature: Signature,
}

impl ScalarUDFImpl for ExactRate {
    fn name(&self) -> &str {
        "exact_rate"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [num, den] = args.args.as_slice() else {
            return exec_err!("exact_rate takes two arguments: numerator, denominator");
        };
        // The signature coerces both arguments to BIGINT.
        let num = num.to_array(args.number_rows)?;
        let den = den.to_array(args.number_rows)?;
        let (Some(num), Some(den)) = (
            num.as_any().downcast_ref::<Int64Array>(),
            den.as_any().downcast_ref::<Int64Array>(),
        ) else {
            return exec_err!("exact_rate: integer arguments expected");
        };
        let rates: Float64Array = num
            .iter()
            .zip(den.iter())
            .map(|(n, d)| exact_rate(n?, d?))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(rates) as ArrayRef))
    }
}

/// The `exact_rate` function.
pub(crate) fn exact_rate_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ExactRate {
        signature: Signature::uniform(2, vec![DataType::Int64], Volatility::Immutable),
    })
}

/// Where the values of a label column come from, to complete a published table's frame.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelDomain {
    /// Every region at the `level` parameter under the `region` parameter's prefix.
    Regions,
    /// The first day of every month in [`from`, `to`).
    Months,
    /// Every code of a code list (`schemas/v1/codes`), or only the value of the report's
    /// parameter of the same name when it is set.
    Codes(String),
}

/// A rate a publication recomputes from its published counts: `(a + b + …) / d`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RateSpec {
    pub column: String,
    pub numerators: Vec<String>,
    pub denominator: String,
}

/// How a report is published to dashboards (its `-- publish:` header lines).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PublishSpec {
    /// The label columns that identify a row, with their domains, in row order.
    pub labels: Vec<(String, LabelDomain)>,
    /// Rate columns, recomputed from the published counts.
    pub rates: Vec<RateSpec>,
    /// Non-count columns shown as computed where every count of their row is shown.
    pub exact: Vec<String>,
    /// The count that must be shown for the `exact` columns of its row to be shown (after
    /// `|` on the `exact` line); without one, every count of the row must be shown.
    pub exact_guard: Option<String>,
}

impl PublishSpec {
    /// Reads one `-- publish:` line into `self`:
    /// `labels region_code month reason=exit_reasons`, `rate coverage = served / women`,
    /// `exact lag_days_median lag_days_p90 | dated_rows`.
    pub fn add_line(&mut self, line: &str) -> Result<(), String> {
        let (kind, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match kind {
            "labels" => {
                for w in rest.split_whitespace() {
                    let (name, domain) = match w.split_once('=') {
                        Some((name, list)) => (name, LabelDomain::Codes(list.to_string())),
                        None if w == "region_code" => (w, LabelDomain::Regions),
                        None if w == "month" => (w, LabelDomain::Months),
                        None => return Err(format!("publish label {w}: no domain (name=list)")),
                    };
                    if let LabelDomain::Codes(list) = &domain
                        && careledger_model::vocabulary().try_list(list).is_none()
                    {
                        return Err(format!("publish label {name}: no code list {list}"));
                    }
                    self.labels.push((name.to_string(), domain));
                }
            }
            "rate" => {
                let (column, expr) = rest
                    .split_once('=')
                    .ok_or("publish rate: COLUMN = A [+ B …] / D")?;
                let (num, den) = expr
                    .split_once('/')
                    .ok_or("publish rate: COLUMN = A [+ B …] / D")?;
                self.rates.push(RateSpec {
                    column: column.trim().to_string(),
                    numerators: num.split('+').map(|n| n.trim().to_string()).collect(),
                    denominator: den.trim().to_string(),
                });
            }
            "exact" => {
                let (columns, guard) = rest.split_once('|').unwrap_or((rest, ""));
                self.exact
                    .extend(columns.split_whitespace().map(str::to_string));
                let guard = guard.trim();
                if !guard.is_empty() {
                    self.exact_guard = Some(guard.to_string());
                }
            }
            other => return Err(format!("publish: unknown kind {other:?}")),
        }
        Ok(())
    }
}
