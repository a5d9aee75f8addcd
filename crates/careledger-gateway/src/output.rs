//! Query results in the format the caller asks for: JSON (columns with types, then rows), CSV,
//! Arrow IPC stream, Parquet or an Excel workbook. Suppressed cells (dashboards) are null: listed
//! in the JSON body, named by a last `suppressed` column in CSV (the number columns stay
//! numbers), named in the Arrow schema metadata (`careledger.suppressed`), and empty grey cells
//! in a workbook. `labels=zh|en` puts each code column's label beside it.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow_schema::{DataType, Schema, SchemaRef};
use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::disclosure::Suppression;
use crate::problem::Problem;
pub use crate::sheet::SheetInfo;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Csv,
    Arrow,
    Parquet,
    Xlsx,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
            Format::Xlsx => careledger_decode::XLSX_MEDIA_TYPE,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Arrow => "arrow",
            Format::Parquet => "parquet",
            Format::Xlsx => "xlsx",
        }
    }

    /// From `format=` (wins) or the `Accept` header; JSON by default.
    pub fn choose(param: Option<&str>, accept: Option<&str>) -> Result<Format, Problem> {
        if let Some(p) = param {
            return match p {
                "json" => Ok(Format::Json),
                "csv" => Ok(Format::Csv),
                "arrow" => Ok(Format::Arrow),
                "parquet" => Ok(Format::Parquet),
                "xlsx" => Ok(Format::Xlsx),
                other => Err(Problem::bad_request(
                    "bad-format",
                    format!("format={other} is not one of json, csv, arrow, parquet, xlsx"),
                )),
            };
        }
        let Some(accept) = accept else {
            return Ok(Format::Json);
        };
        for part in accept.split(',') {
            let mime = part.split(';').next().unwrap_or_default().trim();
            match mime {
                "application/json" | "*/*" | "application/*" => return Ok(Format::Json),
                "text/csv" => return Ok(Format::Csv),
                "application/vnd.apache.arrow.stream" => return Ok(Format::Arrow),
                "application/vnd.apache.parquet" | "application/x-parquet" => {
                    return Ok(Format::Parquet);
                }
                careledger_decode::XLSX_MEDIA_TYPE => return Ok(Format::Xlsx),
                _ => {}
            }
        }
        Err(Problem::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-acceptable",
            format!(
                "cannot answer Accept: {accept}; use application/json, text/csv, application/vnd.apache.arrow.stream, application/vnd.apache.parquet or {}",
                careledger_decode::XLSX_MEDIA_TYPE
            ),
        ))
    }
}

/// One batch holding all rows (reports are small; SQL results are capped for JSON).
pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, Problem> {
    arrow_select::concat::concat_batches(schema, batches)
        .map_err(|e| Problem::internal("assembling the result", &e))
}

fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => "integer".into(),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "number".into(),
        DataType::Decimal128(_, s) => format!("decimal({s})"),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(..) => "timestamp".into(),
        other => other.to_string(),
    }
}

/// Plain, widely readable types for output: strings as Utf8 (not views or dictionaries).
pub(crate) fn plain(batch: &RecordBatch) -> Result<RecordBatch, Problem> {
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        let target = match f.data_type() {
            DataType::Utf8View | DataType::LargeUtf8 | DataType::Dictionary(..) => DataType::Utf8,
            other => other.clone(),
        };
        let col = if &target == c.data_type() {
            c.clone()
        } else {
            arrow_cast::cast(c, &target).map_err(|e| Problem::internal("casting a column", &e))?
        };
        fields.push(f.as_ref().clone().with_data_type(target));
        cols.push(col);
    }
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(
            fields,
            batch.schema().metadata().clone(),
        )),
        cols,
    )
    .map_err(|e| Problem::internal("result", &e))
}

pub(crate) fn cell(col: &ArrayRef, r: usize) -> Value {
    // A column of type Null (`SELECT NULL AS x`) has no null buffer: `is_null` says false.
    if col.is_null(r) || col.data_type() == &DataType::Null {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => {
            let c = arrow_cast::cast(&col.slice(r, 1), &DataType::Int64).expect("int");
            json!(c.as_primitive::<Int64Type>().value(0))
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let c = arrow_cast::cast(&col.slice(r, 1), &DataType::Float64).expect("float");
            json!(c.as_primitive::<Float64Type>().value(0))
        }
        DataType::Boolean => json!(col.as_boolean().value(r)),
        _ => {
            let options = arrow_cast::display::FormatOptions::default();
            let f = arrow_cast::display::ArrayFormatter::try_new(col.as_ref(), &options)
                .expect("displayable");
            json!(f.value(r).to_string())
        }
    }
}

/// Hides suppressed cells (null).
fn apply(batch: &RecordBatch, s: &Suppression) -> Result<RecordBatch, Problem> {
    if s.cells.is_empty() {
        return Ok(batch.clone());
    }
    let mut cols = Vec::new();
    for (c, col) in batch.columns().iter().enumerate() {
        let hide: Vec<bool> = (0..batch.num_rows())
            .map(|r| s.cells.contains(&(r, c)))
            .collect();
        if !hide.contains(&true) {
            cols.push(col.clone());
            continue;
        }
        let keep = arrow_array::BooleanArray::from(hide.iter().map(|h| !h).collect::<Vec<_>>());
        let nulls = new_null_array(col.data_type(), col.len());
        cols.push(
            arrow_select::zip::zip(&keep, col, &nulls)
                .map_err(|e| Problem::internal("suppression", &e))?,
        );
    }
    let cells: Vec<[usize; 2]> = s.cells.iter().map(|(r, c)| [*r, *c]).collect();
    let mut metadata: HashMap<String, String> = batch.schema().metadata().clone();
    metadata.insert(
        "careledger.suppressed".into(),
        serde_json::to_string(&cells).expect("json"),
    );
    // Hidden cells are nulls: every column may now hold them.
    let fields: Vec<arrow_schema::Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    RecordBatch::try_new(schema, cols).map_err(|e| Problem::internal("suppression", &e))
}

/// Encodes a whole result. `suppression` is set for dashboard output.
/// The Arrow / Parquet schema metadata key of what an answer reflects (JSON text).
pub const REFLECTS_METADATA: &str = "careledger.reflects";

pub fn encode(
    format: Format,
    batch: &RecordBatch,
    suppression: Option<&Suppression>,
    json_row_cap: usize,
    reflects: Option<&Value>,
    sheet: Option<&SheetInfo>,
) -> Result<Bytes, Problem> {
    let batch = plain(batch)?;
    let batch = match suppression {
        Some(s) => apply(&batch, s)?,
        None => batch,
    };
    // What the answer reflects: `reflects` in JSON, schema metadata in Arrow and Parquet.
    let batch = match (reflects, format) {
        (Some(r), Format::Arrow | Format::Parquet) => {
            let schema = batch.schema().as_ref().clone().with_metadata(
                [(REFLECTS_METADATA.to_string(), r.to_string())]
                    .into_iter()
                    .collect(),
            );
            batch
                .with_schema(Arc::new(schema))
                .map_err(|e| Problem::internal("schema metadata", &e))?
        }
        _ => batch,
    };
    match format {
        Format::Json => {
            if batch.num_rows() > json_row_cap {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "too-many-rows",
                    format!(
                        "the result has {} rows, more than the JSON limit of {json_row_cap}; ask for format=csv, arrow or parquet, or add a LIMIT",
                        batch.num_rows()
                    ),
                ));
            }
            let schema = batch.schema();
            let columns: Vec<Value> = schema
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "type": type_name(f.data_type())}))
                .collect();
            let rows: Vec<Value> = (0..batch.num_rows())
                .map(|r| Value::Array(batch.columns().iter().map(|c| cell(c, r)).collect()))
                .collect();
            let mut body = json!({"columns": columns, "rows": rows, "row_count": batch.num_rows()});
            if let Some(r) = reflects {
                body["reflects"] = r.clone();
            }
            if let Some(s) = suppression {
                body["suppressed"] =
                    json!(s.cells.iter().map(|(r, c)| [*r, *c]).collect::<Vec<_>>());
                body["disclosure"] = json!(
                    "counts carry a small consistent noise (cell-key method); counts below the threshold, and numbers derived from them, are null and listed in `suppressed` as [row, column]"
                );
            }
            Ok(Bytes::from(body.to_string()))
        }
        Format::Xlsx => {
            let none = std::collections::BTreeSet::new();
            crate::sheet::write(
                &batch,
                suppression.map_or(&none, |s| &s.cells),
                sheet.unwrap_or(&SheetInfo::default()),
            )
        }
        Format::Csv => {
            let batch = match suppression {
                Some(s) => with_suppressed_column(&batch, s)?,
                None => batch,
            };
            let mut out = Vec::new();
            {
                let mut w = arrow_csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                w.write(&batch)
                    .map_err(|e| Problem::internal("writing CSV", &e))?;
            }
            Ok(Bytes::from(out))
        }
        Format::Arrow => {
            let mut out = Vec::new();
            {
                let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
                    .map_err(|e| Problem::internal("writing Arrow", &e))?;
                w.write(&batch)
                    .map_err(|e| Problem::internal("writing Arrow", &e))?;
                w.finish()
                    .map_err(|e| Problem::internal("writing Arrow", &e))?;
            }
            Ok(Bytes::from(out))
        }
        Format::Parquet => {
            let mut out = Vec::new();
            {
                let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None)
                    .map_err(|e| Problem::internal("writing Parquet", &e))?;
                w.write(&batch)
                    .map_err(|e| Problem::internal("writing Parquet", &e))?;
                w.close()
                    .map_err(|e| Problem::internal("writing Parquet", &e))?;
            }
            Ok(Bytes::from(out))
        }
    }
}

/// Dashboard CSV: suppressed cells empty (their columns keep their types) and a last column
/// `suppressed` naming the row's suppressed columns (`;` between), empty where none is.
fn with_suppressed_column(batch: &RecordBatch, s: &Suppression) -> Result<RecordBatch, Problem> {
    let schema = batch.schema();
    let mut names: Vec<Vec<&str>> = vec![Vec::new(); batch.num_rows()];
    for (r, c) in &s.cells {
        if let Some(row) = names.get_mut(*r) {
            row.push(schema.field(*c).name());
        }
    }
    let column: ArrayRef = Arc::new(StringArray::from(
        names.iter().map(|n| n.join(";")).collect::<Vec<_>>(),
    ));
    let mut fields: Vec<arrow_schema::Field> =
        schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(arrow_schema::Field::new(
        "suppressed",
        DataType::Utf8,
        false,
    ));
    let mut cols = batch.columns().to_vec();
    cols.push(column);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
        .map_err(|e| Problem::internal("csv", &e))
}

/// The language of `labels=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// `labels=zh|en|none` (absent: `default`).
    pub fn choose(param: Option<&str>, default: Option<Lang>) -> Result<Option<Lang>, Problem> {
        match param {
            None => Ok(default),
            Some("zh") => Ok(Some(Lang::Zh)),
            Some("en") => Ok(Some(Lang::En)),
            Some("none") => Ok(None),
            Some(other) => Err(Problem::bad_request(
                "bad-parameter",
                format!("labels={other}: use labels=zh, labels=en or labels=none"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }
}

/// `batch` with a column `<col>_label` right after each code column of `labels` (region codes:
/// the division's name; code lists: the code's label in `lang`; months have none), and the
/// suppressed cells' columns moved to match.
pub fn with_labels(
    batch: &RecordBatch,
    labels: &[(String, careledger_warehouse::publish::LabelDomain)],
    lang: Lang,
    suppression: Option<Suppression>,
) -> Result<(RecordBatch, Option<Suppression>), Problem> {
    use careledger_warehouse::publish::LabelDomain;
    let schema = batch.schema();
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    // Old column index -> new.
    let mut moved = Vec::with_capacity(schema.fields().len());
    for (f, col) in schema.fields().iter().zip(batch.columns()) {
        moved.push(cols.len());
        fields.push(f.as_ref().clone());
        cols.push(col.clone());
        let domain = labels.iter().find(|(n, _)| n == f.name()).map(|(_, d)| d);
        let domain = match domain {
            Some(d @ (LabelDomain::Regions | LabelDomain::Codes(_))) => d,
            Some(LabelDomain::Months) | None => continue,
        };
        let lookup =
            |code: &str| match domain {
                LabelDomain::Codes(list) => careledger_model::vocabulary()
                    .list(list)
                    .get(code)
                    .map(|c| match lang {
                        Lang::Zh => c.zh.clone(),
                        Lang::En => c.en.clone(),
                    }),
                _ => careledger_model::regions()
                    .get(code)
                    .map(|r| r.name.clone()),
            };
        let text =
            arrow_cast::cast(col, &DataType::Utf8).map_err(|e| Problem::internal("labels", &e))?;
        let text = text.as_string::<i32>();
        let values: Vec<Option<String>> = (0..batch.num_rows())
            .map(|r| {
                if text.is_null(r) {
                    None
                } else {
                    lookup(text.value(r))
                }
            })
            .collect();
        fields.push(arrow_schema::Field::new(
            format!("{}_label", f.name()),
            DataType::Utf8,
            true,
        ));
        cols.push(Arc::new(StringArray::from(values)));
    }
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        cols,
    )
    .map_err(|e| Problem::internal("labels", &e))?;
    let suppression = suppression.map(|s| Suppression {
        cells: s.cells.iter().map(|(r, c)| (*r, moved[*c])).collect(),
    });
    Ok((batch, suppression))
}

/// The plain output type of a column (see [`plain`]).
pub(crate) fn plain_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Utf8View | DataType::LargeUtf8 | DataType::Dictionary(..) => DataType::Utf8,
        other => other.clone(),
    }
}

/// The schema of a result's [`plain`] batches.
pub(crate) fn plain_schema(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_data_type(plain_type(f.data_type())))
            .collect::<Vec<_>>(),
    )
}

/// Incremental CSV or Arrow IPC encoding, for results streamed batch by batch.
pub(crate) struct StreamEncoder {
    format: Format,
    schema: SchemaRef,
    ipc: Option<arrow_ipc::writer::StreamWriter<Vec<u8>>>,
    wrote_header: bool,
}

impl StreamEncoder {
    pub(crate) fn new(format: Format, schema: &Schema) -> Result<StreamEncoder, Problem> {
        let schema = Arc::new(plain_schema(schema));
        let ipc = match format {
            Format::Arrow => Some(
                arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema)
                    .map_err(|e| Problem::internal("writing Arrow", &e))?,
            ),
            _ => None,
        };
        Ok(StreamEncoder {
            format,
            schema,
            ipc,
            wrote_header: false,
        })
    }

    /// Bytes for one batch (the first call also carries the header or schema).
    pub(crate) fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes, Problem> {
        let batch = plain(batch)?;
        let batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())
            .map_err(|e| Problem::internal("result", &e))?;
        match &mut self.ipc {
            Some(w) => {
                w.write(&batch)
                    .map_err(|e| Problem::internal("writing Arrow", &e))?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
            None => {
                let mut out = Vec::new();
                {
                    let mut w = arrow_csv::WriterBuilder::new()
                        .with_header(!self.wrote_header)
                        .build(&mut out);
                    w.write(&batch)
                        .map_err(|e| Problem::internal("writing CSV", &e))?;
                }
                self.wrote_header = true;
                Ok(Bytes::from(out))
            }
        }
    }

    /// The closing bytes (the header alone for an empty CSV result; the IPC end marker).
    pub(crate) fn finish(&mut self) -> Result<Bytes, Problem> {
        if self.format == Format::Csv && !self.wrote_header {
            return self.batch(&RecordBatch::new_empty(self.schema.clone()));
        }
        match &mut self.ipc {
            Some(w) => {
                w.finish()
                    .map_err(|e| Problem::internal("writing Arrow", &e))?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
            None => Ok(Bytes::new()),
        }
    }
}

/// How a CSV answer is written for the program that opens it: `bom=true` puts a UTF-8 byte
/// order mark first (Excel then reads UTF-8 instead of the system code page, and 南宁市 is not
/// shown as mojibake); `charset=gb18030` (or `Accept: text/csv; charset=gb18030`) writes
/// GB18030, the code page of Chinese-locale Windows, which Excel reads without a mark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CsvText {
    pub bom: bool,
    pub gb18030: bool,
}

impl CsvText {
    /// From `bom=` and `charset=` (they win) or the `Accept` header's charset. Either one
    /// with another format than CSV is refused, as is a BOM on GB18030 (it takes none).
    pub fn choose(
        format: Format,
        bom: Option<&str>,
        charset: Option<&str>,
        accept: Option<&str>,
    ) -> Result<CsvText, Problem> {
        let bom = match bom {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(Problem::bad_request(
                    "bad-parameter",
                    format!("bom={other}: use bom=true or bom=false"),
                ));
            }
        };
        let from_accept = accept.and_then(|a| {
            a.split(',').find_map(|part| {
                let mut it = part.split(';');
                (it.next()?.trim() == "text/csv").then_some(())?;
                it.find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim().eq_ignore_ascii_case("charset"))
                        .then(|| v.trim().trim_matches('"').to_string())
                })
            })
        });
        let named = charset.is_some();
        let charset = charset.map(str::to_string).or(from_accept);
        let gb18030 = match charset.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("utf-8") | Some("utf8") => false,
            Some("gb18030") => true,
            Some(other) => {
                return Err(Problem::bad_request(
                    "bad-parameter",
                    format!("charset={other}: CSV is written in utf-8 or gb18030"),
                ));
            }
        };
        if format != Format::Csv && (bom || (named && gb18030)) {
            return Err(Problem::bad_request(
                "bad-parameter",
                format!(
                    "bom and charset apply to format=csv, not format={}",
                    format.as_str()
                ),
            ));
        }
        if bom && gb18030 {
            return Err(Problem::bad_request(
                "bad-parameter",
                "bom=true is for UTF-8: a GB18030 file takes no byte order mark (Excel on Chinese-locale Windows reads GB18030 as it is)",
            ));
        }
        Ok(CsvText { bom, gb18030 })
    }

    pub fn content_type(self, format: Format) -> &'static str {
        match (format, self.gb18030) {
            (Format::Csv, true) => "text/csv; charset=gb18030",
            _ => format.content_type(),
        }
    }

    /// What the ETag and cache must tell apart.
    pub fn key(self) -> &'static str {
        match (self.bom, self.gb18030) {
            (false, false) => "",
            (true, _) => "bom",
            (false, true) => "gb18030",
        }
    }

    /// A piece of UTF-8 CSV (whole rows) as it is sent: transcoded, and with the mark first.
    pub fn apply(self, first: bool, bytes: Bytes) -> Bytes {
        if !self.bom && !self.gb18030 {
            return bytes;
        }
        let mut out = Vec::with_capacity(bytes.len() + 3);
        if self.bom && first {
            out.extend_from_slice("\u{feff}".as_bytes());
        }
        if self.gb18030 {
            let text = String::from_utf8_lossy(&bytes);
            let (encoded, _, _) = encoding_rs::GB18030.encode(&text);
            out.extend_from_slice(&encoded);
        } else {
            out.extend_from_slice(&bytes);
        }
        Bytes::from(out)
    }
}

/// `Content-Disposition` for a file answer (CSV, Arrow, Parquet): a download named `base`
/// (kept to letters, digits, `.`, `-`, `_`, `=`) with the format's extension. None for JSON.
pub fn attachment(format: Format, base: &str) -> Option<axum::http::HeaderValue> {
    if format == Format::Json {
        return None;
    }
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '=') {
                c
            } else {
                '_'
            }
        })
        .take(150)
        .collect();
    axum::http::HeaderValue::from_str(&format!(
        "attachment; filename=\"{clean}.{}\"",
        format.as_str()
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SELECT NULL AS x` gives a column of type Null, which has no null buffer: its cells
    /// are still JSON nulls, not empty strings.
    #[test]
    fn csv_text_marks_transcodes_and_refuses_what_does_not_fit() {
        let utf8 = Bytes::from("region_name,women\n南宁市,12\n");
        let plain = CsvText::choose(Format::Csv, None, None, None).unwrap();
        assert_eq!(plain.apply(true, utf8.clone()), utf8);
        let bom = CsvText::choose(Format::Csv, Some("true"), None, None).unwrap();
        assert_eq!(&bom.apply(true, utf8.clone())[..3], b"\xef\xbb\xbf");
        assert_eq!(bom.apply(false, utf8.clone()), utf8, "the mark only once");
        let gb =
            CsvText::choose(Format::Csv, None, None, Some("text/csv; charset=GB18030")).unwrap();
        assert!(gb.gb18030);
        assert_eq!(gb.content_type(Format::Csv), "text/csv; charset=gb18030");
        let bytes = gb.apply(true, utf8.clone());
        let (back, _, bad) = encoding_rs::GB18030.decode(&bytes);
        assert!(!bad);
        assert_eq!(back, "region_name,women\n南宁市,12\n");
        assert_eq!(
            &bytes[18..24],
            &[0xc4, 0xcf, 0xc4, 0xfe, 0xca, 0xd0],
            "南宁市 in GB18030"
        );
        for (format, bom, charset) in [
            (Format::Json, Some("true"), None),
            (Format::Parquet, None, Some("gb18030")),
            (Format::Csv, Some("true"), Some("gb18030")),
            (Format::Csv, Some("yes"), None),
            (Format::Csv, None, Some("big5")),
        ] {
            assert!(
                CsvText::choose(format, bom, charset, None).is_err(),
                "{format:?} {bom:?} {charset:?}"
            );
        }
        assert_eq!(
            attachment(Format::Csv, "stock_as_of=2024-12-31_level=城市").unwrap(),
            "attachment; filename=\"stock_as_of=2024-12-31_level=__.csv\""
        );
        assert!(attachment(Format::Json, "x").is_none());
    }

    #[test]
    fn a_column_of_type_null_is_null_in_json() {
        let col: ArrayRef = Arc::new(arrow_array::NullArray::new(2));
        assert_eq!(cell(&col, 0), Value::Null);
        let col: ArrayRef = Arc::new(StringArray::from(vec![Some(""), None]));
        assert_eq!(cell(&col, 0), json!(""));
        assert_eq!(cell(&col, 1), Value::Null);
    }
}
