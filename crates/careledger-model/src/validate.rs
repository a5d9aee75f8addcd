//! Column-wise validation of a decoded (wire) batch and its conversion to the stored schema.
//!
//! Each field's column is checked in one pass over its Arrow array; cross-field rules (date
//! order, service type within its measure, what a departure must name) run after. Every problem
//! is a [`RowError`] with a 1-based row number, the field, a stable code `field.problem` and a
//! message a clerk can act on. Rows with any error are left out of the stored batch.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{Date32Builder, StringBuilder};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow_schema::ArrowError;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::codes::vocabulary;
use crate::pseudonym::PseudonymKey;
use crate::region::{RegionLevel, regions};
use crate::resident_id::{ResidentId, contains_id_like, redact_ids};
use crate::schema::{FieldKind, FieldSpec, Table, TableSpec};

/// One problem with one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RowError {
    /// 1-based row number within the body (the first data row is 1).
    pub row: usize,
    pub field: String,
    /// Stable machine code, `field.problem` (e.g. `id_number.check_digit`).
    pub code: String,
    pub message: String,
}

/// What validation needs besides the batch.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext<'a> {
    /// The sending source (from its token): every row is stored under it.
    pub source: &'a str,
    /// Dates after this day are refused.
    pub today: NaiveDate,
    pub key: &'a PseudonymKey,
    pub batch_id: &'a str,
    pub ingested_at: DateTime<Utc>,
}

/// The outcome for one decoded batch.
#[derive(Debug)]
pub struct ValidatedBatch {
    pub rows: usize,
    /// The valid rows in the stored schema (no ID number).
    pub stored: RecordBatch,
    pub errors: Vec<RowError>,
    /// 0-based indices (within the input batch) of rejected rows, ascending.
    pub rejected: Vec<usize>,
}

struct Problems {
    ok: Vec<bool>,
    /// Rows refused before validation (the decoder's record errors): their other problems
    /// are not listed, since they come from a record that was not read as sent.
    silenced: Vec<bool>,
    list: Vec<RowError>,
    offset: usize,
}

/// The longest message a [`RowError`] carries, in characters (longer ones are cut, with `…`).
pub const MAX_MESSAGE_CHARS: usize = 500;

/// `text` cut to at most `max` characters, ending in `…` if cut.
fn cut(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((i, _)) => Cow::Owned(format!("{}…", &text[..i])),
    }
}

impl Problems {
    /// The one place a [`RowError`] is made: its message passes [`redact_ids`] and is cut to
    /// [`MAX_MESSAGE_CHARS`], so no message can carry an ID number or grow with a sent value.
    fn add(&mut self, row: usize, field: &str, problem: &str, message: String) {
        self.push(row, field, format!("{field}.{problem}"), message);
    }

    fn push(&mut self, row: usize, field: &str, code: String, message: String) {
        self.ok[row] = false;
        if self.silenced[row] {
            return;
        }
        let message = match redact_ids(&message) {
            Cow::Borrowed(_) => message,
            Cow::Owned(m) => m,
        };
        let message = cut(&message, MAX_MESSAGE_CHARS).into_owned();
        self.list.push(RowError {
            row: self.offset + row + 1,
            field: field.to_string(),
            code,
            message,
        });
    }
}

/// Parsed values of one field, kept for the cross-field rules and the stored batch.
enum Parsed<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<Option<i64>>),
    Date(Vec<Option<i32>>),
    Decimal(Vec<Option<i128>>, u8, i8),
    Person,
}

/// Days since 1970-01-01: Arrow's `Date32`.
pub fn epoch_days(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// The date of an Arrow `Date32` value.
pub fn from_epoch_days(days: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + chrono::TimeDelta::days(days.into())
}

/// At most 40 characters of a sent value, with `…` if cut, and ID-like runs masked: how a
/// message echoes it, so that a huge cell cannot make every error about it huge too. Masked
/// before it is cut, so that a cut cannot leave a piece of an ID too short to be recognised.
fn shown(v: &str) -> String {
    cut(&redact_ids(v), 40).into_owned()
}

/// A character `record_id` may not hold: a control character (CR, LF, tab, …) or an invisible
/// one (zero-width, bidirectional override).
fn forbidden_in_id(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// The row error for a value that holds what looks like a resident ID number, in a field other
/// than `id_number`. Such a row is never stored.
fn personal_id(p: &mut Problems, i: usize, name: &str, v: &str) {
    p.add(
        i,
        name,
        "personal_id",
        format!(
            "{name} holds what looks like a resident ID number ({}); an ID number may be sent only in id_number, and is never stored",
            shown(v)
        ),
    );
}

/// Cell text: trimmed, with empty cells as missing (CSV has no other null).
fn cell(col: Option<&StringArray>, i: usize) -> Option<&str> {
    let col = col?;
    if col.is_null(i) {
        return None;
    }
    let v = col.value(i).trim();
    (!v.is_empty()).then_some(v)
}

/// Parses a non-negative decimal with at most `scale` fraction digits into its scaled integer.
fn parse_decimal(text: &str, scale: i8) -> Result<i128, &'static str> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.starts_with('-') {
        return Err("negative");
    }
    let int = int.strip_prefix('+').unwrap_or(int);
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("not_decimal");
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize {
        return Err("decimals");
    }
    if int.len() > 12 {
        return Err("out_of_range");
    }
    let mut v: i128 = int.parse().map_err(|_| "not_decimal")?;
    let mut f = frac.to_string();
    while f.len() < scale as usize {
        f.push('0');
    }
    for _ in 0..scale {
        v *= 10;
    }
    if !f.is_empty() {
        v += f.parse::<i128>().map_err(|_| "not_decimal")?;
    }
    Ok(v)
}

/// Validates `batch` (decoded with `spec.wire_schema()`) and builds the stored rows.
/// `first_row` is the number of body rows before this batch (for row numbering).
pub fn validate_batch(
    spec: &TableSpec,
    batch: &RecordBatch,
    ctx: &ValidationContext<'_>,
    first_row: usize,
) -> Result<ValidatedBatch, ArrowError> {
    validate_batch_scoped(spec, batch, ctx, first_row, None)
}

/// [`validate_batch`] for a sender limited to a region: with `scope` (a region code prefix,
/// from the token), every row must carry a `region_code` inside it, retractions included
/// (`region_code.required`, `region_code.out_of_scope`); rows of a table without
/// `region_code` are refused (`source.out_of_scope`), and so is every row if the scope is not
/// a region code prefix.
pub fn validate_batch_scoped(
    spec: &TableSpec,
    batch: &RecordBatch,
    ctx: &ValidationContext<'_>,
    first_row: usize,
    scope: Option<&str>,
) -> Result<ValidatedBatch, ArrowError> {
    validate_batch_refusing(spec, batch, ctx, first_row, scope, &[])
}

/// [`validate_batch_scoped`] with rows already refused by the decoder (a record with an
/// unknown or malformed field, an NDJSON line that is not a JSON object): `refused` holds
/// their errors, `row` numbered in the body as every [`RowError`] (errors of rows outside
/// this batch are ignored). Such a row is rejected with these errors only (its messages pass
/// [`redact_ids`] and are cut here too); the rest of the batch is validated as usual.
pub fn validate_batch_refusing(
    spec: &TableSpec,
    batch: &RecordBatch,
    ctx: &ValidationContext<'_>,
    first_row: usize,
    scope: Option<&str>,
    refused: &[RowError],
) -> Result<ValidatedBatch, ArrowError> {
    let n = batch.num_rows();
    let mut p = Problems {
        ok: vec![true; n],
        silenced: vec![false; n],
        list: Vec::new(),
        offset: first_row,
    };
    for e in refused {
        let Some(i) = e.row.checked_sub(first_row + 1).filter(|i| *i < n) else {
            continue;
        };
        p.push(i, &e.field, e.code.clone(), e.message.clone());
    }
    for e in refused {
        if let Some(i) = e.row.checked_sub(first_row + 1).filter(|i| *i < n) {
            p.silenced[i] = true;
        }
    }
    let text_col = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    };

    // Retractions may omit what upserts must carry, so `op` is read first.
    let ops = text_col("op");
    let is_delete: Vec<bool> = (0..n).map(|i| cell(ops, i) == Some("delete")).collect();

    let vocab = vocabulary();
    let regs = regions();
    let mut parsed: HashMap<&str, Parsed<'_>> = HashMap::new();
    let mut person_key = StringBuilder::with_capacity(n, n * 32);
    let mut sex = StringBuilder::with_capacity(n, n);
    let mut birth = Date32Builder::with_capacity(n);
    let mut hukou = StringBuilder::with_capacity(n, n * 6);

    for f in &spec.fields {
        let col = text_col(&f.name);
        let name = f.name.as_str();
        let required = |i: usize| f.required_always || (f.required_for_upsert && !is_delete[i]);
        let missing = |p: &mut Problems, i: usize, f: &FieldSpec| {
            let what = if f.required_always {
                "on every row"
            } else {
                "unless op is delete"
            };
            p.add(
                i,
                &f.name,
                "required",
                format!("{} is required {what}", f.name),
            );
        };
        match &f.kind {
            FieldKind::PersonalId => {
                for i in 0..n {
                    let Some(v) = cell(col, i) else {
                        if required(i) {
                            missing(&mut p, i, f);
                        }
                        person_key.append_null();
                        sex.append_null();
                        birth.append_null();
                        hukou.append_null();
                        continue;
                    };
                    match ResidentId::parse(v, ctx.today) {
                        Ok(id) => {
                            person_key.append_value(ctx.key.person_key(&id));
                            let s = id.sex();
                            sex.append_value(s.to_string());
                            birth.append_value(epoch_days(id.birth_date()));
                            hukou.append_value(id.hukou_county());
                            if s != 'F' {
                                p.add(
                                    i,
                                    name,
                                    "not_female",
                                    format!(
                                        "ID number {} belongs to a man (digit 17 is odd); ledger records are about the woman",
                                        id.masked()
                                    ),
                                );
                            }
                        }
                        Err(e) => {
                            let problem = e.code.split_once('.').map_or(e.code, |(_, p)| p);
                            p.add(i, name, problem, e.message);
                            person_key.append_null();
                            sex.append_null();
                            birth.append_null();
                            hukou.append_null();
                        }
                    }
                }
                parsed.insert(name, Parsed::Person);
            }
            FieldKind::Integer { min, max } => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let Some(v) = cell(col, i) else {
                        if required(i) {
                            missing(&mut p, i, f);
                        }
                        out.push(None);
                        continue;
                    };
                    if contains_id_like(v) {
                        personal_id(&mut p, i, name, v);
                        out.push(None);
                        continue;
                    }
                    match v.parse::<i64>() {
                        Err(_) => {
                            p.add(
                                i,
                                name,
                                "not_integer",
                                format!("{name} must be a whole number, got {:?}", shown(v)),
                            );
                            out.push(None);
                        }
                        Ok(x) if min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) => {
                            let lo = min.map_or("-∞".to_string(), |m| m.to_string());
                            let hi = max.map_or("∞".to_string(), |m| m.to_string());
                            p.add(
                                i,
                                name,
                                "out_of_range",
                                format!("{name} = {x} is outside {lo}..{hi}"),
                            );
                            out.push(None);
                        }
                        Ok(x) => out.push(Some(x)),
                    }
                }
                parsed.insert(name, Parsed::Int(out));
            }
            FieldKind::Date { allow_future } => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let Some(v) = cell(col, i) else {
                        if required(i) {
                            missing(&mut p, i, f);
                        }
                        out.push(None);
                        continue;
                    };
                    match NaiveDate::parse_from_str(v, "%Y-%m-%d") {
                        Err(_) => {
                            p.add(
                                i,
                                name,
                                "invalid_date",
                                format!("{name} must be a date YYYY-MM-DD, got {:?}", shown(v)),
                            );
                            out.push(None);
                        }
                        Ok(d) if !allow_future && d > ctx.today => {
                            p.add(
                                i,
                                name,
                                "future",
                                format!("{name} {d} is in the future (today is {})", ctx.today),
                            );
                            out.push(None);
                        }
                        Ok(d) if d.year() < 1900 => {
                            p.add(
                                i,
                                name,
                                "out_of_range",
                                format!("{name} {d} is before 1900"),
                            );
                            out.push(None);
                        }
                        Ok(d) => out.push(Some(epoch_days(d))),
                    }
                }
                parsed.insert(name, Parsed::Date(out));
            }
            FieldKind::Decimal { precision, scale } => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let Some(v) = cell(col, i) else {
                        if required(i) {
                            missing(&mut p, i, f);
                        }
                        out.push(None);
                        continue;
                    };
                    match parse_decimal(v, *scale) {
                        Ok(x) => out.push(Some(x)),
                        Err(problem) => {
                            let message = match problem {
                                "negative" => {
                                    format!("{name} must not be negative, got {}", shown(v))
                                }
                                "decimals" => {
                                    format!("{name} has more than {scale} decimals: {}", shown(v))
                                }
                                "out_of_range" => format!("{name} {} is too large", shown(v)),
                                _ => format!(
                                    "{name} must be a number like 1234.50, got {:?}",
                                    shown(v)
                                ),
                            };
                            p.add(i, name, problem, message);
                            out.push(None);
                        }
                    }
                }
                parsed.insert(name, Parsed::Decimal(out, *precision, *scale));
            }
            FieldKind::Code { list } => {
                let list = vocab.list(list);
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let v = cell(col, i);
                    if name == "source" {
                        match v {
                            None => out.push(Some(ctx.source)),
                            Some(s) if s == ctx.source => out.push(Some(ctx.source)),
                            Some(s) => {
                                p.add(
                                    i,
                                    name,
                                    "not_token_source",
                                    format!("row names source {:?} but the token belongs to {:?}; a source may write only its own records", shown(s), ctx.source),
                                );
                                out.push(None);
                            }
                        }
                        continue;
                    }
                    let Some(v) = v else {
                        if required(i) {
                            missing(&mut p, i, f);
                        }
                        out.push(None);
                        continue;
                    };
                    if list.contains(v) {
                        out.push(Some(v));
                    } else {
                        p.add(
                            i,
                            name,
                            "unknown_code",
                            format!(
                                "{:?} is not a code of list {} ({}): expected one of {}",
                                shown(v),
                                list.list,
                                list.title_en,
                                list.summary()
                            ),
                        );
                        out.push(None);
                    }
                }
                parsed.insert(name, Parsed::Text(out));
            }
            FieldKind::Region { level } => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let Some(v) = cell(col, i) else {
                        if required(i) {
                            missing(&mut p, i, f);
                        }
                        out.push(None);
                        continue;
                    };
                    if v.len() != 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
                        p.add(
                            i,
                            name,
                            "format",
                            format!(
                                "{name} must be a 12-digit division code, got {:?}",
                                shown(v)
                            ),
                        );
                        out.push(None);
                        continue;
                    }
                    match regs.get(v) {
                        None => {
                            p.add(
                                i,
                                name,
                                "unknown",
                                format!(
                                    "{name} {v} is not in the Guangxi division table ({} edition)",
                                    crate::region::REGION_CODE_YEAR
                                ),
                            );
                            out.push(None);
                        }
                        Some(r) if level.is_some_and(|l| l != r.level) => {
                            let want = level.map_or("", RegionLevel::as_str);
                            p.add(
                                i,
                                name,
                                "level",
                                format!(
                                    "{name} {v} ({}) is a {}; a {want} code is required",
                                    r.name,
                                    r.level.as_str()
                                ),
                            );
                            out.push(None);
                        }
                        Some(_) => out.push(Some(v)),
                    }
                }
                parsed.insert(name, Parsed::Text(out));
            }
            FieldKind::Text { min_len, max_len } => {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let Some(v) = cell(col, i) else {
                        if required(i) {
                            missing(&mut p, i, f);
                        }
                        out.push(None);
                        continue;
                    };
                    if name == "record_id"
                        && let Some((at, c)) =
                            v.chars().enumerate().find(|&(_, c)| forbidden_in_id(c))
                    {
                        p.add(
                            i,
                            name,
                            "control_character",
                            format!(
                                "record_id holds the control or invisible character U+{:04X} at character {}; a record ID is printable text on one line",
                                u32::from(c),
                                at + 1
                            ),
                        );
                        out.push(None);
                        continue;
                    }
                    if contains_id_like(v) {
                        personal_id(&mut p, i, name, v);
                        out.push(None);
                        continue;
                    }
                    let len = v.chars().count();
                    if len < *min_len || max_len.is_some_and(|m| len > m) {
                        p.add(
                            i,
                            name,
                            "length",
                            format!(
                                "{name} has {len} characters; {min_len} to {} are allowed",
                                max_len.unwrap_or(usize::MAX)
                            ),
                        );
                        out.push(None);
                    } else {
                        out.push(Some(v));
                    }
                }
                parsed.insert(name, Parsed::Text(out));
            }
        }
    }

    if let Some(scope) = scope {
        scope_rule(spec, text_col("region_code"), &is_delete, scope, &mut p);
    }
    cross_field_rules(spec.table, &parsed, &is_delete, &mut p);

    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut person_cols: Option<[ArrayRef; 4]> = Some([
        Arc::new(person_key.finish()),
        Arc::new(sex.finish()),
        Arc::new(birth.finish()),
        Arc::new(hukou.finish()),
    ]);
    for f in &spec.fields {
        match parsed.remove(f.name.as_str()).expect("every field parsed") {
            Parsed::Person => columns.extend(person_cols.take().expect("one personal id field")),
            Parsed::Text(v) => columns.push(Arc::new(StringArray::from(v))),
            Parsed::Int(v) => columns.push(Arc::new(Int64Array::from(v))),
            Parsed::Date(v) => columns.push(Arc::new(Date32Array::from(v))),
            Parsed::Decimal(v, precision, scale) => columns.push(Arc::new(
                Decimal128Array::from(v).with_precision_and_scale(precision, scale)?,
            )),
        }
    }
    columns.push(Arc::new(StringArray::from(vec![ctx.batch_id; n])));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from(vec![ctx.ingested_at.timestamp_micros(); n])
            .with_timezone("UTC"),
    ));
    let all = RecordBatch::try_new(spec.stored_schema(), columns)?;
    let rejected: Vec<usize> = (0..n).filter(|&i| !p.ok[i]).collect();
    let stored = if rejected.is_empty() {
        all
    } else {
        arrow_select::filter::filter_record_batch(&all, &BooleanArray::from(p.ok.clone()))?
    };
    let mut errors = p.list;
    errors.sort_by_key(|e| e.row);
    Ok(ValidatedBatch {
        rows: n,
        stored,
        errors,
        rejected,
    })
}

/// A scoped sender's rows must each name a region inside the scope (see
/// [`validate_batch_scoped`]).
fn scope_rule(
    spec: &TableSpec,
    region: Option<&StringArray>,
    is_delete: &[bool],
    scope: &str,
    p: &mut Problems,
) {
    let valid_scope =
        !scope.is_empty() && scope.len() <= 12 && scope.bytes().all(|b| b.is_ascii_digit());
    let region_field = spec.field("region_code");
    for (i, &delete) in is_delete.iter().enumerate() {
        if !valid_scope {
            p.add(
                i,
                "source",
                "out_of_scope",
                format!(
                    "this token's scope {:?} is not a region code prefix, so it may write nothing; ask an administrator for a new token",
                    shown(scope)
                ),
            );
            continue;
        }
        let Some(field) = region_field else {
            p.add(
                i,
                "source",
                "out_of_scope",
                format!(
                    "a token scoped to {scope} may write only rows whose region_code is inside its scope; {} rows have no region_code, so send them with a token without a scope",
                    spec.table
                ),
            );
            continue;
        };
        match cell(region, i) {
            None => {
                // A missing region an upsert needs anyway is already an error.
                if !(field.required_always || field.required_for_upsert && !delete) {
                    p.add(
                        i,
                        "region_code",
                        "required",
                        format!(
                            "region_code is required on every row from a token scoped to {scope}, retractions included"
                        ),
                    );
                }
            }
            Some(v)
                if v.len() == 12
                    && v.bytes().all(|b| b.is_ascii_digit())
                    && !v.starts_with(scope) =>
            {
                p.add(
                    i,
                    "region_code",
                    "out_of_scope",
                    format!(
                        "region_code {v} is outside this token's scope {scope}; a scoped source may write only records of its own region"
                    ),
                );
            }
            // Inside the scope, or a malformed code already refused.
            Some(_) => {}
        }
    }
}

fn texts<'a, 'b>(parsed: &'b HashMap<&str, Parsed<'a>>, name: &str) -> &'b [Option<&'a str>] {
    match parsed.get(name) {
        Some(Parsed::Text(v)) => v,
        _ => &[],
    }
}

fn dates<'b>(parsed: &'b HashMap<&str, Parsed<'_>>, name: &str) -> &'b [Option<i32>] {
    match parsed.get(name) {
        Some(Parsed::Date(v)) => v,
        _ => &[],
    }
}

fn date_order(parsed: &HashMap<&str, Parsed<'_>>, start: &str, end: &str, p: &mut Problems) {
    let (s, e) = (dates(parsed, start), dates(parsed, end));
    for (i, (s, e)) in s.iter().zip(e).enumerate() {
        if let (Some(s), Some(e)) = (s, e)
            && e < s
        {
            p.add(
                i,
                end,
                "before_start",
                format!(
                    "{end} {} is before {start} {}",
                    from_epoch_days(*e),
                    from_epoch_days(*s)
                ),
            );
        }
    }
}

fn cross_field_rules(
    table: Table,
    parsed: &HashMap<&str, Parsed<'_>>,
    is_delete: &[bool],
    p: &mut Problems,
) {
    let vocab = vocabulary();
    match table {
        Table::LifeEvents => {
            let kinds = texts(parsed, "event_type");
            let region = texts(parsed, "region_code");
            let dest = texts(parsed, "destination");
            let work = texts(parsed, "work_type");
            for (i, kind) in kinds.iter().enumerate() {
                if is_delete[i] {
                    continue;
                }
                match *kind {
                    Some("spouse_departed") => {
                        if dest[i].is_none() && p.ok[i] {
                            p.add(i, "destination", "required", "a spouse_departed event must give destination (in_county, in_province or out_of_province)".into());
                        }
                        if work[i].is_none() && p.ok[i] {
                            p.add(
                                i,
                                "work_type",
                                "required",
                                "a spouse_departed event must give work_type (labour or business)"
                                    .into(),
                            );
                        }
                    }
                    Some("moved_in") if region[i].is_none() && p.ok[i] => {
                        p.add(
                            i,
                            "region_code",
                            "required",
                            "a moved_in event must give the 12-digit village code moved into"
                                .into(),
                        );
                    }
                    _ => {}
                }
            }
        }
        Table::GroupFlags => {
            date_order(parsed, "valid_from", "valid_to", p);
            let groups = texts(parsed, "group");
            let detail = texts(parsed, "detail");
            for (i, g) in groups.iter().enumerate() {
                let list = match *g {
                    Some("disabled") => "disability_grades",
                    Some("hardship") => "hardship_kinds",
                    _ => continue,
                };
                if is_delete[i] {
                    continue;
                }
                let list = vocab.list(list);
                match detail[i] {
                    Some(d) if list.contains(d) => {}
                    other => p.add(
                        i,
                        "detail",
                        if other.is_some() {
                            "invalid"
                        } else {
                            "required"
                        },
                        format!(
                            "for group {}, detail must be one of {} ({}), got {:?}",
                            g.unwrap_or(""),
                            list.summary(),
                            list.title_en,
                            shown(other.unwrap_or(""))
                        ),
                    ),
                }
            }
        }
        Table::Services => {
            date_order(parsed, "service_date", "service_end", p);
            let measures = texts(parsed, "measure");
            let types = texts(parsed, "service_type");
            let list = vocab.list("service_types");
            for (i, (m, t)) in measures.iter().zip(types).enumerate() {
                if let (Some(m), Some(t)) = (m, t) {
                    let belongs = list.get(t).and_then(|c| c.measure.as_deref());
                    if belongs != Some(*m) {
                        p.add(
                            i,
                            "service_type",
                            "measure_mismatch",
                            format!(
                                "service type {t} belongs to measure {}, not {m}",
                                belongs.unwrap_or("?")
                            ),
                        );
                    }
                }
            }
        }
        Table::Women | Table::Registrations => {}
    }
}
