//! Spreadsheets in and out: `.xlsx` uploads with Chinese headers, Excel dates, thousands
//! separators, code labels and an ID number Excel made a number; `format=xlsx` answers read
//! back with calamine equal to the JSON answer; dashboard CSV and workbooks keep number
//! columns numeric where cells are suppressed.

use std::io::Cursor;

use axum::http::StatusCode;
use calamine::{Data, Reader, Xlsx};
use careledger_gateway::GatewayConfig;
use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
use serde_json::Value;

use crate::query::{get, json_of, seeded, sql};
use crate::{Harness, id};

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// A cell to write: text, a number, or a date (written as Excel writes one).
enum Cell<'a> {
    T(&'a str),
    N(f64),
    D(u16, u8, u8),
}

fn workbook(headers: &[&str], rows: &[Vec<Cell>]) -> Vec<u8> {
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    let date = Format::new().set_num_format("yyyy/m/d");
    for (c, h) in headers.iter().enumerate() {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    for (r, row) in rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u16;
            match cell {
                Cell::T(t) => sheet.write_string(r, c, *t).map(|_| ()),
                Cell::N(n) => sheet.write_number(r, c, *n).map(|_| ()),
                Cell::D(y, m, d) => sheet
                    .write_datetime_with_format(
                        r,
                        c,
                        ExcelDateTime::from_ymd(*y, *m, *d).unwrap(),
                        &date,
                    )
                    .map(|_| ()),
            }
            .unwrap();
        }
    }
    book.save_to_buffer().unwrap()
}

/// The table of a `format=xlsx` answer: the cells under the header row (the row whose first
/// cell is `first_column`), and the lines above it.
fn read_sheet(bytes: &[u8], first_column: &str) -> (Vec<Vec<Data>>, Vec<Vec<Data>>) {
    let mut book: Xlsx<_> = calamine::open_workbook_from_rs(Cursor::new(bytes.to_vec())).unwrap();
    let range = book.worksheet_range_at(0).unwrap().unwrap();
    let rows: Vec<Vec<Data>> = range.rows().map(|r| r.to_vec()).collect();
    let at = rows
        .iter()
        .position(|r| r.first() == Some(&Data::String(first_column.into())))
        .expect("a header row");
    (rows[..at].to_vec(), rows[at..].to_vec())
}

/// A sheet cell as the JSON answer writes the same value.
fn as_json(cell: &Data) -> Value {
    match cell {
        Data::Empty => Value::Null,
        Data::String(s) => Value::String(s.clone()),
        Data::Float(f) if f.fract() == 0.0 => Value::from(*f as i64),
        Data::Float(f) => Value::from(*f),
        Data::Int(i) => Value::from(*i),
        Data::Bool(b) => Value::Bool(*b),
        Data::DateTime(d) => {
            let (y, m, day, ..) = d.to_ymd_hms_milli();
            Value::String(format!("{y:04}-{m:02}-{day:02}"))
        }
        other => Value::String(other.to_string()),
    }
}

#[tokio::test]
async fn a_department_workbook_with_chinese_headers_is_accepted_as_its_fields() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs").to_string();
    let (id1, id2) = (id(1), id(2));
    // Women: a row-number column, Chinese headers, a region code Excel keeps as a number,
    // ethnicity and marital status as their Chinese labels, and a blank row at the end.
    let women = workbook(
        &[
            "序号",
            "记录编号",
            "记录版本",
            "身份证号",
            "行政区划代码",
            "民族",
            "婚姻状况",
        ],
        &[
            vec![
                Cell::N(1.0),
                Cell::T("w-1"),
                Cell::N(1.0),
                Cell::T(&id1),
                Cell::N(450123100201.0),
                Cell::T("汉族"),
                Cell::T("已婚"),
            ],
            vec![
                Cell::N(2.0),
                Cell::T("w-2"),
                Cell::N(1.0),
                Cell::T(&id2),
                Cell::T("450123100201"),
                Cell::T("壮族"),
                Cell::N(20.0),
            ],
            vec![Cell::T(" "), Cell::T(""), Cell::T("")],
        ],
    );
    let (s, _, r) = h.post("/v1/ingest/women", &tok, XLSX, women, &[]).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["format"], "xlsx");
    assert_eq!(
        (r["rows_received"].as_u64(), r["rows_accepted"].as_u64()),
        (Some(2), Some(2)),
        "{r}"
    );

    // Services: a date cell, a date typed as 2024/11/7, money with a thousands separator, a
    // measure and a service type by their labels, and a third row whose ID number Excel
    // turned into a number.
    let services = workbook(
        &[
            "记录编号",
            "记录版本",
            "身份证号",
            "措施",
            "服务类型",
            "服务日期",
            "金额（元）",
            "数量",
        ],
        &[
            vec![
                Cell::T("s-1"),
                Cell::N(1.0),
                Cell::T(&id1),
                Cell::T("M1"),
                Cell::T("temporary_assistance"),
                Cell::D(2024, 11, 7),
                Cell::T("1,200.00"),
                Cell::N(1.0),
            ],
            vec![
                Cell::T("s-2"),
                Cell::N(1.0),
                Cell::T(&id2),
                Cell::T("解困帮扶"),
                Cell::T("临时救助"),
                Cell::T("2024/11/7"),
                Cell::N(800.5),
                Cell::T("2"),
            ],
            vec![
                Cell::T("s-3"),
                Cell::N(1.0),
                Cell::N(450123197001011234.0),
                Cell::T("M1"),
                Cell::T("临时救助"),
                Cell::N(45603.0),
                Cell::N(100.0),
                Cell::N(1.0),
            ],
        ],
    );
    let (s, _, r) = h
        .post(
            "/v1/ingest/services?atomic=false",
            &tok,
            XLSX,
            services.clone(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["rows_received"].as_u64(),
            r["rows_accepted"].as_u64(),
            r["rows_rejected"].as_u64()
        ),
        (Some(3), Some(2), Some(1)),
        "{r}"
    );
    let e = &r["errors"][0];
    assert_eq!(
        (e["row"].as_u64(), e["field"].as_str()),
        (Some(3), Some("id_number")),
        "{r}"
    );
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("Excel stored the ID number as a number") && message.contains("C4"),
        "{message}"
    );
    assert!(
        !message.contains("4501231970") && !message.contains("4.50123"),
        "no ID digits echoed: {message}"
    );
    // The same rejects file as any batch.
    let batch = r["batch_id"].as_str().unwrap();
    let (s, _, b) = get(&h, &tok, &format!("/v1/batches/{batch}/rejects"), &[]).await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    assert!(
        String::from_utf8_lossy(&b).contains("Excel stored the ID number"),
        "{}",
        String::from_utf8_lossy(&b)
    );
    // Sent again: the same receipt (an idempotency key works as with any body).
    let admin = h
        .tokens
        .create("sheet-admin", &careledger_gateway::Role::Admin, None)
        .unwrap();
    let (s, _, b) = sql(
        &h,
        &admin,
        "SELECT w.record_id, w.ethnicity, w.marital_status, w.region_code FROM women w ORDER BY record_id",
        "json",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    assert_eq!(
        json_of(&b)["rows"],
        serde_json::json!([
            ["w-1", "01", "20", "450123100201"],
            ["w-2", "08", "20", "450123100201"]
        ])
    );
    let (s, _, b) = sql(
        &h,
        &admin,
        "SELECT record_id, measure, service_type, CAST(service_date AS VARCHAR) AS d, CAST(amount_yuan AS VARCHAR) AS amount, quantity FROM services ORDER BY record_id",
        "json",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    assert_eq!(
        json_of(&b)["rows"],
        serde_json::json!([
            [
                "s-1",
                "M1",
                "temporary_assistance",
                "2024-11-07",
                "1200.00",
                1
            ],
            [
                "s-2",
                "M1",
                "temporary_assistance",
                "2024-11-07",
                "800.50",
                2
            ]
        ])
    );

    // A header that names no field refuses the sheet, naming it and the profile.
    let odd = workbook(&["记录编号", "备注"], &[vec![Cell::T("w-9"), Cell::T("x")]]);
    let (s, _, r) = h.post("/v1/ingest/women", &tok, XLSX, odd, &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    let detail = r["detail"].as_str().unwrap();
    assert!(
        detail.contains("备注") && detail.contains("column B") && detail.contains("civil_affairs"),
        "{detail}"
    );
    // Not a workbook at all.
    let (s, _, r) = h
        .post("/v1/ingest/women", &tok, XLSX, "record_id\nw-1\n", &[])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    assert!(r["detail"].as_str().unwrap().contains(".xlsx"), "{r}");
}

#[tokio::test]
async fn an_xlsx_answer_reads_back_equal_to_the_json_answer() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let admin = &t["admin"];
    let q = "/v1/reports/entries?from=2023-01-01&to=2024-01-01&level=county&labels=zh";
    let (s, _, b) = get(&h, admin, &format!("{q}&format=json"), &[]).await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    let answer = json_of(&b);
    let names: Vec<&str> = answer["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"reason_label") && names.contains(&"region_code_label"),
        "{names:?}"
    );
    assert!(
        answer["rows"].as_array().unwrap().iter().any(|r| r
            .as_array()
            .unwrap()
            .contains(&Value::from("丈夫连续外出满半年"))),
        "{answer}"
    );

    let (s, hd, b) = get(&h, admin, &format!("{q}&format=xlsx"), &[]).await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    assert_eq!(hd["content-type"], XLSX);
    assert!(
        hd["content-disposition"]
            .to_str()
            .unwrap()
            .ends_with(".xlsx\""),
        "{hd:?}"
    );
    let (above, table) = read_sheet(&b, "region_code");
    let header: Vec<Value> = table[0].iter().map(as_json).collect();
    assert_eq!(
        header,
        names.iter().map(|n| Value::from(*n)).collect::<Vec<_>>()
    );
    let rows: Vec<Value> = table[1..]
        .iter()
        .map(|r| Value::Array(r.iter().map(as_json).collect()))
        .collect();
    assert_eq!(
        Value::Array(rows),
        answer["rows"],
        "the workbook holds the JSON answer"
    );
    let text: Vec<String> = above.iter().flatten().map(|c| c.to_string()).collect();
    let text = text.join("|");
    assert!(text.contains("新增纳入台账人数"), "Chinese title: {text}");
    assert!(
        text.contains("from=2023-01-01") && text.contains("region=45"),
        "parameters with defaults: {text}"
    );
    assert!(
        text.contains("known_at") && text.contains("rule version") && text.contains("派生周期"),
        "{text}"
    );
    // Month cells are dates in the sheet, not text.
    let month_col = names.iter().position(|n| *n == "month").unwrap();
    assert!(
        matches!(table[1][month_col], Data::DateTime(_)),
        "{:?}",
        table[1][month_col]
    );

    // SQL too, with the statement above the table.
    let q = "SELECT code, name FROM regions WHERE code LIKE '4501%' ORDER BY code LIMIT 5";
    let (s, _, b) = sql(&h, admin, q, "json").await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    let answer = json_of(&b);
    let (s, _, b) = sql(&h, admin, q, "xlsx").await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    let (above, table) = read_sheet(&b, "code");
    assert!(
        above
            .iter()
            .flatten()
            .any(|c| c.to_string().contains("FROM regions"))
    );
    let rows: Vec<Value> = table[1..]
        .iter()
        .map(|r| Value::Array(r.iter().map(as_json).collect()))
        .collect();
    assert_eq!(Value::Array(rows), answer["rows"]);
    assert_eq!(answer["rows"][0][1], "南宁市");
}

#[tokio::test]
async fn dashboard_downloads_keep_numbers_numeric_where_cells_are_suppressed() {
    let (h, t) = seeded(GatewayConfig::default()).await;
    let dash = &t["dash"];
    let q = "/v1/reports/stock?as_of=2024-06-30&level=county&region=4501";
    let (s, _, b) = get(&h, dash, &format!("{q}&format=json"), &[]).await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    let answer = json_of(&b);
    let suppressed = answer["suppressed"].as_array().unwrap();
    assert!(
        !suppressed.is_empty(),
        "a few women per county: some cells are suppressed"
    );
    let columns: Vec<String> = answer["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();

    // CSV: the suppressed cells are empty, and a last column names them.
    let (s, _, b) = get(&h, dash, &format!("{q}&format=csv"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(b.to_vec()).unwrap();
    assert!(!text.contains('*'), "no stars in number columns: {text}");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header.last(), Some(&"suppressed"));
    let women = header.iter().position(|h| *h == "women").unwrap();
    for (r, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let named: Vec<&str> = cells
            .last()
            .unwrap()
            .split(';')
            .filter(|s| !s.is_empty())
            .collect();
        let hidden: Vec<&str> = suppressed
            .iter()
            .filter(|p| p[0].as_u64() == Some(r as u64))
            .map(|p| columns[p[1].as_u64().unwrap() as usize].as_str())
            .collect();
        assert_eq!(named, hidden, "row {r}: {line}");
        let w = cells[women];
        assert!(
            w.is_empty() == hidden.contains(&"women") && (w.is_empty() || w.parse::<i64>().is_ok()),
            "{line}"
        );
    }

    // The workbook: suppressed cells empty, every other count a number.
    let (s, _, b) = get(&h, dash, &format!("{q}&format=xlsx&labels=none"), &[]).await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    let (above, table) = read_sheet(&b, "region_code");
    assert!(
        above
            .iter()
            .flatten()
            .any(|c| c.to_string().contains("已抑制")),
        "the sheet says what a grey cell is"
    );
    for p in suppressed {
        let (r, c) = (
            p[0].as_u64().unwrap() as usize,
            p[1].as_u64().unwrap() as usize,
        );
        assert_eq!(
            table[1 + r].get(c).unwrap_or(&Data::Empty),
            &Data::Empty,
            "cell {r},{c}"
        );
    }
    let women = columns.iter().position(|c| c == "women").unwrap();
    for row in &table[1..] {
        assert!(
            matches!(row[women], Data::Float(_) | Data::Empty),
            "{:?}",
            row[women]
        );
    }
    // Dashboards' reference periods hold for workbooks too.
    let (s, _, _) = get(
        &h,
        dash,
        "/v1/reports/stock?as_of=2024-06-29&format=xlsx",
        &[],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// CSV saved from such a sheet (GB18030, as Excel on a Chinese-locale Windows saves it) reads
/// through the same profiles: Chinese headers, `2024/11/7`, `"1,200.00"`, labels, and an ID
/// number shown as `4.50123E+17` refused with the same advice.
#[tokio::test]
async fn csv_saved_from_a_spreadsheet_reads_like_the_workbook() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs").to_string();
    let women = format!(
        "序号,记录编号,记录版本,操作,身份证号,行政区划代码,民族\n1,w-1,1,upsert,{},450123100201,汉族\n",
        id(1)
    );
    let (s, _, r) = h
        .post("/v1/ingest/women", &tok, "text/csv", women, &[])
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let text = format!(
        "记录编号,记录版本,操作,身份证号,措施,服务类型,服务日期,金额（元）\n\
         s-1,1,upsert,{},解困帮扶,临时救助,2024/11/7,\"1,200.00\"\n\
         s-2,1,upsert,4.50123E+17,M1,temporary_assistance,2024-11-07,5\n",
        id(1)
    );
    let (gb, _, _) = encoding_rs::GB18030.encode(&text);
    let (s, _, r) = h
        .post(
            "/v1/ingest/services?atomic=false",
            &tok,
            "text/csv; charset=gb18030",
            gb.to_vec(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["rows_accepted"].as_u64(), r["rows_rejected"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["errors"][0]["row"], 2, "{r}");
    assert!(
        r["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Excel stored the ID number"),
        "{r}"
    );
    let admin = h
        .tokens
        .create("csv-admin", &careledger_gateway::Role::Admin, None)
        .unwrap();
    let (s, _, b) = sql(
        &h,
        &admin,
        "SELECT measure, service_type, CAST(service_date AS VARCHAR), CAST(amount_yuan AS VARCHAR) FROM services",
        "json",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", json_of(&b));
    assert_eq!(
        json_of(&b)["rows"],
        serde_json::json!([["M1", "temporary_assistance", "2024-11-07", "1200.00"]])
    );
}
