//! CSV bodies (already decoded to UTF-8 text): a header line of field names, then rows.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::xlsx::read_text;
use crate::{
    CellKind, DECODE_BATCH_ROWS, DecodeError, Decoded, RecordFault, SheetSpec, known_fields, shown,
};
use arrow_array::Array;
use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;

/// Splits a CSV header line into names (quotes removed).
fn header_names(line: &str) -> Vec<String> {
    line.trim_end_matches(['\r', '\n'])
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect()
}

fn invalid(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::malformed(format!("invalid CSV: {e}"))
}

/// The rows of `text` (after its header line) as batches of `schema`, every column text.
fn reader(text: &str, schema: SchemaRef) -> Result<arrow_csv::Reader<Cursor<&[u8]>>, DecodeError> {
    arrow_csv::ReaderBuilder::new(schema)
        .with_header(true)
        .with_batch_size(DECODE_BATCH_ROWS)
        .build(Cursor::new(text.as_bytes()))
        .map_err(invalid)
}

pub(crate) fn decode_csv(
    text: &str,
    wire: &SchemaRef,
    max_rows: usize,
) -> Result<Vec<RecordBatch>, DecodeError> {
    let header_line = text.lines().next().unwrap_or_default();
    if header_line.trim().is_empty() {
        return Err(DecodeError::malformed(
            "CSV body is empty: the first line must be a header of field names",
        ));
    }
    // Counted before anything is allocated per column: a header may be megabytes of commas.
    let columns = header_line.bytes().filter(|b| *b == b',').count() + 1;
    if columns > wire.fields().len() * 2 {
        return Err(DecodeError::malformed(format!(
            "CSV header has {columns} columns; the table has {}",
            wire.fields().len()
        )));
    }
    let names = header_names(header_line);
    for (i, n) in names.iter().enumerate() {
        if wire.field_with_name(n).is_err() {
            return Err(DecodeError::malformed(format!(
                "CSV header column {} is {:?}, which is not a field; the fields are {}",
                i + 1,
                shown(n, 64),
                known_fields(wire)
            )));
        }
        if names[..i].contains(n) {
            return Err(DecodeError::malformed(format!(
                "CSV header names {n:?} twice"
            )));
        }
    }
    let file_schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = reader(text, file_schema)?;
    let mut out = Vec::new();
    let mut rows = 0usize;
    for batch in reader {
        let batch = batch.map_err(invalid)?;
        rows += batch.num_rows();
        if rows > max_rows {
            return Err(DecodeError::too_many_rows(max_rows));
        }
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
        out.push(RecordBatch::try_new(wire.clone(), columns).map_err(invalid)?);
    }
    Ok(out)
}

/// CSV saved from a spreadsheet: headers matched through `spec` (a field's name or one of its
/// profile headers; ignored headers left out), and the values of typed fields (dates, numbers,
/// codes, the ID number) read as [`crate::decode_sheet`] reads text cells. Text fields are
/// kept as sent.
pub(crate) fn decode_csv_mapped(
    text: &str,
    wire: &SchemaRef,
    spec: &SheetSpec,
    max_rows: usize,
) -> Result<Decoded, DecodeError> {
    let header_line = text.lines().next().unwrap_or_default();
    if header_line.trim().is_empty() {
        return Err(DecodeError::malformed(
            "CSV body is empty: the first line must be a header of field names",
        ));
    }
    let columns = header_line.bytes().filter(|b| *b == b',').count() + 1;
    if columns > (wire.fields().len() + spec.ignore.len()) * 2 {
        return Err(DecodeError::malformed(format!(
            "CSV header has {columns} columns; the table has {}",
            wire.fields().len()
        )));
    }
    // Which spec column each CSV column feeds (None: left out).
    let mut feeds: Vec<Option<usize>> = Vec::new();
    for (i, name) in header_names(header_line).iter().enumerate() {
        let f = match spec.column_of(name) {
            Ok(Some(f)) => f,
            Ok(None) => {
                feeds.push(None);
                continue;
            }
            Err(()) => {
                return Err(DecodeError::malformed(format!(
                    "CSV header column {} is {:?}, which is not a field nor a header of mapping profile {}; the fields are {}",
                    i + 1,
                    shown(name, 64),
                    spec.profile,
                    known_fields(wire)
                )));
            }
        };
        if feeds.contains(&Some(f)) {
            return Err(DecodeError::malformed(format!(
                "CSV header names field {} twice",
                spec.columns[f].field
            )));
        }
        feeds.push(Some(f));
    }
    let file_schema = Arc::new(Schema::new(
        (0..feeds.len())
            .map(|i| Field::new(format!("c{i}"), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = reader(text, file_schema)?;
    let mut batches = Vec::new();
    let mut faults = Vec::new();
    let mut rows = 0usize;
    for batch in reader {
        let batch = batch.map_err(invalid)?;
        let first = rows;
        rows += batch.num_rows();
        if rows > max_rows {
            return Err(DecodeError::too_many_rows(max_rows));
        }
        let mut out: Vec<ArrayRef> = Vec::with_capacity(wire.fields().len());
        for f in wire.fields() {
            let Some(c) = spec.columns.iter().position(|c| &c.field == f.name()) else {
                out.push(new_null_array(&DataType::Utf8, batch.num_rows()));
                continue;
            };
            let col = &spec.columns[c];
            let Some(i) = feeds.iter().position(|x| *x == Some(c)) else {
                let mut b = StringBuilder::new();
                for _ in 0..batch.num_rows() {
                    b.append_option(col.default.as_deref());
                }
                out.push(Arc::new(b.finish()));
                continue;
            };
            let sent = batch.column(i);
            if col.kind == CellKind::Text {
                out.push(sent.clone());
                continue;
            }
            let sent = sent.as_string::<i32>();
            let mut b = StringBuilder::new();
            for r in 0..sent.len() {
                if sent.is_null(r) {
                    b.append_null();
                    continue;
                }
                match read_text(sent.value(r), &col.kind) {
                    Ok(v) => b.append_option(v),
                    Err(why) => {
                        let row = first + r + 1;
                        faults.push(RecordFault {
                            row,
                            field: col.field.clone(),
                            code: "field.spreadsheet".into(),
                            message: format!("row {row}, field {}: {why}", col.field),
                        });
                        b.append_null();
                    }
                }
            }
            out.push(Arc::new(b.finish()));
        }
        batches.push(RecordBatch::try_new(wire.clone(), out).map_err(invalid)?);
    }
    faults.sort_by_key(|f: &RecordFault| f.row);
    Ok(Decoded { batches, faults })
}
