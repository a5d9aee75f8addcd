//! Body decoders of the ingest gateway: a JSON array of objects, NDJSON, and CSV (UTF-8 or
//! GB18030) straight into Arrow batches of a table's *wire* schema (every field nullable UTF-8,
//! see `careledger_model::TableSpec::wire_schema`). Every failure is a [`DecodeError`] whose
//! detail names where it is (line, row, column, field); no input makes these functions panic
//! (the `fuzz/` targets at the workspace root check that).
//!
//! The crate knows no HTTP: the gateway maps [`DecodeErrorKind`] to a status.
//!
//! What refuses the whole body: NUL bytes anywhere in it (a binary or UTF-16 file), invalid
//! UTF-8 / GB18030 (CSV), a JSON array that is not well-formed JSON, and more rows than the
//! caller's `max_rows`. What refuses one record only ([`RecordFault`], from
//! [`decode_records`]): an unknown field, a field twice in one object, an object or array as
//! a field value, a string with a NUL or a bad escape, and (NDJSON) a line that is not one
//! JSON object. Such a record still takes its row (with the fields that could be read), so
//! row numbers stay those of the body. Memory stays
//! proportional to the body: JSON values are read one row at a time (nesting is never
//! descended into), and rows go into column builders flushed every [`DECODE_BATCH_ROWS`].

mod csv;
mod json;
mod xlsx;

pub use xlsx::{CellKind, SheetColumn, SheetSpec, sheet_records};

use std::fmt;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Schema, SchemaRef};

/// The media type of an Excel workbook (.xlsx).
pub const XLSX_MEDIA_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// Rows per decoded batch.
pub const DECODE_BATCH_ROWS: usize = 8192;

/// A batch is also cut once its text passes this many bytes, so that no column's 32-bit
/// offsets can overflow whatever the body size.
pub(crate) const DECODE_BATCH_BYTES: usize = 256 * 1024 * 1024;

/// A record refused by the decoder: its row (1-based, counted over the body as the rows of
/// the batches are) and why. `field` is the field's name, or empty when the problem is the
/// record's (an unknown field, whose name is not echoed as a field, or a line that is not an
/// object); `code` is `field.problem` or `row.problem`. The message names the place (line or
/// row) and may quote a sent key cut to 64 characters: callers screen it for ID numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFault {
    pub row: usize,
    pub field: String,
    pub code: String,
    pub message: String,
}

/// A decoded body: its rows, and the records among them that were refused.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub batches: Vec<RecordBatch>,
    /// Ascending by row; a row may have more than one.
    pub faults: Vec<RecordFault>,
}

/// The accepted body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    JsonArray,
    Ndjson,
    Csv {
        gb18030: bool,
    },
    /// An Excel workbook (.xlsx): its first sheet, see [`decode_sheet`].
    Xlsx,
}

/// What went wrong, for the caller to map to its own error (the gateway: an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The `Content-Type` names no accepted format.
    UnsupportedMediaType,
    /// CSV in a charset other than UTF-8 or GB18030.
    UnsupportedCharset,
    /// The body is not a well-formed instance of its format, or names unknown fields.
    Malformed,
    /// The body holds more rows than the caller allows.
    TooManyRows,
}

/// A refused body: the kind and a detail a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub detail: String,
}

impl DecodeError {
    pub(crate) fn malformed(detail: impl Into<String>) -> DecodeError {
        DecodeError {
            kind: DecodeErrorKind::Malformed,
            detail: detail.into(),
        }
    }

    pub(crate) fn too_many_rows(max_rows: usize) -> DecodeError {
        DecodeError {
            kind: DecodeErrorKind::TooManyRows,
            detail: format!(
                "the body holds more than {max_rows} rows, the most one request may carry; split it into smaller batches"
            ),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for DecodeError {}

impl BodyFormat {
    /// From a `Content-Type` header value.
    pub fn from_content_type(value: Option<&str>) -> Result<BodyFormat, DecodeError> {
        let unsupported = |got: &str| DecodeError {
            kind: DecodeErrorKind::UnsupportedMediaType,
            detail: format!(
                "Content-Type {got:?} is not accepted; send application/json (an array of objects), application/x-ndjson, text/csv (charset=utf-8 or gb18030), or an Excel workbook as {XLSX_MEDIA_TYPE}"
            ),
        };
        let value = value.ok_or_else(|| unsupported("(none)"))?;
        let mut parts = value.split(';').map(str::trim);
        let mime = parts.next().unwrap_or_default().to_ascii_lowercase();
        let charset = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
            .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase());
        match mime.as_str() {
            "application/json" => Ok(BodyFormat::JsonArray),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Ok(BodyFormat::Ndjson)
            }
            XLSX_MEDIA_TYPE => Ok(BodyFormat::Xlsx),
            "text/csv" => match charset.as_deref() {
                None | Some("utf-8") | Some("utf8") => Ok(BodyFormat::Csv { gb18030: false }),
                Some("gb18030") | Some("gbk") | Some("gb2312") => {
                    Ok(BodyFormat::Csv { gb18030: true })
                }
                Some(other) => Err(DecodeError {
                    kind: DecodeErrorKind::UnsupportedCharset,
                    detail: format!(
                        "charset {other} is not accepted for CSV; use utf-8 or gb18030"
                    ),
                }),
            },
            _ => Err(unsupported(value)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::JsonArray => "json",
            BodyFormat::Ndjson => "ndjson",
            BodyFormat::Csv { gb18030: false } => "csv",
            BodyFormat::Csv { gb18030: true } => "csv-gb18030",
            BodyFormat::Xlsx => "xlsx",
        }
    }
}

pub(crate) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

pub(crate) fn known_fields(wire: &Schema) -> String {
    wire.fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// At most `max` characters of `text`, with `…` if cut: for echoing sent values in messages.
pub(crate) fn shown(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((i, _)) => format!("{}…", &text[..i]),
    }
}

/// Decodes a whole body into wire-schema batches of at most [`DECODE_BATCH_ROWS`] rows; the
/// first refused record refuses the body (see [`decode_records`] to get them as row errors).
///
/// `wire` must have only nullable `Utf8` fields (a table's wire schema). A body with more than
/// `max_rows` rows is refused ([`DecodeErrorKind::TooManyRows`]) as soon as the row past the
/// limit is seen.
pub fn decode(
    format: BodyFormat,
    body: &[u8],
    wire: &SchemaRef,
    max_rows: usize,
) -> Result<Vec<RecordBatch>, DecodeError> {
    let decoded = decode_records(format, body, wire, max_rows)?;
    match decoded.faults.into_iter().next() {
        Some(f) => Err(DecodeError::malformed(f.message)),
        None => Ok(decoded.batches),
    }
}

/// [`decode`], with the records refused one by one (JSON formats: unknown or malformed
/// fields; NDJSON: a line that is not one JSON object) returned as [`RecordFault`]s beside
/// the batches instead of refusing the body. A refused record keeps its row, holding the
/// fields that could be read.
pub fn decode_records(
    format: BodyFormat,
    body: &[u8],
    wire: &SchemaRef,
    max_rows: usize,
) -> Result<Decoded, DecodeError> {
    if let Some(f) = wire
        .fields()
        .iter()
        .find(|f| f.data_type() != &DataType::Utf8 || !f.is_nullable())
    {
        return Err(DecodeError::malformed(format!(
            "cannot decode into field {}: a wire schema has only nullable Utf8 fields",
            f.name()
        )));
    }
    if format == BodyFormat::Xlsx {
        return xlsx::decode(body, wire, &SheetSpec::plain(wire), max_rows);
    }
    refuse_nul(body)?;
    match format {
        BodyFormat::JsonArray => json::decode_json_array(strip_bom(body), wire, max_rows),
        BodyFormat::Ndjson => json::decode_ndjson(strip_bom(body), wire, max_rows),
        BodyFormat::Csv { gb18030 } => {
            let text = csv_text(body, gb18030)?;
            csv::decode_csv(text.trim_start_matches('\u{feff}'), wire, max_rows).map(|batches| {
                Decoded {
                    batches,
                    faults: Vec::new(),
                }
            })
        }
        BodyFormat::Xlsx => unreachable!("answered above"),
    }
}

/// Text bodies never hold a NUL byte: one refuses the body (with a hint when it looks like
/// UTF-16 or a binary file).
fn refuse_nul(body: &[u8]) -> Result<(), DecodeError> {
    if let Some(at) = body.iter().position(|b| *b == 0) {
        let hint = if body.len() > 1 && body.iter().filter(|b| **b == 0).count() * 4 >= body.len() {
            " (the body looks like UTF-16 or a binary file; send UTF-8 text, or GB18030 for CSV)"
        } else {
            ""
        };
        return Err(DecodeError::malformed(format!(
            "the body holds a NUL byte at byte offset {at}; text bodies never contain one{hint}"
        )));
    }
    Ok(())
}

/// A CSV body as text: GB18030 or UTF-8 (a BOM removed).
fn csv_text(body: &[u8], gb18030: bool) -> Result<std::borrow::Cow<'_, str>, DecodeError> {
    if gb18030 {
        // A BOM wins over the declared charset (spreadsheets add a UTF-8 one when they save
        // "CSV UTF-8"): encoding_rs sniffs and removes it.
        let (text, _, had_errors) = encoding_rs::GB18030.decode(body);
        if had_errors {
            return Err(DecodeError::malformed("body is not valid GB18030 text"));
        }
        Ok(text)
    } else {
        let body = strip_bom(body);
        Ok(std::borrow::Cow::Borrowed(std::str::from_utf8(body).map_err(|e| {
            DecodeError::malformed(format!(
                "body is not valid UTF-8 at byte {}; if the file was saved from a spreadsheet in China, send Content-Type: text/csv; charset=gb18030",
                e.valid_up_to()
            ))
        })?))
    }
}

/// A CSV body saved from a spreadsheet, read through the same mapping as [`decode_sheet`]:
/// headers may be the profile's Chinese ones, and typed fields' values are read as text cells
/// of a sheet are (dates, thousands separators, code labels, an ID number in scientific
/// notation refused). Text fields stay as sent. The checks of [`decode_records`] (NUL bytes,
/// charset, row limit) hold.
pub fn decode_csv_sheet(
    gb18030: bool,
    body: &[u8],
    wire: &SchemaRef,
    spec: &SheetSpec,
    max_rows: usize,
) -> Result<Decoded, DecodeError> {
    refuse_nul(body)?;
    let text = csv_text(body, gb18030)?;
    csv::decode_csv_mapped(text.trim_start_matches('\u{feff}'), wire, spec, max_rows)
}

/// An `.xlsx` body read through a mapping of its headers and cells onto the wire schema
/// (see [`SheetSpec`]): values a spreadsheet changed (date serials, `2024/11/7`, thousands
/// separators, code labels) become wire text; a cell that cannot (an ID number Excel made a
/// number, a spreadsheet error) is a [`RecordFault`] of its row. A header that names no field
/// refuses the body.
pub fn decode_sheet(
    body: &[u8],
    wire: &SchemaRef,
    spec: &SheetSpec,
    max_rows: usize,
) -> Result<Decoded, DecodeError> {
    xlsx::decode(body, wire, spec, max_rows)
}
