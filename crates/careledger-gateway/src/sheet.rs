//! Answers as spreadsheets (`format=xlsx`): one sheet, the answer's title and what it stands
//! on (parameters, knowledge instant, rule version, freshness) above a frozen header row;
//! numbers stay numbers, dates are Excel dates, and a suppressed cell is an empty grey cell
//! (never `*` in a number column) explained in the lines above.

use std::collections::BTreeSet;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use axum::http::StatusCode;
use bytes::Bytes;
use rust_xlsxwriter::{Color, ExcelDateTime, Format as CellFormat, Workbook, Worksheet, XlsxError};

use crate::problem::Problem;

/// Excel's last row is 1,048,576: the header and the lines above it take some.
pub const XLSX_MAX_ROWS: usize = 1_048_000;

/// What a sheet says above its table: a title, then (label, value) lines.
#[derive(Debug, Clone, Default)]
pub struct SheetInfo {
    pub title: String,
    pub lines: Vec<(String, String)>,
}

fn xlsx_problem(e: XlsxError) -> Problem {
    Problem::internal("writing the spreadsheet", &e)
}

/// The workbook bytes of `batch` (plain types) under `info`; `suppressed` cells (row, column)
/// are left empty and shaded.
pub fn write(
    batch: &RecordBatch,
    suppressed: &BTreeSet<(usize, usize)>,
    info: &SheetInfo,
) -> Result<Bytes, Problem> {
    if batch.num_rows() > XLSX_MAX_ROWS {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too-many-rows",
            format!(
                "the result has {} rows, more than a spreadsheet holds ({XLSX_MAX_ROWS}); ask for format=csv or parquet, or add a LIMIT",
                batch.num_rows()
            ),
        ));
    }
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    sheet.set_name("careledger").map_err(xlsx_problem)?;
    let title = CellFormat::new().set_bold().set_font_size(14);
    let label = CellFormat::new().set_bold();
    let header = CellFormat::new()
        .set_bold()
        .set_background_color(Color::RGB(0xDDEBF7));
    let hidden = CellFormat::new().set_background_color(Color::RGB(0xD9D9D9));
    let date = CellFormat::new().set_num_format("yyyy-mm-dd");

    let mut row: u32 = 0;
    sheet
        .write_string_with_format(row, 0, &info.title, &title)
        .map_err(xlsx_problem)?;
    row += 1;
    for (k, v) in &info.lines {
        sheet
            .write_string_with_format(row, 0, k, &label)
            .map_err(xlsx_problem)?;
        sheet.write_string(row, 1, v).map_err(xlsx_problem)?;
        row += 1;
    }
    if !suppressed.is_empty() {
        sheet.write_blank(row, 0, &hidden).map_err(xlsx_problem)?;
        sheet
            .write_string(
                row,
                1,
                "灰色空格：人数过少，已抑制 / grey empty cell: suppressed (too few women)",
            )
            .map_err(xlsx_problem)?;
        row += 1;
    }
    row += 1;
    let schema = batch.schema();
    for (c, f) in schema.fields().iter().enumerate() {
        sheet
            .write_string_with_format(row, c as u16, f.name(), &header)
            .map_err(xlsx_problem)?;
        let width = (f.name().chars().count() as f64 + 2.0).clamp(10.0, 40.0);
        sheet
            .set_column_width(c as u16, width)
            .map_err(xlsx_problem)?;
    }
    let header_row = row;
    sheet
        .set_freeze_panes(header_row + 1, 0)
        .map_err(xlsx_problem)?;
    for (c, col) in batch.columns().iter().enumerate() {
        for r in 0..batch.num_rows() {
            let at = (header_row + 1 + r as u32, c as u16);
            if suppressed.contains(&(r, c)) {
                sheet
                    .write_blank(at.0, at.1, &hidden)
                    .map_err(xlsx_problem)?;
                continue;
            }
            write_cell(sheet, at, col, r, &date)?;
        }
    }
    let bytes = book.save_to_buffer().map_err(xlsx_problem)?;
    Ok(Bytes::from(bytes))
}

fn write_cell(
    sheet: &mut Worksheet,
    (row, col_no): (u32, u16),
    col: &ArrayRef,
    r: usize,
    date: &CellFormat,
) -> Result<(), Problem> {
    if col.is_null(r) || col.data_type() == &DataType::Null {
        return Ok(());
    }
    let done = match col.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => {
            let c = arrow_cast::cast(&col.slice(r, 1), &DataType::Int64)
                .map_err(|e| Problem::internal("spreadsheet cell", &e))?;
            sheet.write_number(row, col_no, c.as_primitive::<Int64Type>().value(0) as f64)
        }
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => {
            let c = arrow_cast::cast(&col.slice(r, 1), &DataType::Float64)
                .map_err(|e| Problem::internal("spreadsheet cell", &e))?;
            sheet.write_number(row, col_no, c.as_primitive::<Float64Type>().value(0))
        }
        DataType::Boolean => sheet.write_boolean(row, col_no, col.as_boolean().value(r)),
        DataType::Date32 => {
            let d = col.as_primitive::<Date32Type>().value_as_date(r);
            match d.and_then(|d| {
                use chrono::Datelike;
                ExcelDateTime::from_ymd(d.year() as u16, d.month() as u8, d.day() as u8).ok()
            }) {
                Some(x) => sheet.write_datetime_with_format(row, col_no, x, date),
                None => sheet.write_string(row, col_no, display(col, r)),
            }
        }
        DataType::Utf8 => sheet.write_string(row, col_no, col.as_string::<i32>().value(r)),
        _ => sheet.write_string(row, col_no, display(col, r)),
    };
    done.map(|_| ()).map_err(xlsx_problem)
}

fn display(col: &ArrayRef, r: usize) -> String {
    let options = arrow_cast::display::FormatOptions::default();
    arrow_cast::display::ArrayFormatter::try_new(col.as_ref(), &options)
        .map(|f| f.value(r).to_string())
        .unwrap_or_default()
}
