//! Body decoders: JSON array, NDJSON and CSV (UTF-8 or GB18030) straight into Arrow batches of
//! a table's wire schema. Every failure names where it is (line, column, field).

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;

use crate::problem::Problem;

/// Rows per decoded batch.
pub const DECODE_BATCH_ROWS: usize = 8192;

/// The accepted body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    JsonArray,
    Ndjson,
    Csv { gb18030: bool },
}

impl BodyFormat {
    /// From a `Content-Type` header value.
    pub fn from_content_type(value: Option<&str>) -> Result<BodyFormat, Problem> {
        let unsupported = |got: &str| {
            Problem::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "Content-Type {got:?} is not accepted; send application/json (an array of objects), application/x-ndjson, or text/csv (charset=utf-8 or gb18030)"
                ),
            )
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
            "text/csv" => match charset.as_deref() {
                None | Some("utf-8") | Some("utf8") => Ok(BodyFormat::Csv { gb18030: false }),
                Some("gb18030") | Some("gbk") | Some("gb2312") => {
                    Ok(BodyFormat::Csv { gb18030: true })
                }
                Some(other) => Err(Problem::new(
                    axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-charset",
                    format!("charset {other} is not accepted for CSV; use utf-8 or gb18030"),
                )),
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
        }
    }
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

fn parse_error(detail: String) -> Problem {
    Problem::bad_request("malformed-body", detail)
}

/// Decodes a whole body into wire-schema batches.
pub fn decode(
    format: BodyFormat,
    body: &[u8],
    wire: &SchemaRef,
) -> Result<Vec<RecordBatch>, Problem> {
    match format {
        BodyFormat::JsonArray => decode_json_array(strip_bom(body), wire),
        BodyFormat::Ndjson => decode_ndjson(strip_bom(body), wire),
        BodyFormat::Csv { gb18030 } => {
            let text: std::borrow::Cow<'_, str> = if gb18030 {
                let (text, _, had_errors) = encoding_rs::GB18030.decode(body);
                if had_errors {
                    return Err(parse_error("body is not valid GB18030 text".into()));
                }
                text
            } else {
                let body = strip_bom(body);
                std::borrow::Cow::Borrowed(std::str::from_utf8(body).map_err(|e| {
                    parse_error(format!(
                        "body is not valid UTF-8 at byte {}; if the file was saved from a spreadsheet in China, send Content-Type: text/csv; charset=gb18030",
                        e.valid_up_to()
                    ))
                })?)
            };
            decode_csv(text.trim_start_matches('\u{feff}'), wire)
        }
    }
}

fn unknown_field(obj: &serde_json::Map<String, Value>, wire: &Schema) -> Option<String> {
    obj.keys()
        .find(|k| wire.field_with_name(k).is_err())
        .cloned()
}

fn known_fields(wire: &Schema) -> String {
    wire.fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn decode_json_array(body: &[u8], wire: &SchemaRef) -> Result<Vec<RecordBatch>, Problem> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return Err(parse_error(
            "an application/json body must be a JSON array of objects; for one object per line use application/x-ndjson".into(),
        ));
    }
    let rows: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
        parse_error(format!(
            "invalid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    for (i, row) in rows.iter().enumerate() {
        let Some(obj) = row.as_object() else {
            return Err(parse_error(format!(
                "array element {} is not an object",
                i + 1
            )));
        };
        if let Some(k) = unknown_field(obj, wire) {
            return Err(parse_error(format!(
                "row {}: unknown field {k:?}; the fields are {}",
                i + 1,
                known_fields(wire)
            )));
        }
    }
    let mut decoder = arrow_json::ReaderBuilder::new(wire.clone())
        .with_coerce_primitive(true)
        .with_batch_size(DECODE_BATCH_ROWS)
        .build_decoder()
        .map_err(|e| parse_error(e.to_string()))?;
    let mut out = Vec::new();
    for chunk in rows.chunks(DECODE_BATCH_ROWS) {
        decoder.serialize(chunk).map_err(|e| {
            parse_error(format!("rows {}..: {e}", out.len() * DECODE_BATCH_ROWS + 1))
        })?;
        if let Some(b) = decoder.flush().map_err(|e| parse_error(e.to_string()))? {
            out.push(b);
        }
    }
    Ok(out)
}

/// Locates the first offending line of an NDJSON body after arrow refused it.
fn explain_ndjson(body: &[u8], wire: &Schema, arrow_msg: &str) -> String {
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Err(e) => return format!("invalid JSON at line {}, column {}: {e}", n + 1, e.column()),
            Ok(Value::Object(obj)) => {
                if let Some(k) = unknown_field(&obj, wire) {
                    return format!(
                        "line {}: unknown field {k:?}; the fields are {}",
                        n + 1,
                        known_fields(wire)
                    );
                }
                if let Some((k, _)) = obj.iter().find(|(_, v)| v.is_object() || v.is_array()) {
                    return format!(
                        "line {}: field {k:?} must be a string, number or null, not an object or array",
                        n + 1
                    );
                }
            }
            Ok(_) => return format!("line {}: each line must be one JSON object", n + 1),
        }
    }
    format!("invalid NDJSON: {arrow_msg}")
}

fn decode_ndjson(body: &[u8], wire: &SchemaRef) -> Result<Vec<RecordBatch>, Problem> {
    let mut decoder = arrow_json::ReaderBuilder::new(wire.clone())
        .with_coerce_primitive(true)
        .with_strict_mode(true)
        .with_batch_size(DECODE_BATCH_ROWS)
        .build_decoder()
        .map_err(|e| parse_error(e.to_string()))?;
    let fail =
        |e: arrow_schema::ArrowError| parse_error(explain_ndjson(body, wire, &e.to_string()));
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let used = decoder.decode(rest).map_err(fail)?;
        rest = &rest[used..];
        if rest.is_empty() || used == 0 {
            if let Some(b) = decoder.flush().map_err(fail)? {
                out.push(b);
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    if !decoder.has_partial_record() {
        return Ok(out);
    }
    Err(parse_error(explain_ndjson(
        body,
        wire,
        "the body ends inside a record (truncated?)",
    )))
}

/// Splits a CSV header line into names (quotes removed).
fn header_names(line: &str) -> Vec<String> {
    line.trim_end_matches(['\r', '\n'])
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect()
}

fn decode_csv(text: &str, wire: &SchemaRef) -> Result<Vec<RecordBatch>, Problem> {
    let header_line = text.lines().next().unwrap_or_default();
    if header_line.trim().is_empty() {
        return Err(parse_error(
            "CSV body is empty: the first line must be a header of field names".into(),
        ));
    }
    let names = header_names(header_line);
    if names.len() > wire.fields().len() * 2 {
        return Err(parse_error(format!(
            "CSV header has {} columns; the table has {}",
            names.len(),
            wire.fields().len()
        )));
    }
    for (i, n) in names.iter().enumerate() {
        if wire.field_with_name(n).is_err() {
            return Err(parse_error(format!(
                "CSV header column {} is {n:?}, which is not a field; the fields are {}",
                i + 1,
                known_fields(wire)
            )));
        }
        if names[..i].contains(n) {
            return Err(parse_error(format!("CSV header names {n:?} twice")));
        }
    }
    let file_schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = arrow_csv::ReaderBuilder::new(file_schema)
        .with_header(true)
        .with_batch_size(DECODE_BATCH_ROWS)
        .build(Cursor::new(text.as_bytes()))
        .map_err(|e| parse_error(format!("invalid CSV: {e}")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| parse_error(format!("invalid CSV: {e}")))?;
        let columns: Vec<ArrayRef> = wire
            .fields()
            .iter()
            .map(|f| {
                batch
                    .column_by_name(f.name())
                    .cloned()
                    .unwrap_or_else(|| new_null_array(&DataType::Utf8, batch.num_rows()))
            })
            .collect();
        out.push(
            RecordBatch::try_new(wire.clone(), columns).map_err(|e| parse_error(e.to_string()))?,
        );
    }
    Ok(out)
}
