//! Validation through HTTP, atomic and non-atomic batches, rejects, dry runs, source
//! ownership and region scope, group commit, and the raw ID's absence from every stored byte.

use std::collections::HashSet;

use arrow_array::{Array, StringArray};
use axum::body::Body;
use axum::http::StatusCode;
use careledger_gateway::Role;
use careledger_model::{ResidentId, Table};
use chrono::NaiveDate;
use serde_json::{Value, json};

use crate::{Harness, VILLAGE, assert_problem, id, ndjson, woman};

fn strings(batches: &[arrow_array::RecordBatch], col: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name(col).unwrap();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..c.len() {
            if !c.is_null(i) {
                out.push(c.value(i).to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn validation_errors_name_row_field_and_code_over_http() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs");
    let mut bad_check = id(3);
    let last = bad_check.pop().unwrap();
    bad_check.push(if last == '1' { '2' } else { '1' });
    let mut rows: Vec<Value> = (0..6).map(|n| woman(n, "civil_affairs")).collect();
    rows[1]["id_number"] = json!(bad_check);
    rows[2]["region_code"] = json!("450123999999");
    rows[3]["ethnicity"] = json!("77");
    rows[4]["record_version"] = json!("two");
    let cases = [
        (2, "id_number", "id_number.check_digit"),
        (3, "region_code", "region_code.unknown"),
        (4, "ethnicity", "ethnicity.unknown_code"),
        (5, "record_version", "record_version.not_integer"),
    ];
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
    let receipt = &r["receipt"];
    assert_eq!(receipt["rows_received"], 6);
    assert_eq!(receipt["rows_rejected"], 4);
    assert_eq!(receipt["error_count"], 4);
    for (row, field, code) in cases {
        let e = receipt["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["code"] == code)
            .unwrap_or_else(|| panic!("{code} missing: {receipt}"));
        assert_eq!(e["row"], row);
        assert_eq!(e["field"], field);
    }
    assert!(
        !r.to_string().contains(&bad_check),
        "errors show only the masked ID"
    );
    assert_eq!(h.count("women").await, 0, "atomic: nothing stored");
}

#[tokio::test]
async fn non_atomic_keeps_valid_rows_and_stores_rejects_with_the_id_masked() {
    let h = Harness::new().await;
    let mut rows: Vec<Value> = (0..3).map(|n| woman(n, "civil_affairs")).collect();
    rows[1]["region_code"] = json!("450123100000"); // a township, not a village
    let (s, _, r) = h
        .post(
            "/v1/ingest/women?atomic=false",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 2);
    assert_eq!(r["rows_rejected"], 1);
    assert_eq!(r["errors"][0]["code"], "region_code.level");
    assert!(r["table_version"].as_u64().is_some());
    assert_eq!(h.count("women").await, 2);

    let rejects = h.rows("rejects").await;
    assert_eq!(rejects.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let raw: Value = serde_json::from_str(&strings(&rejects, "raw")[0]).unwrap();
    let masked = raw["id_number"].as_str().unwrap();
    assert_eq!(masked, careledger_model::mask_id(&id(1)));
    assert!(!strings(&rejects, "raw")[0].contains(&id(1)));
    assert_eq!(strings(&rejects, "codes"), vec!["region_code.level"]);
    assert_eq!(
        strings(&rejects, "batch_id"),
        vec![r["batch_id"].as_str().unwrap().to_string()]
    );

    let batches = h.rows("batches").await;
    assert_eq!(
        strings(&batches, "batch_id"),
        vec![r["batch_id"].as_str().unwrap().to_string()]
    );
}

/// An unknown or malformed field, or an NDJSON line that is not an object, is its record's
/// row error: `atomic=false` stores the other rows, `atomic=true` refuses the batch naming the
/// row. A field name holding an ID number is masked in the message.
#[tokio::test]
async fn a_malformed_record_is_its_rows_error_not_the_bodys() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs").to_string();
    let key_id = id(900);
    let lines = [
        woman(1, "civil_affairs").to_string(),
        format!(
            "{{\"record_id\": \"w-2\", \"{key_id}\": 1, \"shoe_size\": 38, \"op\": \"upsert\"}}"
        ),
        "{\"record_id\": \"w-3\", \"op\": {\"a\": [1]}}".to_string(),
        "{\"record_id\": \"w-4\", oops".to_string(),
        "{\"record_id\": \"w-5\", \"op\": \"upsert\", \"op\": \"delete\"}".to_string(),
        woman(6, "civil_affairs").to_string(),
    ];
    let body = lines.join("\n") + "\n";
    let nd = "application/x-ndjson";

    // atomic=true: refused, the first bad row named.
    let (s, hd, r) = h
        .post("/v1/ingest/women", &tok, nd, body.clone(), &[])
        .await;
    assert_problem(&hd, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
    let detail = r["detail"].as_str().unwrap();
    assert!(detail.contains("4 of 6 rows are invalid"), "{detail}");
    assert!(detail.contains("row 2 (row.unknown_field)"), "{detail}");
    assert_eq!(h.count("women").await, 0);

    // atomic=false: the two good rows are stored, each bad one has its error.
    let (s, _, r) = h
        .post("/v1/ingest/women?atomic=false", &tok, nd, body, &[])
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_received"], 6, "{r}");
    assert_eq!(r["rows_accepted"], 2, "{r}");
    assert_eq!(r["rows_rejected"], 4, "{r}");
    let errors: Vec<(u64, String)> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (2, "row.unknown_field".to_string()),
            (3, "op.nested_value".to_string()),
            (4, "row.malformed_json".to_string()),
            (5, "op.duplicate_key".to_string()),
        ],
        "only the decoder's error for each bad row: {r}"
    );
    let text = r.to_string();
    assert!(text.contains("line 2: unknown field"), "{text}");
    assert!(
        !text.contains(&key_id),
        "the ID-like field name is masked: {text}"
    );
    assert!(text.contains(&careledger_model::mask_id(&key_id)), "{text}");
    assert_eq!(h.count("women").await, 2);
    let rejects = h.rows("rejects").await;
    assert_eq!(
        strings(&rejects, "codes"),
        vec![
            "row.unknown_field",
            "op.nested_value",
            "row.malformed_json",
            "op.duplicate_key"
        ]
    );
    // The known fields of the refused record are kept, the unknown ones are not.
    let raw: Value = serde_json::from_str(&strings(&rejects, "raw")[0]).unwrap();
    assert_eq!(raw, json!({"record_id": "w-2", "op": "upsert"}));

    // A JSON array goes on past a refused row too.
    let array = format!(
        "[{}, {{\"record_id\": \"w-8\", \"nickname\": \"x\"}}]",
        woman(7, "civil_affairs")
    );
    let (s, _, r) = h
        .post(
            "/v1/ingest/women?atomic=false",
            &tok,
            "application/json",
            array,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 1, "{r}");
    assert_eq!(r["errors"][0]["row"], 2, "{r}");
    assert_eq!(r["errors"][0]["code"], "row.unknown_field", "{r}");
}

#[tokio::test]
async fn dry_run_validates_and_stores_nothing() {
    let h = Harness::new().await;
    let before = h.version("women").await;
    let mut rows: Vec<Value> = (0..3).map(|n| woman(n, "civil_affairs")).collect();
    rows[2]["marital_status"] = json!("x");
    let (s, _, r) = h
        .post(
            "/v1/ingest/women?dry_run=true",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["rows_accepted"], 2);
    assert_eq!(r["rows_rejected"], 1);
    assert!(r["table_version"].is_null());
    assert_eq!(h.version("women").await, before);
    assert_eq!(h.count("women").await, 0);
    assert_eq!(h.count("batches").await, 0);
}

#[tokio::test]
async fn a_source_writes_only_its_own_records() {
    let h = Harness::new().await;
    let rows = vec![woman(1, "civil_affairs")];
    // The health department's token naming civil affairs as source.
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("health"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
    assert_eq!(r["receipt"]["errors"][0]["code"], "source.not_token_source");
    // Without a source field, rows are stored under the token's source.
    let mut row = woman(2, "x");
    row.as_object_mut().unwrap().remove("source");
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("health"),
            "application/x-ndjson",
            ndjson(&[row]),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(strings(&h.rows("women").await, "source"), vec!["health"]);
    // Non-source tokens cannot push at all; unknown tokens are 401.
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("analyst"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::FORBIDDEN, s);
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            "cl_not_a_token",
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNAUTHORIZED, s);
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            "",
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNAUTHORIZED, s);
    h.tokens.revoke("health").unwrap();
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("health"),
            "application/x-ndjson",
            ndjson(&rows),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNAUTHORIZED, s);
    assert!(r["detail"].as_str().unwrap().contains("revoked"));
}

#[tokio::test]
async fn concurrent_senders_are_group_committed_and_every_row_lands_once() {
    let h = Harness::with_config(careledger_gateway::GatewayConfig {
        commit: careledger_gateway::CommitConfig {
            window: std::time::Duration::from_millis(150),
            max_rows: 1_000_000,
            receipt_cache: careledger_gateway::commit::RECEIPT_CACHE,
        },
        ..Default::default()
    })
    .await;
    let before = h.version("services").await;
    let senders = 32u32;
    let per = 50u32;
    let mut tasks = Vec::new();
    for s in 0..senders {
        let app = h.app.clone();
        let tok = h.tok("health").to_string();
        tasks.push(tokio::spawn(async move {
            let rows: Vec<Value> = (0..per)
                .map(|i| {
                    let n = s * per + i;
                    json!({"record_id": format!("s-{n}"), "record_version": 1, "op": "upsert", "id_number": id(n),
                           "measure": "M3", "service_type": "two_cancers_screening", "service_date": "2024-04-01"})
                })
                .collect();
            let key = format!("k-{s}");
            crate::post_to(&app, "/v1/ingest/services", &tok, "application/x-ndjson", ndjson(&rows), &[("idempotency-key", &key)]).await
        }));
    }
    let mut versions = HashSet::new();
    for t in tasks {
        let (s, _, r) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["rows_accepted"], per);
        versions.insert(r["table_version"].as_u64().unwrap());
    }
    let commits = h.version("services").await - before;
    assert!(
        commits < u64::from(senders),
        "group commit: {commits} commits for {senders} requests"
    );
    assert_eq!(
        commits as usize,
        versions.len(),
        "every receipt names one of the commits"
    );
    let ids = strings(&h.rows("services").await, "record_id");
    assert_eq!(ids.len(), (senders * per) as usize);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no row twice"
    );
    println!("group commit: {senders} requests in {commits} commits");
}

/// A valid row of `table` for the woman with ID number `id_number`.
fn row_of(table: Table, n: u32, id_number: &str) -> Value {
    let mut row = json!({"source": "civil_affairs", "record_id": format!("{table}-{n}"),
                         "record_version": 1, "op": "upsert", "id_number": id_number});
    let extra = match table {
        Table::Women => {
            json!({"region_code": VILLAGE, "ethnicity": "08", "marital_status": "20", "education": "70", "children_under_16": 2, "elderly_dependants": 1})
        }
        Table::LifeEvents => {
            json!({"event_type": "spouse_departed", "event_date": "2024-02-20", "destination": "out_of_province", "work_type": "labour", "region_code": VILLAGE})
        }
        Table::GroupFlags => {
            json!({"group": "disabled", "valid_from": "2023-01-01", "valid_to": "2026-12-31", "detail": "3"})
        }
        Table::Services => {
            json!({"measure": "M1", "service_type": "dibao_enrolment", "service_date": "2024-03-01", "amount_yuan": "450.50", "quantity": 1, "region_code": VILLAGE, "provider_unit": "那桐镇民政所"})
        }
        Table::Registrations => {
            json!({"action": "registered", "effective_date": "2024-09-01", "region_code": VILLAGE, "reason": "摸底排查"})
        }
    };
    row.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    row
}

/// The ways a clerk's system may write an ID number into a field.
fn id_forms(id: &str) -> Vec<String> {
    let full_width: String = id
        .chars()
        .map(|c| match c {
            '0'..='9' => char::from_u32(u32::from(c) - u32::from('0') + u32::from('０')).unwrap(),
            c => c,
        })
        .collect();
    vec![
        id.to_string(),
        format!(
            "{} {} {} {} {}",
            &id[..4],
            &id[4..8],
            &id[8..12],
            &id[12..16],
            &id[16..]
        ),
        format!("{}-{}-{}", &id[..6], &id[6..14], &id[14..]),
        format!("身份证{id}号"),
        full_width,
        format!("{},{},{}", &id[..6], &id[6..9], &id[9..]),
        format!("{}\u{200B}{}", &id[..9], &id[9..]),
        format!("{}{id}", "y".repeat(50)),
    ]
}

/// Full-width digits read as ASCII, and the separators an ID may be written with dropped.
fn normalised(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '０'..='９' => char::from_u32(u32::from(c) - u32::from('０') + u32::from('0')),
            ' ' | '-' | '.' | '/' | '_' | ',' | '\t' | '\u{3000}' | '\u{200B}' => None,
            c => Some(c),
        })
        .collect()
}

/// Every string in `array`, nested ones (structs, lists, maps: a checkpoint's `add.stats`) too.
fn all_strings(array: &dyn Array, out: &mut Vec<String>) {
    use arrow_array::cast::AsArray;
    use arrow_schema::DataType;
    match array.data_type() {
        DataType::Utf8 => out.extend(array.as_string::<i32>().iter().flatten().map(String::from)),
        DataType::LargeUtf8 => {
            out.extend(array.as_string::<i64>().iter().flatten().map(String::from))
        }
        DataType::Utf8View => out.extend(array.as_string_view().iter().flatten().map(String::from)),
        DataType::Binary => out.extend(
            array
                .as_binary::<i32>()
                .iter()
                .flatten()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        ),
        DataType::LargeBinary => out.extend(
            array
                .as_binary::<i64>()
                .iter()
                .flatten()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        ),
        DataType::Struct(_) => {
            for c in array.as_struct().columns() {
                all_strings(c.as_ref(), out);
            }
        }
        DataType::List(_) => all_strings(array.as_list::<i32>().values().as_ref(), out),
        DataType::LargeList(_) => all_strings(array.as_list::<i64>().values().as_ref(), out),
        DataType::Map(_, _) => {
            let m = array.as_map();
            all_strings(m.keys().as_ref(), out);
            all_strings(m.values().as_ref(), out);
        }
        DataType::Dictionary(_, _) => all_strings(array.as_any_dictionary().values().as_ref(), out),
        _ => {}
    }
}

/// No ID of `ids`, nor any 10 consecutive characters of one (the hidden birth date plus a digit
/// on either side), in `text` (normalised).
fn assert_no_id(ids: &[String], text: &str, what: &dyn std::fmt::Display) {
    let text = normalised(text);
    for id in ids {
        for w in 0..=id.len() - 10 {
            let piece = &id[w..w + 10];
            if let Some(at) = text.find(piece) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(40)
                    .map_or(0, |(i, _)| i);
                let context: String = text[from..].chars().take(100).collect();
                panic!("{what} holds {piece} of ID {id}: …{context}…");
            }
        }
    }
}

/// IDs pushed into every field of every table, rejected in every way a row can be (bad code,
/// region, date, check digit, birth date, source, scope, free text, too long; atomic and not,
/// dry runs; NDJSON and CSV), in an idempotency key and in SQL: afterwards neither the bytes of
/// any file under the store (Delta logs with their column statistics, checkpoints) nor any
/// decoded string of any Parquet file (nested ones too) holds an ID or 10 digits of one.
#[tokio::test]
async fn the_raw_id_number_appears_in_no_stored_file() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs").to_string();
    let scoped = h
        .tokens
        .create(
            "county-registry",
            &Role::Source("civil_affairs".into()),
            Some("450123"),
        )
        .unwrap();
    let mut sent: Vec<String> = Vec::new();
    let next = std::cell::Cell::new(100u32);
    let fresh = |sent: &mut Vec<String>| {
        next.set(next.get() + 1);
        let i = id(next.get());
        sent.push(i.clone());
        i
    };

    // Valid rows (their IDs pseudonymised) and their stored statistics.
    let rows: Vec<Value> = (0..20).map(|n| woman(n, "civil_affairs")).collect();
    sent.extend((0..20).map(id));
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            &tok,
            "application/x-ndjson",
            ndjson(&rows),
            &[("idempotency-key", "scan-1")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");

    for (t, table) in Table::ALL.into_iter().enumerate() {
        let path = format!("/v1/ingest/{table}");
        let spec = table.spec();
        let mut batch: Vec<Value> = Vec::new();
        let good = fresh(&mut sent);
        batch.push(row_of(table, 0, &good));
        // Every field the ID, in every form.
        for form in id_forms(&fresh(&mut sent)) {
            let mut row = row_of(table, 1, &good);
            for f in &spec.fields {
                row[f.name.as_str()] = json!(form);
            }
            batch.push(row);
        }
        // One field at a time, in every form.
        for f in spec.fields.iter().filter(|f| f.name != "id_number") {
            for form in id_forms(&fresh(&mut sent)) {
                let mut row = row_of(table, 2, &good);
                row[f.name.as_str()] = json!(form);
                batch.push(row);
            }
        }
        // The ID number itself: a wrong check digit, a birth date that is no date, a man.
        let mut bad_check = fresh(&mut sent);
        let last = bad_check.pop().unwrap();
        bad_check.push(if last == '1' { '2' } else { '1' });
        sent.push(bad_check.clone());
        let birth = ["19851301", "19700230", "20991231", "18990101", "19881500"][t];
        let first17 = format!("450123{birth}024");
        let bad_birth = format!(
            "{first17}{}",
            careledger_model::resident_id::check_char(first17.as_bytes())
        );
        sent.push(bad_birth.clone());
        let man =
            ResidentId::synthesize("450123", NaiveDate::from_ymd_opt(1972, 3, 4).unwrap(), 11)
                .as_str()
                .to_string();
        sent.push(man.clone());
        for bad in [&bad_check, &bad_birth, &man] {
            batch.push(row_of(table, 3, bad));
            // Its digits spread over free text and codes as well.
            let mut row = row_of(table, 4, bad);
            row["record_id"] = json!(format!("r {bad}"));
            batch.push(row);
        }
        // Too long, with the ID at the end; and a huge value, cut in the rejects.
        let mut row = row_of(table, 5, &good);
        row["record_id"] = json!(format!("{}{}", "x".repeat(70), fresh(&mut sent)));
        batch.push(row);
        let mut row = row_of(table, 6, &good);
        row["record_id"] = json!(format!("{}{}", "z".repeat(1 << 20), fresh(&mut sent)));
        batch.push(row);

        for (query, expect) in [
            ("", StatusCode::UNPROCESSABLE_ENTITY),
            ("?dry_run=true", StatusCode::OK),
            ("?atomic=false&dry_run=true", StatusCode::OK),
            ("?atomic=false", StatusCode::OK),
        ] {
            let (s, _, r) = h
                .post(
                    &format!("{path}{query}"),
                    &tok,
                    "application/x-ndjson",
                    ndjson(&batch),
                    &[],
                )
                .await;
            assert_eq!(s, expect, "{table}{query}: {r}");
            assert_no_id(
                &sent,
                &r.to_string(),
                &format!("the reply to {table}{query}"),
            );
        }
        // A scoped source's rows outside its scope.
        let mut outside = row_of(table, 7, &fresh(&mut sent));
        if spec.field("region_code").is_some() {
            outside["region_code"] = json!("450422100001");
        }
        outside["record_id"] = json!(format!("s-{}", fresh(&mut sent)));
        let (s, _, r) = h
            .post(
                &format!("{path}?atomic=false"),
                &scoped,
                "application/x-ndjson",
                ndjson(&[outside]),
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["rows_rejected"], 1, "{r}");
    }

    // CSV, with the ID in a free-text field and as a code.
    let csv_id = fresh(&mut sent);
    let csv = format!(
        "record_id,record_version,op,id_number,region_code,ethnicity\nc-1,1,upsert,{csv_id},{VILLAGE},{csv_id}\n\"c {csv_id}\",1,upsert,{csv_id},{VILLAGE},08\n"
    );
    let (s, _, r) = h
        .post("/v1/ingest/women?atomic=false", &tok, "text/csv", csv, &[])
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_rejected"], 2, "{r}");
    // An unknown field (its value an ID, its name another) refuses its record: the row error
    // names neither, and the record's rejects row keeps its known fields only, masked.
    let unknown = fresh(&mut sent);
    let unknown_key = fresh(&mut sent);
    let mut row = woman(500, "civil_affairs");
    row["nickname"] = json!(unknown);
    row[unknown_key.as_str()] = json!("x");
    sent.push(id(500));
    let (s, _, r) = h
        .post(
            "/v1/ingest/women?atomic=false",
            &tok,
            "application/x-ndjson",
            ndjson(&[row]),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_rejected"], 1, "{r}");
    assert_eq!(r["errors"][0]["code"], "row.unknown_field", "{r}");
    // An idempotency key holding an ID: stored masked, and still answers a retry.
    let key = format!("push-{}-1", fresh(&mut sent));
    let rows = vec![woman(600, "civil_affairs")];
    sent.push(id(600));
    for duplicate in [false, true] {
        let (s, _, r) = h
            .post(
                "/v1/ingest/women",
                &tok,
                "application/x-ndjson",
                ndjson(&rows),
                &[("idempotency-key", &key)],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["duplicate"], duplicate, "{r}");
    }
    // An analyst looking a woman up by her ID number: the audit keeps the query masked.
    let looked_up = fresh(&mut sent);
    let (s, _, r) = h
        .post(
            "/v1/sql",
            h.tok("analyst"),
            "application/json",
            json!({"sql": format!("SELECT count(*) AS n FROM women WHERE record_id = '{looked_up}'")})
                .to_string(),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");

    // Everything written (the audit too), then a checkpoint of every table: the column
    // statistics land in Parquet as well.
    h.state.drain().await;
    for (name, _) in careledger_store::all_tables() {
        h.state.store.checkpoint(name).await.unwrap();
    }

    let rejects = h.rows("rejects").await;
    let raws = strings(&rejects, "raw");
    assert!(
        raws.len() > 100,
        "rejected rows were stored ({})",
        raws.len()
    );
    assert!(
        raws.iter().all(|r| r.len() < 16 * 1024),
        "every raw value is cut: {}",
        raws.iter().map(String::len).max().unwrap()
    );
    assert!(
        raws.iter()
            .any(|r| r.contains(&format!("…[cut: {} characters in all]", (1 << 20) + 18))),
        "the 1 MiB record ID (and its ID) is cut, its length noted"
    );
    assert!(
        strings(&rejects, "messages")
            .iter()
            .all(|m| m.chars().count() <= 8 * careledger_model::MAX_MESSAGE_CHARS + 40)
    );
    let codes = strings(&rejects, "codes").join(",");
    for code in [
        "id_number.check_digit",
        "id_number.birth_date",
        "id_number.not_female",
        "region_code.format",
        "region_code.out_of_scope",
        "ethnicity.unknown_code",
        "event_date.invalid_date",
        "source.not_token_source",
        "source.out_of_scope",
        "record_id.personal_id",
        "record_version.personal_id",
        "provider_unit.personal_id",
        "reason.personal_id",
        "detail.personal_id",
        "amount_yuan.not_decimal",
    ] {
        assert!(codes.contains(code), "a row was refused with {code}");
    }
    assert!(h.count("batches").await >= 6);

    let mut files = 0;
    let mut parquet_files = 0;
    let mut checkpoints = 0;
    for entry in walk(h.dir.path()) {
        files += 1;
        let bytes = std::fs::read(&entry).unwrap();
        assert_no_id(&sent, &String::from_utf8_lossy(&bytes), &entry.display());
        if entry.extension().is_some_and(|e| e == "parquet") {
            parquet_files += 1;
            checkpoints += usize::from(entry.to_string_lossy().contains("checkpoint"));
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&entry).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap();
            for b in reader {
                let b = b.unwrap();
                let mut values = Vec::new();
                for col in b.columns() {
                    all_strings(col.as_ref(), &mut values);
                }
                for v in values {
                    assert_no_id(&sent, &v, &format!("a value in {}", entry.display()));
                }
            }
        }
    }
    assert!(
        checkpoints >= 8 && parquet_files >= 16,
        "tables, rejects, batches, audit and checkpoints were scanned ({files} files, {parquet_files} Parquet, {checkpoints} checkpoints)"
    );
}

/// An idempotency key holding an ID is stored masked; after a restart, another key with the
/// same mask is not taken for it (it is stored), and the first key's retry is still refused
/// as a duplicate.
#[tokio::test]
async fn a_masked_idempotency_key_is_never_taken_for_another() {
    let h = Harness::new().await;
    let a = id(1);
    // Another ID with the same first 6 and last 4 characters: the same mask.
    let b = (2..20_000)
        .map(id)
        .find(|b| b[..6] == a[..6] && b[14..] == a[14..] && *b != a)
        .unwrap();
    let key = |i: &str| format!("push-{i}-1");
    let tok = h.tok("civil_affairs");
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            tok,
            "application/x-ndjson",
            ndjson(&[woman(1, "civil_affairs")]),
            &[("idempotency-key", &key(&a))],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        r["idempotency_key"],
        key(&a),
        "the sender gets its key back"
    );
    let stored = strings(&h.rows("batches").await, "idempotency_key");
    assert_eq!(
        stored,
        vec![format!("push-{}-1", careledger_model::mask_id(&a))]
    );

    let (_state, app) = h.reopen().await;
    let (s, _, r) = crate::post_to(
        &app,
        "/v1/ingest/women",
        tok,
        "application/x-ndjson",
        ndjson(&[woman(2, "civil_affairs")]),
        &[("idempotency-key", &key(&b))],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["duplicate"], false, "{r}");
    assert_eq!(r["rows_accepted"], 1, "{r}");
    let (s, _, r) = crate::post_to(
        &app,
        "/v1/ingest/women",
        tok,
        "application/x-ndjson",
        ndjson(&[woman(1, "civil_affairs")]),
        &[("idempotency-key", &key(&a))],
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert_eq!(r["duplicate"], true, "{r}");
    assert_eq!(h.count("women").await, 2);
}

/// A source token scoped to a county writes only rows of that county, and retracts only
/// records it names inside it.
#[tokio::test]
async fn a_scoped_source_token_writes_only_inside_its_scope() {
    let h = Harness::new().await;
    let scoped = h
        .tokens
        .create(
            "county-registry",
            &Role::Source("civil_affairs".into()),
            Some("450123"),
        )
        .unwrap();
    // A woman of 藤县 (450422): refused, nothing stored.
    let mut row = woman(1, "civil_affairs");
    row["region_code"] = json!("450422100001");
    let (s, headers, r) = h
        .post(
            "/v1/ingest/women",
            &scoped,
            "application/x-ndjson",
            ndjson(&[row.clone()]),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
    assert_eq!(
        r["receipt"]["errors"][0]["code"], "region_code.out_of_scope",
        "{r}"
    );
    let (s, _, r) = h
        .post(
            "/v1/ingest/women?atomic=false",
            &scoped,
            "application/x-ndjson",
            ndjson(&[row]),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 0);
    assert_eq!(h.count("women").await, 0);
    // Inside its county: stored.
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            &scoped,
            "application/x-ndjson",
            ndjson(&[woman(2, "civil_affairs")]),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(h.count("women").await, 1);

    // The unscoped token stores a woman of 灵川县 (450323); the scoped one cannot retract her,
    // naming her region or not.
    let mut other = woman(3, "civil_affairs");
    other["region_code"] = json!("450323100211");
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&[other]),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let retract = json!({"record_id": "w-3", "record_version": 2, "op": "delete"});
    let mut named = retract.clone();
    named["region_code"] = json!("450323100211");
    for (body, code) in [
        (retract, "region_code.required"),
        (named, "region_code.out_of_scope"),
    ] {
        let (s, headers, r) = h
            .post(
                "/v1/ingest/women",
                &scoped,
                "application/x-ndjson",
                ndjson(&[body]),
                &[],
            )
            .await;
        assert_problem(&headers, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
        assert_eq!(r["receipt"]["errors"][0]["code"], code, "{r}");
    }
    // Flags carry no region: a scoped source cannot place them.
    let flag = json!({"record_id": "f-1", "record_version": 1, "op": "upsert", "id_number": id(2),
                      "group": "seriously_ill", "valid_from": "2024-01-01"});
    let (s, headers, r) = h
        .post(
            "/v1/ingest/group_flags",
            &scoped,
            "application/x-ndjson",
            ndjson(&[flag]),
            &[],
        )
        .await;
    assert_problem(&headers, &r, StatusCode::UNPROCESSABLE_ENTITY, s);
    assert_eq!(r["receipt"]["errors"][0]["code"], "source.out_of_scope");
    assert_eq!(h.count("women").await, 2);
    assert_eq!(h.count("group_flags").await, 0);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Bodies in flight are bounded: while one sender's body holds the whole ingest budget, another
/// body waits at most a second and gets 503 with Retry-After, having stored nothing; once the
/// first is answered, the retry goes through.
#[tokio::test]
async fn bodies_past_the_ingest_budget_get_503_with_retry_after() {
    let h = Harness::with_config(careledger_gateway::GatewayConfig {
        ingest_budget_bytes: 64 * 1024,
        ..careledger_gateway::GatewayConfig::default()
    })
    .await;
    // A body with no Content-Length reserves the whole budget (it could be as large) and is
    // held open by its sender.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let app = h.app.clone();
    let civil = h.tok("civil_affairs").to_string();
    let held = tokio::spawn(async move {
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/v1/ingest/women")
            .header("authorization", format!("Bearer {civil}"))
            .header("content-type", "application/x-ndjson")
            .body(Body::from_stream(stream))
            .unwrap();
        let resp = tower::ServiceExt::oneshot(app, req).await.unwrap();
        resp.status()
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let health = h.tok("health").to_string();
    let body = ndjson(&[woman(2, "health")]);
    let started = std::time::Instant::now();
    let (s, headers, v) = h
        .post(
            "/v1/ingest/women",
            &health,
            "application/x-ndjson",
            body.clone(),
            &[("idempotency-key", "k-2")],
        )
        .await;
    assert_problem(&headers, &v, StatusCode::SERVICE_UNAVAILABLE, s);
    assert_eq!(headers["retry-after"], "1");
    assert!(v["type"].as_str().unwrap().ends_with("ingest-busy"), "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));

    // The first sender finishes: its batch is stored, and the budget is free again.
    tx.send(Ok(bytes::Bytes::from(ndjson(&[woman(1, "civil_affairs")]))))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    assert_eq!(h.count("women").await, 1, "the refused body stored nothing");
    let (s, _, v) = h
        .post(
            "/v1/ingest/women",
            &health,
            "application/x-ndjson",
            body,
            &[("idempotency-key", "k-2")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows_accepted"], 1, "{v}");
    assert_eq!(h.count("women").await, 2);
}
