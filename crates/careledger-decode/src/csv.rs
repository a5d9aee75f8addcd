//! CSV bodies (already decoded to UTF-8 text): a header line of field names, then rows.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, new_null_array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::{DECODE_BATCH_ROWS, DecodeError, known_fields, shown};

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
    let reader = arrow_csv::ReaderBuilder::new(file_schema)
        .with_header(true)
        .with_batch_size(DECODE_BATCH_ROWS)
        .build(Cursor::new(text.as_bytes()))
        .map_err(invalid)?;
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
