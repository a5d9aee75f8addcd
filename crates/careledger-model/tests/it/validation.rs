//! Every validation code, with a valid and an invalid example each, decoded from JSON into the
//! wire schema as the gateway does.

use std::io::Cursor;

use careledger_model::{
    PseudonymKey, ResidentId, RowError, Table, ValidatedBatch, ValidationContext, validate_batch,
};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use crate::{TOWN, VILLAGE_A, d};

pub(crate) fn key() -> PseudonymKey {
    PseudonymKey::new(b"validation-test-secret").unwrap()
}

pub(crate) fn woman_id() -> String {
    ResidentId::synthesize("450123", d("1988-06-01"), 122)
        .as_str()
        .to_string()
}

pub(crate) fn base(table: Table) -> Value {
    let common = json!({"source": "civil_affairs", "record_id": "r-1", "record_version": 1, "op": "upsert", "id_number": woman_id()});
    let extra = match table {
        Table::Women => {
            json!({"region_code": VILLAGE_A, "ethnicity": "08", "marital_status": "20", "education": "70", "children_under_16": 2, "elderly_dependants": 1})
        }
        Table::LifeEvents => {
            json!({"event_type": "spouse_departed", "event_date": "2024-02-20", "destination": "out_of_province", "work_type": "labour"})
        }
        Table::GroupFlags => {
            json!({"group": "disabled", "valid_from": "2023-01-01", "valid_to": "2026-12-31", "detail": "3"})
        }
        Table::Services => {
            json!({"measure": "M1", "service_type": "dibao_enrolment", "service_date": "2024-03-01", "amount_yuan": "450.50", "quantity": 1, "region_code": VILLAGE_A})
        }
        Table::Registrations => {
            json!({"action": "registered", "effective_date": "2024-09-01", "region_code": VILLAGE_A, "reason": "摸底排查"})
        }
    };
    let mut row = common;
    row.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    row
}

pub(crate) fn run(table: Table, rows: &[Value]) -> ValidatedBatch {
    let spec = table.spec();
    let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let mut reader = arrow_json::ReaderBuilder::new(spec.wire_schema())
        .with_coerce_primitive(true)
        .build(Cursor::new(body.into_bytes()))
        .unwrap();
    let batch = reader
        .next()
        .unwrap()
        .unwrap_or_else(|e| panic!("decode {rows:?}: {e}"));
    let key = key();
    let ctx = ValidationContext {
        source: "civil_affairs",
        today: d("2026-11-28"),
        key: &key,
        batch_id: "b-test",
        ingested_at: Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap(),
    };
    validate_batch(spec, &batch, &ctx, 0).unwrap()
}

fn with(table: Table, patch: Value) -> Value {
    let mut row = base(table);
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            row.as_object_mut().unwrap().remove(k);
        } else {
            row[k] = v.clone();
        }
    }
    row
}

fn errors(table: Table, patch: Value) -> Vec<RowError> {
    run(table, &[with(table, patch)]).errors
}

/// (table, change to the valid base row, expected code)
fn invalid_cases() -> Vec<(Table, Value, &'static str)> {
    let id = woman_id();
    let mut bad_check = id.clone();
    let last = bad_check.pop().unwrap();
    bad_check.push(if last == '0' { '1' } else { '0' });
    let man = ResidentId::synthesize("450123", d("1988-06-01"), 121)
        .as_str()
        .to_string();
    use Table::*;
    vec![
        (Women, json!({"id_number": null}), "id_number.required"),
        (
            Women,
            json!({"id_number": "45012319880601"}),
            "id_number.format",
        ),
        (
            Women,
            json!({"id_number": bad_check}),
            "id_number.check_digit",
        ),
        (
            Women,
            json!({"id_number": ResidentId::synthesize("990123", d("1988-06-01"), 122).as_str()}),
            "id_number.hukou_province",
        ),
        (
            Women,
            json!({"id_number": ResidentId::synthesize("450023", d("1988-06-01"), 122).as_str()}),
            "id_number.hukou_county",
        ),
        (
            Women,
            json!({"id_number": ResidentId::synthesize("450123", d("2030-01-01"), 122).as_str()}),
            "id_number.birth_date",
        ),
        (Women, json!({"id_number": man}), "id_number.not_female"),
        (
            Women,
            json!({"region_code": "4501231002"}),
            "region_code.format",
        ),
        (
            Women,
            json!({"region_code": "450123999999"}),
            "region_code.unknown",
        ),
        (
            Women,
            json!({"region_code": "450123100000"}),
            "region_code.level",
        ),
        (Women, json!({"region_code": null}), "region_code.required"),
        (Women, json!({"ethnicity": "99"}), "ethnicity.unknown_code"),
        (
            Women,
            json!({"marital_status": "married"}),
            "marital_status.unknown_code",
        ),
        (Women, json!({"education": "00"}), "education.unknown_code"),
        (
            Women,
            json!({"children_under_16": -1}),
            "children_under_16.out_of_range",
        ),
        (
            Women,
            json!({"elderly_dependants": "two"}),
            "elderly_dependants.not_integer",
        ),
        (
            Women,
            json!({"source": "health"}),
            "source.not_token_source",
        ),
        (Women, json!({"record_id": null}), "record_id.required"),
        (
            Women,
            json!({"record_id": "x".repeat(65)}),
            "record_id.length",
        ),
        (
            Women,
            json!({"record_version": 0}),
            "record_version.out_of_range",
        ),
        (
            Women,
            json!({"record_version": "v2"}),
            "record_version.not_integer",
        ),
        (Women, json!({"op": "insert"}), "op.unknown_code"),
        (Women, json!({"op": null}), "op.required"),
        (
            LifeEvents,
            json!({"event_type": "emigrated"}),
            "event_type.unknown_code",
        ),
        (
            LifeEvents,
            json!({"event_date": "2024-02-30"}),
            "event_date.invalid_date",
        ),
        (
            LifeEvents,
            json!({"event_date": "2027-01-01"}),
            "event_date.future",
        ),
        (
            LifeEvents,
            json!({"event_date": "1899-12-31"}),
            "event_date.out_of_range",
        ),
        (
            LifeEvents,
            json!({"event_date": null}),
            "event_date.required",
        ),
        (
            LifeEvents,
            json!({"destination": null}),
            "destination.required",
        ),
        (LifeEvents, json!({"work_type": null}), "work_type.required"),
        (
            LifeEvents,
            json!({"destination": "abroad"}),
            "destination.unknown_code",
        ),
        (
            LifeEvents,
            json!({"work_type": "farming"}),
            "work_type.unknown_code",
        ),
        (
            LifeEvents,
            json!({"event_type": "moved_in", "region_code": null}),
            "region_code.required",
        ),
        (
            GroupFlags,
            json!({"group": "elderly"}),
            "group.unknown_code",
        ),
        (
            GroupFlags,
            json!({"valid_to": "2022-12-31"}),
            "valid_to.before_start",
        ),
        (GroupFlags, json!({"detail": null}), "detail.required"),
        (GroupFlags, json!({"detail": "5"}), "detail.invalid"),
        (
            GroupFlags,
            json!({"group": "hardship", "detail": "poor"}),
            "detail.invalid",
        ),
        (
            GroupFlags,
            json!({"detail": "x".repeat(65)}),
            "detail.length",
        ),
        (Services, json!({"measure": "M8"}), "measure.unknown_code"),
        (
            Services,
            json!({"service_type": "massage"}),
            "service_type.unknown_code",
        ),
        (
            Services,
            json!({"service_type": "legal_aid"}),
            "service_type.measure_mismatch",
        ),
        (
            Services,
            json!({"service_end": "2024-02-01"}),
            "service_end.before_start",
        ),
        (
            Services,
            json!({"amount_yuan": "-5"}),
            "amount_yuan.negative",
        ),
        (
            Services,
            json!({"amount_yuan": 12.345}),
            "amount_yuan.decimals",
        ),
        (
            Services,
            json!({"amount_yuan": "12,50"}),
            "amount_yuan.not_decimal",
        ),
        (
            Services,
            json!({"amount_yuan": "1234567890123"}),
            "amount_yuan.out_of_range",
        ),
        (
            Services,
            json!({"quantity": 100001}),
            "quantity.out_of_range",
        ),
        (
            Services,
            json!({"provider_unit": "单".repeat(129)}),
            "provider_unit.length",
        ),
        (
            Services,
            json!({"region_code": "450123abc201"}),
            "region_code.format",
        ),
        (
            Registrations,
            json!({"action": "added"}),
            "action.unknown_code",
        ),
        (
            Registrations,
            json!({"region_code": TOWN.replace("100005", "100000")}),
            "region_code.level",
        ),
        (
            Registrations,
            json!({"effective_date": null}),
            "effective_date.required",
        ),
        (
            Registrations,
            json!({"reason": "r".repeat(257)}),
            "reason.length",
        ),
    ]
}

#[test]
fn valid_base_rows_pass_and_store_typed_values() {
    for t in Table::ALL {
        let out = run(t, &[base(t)]);
        assert!(out.errors.is_empty(), "{t}: {:?}", out.errors);
        assert_eq!(out.stored.num_rows(), 1);
        assert_eq!(out.stored.schema(), t.spec().stored_schema());
    }
}

#[test]
fn each_code_rejects_its_invalid_example_naming_row_and_field() {
    for (table, patch, code) in invalid_cases() {
        let errs = errors(table, patch.clone());
        let hit = errs.iter().find(|e| e.code == code);
        let hit = hit.unwrap_or_else(|| panic!("{table} {patch}: expected {code}, got {errs:?}"));
        assert_eq!(hit.row, 1, "{code}");
        assert_eq!(hit.field, code.split('.').next().unwrap(), "{code}");
        assert!(!hit.message.is_empty());
        assert!(
            !hit.message.contains(&woman_id()),
            "{code}: a message must not carry the raw ID"
        );
    }
}

#[test]
fn valid_examples_of_conditional_rules_pass() {
    use Table::*;
    let valid = [
        (Women, json!({"source": null})), // source defaults to the token's
        (Women, json!({"id_number": woman_id().to_lowercase()})),
        (
            Women,
            json!({"ethnicity": null, "education": null, "children_under_16": 0}),
        ),
        (
            LifeEvents,
            json!({"event_type": "spouse_returned", "destination": null, "work_type": null}),
        ),
        (
            LifeEvents,
            json!({"event_type": "moved_in", "region_code": VILLAGE_A, "destination": null, "work_type": null}),
        ),
        (
            LifeEvents,
            json!({"event_type": "moved_out", "destination": null, "work_type": null}),
        ),
        (LifeEvents, json!({"event_date": "2026-11-28"})),
        (
            GroupFlags,
            json!({"group": "seriously_ill", "detail": null, "valid_to": null}),
        ),
        (
            GroupFlags,
            json!({"group": "hardship", "detail": "dibao", "valid_to": "2030-12-31"}),
        ),
        (
            Services,
            json!({"amount_yuan": 12.5, "service_end": "2024-03-01"}),
        ),
        (
            Services,
            json!({"amount_yuan": null, "quantity": null, "region_code": "450123000000"}),
        ),
        (
            Services,
            json!({"measure": "M4", "service_type": "legal_aid"}),
        ),
        (Registrations, json!({"region_code": TOWN})), // an urban village is a valid registration place
        // A retraction need not repeat the fields of the record it withdraws.
        (
            Services,
            json!({"op": "delete", "id_number": null, "measure": null, "service_type": null, "service_date": null}),
        ),
    ];
    for (t, patch) in valid {
        let errs = errors(t, patch.clone());
        assert!(errs.is_empty(), "{t} {patch}: {errs:?}");
    }
}

#[test]
fn mixed_batch_keeps_valid_rows_and_numbers_rows_from_one() {
    let t = Table::Services;
    let rows = vec![
        base(t),
        with(t, json!({"measure": "M9"})),
        base(t),
        with(t, json!({"amount_yuan": "-1", "quantity": -3})),
    ];
    let out = run(t, &rows);
    assert_eq!(out.rows, 4);
    assert_eq!(out.stored.num_rows(), 2);
    assert_eq!(out.rejected, vec![1, 3]);
    let rows_with_errors: Vec<usize> = out.errors.iter().map(|e| e.row).collect();
    assert_eq!(rows_with_errors, vec![2, 4, 4]);
}

#[test]
fn stored_rows_carry_pseudonym_and_derived_facts() {
    use arrow_array::{Array, StringArray};
    let out = run(Table::Women, &[base(Table::Women)]);
    let col = |n: &str| {
        out.stored
            .column_by_name(n)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_string()
    };
    let id = ResidentId::parse(&woman_id(), d("2026-01-01")).unwrap();
    assert_eq!(col("person_key"), key().person_key(&id));
    assert_eq!(col("sex"), "F");
    assert_eq!(col("hukou_county"), "450123");
    assert_eq!(col("batch_id"), "b-test");
    assert_eq!(col("source"), "civil_affairs");
    let _ = out.stored.column_by_name("birth_date").unwrap().len();
}

/// A huge value in any field gets an error whose message stays short: messages echo at most
/// 40 characters of what was sent (an ID number: first 6 and last 4, the stars elided).
#[test]
fn messages_about_huge_values_stay_short() {
    let huge = format!("{}9", "x".repeat(1 << 20));
    let digits = "9".repeat(1 << 20);
    use Table::*;
    let cases = [
        (Women, "id_number", huge.clone()),
        (Women, "record_version", huge.clone()),
        (Women, "source", huge.clone()),
        (Women, "ethnicity", huge.clone()),
        (Women, "region_code", huge.clone()),
        (Women, "record_id", huge.clone()),
        (LifeEvents, "event_date", huge.clone()),
        (Services, "amount_yuan", huge.clone()),
        (Services, "amount_yuan", digits.clone()),
        (Services, "amount_yuan", format!("-{digits}")),
        (Services, "amount_yuan", format!("1.{digits}")),
        (GroupFlags, "detail", huge.clone()),
    ];
    for (table, field, value) in cases {
        let errs = errors(table, json!({ field: value }));
        assert!(!errs.is_empty(), "{table} {field}: refused");
        for e in &errs {
            assert!(
                e.message.len() < 600,
                "{table} {field} {}: message of {} bytes",
                e.code,
                e.message.len()
            );
        }
    }
}
