//! The decoders on good and hostile bodies, against the real table wire schemas.

use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use careledger_decode::{BodyFormat, DECODE_BATCH_ROWS, DecodeErrorKind, decode};
use careledger_model::Table;

const MAX: usize = 1_000_000;

fn wire() -> SchemaRef {
    Table::Women.spec().wire_schema()
}

fn ok(format: BodyFormat, body: &[u8]) -> Vec<RecordBatch> {
    decode(format, body, &wire(), MAX)
        .unwrap_or_else(|e| panic!("{format:?} {:?}: {e}", String::from_utf8_lossy(body)))
}

/// The refusal's detail, checked to be `Malformed` unless told otherwise.
fn refused(format: BodyFormat, body: &[u8]) -> String {
    let e = decode(format, body, &wire(), MAX).expect_err("refused");
    assert_eq!(e.kind, DecodeErrorKind::Malformed, "{e}");
    e.detail
}

fn col(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name(name).unwrap();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..c.len() {
            out.push((!c.is_null(i)).then(|| c.value(i).to_string()));
        }
    }
    out
}

const JSON: BodyFormat = BodyFormat::JsonArray;
const NDJSON: BodyFormat = BodyFormat::Ndjson;
const CSV: BodyFormat = BodyFormat::Csv { gb18030: false };
const GB: BodyFormat = BodyFormat::Csv { gb18030: true };

#[test]
fn values_keep_their_text_in_both_json_formats() {
    let rows = [
        r#"{"record_id": "a\"b\u00e9\n", "record_version": 1.50, "op": true, "region_code": null}"#,
        r#"{"record_id": "中文", "record_version": -12e3, "op": false}"#,
    ];
    let array = format!("\u{feff}[{}]", rows.join(",\n"));
    let lines = format!("{}\r\n\n  \n{}", rows[0], rows[1]);
    for (format, body) in [(JSON, array), (NDJSON, lines)] {
        let b = ok(format, body.as_bytes());
        assert_eq!(b.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
        assert_eq!(
            col(&b, "record_id"),
            vec![Some("a\"bé\n".into()), Some("中文".into())]
        );
        assert_eq!(
            col(&b, "record_version"),
            vec![Some("1.50".into()), Some("-12e3".into())],
            "numbers as sent"
        );
        assert_eq!(
            col(&b, "op"),
            vec![Some("true".into()), Some("false".into())]
        );
        assert_eq!(col(&b, "region_code"), vec![None, None]);
        assert_eq!(b[0].schema(), wire());
    }
}

#[test]
fn rows_are_cut_into_batches() {
    let n = DECODE_BATCH_ROWS * 2 + 5;
    let body: String = (0..n)
        .map(|i| format!("{{\"record_id\":\"r{i}\"}}\n"))
        .collect();
    let b = ok(NDJSON, body.as_bytes());
    let sizes: Vec<usize> = b.iter().map(RecordBatch::num_rows).collect();
    assert_eq!(sizes, vec![DECODE_BATCH_ROWS, DECODE_BATCH_ROWS, 5]);
    assert_eq!(col(&b, "record_id")[n - 1].as_deref(), Some("r16388"));
}

#[test]
fn json_refusals_name_the_problem_and_the_place() {
    let cases: &[(BodyFormat, &str, &[&str])] = &[
        (JSON, r#"{"record_id": "x"}"#, &["JSON array"]),
        (
            JSON,
            "[{\"record_id\": \"x\"},\n {\"record_id\": }]",
            &["line 2"],
        ),
        (
            JSON,
            r#"[{"record_id": "x"}, 3]"#,
            &["array element 2 is not an object"],
        ),
        (JSON, r#"[{"record_id": "x"}"#, &["invalid JSON", "EOF"]),
        (JSON, r#"[{"record_id": "x"}] trailing"#, &["trailing"]),
        (
            JSON,
            r#"[{"shoe_size": 38}]"#,
            &["row 1", "unknown field \"shoe_size\"", "record_id"],
        ),
        (
            JSON,
            r#"[{}, {"record_id": "a", "record_id": "b"}]"#,
            &["row 2", "\"record_id\" appears twice", "duplicate"],
        ),
        (
            JSON,
            r#"[{"record_id": {"a": 1}}]"#,
            &["row 1", "\"record_id\"", "not an object or array"],
        ),
        (
            JSON,
            r#"[{"record_id": "a\u0000b"}]"#,
            &["NUL", "record_id"],
        ),
        (
            JSON,
            r#"[{"record_id": "\ud800"}]"#,
            &["field \"record_id\" is not a valid JSON string"],
        ),
        (
            NDJSON,
            "{\"record_id\": \"x\"}\n{\"record_id\": \"x\"\n",
            &["line 2", "EOF", "one whole JSON object"],
        ),
        (
            NDJSON,
            "{\"record_id\": \"x\"}\n[1]\n",
            &["line 2: each line must be one JSON object"],
        ),
        (NDJSON, "{\"nickname\": \"x\"}\n", &["line 1", "nickname"]),
        (
            NDJSON,
            "{\"op\": \"a\", \"op\": \"a\"}\n",
            &["line 1", "\"op\" appears twice"],
        ),
        (
            NDJSON,
            "{\"op\": [1, 2]}\n",
            &["line 1", "\"op\"", "not an object or array"],
        ),
        (
            NDJSON,
            "{\"op\": \"a\"} {\"op\": \"b\"}\n",
            &["line 1", "trailing"],
        ),
        (NDJSON, "{\"op\": tru}\n", &["line 1", "invalid JSON"]),
    ];
    for (format, body, needles) in cases {
        let detail = refused(*format, body.as_bytes());
        for needle in *needles {
            assert!(
                detail.contains(needle),
                "{body:?}: {detail:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn nesting_of_any_depth_is_refused_without_recursion() {
    let deep = 1_000_000;
    let body = "[".repeat(deep);
    assert!(refused(JSON, body.as_bytes()).contains("array element 1 is not an object"));
    let body = format!(
        "[{{\"record_id\": {}{}}}]",
        "[".repeat(deep),
        "]".repeat(deep)
    );
    assert!(refused(JSON, body.as_bytes()).contains("not an object or array"));
    let body = format!("{{\"record_id\": {}}}\n", "{\"a\":".repeat(deep));
    let detail = refused(NDJSON, body.as_bytes());
    assert!(detail.contains("line 1"), "{detail}");
    let body = "[".repeat(deep);
    assert!(refused(NDJSON, body.as_bytes()).contains("line 1"));
}

#[test]
fn text_encoding_problems_are_refused() {
    // Invalid UTF-8 inside a JSON string, and outside one.
    let d = refused(JSON, b"[{\"record_id\": \"\xff\xfe\"}]");
    assert!(d.contains("invalid JSON") && d.contains("unicode"), "{d}");
    let d = refused(NDJSON, b"{\"record_id\": \"\xc3\"}\n");
    assert!(d.contains("line 1"), "{d}");
    let d = refused(CSV, b"record_id\n\xff\xfe\n");
    assert!(
        d.contains("not valid UTF-8") && d.contains("gb18030"),
        "{d}"
    );
    // 0xFF is no GB18030 byte; a four-byte sequence cut short is none either.
    let d = refused(GB, b"record_id\n\xff\n");
    assert!(d.contains("GB18030"), "{d}");
    let d = refused(GB, b"record_id\nab\x81\x30\n");
    assert!(d.contains("GB18030"), "{d}");
    // NUL bytes, in every format; UTF-16 gets a hint.
    for format in [JSON, NDJSON, CSV, GB] {
        let d = refused(format, b"record_id\nab\0c\n");
        assert!(d.contains("NUL byte at byte offset 12"), "{d}");
    }
    let utf16: Vec<u8> = "record_id\nx\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert!(refused(CSV, &utf16).contains("UTF-16"));
}

#[test]
fn boms_are_accepted() {
    let b = ok(JSON, "\u{feff}[{\"record_id\": \"a\"}]".as_bytes());
    assert_eq!(col(&b, "record_id"), vec![Some("a".into())]);
    let b = ok(NDJSON, "\u{feff}{\"record_id\": \"a\"}\n".as_bytes());
    assert_eq!(col(&b, "record_id"), vec![Some("a".into())]);
    let b = ok(CSV, "\u{feff}record_id,op\na,upsert\n".as_bytes());
    assert_eq!(col(&b, "op"), vec![Some("upsert".into())]);
    // A UTF-8 BOM in a body declared GB18030: the BOM wins.
    let b = ok(GB, "\u{feff}record_id,op\n中文,upsert\n".as_bytes());
    assert_eq!(col(&b, "record_id"), vec![Some("中文".into())]);
    let (gb, _, _) = encoding_rs::GB18030.encode("record_id\n摸底\n");
    let b = decode(GB, &gb, &Table::Registrations.spec().wire_schema(), MAX).unwrap();
    assert_eq!(col(&b, "record_id"), vec![Some("摸底".into())]);
}

#[test]
fn csv_refusals_name_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("", "header"),
        ("\n\nrecord_id\n", "header"),
        ("record_id,favourite_colour\nx,red\n", "favourite_colour"),
        ("record_id,record_id\nx,y\n", "twice"),
        ("record_id,op\nx,upsert,extra\n", "invalid CSV"),
        ("record_id,op\nx\n", "invalid CSV"),
    ];
    for (body, needle) in cases {
        let d = refused(CSV, body.as_bytes());
        assert!(d.contains(needle), "{body:?}: {d:?} lacks {needle:?}");
    }
    // Millions of header columns are counted, not split.
    let header = ",".repeat(5_000_000);
    let d = refused(CSV, format!("record_id{header}\nx\n").as_bytes());
    assert!(d.contains("5000001 columns"), "{d}");
    // A header alone is no rows, not an error.
    assert!(ok(CSV, b"record_id,op\n").is_empty());
}

#[test]
fn more_rows_than_allowed_are_refused_in_every_format() {
    let wire = wire();
    let json: String = format!("[{}]", ["{}"; 11].join(","));
    let ndjson = "{}\n".repeat(11);
    let csv = format!("record_id\n{}", "x\n".repeat(11));
    for (format, body) in [(JSON, json), (NDJSON, ndjson), (CSV, csv)] {
        let e = decode(format, body.as_bytes(), &wire, 10).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::TooManyRows, "{format:?}: {e}");
        assert!(e.detail.contains("more than 10 rows"), "{e}");
        let b = decode(format, body.as_bytes(), &wire, 11).unwrap();
        assert_eq!(b.iter().map(RecordBatch::num_rows).sum::<usize>(), 11);
    }
}

#[test]
fn a_ten_megabyte_string_is_one_value() {
    let big = "x".repeat(10 << 20);
    let body = format!("[{{\"record_id\": \"{big}\"}}]");
    let b = ok(JSON, body.as_bytes());
    assert_eq!(
        col(&b, "record_id")[0].as_ref().map(String::len),
        Some(10 << 20)
    );
    // Unknown keys are echoed shortened.
    let body = format!("[{{\"{big}\": 1}}]");
    let d = refused(JSON, body.as_bytes());
    assert!(d.len() < 2000 && d.contains("unknown field"), "{}", d.len());
}

#[test]
fn content_types() {
    let f = |v: &str| BodyFormat::from_content_type(Some(v));
    assert_eq!(f("application/json; charset=utf-8"), Ok(JSON));
    assert_eq!(f("Application/X-NDJSON"), Ok(NDJSON));
    assert_eq!(f("text/csv"), Ok(CSV));
    assert_eq!(f("text/csv; charset=\"GBK\""), Ok(GB));
    let e = f("text/csv; charset=latin1").unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::UnsupportedCharset);
    assert!(e.detail.contains("latin1"));
    let e = f("application/xml").unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::UnsupportedMediaType);
    assert!(e.detail.contains("application/xml"));
    let e = BodyFormat::from_content_type(None).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::UnsupportedMediaType);
    assert_eq!(e.to_string(), e.detail);
}

#[test]
fn refused_records_keep_their_row_and_the_fields_that_were_read() {
    use careledger_decode::decode_records;
    let body = "{\"record_id\": \"a\"}\n\n{\"record_id\": \"b\", \"nickname\": 1, \"op\": \"upsert\"}\n{\"record_id\": \"c\", \"op\": [1]}\n{\"record_id\": \"d\", oops\n7\n{\"record_id\": \"e\"} {}\n{\"record_id\": \"f\"}\n";
    let d = decode_records(NDJSON, body.as_bytes(), &wire(), MAX).unwrap();
    assert_eq!(
        col(&d.batches, "record_id"),
        ["a", "b", "c", "d", "", "e", "f"]
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .to_vec()
    );
    assert_eq!(col(&d.batches, "op")[1].as_deref(), Some("upsert"));
    let got: Vec<(usize, &str, &str)> = d
        .faults
        .iter()
        .map(|f| (f.row, f.code.as_str(), f.message.split(':').next().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "row.unknown_field", "line 3"),
            (3, "op.nested_value", "line 4"),
            (4, "row.malformed_json", "invalid JSON at line 5, column 20"),
            (5, "row.not_object", "line 6"),
            (6, "row.malformed_json", "invalid JSON at line 7, column 20"),
        ]
    );
    // `decode` refuses the body at the first of them.
    assert!(refused(NDJSON, body.as_bytes()).starts_with("line 3: unknown field"));
    // A JSON array goes on past a refused object too.
    let d = decode_records(
        JSON,
        br#"[{"x": 1, "record_id": "a"}, {"record_id": "b"}]"#,
        &wire(),
        MAX,
    )
    .unwrap();
    assert_eq!(
        col(&d.batches, "record_id"),
        vec![Some("a".into()), Some("b".into())]
    );
    assert_eq!(d.faults.len(), 1);
    assert_eq!((d.faults[0].row, d.faults[0].field.as_str()), (1, ""));
    assert!(
        d.faults[0]
            .message
            .starts_with("row 1: unknown field \"x\"")
    );
}
