//! `.xlsx` bodies: the first worksheet, its first non-empty row the header, each later row a
//! record. Headers are matched to the table's fields through a [`SheetSpec`] (the field's own
//! name, or one of its labels from a mapping profile); cells are turned into the wire text
//! the other formats carry, undoing what spreadsheets do to values:
//! - dates: a date cell or a bare serial number (1900 or 1904 epoch), or text such as
//!   `2024/11/7`, `2024.11.7` or `2024年11月7日`, become `2024-11-07`;
//! - numbers: `1,200.00` loses its thousands separators, a whole float becomes an integer;
//! - codes: a cell holding a code's Chinese or English label becomes the code (and a number
//!   Excel took from a zero-padded code, `1` for `01`, gets its zeros back when one code fits);
//! - ID numbers: a cell Excel turned into a number (`4.50123E+17`: its last digits are lost)
//!   refuses the row with a message that says how to fix the sheet, never echoing the value.
//!
//! Rows keep their place: row N of the body is the Nth row under the header (blank rows at the
//! end are dropped; a blank row in the middle is a row with no fields).

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use calamine::{Data, ExcelDateTime, ExcelDateTimeType, Reader, Xlsx};

use crate::{DECODE_BATCH_ROWS, DecodeError, Decoded, RecordFault, shown};

/// What a field holds, as far as reading a cell needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellKind {
    Text,
    Integer,
    Decimal,
    Date,
    /// An 18-character resident ID number: must arrive as text.
    PersonalId,
    /// A code list: (code, labels that stand for it).
    Code(Vec<(String, Vec<String>)>),
}

/// One field of the sheet: its name, the headers that name it, and what it holds.
#[derive(Debug, Clone)]
pub struct SheetColumn {
    pub field: String,
    pub headers: Vec<String>,
    pub kind: CellKind,
    /// The value of a field the sheet has no column for (e.g. the sender's own source).
    pub default: Option<String>,
}

/// How a sheet maps onto a table's wire schema.
#[derive(Debug, Clone, Default)]
pub struct SheetSpec {
    /// The profile's name, for messages.
    pub profile: String,
    pub columns: Vec<SheetColumn>,
    /// Headers of columns to leave out (e.g. 序号, a row number).
    pub ignore: Vec<String>,
}

impl SheetSpec {
    /// The column a header names: `Ok(None)` for a header to leave out, `Ok(Some(i))` for
    /// `columns[i]` (by its field's name or one of its headers), `Err(())` for none.
    pub(crate) fn column_of(&self, header: &str) -> Result<Option<usize>, ()> {
        let key = normal(header);
        if self.ignore.iter().any(|h| normal(h) == key) {
            return Ok(None);
        }
        self.columns
            .iter()
            .position(|c| normal(&c.field) == key || c.headers.iter().any(|h| normal(h) == key))
            .map(Some)
            .ok_or(())
    }

    /// Fields matched by their own names only, every cell read as text.
    pub fn plain(wire: &SchemaRef) -> SheetSpec {
        SheetSpec {
            profile: "field names".into(),
            columns: wire
                .fields()
                .iter()
                .map(|f| SheetColumn {
                    field: f.name().clone(),
                    headers: Vec::new(),
                    kind: CellKind::Text,
                    default: None,
                })
                .collect(),
            ignore: Vec::new(),
        }
    }
}

/// Headers compare without spaces, ASCII case, full-width brackets or a trailing `*` (a
/// required-field mark).
fn normal(header: &str) -> String {
    header
        .trim()
        .trim_end_matches(['*', '＊'])
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '（' => '(',
            '）' => ')',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn first_sheet(body: &[u8]) -> Result<calamine::Range<Data>, DecodeError> {
    let mut book: Xlsx<_> = calamine::open_workbook_from_rs(Cursor::new(body)).map_err(|e| {
        DecodeError::malformed(format!(
            "the body is not a readable .xlsx workbook ({e}); save the sheet as Excel Workbook (.xlsx)"
        ))
    })?;
    match book.worksheet_range_at(0) {
        Some(Ok(r)) => Ok(r),
        Some(Err(e)) => Err(DecodeError::malformed(format!(
            "the workbook's first sheet cannot be read: {e}"
        ))),
        None => Err(DecodeError::malformed("the workbook has no sheet")),
    }
}

/// The sheet row (1-based, as Excel numbers them) of every record of an `.xlsx` body, in the
/// order [`crate::decode_sheet`] reads them: for telling a person where row N of a receipt is.
pub fn sheet_records(body: &[u8]) -> Result<Vec<usize>, DecodeError> {
    let range = first_sheet(body)?;
    let first_row = range.start().map_or(0, |s| s.0 as usize);
    let mut rows = range
        .rows()
        .enumerate()
        .map(|(i, r)| (first_row + i + 1, r));
    rows.by_ref()
        .find(|(_, r)| r.iter().any(|c| !matches!(c, Data::Empty)))
        .ok_or_else(|| DecodeError::malformed("the first sheet is empty: no header row"))?;
    let mut records: Vec<(usize, bool)> = rows.map(|(n, r)| (n, blank(r))).collect();
    while records.last().is_some_and(|(_, blank)| *blank) {
        records.pop();
    }
    Ok(records.into_iter().map(|(n, _)| n).collect())
}

pub(crate) fn decode(
    body: &[u8],
    wire: &SchemaRef,
    spec: &SheetSpec,
    max_rows: usize,
) -> Result<Decoded, DecodeError> {
    let range = first_sheet(body)?;
    let (first_row, first_col) = range.start().unwrap_or((0, 0));
    let mut rows = range
        .rows()
        .enumerate()
        .map(|(i, r)| (first_row as usize + i + 1, r));
    // The header: the first row with any cell.
    let (header_at, header) = rows
        .by_ref()
        .find(|(_, r)| r.iter().any(|c| !matches!(c, Data::Empty)))
        .ok_or_else(|| DecodeError::malformed("the first sheet is empty: no header row"))?;
    let column_name = |i: usize| excel_column(first_col as usize + i);

    // Which field each column feeds.
    let mut feeds: Vec<Option<usize>> = Vec::with_capacity(header.len());
    let mut seen: Vec<Option<String>> = vec![None; spec.columns.len()];
    for (i, cell) in header.iter().enumerate() {
        let text = cell_text(cell);
        if normal(&text).is_empty() {
            feeds.push(None);
            continue;
        }
        let f = match spec.column_of(&text) {
            Ok(Some(f)) => f,
            Ok(None) => {
                feeds.push(None);
                continue;
            }
            Err(()) => {
                return Err(DecodeError::malformed(format!(
                    "header {:?} (column {}, row {header_at}) names no field of this table in mapping profile {}; the fields are {} (their Chinese headers are listed in the profile)",
                    shown(&text, 64),
                    column_name(i),
                    spec.profile,
                    spec.columns
                        .iter()
                        .map(|c| c.field.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        if let Some(before) = &seen[f] {
            return Err(DecodeError::malformed(format!(
                "columns {before} and {} both name field {}; keep one",
                column_name(i),
                spec.columns[f].field
            )));
        }
        seen[f] = Some(column_name(i));
        feeds.push(Some(f));
    }
    // Wire position of every spec column.
    let wire_at: Vec<usize> = spec
        .columns
        .iter()
        .map(|c| {
            wire.index_of(&c.field).map_err(|_| {
                DecodeError::malformed(format!("field {} is not in the table", c.field))
            })
        })
        .collect::<Result<_, _>>()?;

    // Records: every row after the header, blank rows at the end dropped.
    let mut body_rows: Vec<(usize, &[Data])> = rows.collect();
    while body_rows.last().is_some_and(|(_, r)| blank(r)) {
        body_rows.pop();
    }
    if body_rows.len() > max_rows {
        return Err(DecodeError::too_many_rows(max_rows));
    }

    let mut batches = Vec::new();
    let mut faults = Vec::new();
    let width = wire.fields().len();
    for (chunk_no, chunk) in body_rows.chunks(DECODE_BATCH_ROWS).enumerate() {
        let mut builders: Vec<StringBuilder> = (0..width).map(|_| StringBuilder::new()).collect();
        for (k, (sheet_row, cells)) in chunk.iter().enumerate() {
            let row = chunk_no * DECODE_BATCH_ROWS + k + 1;
            let mut values: Vec<Option<String>> = vec![None; width];
            for (c, col) in spec.columns.iter().enumerate() {
                if seen[c].is_none()
                    && let Some(d) = &col.default
                {
                    values[wire_at[c]] = Some(d.clone());
                }
            }
            for (i, cell) in cells.iter().enumerate() {
                let Some(f) = feeds.get(i).copied().flatten() else {
                    continue;
                };
                let col = &spec.columns[f];
                match read_cell(cell, &col.kind) {
                    Ok(v) => values[wire_at[f]] = v,
                    Err(why) => faults.push(RecordFault {
                        row,
                        field: col.field.clone(),
                        code: "field.spreadsheet".into(),
                        message: format!(
                            "row {row} (sheet cell {}{sheet_row}), field {}: {why}",
                            column_name(i),
                            col.field
                        ),
                    }),
                }
            }
            for (b, v) in builders.iter_mut().zip(values) {
                b.append_option(v);
            }
        }
        let columns: Vec<ArrayRef> = builders
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        batches.push(
            RecordBatch::try_new(wire.clone(), columns)
                .map_err(|e| DecodeError::malformed(format!("building rows: {e}")))?,
        );
    }
    Ok(Decoded { batches, faults })
}

/// A row with nothing in it but spaces.
fn blank(row: &[Data]) -> bool {
    row.iter().all(|c| match c {
        Data::Empty => true,
        Data::String(s) => s.trim().is_empty(),
        _ => false,
    })
}

/// `A`, `B`, …, `Z`, `AA`, … for a 0-based column.
fn excel_column(mut i: usize) -> String {
    let mut name = Vec::new();
    loop {
        name.push(b'A' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    name.reverse();
    String::from_utf8(name).expect("ascii")
}

/// A header cell as text.
fn cell_text(cell: &Data) -> String {
    match cell {
        Data::Empty => String::new(),
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => s.clone(),
        Data::Float(f) => number_text(*f),
        other => other.to_string(),
    }
}

/// A float as the shortest text that reads back as it; whole numbers without `.0`.
fn number_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// One cell as the field's wire text (`None`: empty).
fn read_cell(cell: &Data, kind: &CellKind) -> Result<Option<String>, String> {
    match cell {
        Data::Empty => return Ok(None),
        Data::Error(e) => return Err(format!("the cell holds the spreadsheet error {e}")),
        Data::String(s) => return read_text(s, kind),
        _ => {}
    }
    Ok(Some(match kind {
        CellKind::PersonalId => match cell {
            Data::Int(_) | Data::Float(_) => return Err(id_as_number()),
            _ => return Err("an ID number must be text of 18 characters".into()),
        },
        CellKind::Date => match cell {
            Data::DateTime(d) => cell_date(d)?,
            Data::Float(f) => serial_date(*f, false)?,
            Data::Int(i) => serial_date(*i as f64, false)?,
            Data::DateTimeIso(s) => s.get(..10).unwrap_or(s).to_string(),
            other => other.to_string(),
        },
        CellKind::Integer | CellKind::Decimal => match cell {
            Data::Int(i) => i.to_string(),
            Data::Float(f) => number_text(*f),
            other => other.to_string(),
        },
        CellKind::Code(codes) => {
            let raw = match cell {
                Data::Int(i) => i.to_string(),
                Data::Float(f) => number_text(*f),
                other => other.to_string(),
            };
            code_of(&raw, codes, matches!(cell, Data::Int(_) | Data::Float(_)))
        }
        CellKind::Text => match cell {
            Data::Int(i) => i.to_string(),
            Data::Float(f) => number_text(*f),
            Data::DateTime(d) => cell_date(d)?,
            other => other.to_string(),
        },
    }))
}

/// A text cell (or a CSV value) as the field's wire text (`None`: blank).
pub(crate) fn read_text(s: &str, kind: &CellKind) -> Result<Option<String>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    Ok(Some(match kind {
        CellKind::PersonalId => {
            let s: String = s.trim_start_matches('\'').split_whitespace().collect();
            if looks_scientific(&s) {
                return Err(id_as_number());
            }
            s
        }
        CellKind::Date => text_date(s),
        CellKind::Integer | CellKind::Decimal => without_separators(s),
        CellKind::Code(codes) => code_of(s, codes, false),
        CellKind::Text => s.to_string(),
    }))
}

fn id_as_number() -> String {
    "Excel stored the ID number as a number, which keeps only its first 15 digits; format the column as Text (or type a ' before the number), enter the 18 characters again and upload the sheet again".into()
}

/// `4.50123E+17`, `4,50123E+17`: a number shown by Excel in scientific notation.
fn looks_scientific(s: &str) -> bool {
    let s = s.to_ascii_uppercase();
    let Some((mantissa, exp)) = s.split_once("E+") else {
        return false;
    };
    !mantissa.is_empty()
        && mantissa
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        && !exp.is_empty()
        && exp.chars().all(|c| c.is_ascii_digit())
}

/// A date cell as `YYYY-MM-DD` (its workbook's epoch, 1900 or 1904, is inside it).
fn cell_date(d: &ExcelDateTime) -> Result<String, String> {
    check_serial(d.as_f64())?;
    let (y, m, d, ..) = d.to_ymd_hms_milli();
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

fn check_serial(value: f64) -> Result<(), String> {
    if !(1.0..2_958_466.0).contains(&value) {
        return Err(format!(
            "{} is not a date: Excel date numbers run from 1 (1900-01-01) to 2958465 (9999-12-31)",
            number_text(value)
        ));
    }
    if value.fract() != 0.0 {
        return Err("the cell holds a time of day as well as a date; enter the date alone".into());
    }
    Ok(())
}

/// An Excel serial day as `YYYY-MM-DD`.
fn serial_date(value: f64, epoch_1904: bool) -> Result<String, String> {
    check_serial(value)?;
    let (y, m, d, ..) =
        ExcelDateTime::new(value, ExcelDateTimeType::DateTime, epoch_1904).to_ymd_hms_milli();
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

/// `2024/11/7`, `2024.11.7`, `2024-11-7`, `2024年11月7日` → `2024-11-07`; anything else as it
/// is (validation names what is wrong with it).
fn text_date(s: &str) -> String {
    let parts: Vec<&str> = s
        .trim_end_matches('日')
        .split(['/', '.', '-', '年', '月'])
        .collect();
    if let [y, m, d] = parts.as_slice()
        && y.len() == 4
        && (1..=2).contains(&m.len())
        && (1..=2).contains(&d.len())
        && [y, m, d]
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_digit()))
    {
        return format!("{y}-{m:0>2}-{d:0>2}");
    }
    s.to_string()
}

/// `1,200.00` → `1200.00` when the commas group digits by three; otherwise as it is.
fn without_separators(s: &str) -> String {
    let s = s.replace('，', ",");
    if !s.contains(',') {
        return s;
    }
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let int_digits = int.trim_start_matches(['-', '+']);
    let groups: Vec<&str> = int_digits.split(',').collect();
    let grouped = !groups[0].is_empty()
        && groups[0].len() <= 3
        && groups[1..].iter().all(|g| g.len() == 3)
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_digit()));
    if !grouped || !frac.chars().all(|c| c.is_ascii_digit()) {
        return s;
    }
    let sign = &int[..int.len() - int_digits.len()];
    let joined = groups.concat();
    if s.contains('.') {
        format!("{sign}{joined}.{frac}")
    } else {
        format!("{sign}{joined}")
    }
}

/// A code cell: the code itself, or a label of it, or a number that lost a code's leading
/// zeros.
fn code_of(raw: &str, codes: &[(String, Vec<String>)], numeric: bool) -> String {
    if codes.iter().any(|(c, _)| c == raw) {
        return raw.to_string();
    }
    let key = normal(raw);
    if let Some((c, _)) = codes
        .iter()
        .find(|(_, labels)| labels.iter().any(|l| normal(l) == key))
    {
        return c.clone();
    }
    if numeric {
        let padded: Vec<&String> = codes
            .iter()
            .map(|(c, _)| c)
            .filter(|c| c.len() > raw.len() && c.trim_start_matches('0') == raw)
            .collect();
        if let [one] = padded.as_slice() {
            return (*one).clone();
        }
    }
    raw.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreadsheet_values_become_wire_text() {
        assert_eq!(text_date("2024/11/7"), "2024-11-07");
        assert_eq!(text_date("2024.1.17"), "2024-01-17");
        assert_eq!(text_date("2024年11月7日"), "2024-11-07");
        assert_eq!(text_date("7/11/2024"), "7/11/2024");
        assert_eq!(serial_date(45603.0, false).unwrap(), "2024-11-07");
        assert!(serial_date(45603.5, false).is_err());
        assert!(serial_date(0.0, false).is_err());
        assert_eq!(without_separators("1,200.00"), "1200.00");
        assert_eq!(without_separators("-12,345,678"), "-12345678");
        assert_eq!(without_separators("12,34"), "12,34");
        assert_eq!(without_separators("1,2000.5"), "1,2000.5");
        assert!(looks_scientific("4.50123E+17"));
        assert!(!looks_scientific("45012319900101123X"));
        let eth = vec![
            ("01".to_string(), vec!["汉族".to_string()]),
            ("02".to_string(), vec!["蒙古族".to_string()]),
            ("10".to_string(), vec!["壮族".to_string()]),
        ];
        assert_eq!(code_of("汉族", &eth, false), "01");
        assert_eq!(code_of("1", &eth, true), "01");
        assert_eq!(code_of("10", &eth, true), "10");
        assert_eq!(code_of("99", &eth, true), "99");
        assert_eq!(excel_column(0), "A");
        assert_eq!(excel_column(27), "AB");
        assert_eq!(normal(" 身份证号（必填）* "), "身份证号(必填)");
    }
}
