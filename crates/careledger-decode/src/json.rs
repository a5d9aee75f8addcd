//! JSON array and NDJSON bodies. Each object is read with serde_json, one row at a time: keys
//! are matched against the wire schema, each value is taken as its raw JSON text (so numbers
//! keep the digits that were sent) and nested values are refused without being descended into
//! (serde_json skips a raw value iteratively, so no nesting depth can exhaust the stack).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::{
    DECODE_BATCH_BYTES, DECODE_BATCH_ROWS, DecodeError, Decoded, RecordFault, known_fields, shown,
};

/// Why a row was refused, beyond JSON syntax. Kept beside serde's error, which only carries a
/// position for these.
#[derive(Debug)]
enum Fault {
    UnknownField(String),
    Duplicate(usize),
    Nested(usize),
    Nul(usize),
    BadString(usize, String),
    /// NDJSON: the line is not JSON (serde's message, which quotes no sent value).
    Syntax(String),
    /// NDJSON: the line is JSON but not an object.
    NotObject,
    TooManyRows,
    Arrow(String),
}

/// Column builders for the rows of the current batch, and the row being read.
struct Columns<'w, 'de> {
    wire: &'w SchemaRef,
    names: Vec<&'w str>,
    row: Vec<Option<Cow<'de, str>>>,
    seen: Vec<bool>,
    builders: Vec<StringBuilder>,
    batch_rows: usize,
    batch_bytes: usize,
    rows: usize,
    max_rows: usize,
    out: Vec<RecordBatch>,
    /// A fault that stops decoding (too many rows, Arrow), or serde's error's cause.
    fault: Option<Fault>,
    /// The first fault of the row being read: the row is still read to its end and kept.
    row_fault: Option<Fault>,
    /// NDJSON: the line being read (messages name lines, not rows).
    line: Option<usize>,
    faults: Vec<RecordFault>,
}

impl<'w, 'de> Columns<'w, 'de> {
    fn new(wire: &'w SchemaRef, max_rows: usize) -> Columns<'w, 'de> {
        let n = wire.fields().len();
        Columns {
            wire,
            names: wire.fields().iter().map(|f| f.name().as_str()).collect(),
            row: vec![None; n],
            seen: vec![false; n],
            builders: (0..n).map(|_| StringBuilder::new()).collect(),
            batch_rows: 0,
            batch_bytes: 0,
            rows: 0,
            max_rows,
            out: Vec::new(),
            fault: None,
            row_fault: None,
            line: None,
            faults: Vec::new(),
        }
    }

    /// Records why the row is refused; the returned error only carries serde's position.
    fn fail<E: de::Error>(&mut self, fault: Fault) -> E {
        self.fault = Some(fault);
        E::custom("row refused")
    }

    fn start_row(&mut self) {
        self.row.iter_mut().for_each(|v| *v = None);
        self.seen.iter_mut().for_each(|s| *s = false);
        self.row_fault = None;
    }

    /// Notes a problem of the row being read; the first one is kept.
    fn row_fails(&mut self, fault: Fault) {
        if self.row_fault.is_none() {
            self.row_fault = Some(fault);
        }
    }

    /// Records `fault` against row `row` (1-based).
    fn record(&mut self, row: usize, fault: &Fault) {
        let place = match self.line {
            Some(line) => format!("line {line}"),
            None => format!("row {row}"),
        };
        let (field, problem) = match fault {
            Fault::UnknownField(_) => (String::new(), "row.unknown_field".to_string()),
            Fault::Syntax(_) => (String::new(), "row.malformed_json".to_string()),
            Fault::NotObject => (String::new(), "row.not_object".to_string()),
            Fault::Duplicate(i) => (self.name(*i).to_string(), "duplicate_key".to_string()),
            Fault::Nested(i) => (self.name(*i).to_string(), "nested_value".to_string()),
            Fault::Nul(i) => (self.name(*i).to_string(), "nul_character".to_string()),
            Fault::BadString(i, _) => (self.name(*i).to_string(), "bad_string".to_string()),
            Fault::TooManyRows | Fault::Arrow(_) => (String::new(), "row.malformed".to_string()),
        };
        let code = if field.is_empty() {
            problem
        } else {
            format!("{field}.{problem}")
        };
        let message = self.describe(fault, &place).detail;
        self.faults.push(RecordFault {
            row,
            field,
            code,
            message,
        });
    }

    fn end_row(&mut self) -> Result<(), Fault> {
        if self.rows >= self.max_rows {
            return Err(Fault::TooManyRows);
        }
        for (b, v) in self.builders.iter_mut().zip(self.row.iter_mut()) {
            match v.take() {
                Some(text) => {
                    self.batch_bytes += text.len();
                    b.append_value(text);
                }
                None => b.append_null(),
            }
        }
        self.rows += 1;
        self.batch_rows += 1;
        if self.batch_rows >= DECODE_BATCH_ROWS || self.batch_bytes >= DECODE_BATCH_BYTES {
            self.flush().map_err(Fault::Arrow)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.batch_rows == 0 {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        // Every column has one value per row and the schema is all nullable Utf8 (checked
        // by `decode`), so this does not fail; if it did, it is an error, not a panic.
        let batch = RecordBatch::try_new(self.wire.clone(), columns).map_err(|e| e.to_string())?;
        self.out.push(batch);
        self.batch_rows = 0;
        self.batch_bytes = 0;
        Ok(())
    }

    fn name(&self, i: usize) -> &str {
        self.names[i]
    }

    /// The detail for a refused row; `place` is "row 3" or "line 7".
    fn describe(&self, fault: &Fault, place: &str) -> DecodeError {
        match fault {
            Fault::UnknownField(k) => DecodeError::malformed(format!(
                "{place}: unknown field {:?}; the fields are {}",
                shown(k, 64),
                known_fields(self.wire)
            )),
            Fault::Duplicate(i) => DecodeError::malformed(format!(
                "{place}: field {:?} appears twice in one object (duplicate key); send each field once",
                self.name(*i)
            )),
            Fault::Nested(i) => DecodeError::malformed(format!(
                "{place}: field {:?} must be a string, number, boolean or null, not an object or array",
                self.name(*i)
            )),
            Fault::Nul(i) => DecodeError::malformed(format!(
                "{place}: field {:?} holds a NUL character (\\u0000); text fields cannot contain one",
                self.name(*i)
            )),
            Fault::BadString(i, e) => DecodeError::malformed(format!(
                "{place}: field {:?} is not a valid JSON string: {e}",
                self.name(*i)
            )),
            Fault::Syntax(e) => {
                let hint = if e.contains("EOF") {
                    " (NDJSON holds one whole JSON object on each line)"
                } else {
                    ""
                };
                DecodeError::malformed(format!("invalid JSON at {place}, {e}{hint}"))
            }
            Fault::NotObject => {
                DecodeError::malformed(format!("{place}: each line must be one JSON object"))
            }
            Fault::TooManyRows => DecodeError::too_many_rows(self.max_rows),
            Fault::Arrow(e) => DecodeError::malformed(format!("{place}: {e}")),
        }
    }
}

/// A value's text for its column: strings unescaped, numbers and booleans as sent, null as
/// missing; objects and arrays refused.
fn scalar<'de>(raw: &'de RawValue, field: usize) -> Result<Option<Cow<'de, str>>, Fault> {
    let s: &'de str = raw.get();
    match s.as_bytes().first() {
        None | Some(b'n') => Ok(None),
        Some(b'[' | b'{') => Err(Fault::Nested(field)),
        Some(b'"') => {
            let text = if s.contains('\\') {
                Cow::Owned(
                    serde_json::from_str::<String>(s)
                        .map_err(|e| Fault::BadString(field, e.to_string()))?,
                )
            } else {
                Cow::Borrowed(s.get(1..s.len() - 1).unwrap_or_default())
            };
            if text.contains('\0') {
                return Err(Fault::Nul(field));
            }
            Ok(Some(text))
        }
        Some(_) => Ok(Some(Cow::Borrowed(s))),
    }
}

/// Matches an object key to a field index without allocating (unknown keys are kept).
struct KeySeed<'a> {
    names: &'a [&'a str],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Result<usize, String>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Result<usize, String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self
            .names
            .iter()
            .position(|n| *n == v)
            .ok_or_else(|| v.to_string()))
    }
}

/// One object: one row.
struct RowSeed<'c, 'w, 'de> {
    cols: &'c mut Columns<'w, 'de>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let cols = self.cols;
        cols.start_row();
        while let Some(key) = map.next_key_seed(KeySeed { names: &cols.names })? {
            // A refused field is read past (serde_json skips a raw value without recursion)
            // and the row goes on, so that a JSON array can go on to the next row.
            let raw: &'de RawValue = map.next_value()?;
            let i = match key {
                Ok(i) => i,
                Err(name) => {
                    cols.row_fails(Fault::UnknownField(name));
                    continue;
                }
            };
            if cols.seen[i] {
                cols.row_fails(Fault::Duplicate(i));
                continue;
            }
            cols.seen[i] = true;
            match scalar(raw, i) {
                Ok(v) => cols.row[i] = v,
                Err(f) => cols.row_fails(f),
            }
        }
        let fault = cols.row_fault.take();
        cols.end_row().map_err(|f| cols.fail(f))?;
        if let Some(f) = fault {
            cols.record(cols.rows, &f);
        }
        Ok(())
    }
}

/// The top-level array: one row per element.
struct ArraySeed<'c, 'w, 'de> {
    cols: &'c mut Columns<'w, 'de>,
}

impl<'de> Visitor<'de> for ArraySeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(RowSeed {
                cols: &mut *self.cols,
            })?
            .is_some()
        {}
        Ok(())
    }
}

pub(crate) fn decode_json_array(
    body: &[u8],
    wire: &SchemaRef,
    max_rows: usize,
) -> Result<Decoded, DecodeError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return Err(DecodeError::malformed(
            "an application/json body must be a JSON array of objects; for one object per line use application/x-ndjson",
        ));
    }
    let mut cols = Columns::new(wire, max_rows);
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = de::Deserializer::deserialize_seq(&mut de, ArraySeed { cols: &mut cols })
        .and_then(|()| de.end());
    if let Err(e) = result {
        let row = cols.rows + 1;
        return Err(match &cols.fault {
            Some(f) => {
                let mut err = cols.describe(f, &format!("row {row}"));
                if !matches!(f, Fault::TooManyRows) {
                    err.detail
                        .push_str(&format!(" (line {}, column {})", e.line(), e.column()));
                }
                err
            }
            None if e.is_data() => {
                DecodeError::malformed(format!("array element {row} is not an object"))
            }
            None => DecodeError::malformed(format!(
                "invalid JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            )),
        });
    }
    cols.flush().map_err(DecodeError::malformed)?;
    Ok(Decoded {
        batches: cols.out,
        faults: cols.faults,
    })
}

/// NDJSON: each line is its own record, so a line that is not one JSON object is that row's
/// fault, not the body's.
pub(crate) fn decode_ndjson(
    body: &[u8],
    wire: &SchemaRef,
    max_rows: usize,
) -> Result<Decoded, DecodeError> {
    let mut cols = Columns::new(wire, max_rows);
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        cols.line = Some(n + 1);
        cols.start_row();
        let before = cols.rows;
        let mut de = serde_json::Deserializer::from_slice(line);
        let result = RowSeed { cols: &mut cols }
            .deserialize(&mut de)
            .and_then(|()| de.end());
        let Err(e) = result else {
            continue;
        };
        let place = format!("line {}", n + 1);
        if let Some(f) = cols.fault.take() {
            return Err(cols.describe(&f, &place));
        }
        let fault = if e.is_data() {
            Fault::NotObject
        } else {
            // serde's position counts within the line: keep the column only.
            let text = e.to_string();
            let text = text
                .rsplit_once(" at line ")
                .map_or(text.as_str(), |(t, _)| t);
            Fault::Syntax(format!("column {}: {text}", e.column()))
        };
        // The row was kept if only what follows the object is wrong; else it takes its
        // row now, with the fields read before the error.
        if cols.rows == before {
            cols.row_fault = None;
            cols.end_row().map_err(|f| cols.describe(&f, &place))?;
        }
        cols.record(cols.rows, &fault);
    }
    cols.flush().map_err(DecodeError::malformed)?;
    Ok(Decoded {
        batches: cols.out,
        faults: cols.faults,
    })
}
