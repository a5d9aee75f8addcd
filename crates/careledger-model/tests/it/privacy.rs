//! The raw resident ID number outside `id_number`: `redact_ids` masks every ID-like run, no
//! validation message carries the digits a mask hides, free-text fields holding an ID are
//! refused, `record_id` refuses control characters; and a scoped source's region rule.

use std::io::Cursor;

use careledger_model::resident_id::check_char;
use careledger_model::{
    ResidentId, Table, ValidatedBatch, ValidationContext, contains_id_like, mask_id, redact_ids,
    validate_batch_scoped,
};
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::d;
use crate::validation::{base, key, run, woman_id};

/// The digits `mask_id` hides (positions 7-14) must not appear, in any 7-digit piece, in `text`
/// once full-width digits are read as ASCII and everything but letters, digits and `*` is
/// dropped (so that separators cannot hide a piece either).
fn assert_no_hidden_digits(id: &str, text: &str, what: &str) {
    let normal: String = text
        .chars()
        .map(|c| match c {
            '０'..='９' => {
                char::from_u32(u32::from(c) - u32::from('０') + u32::from('0')).unwrap()
            }
            c => c,
        })
        .filter(|c| c.is_alphanumeric() || *c == '*')
        .collect();
    assert!(!normal.contains(id), "{what}: the whole ID in {text:?}");
    let hidden = &id[6..14];
    for w in 0..=hidden.len() - 7 {
        let piece = &hidden[w..w + 7];
        assert!(
            !normal.contains(piece),
            "{what}: hidden digits {piece} of {id} in {text:?}"
        );
    }
}

/// The ways an ID may be written into a field.
fn id_forms(id: &str) -> Vec<String> {
    let spaced = format!(
        "{} {} {} {} {}",
        &id[..4],
        &id[4..8],
        &id[8..12],
        &id[12..16],
        &id[16..]
    );
    let dashed = format!("{}-{}-{}", &id[..6], &id[6..14], &id[14..]);
    let full_width: String = id
        .chars()
        .map(|c| match c {
            '0'..='9' => char::from_u32(u32::from(c) - u32::from('0') + u32::from('０')).unwrap(),
            c => c,
        })
        .collect();
    vec![
        id.to_string(),
        id.to_lowercase(),
        spaced,
        dashed,
        full_width,
        format!("ref{id}x"),
        format!("见身份证{id}号"),
        format!("{}.{}", &id[..9], &id[9..]),
        format!("{},{},{}", &id[..6], &id[6..9], &id[9..]),
        format!("{}\u{200B}{}", &id[..9], &id[9..]),
        format!("{}{}", "y".repeat(30), id), // cut at 40 characters: mid-ID
        format!("{id}{id}"),
    ]
}

#[test]
fn redact_ids_masks_ids_in_any_form_and_keeps_what_mask_id_keeps() {
    let id = woman_id();
    assert_eq!(redact_ids(&id), mask_id(&id));
    assert_eq!(
        redact_ids(&format!("got {id:?} here")),
        format!("got \"{}\" here", mask_id(&id))
    );
    let with_x = format!("{}X", &id[..17]);
    assert_eq!(redact_ids(&with_x), mask_id(&with_x));
    assert_eq!(redact_ids(&format!("{}x", &id[..17])), "450123********122x");
    // Any other length is all stars: a cut or lengthened number's first and last digits may be
    // ones the 18-digit mask hides. The old 15-digit number too.
    assert_eq!(
        redact_ids(&format!("a{}b", &id[..17])),
        format!("a{}b", "*".repeat(17))
    );
    assert_eq!(redact_ids(&format!("9{id}")), "*".repeat(19));
    assert_eq!(redact_ids("450123880601122"), "*".repeat(15));
    assert_eq!(mask_id(&id[1..]), "*".repeat(17));
    for form in id_forms(&id) {
        let r = redact_ids(&form);
        assert_ne!(r, form, "{form:?} is masked");
        assert_no_hidden_digits(&id, &r, &form);
        assert!(contains_id_like(&form), "{form:?}");
    }
    // Two IDs joined by a space are one run; very long runs stay short.
    let long = "1".repeat(10_000);
    assert_eq!(redact_ids(&long), "****…****");
    assert_eq!(mask_id(&long), "****…****");
}

#[test]
fn redact_ids_leaves_region_codes_dates_amounts_and_code_lists_alone() {
    for text in [
        "region_code 450123100201 (那桐镇) is a village",
        "valid_to 2024-01-01 is before valid_from 2024-02-01",
        "event_date 2027-01-01 is in the future (today is 2026-11-28)",
        "amount_yuan 123456789012.34",
        "expected one of 01, 02, 03, 04, 05, 06, 07, 08, 09, 10, 11, 12 … (44 more)",
        "record_version = 0 is outside 1..∞",
        "batch 0193a2b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b",
        "12345678901234",
        "1234567, 12345678",
        "12345678901234 but 1",
        "",
    ] {
        assert_eq!(redact_ids(text), text, "{text:?} is left alone");
        assert!(!contains_id_like(text), "{text:?}");
    }
}

proptest! {
    /// Any valid ID, written with any separators between any of its digits, inside any text
    /// without digits: the redacted text holds none of the digits the mask hides.
    #[test]
    fn an_embedded_id_never_survives(
        days in 0i64..36_000,
        seq in 0u16..1000,
        seps in proptest::collection::vec(
            prop_oneof![Just(""), Just(""), Just(""), Just(" "), Just("-"), Just("."),
                        Just("/"), Just("\u{3000}"), Just("\t"), Just(" - "), Just("_")],
            17,
        ),
        before in "[a-zA-Z身份证号：:( \"=]{0,12}",
        after in "[a-zA-Z备注)\" ;,]{0,12}",
        lower in any::<bool>(),
    ) {
        let birth = d("1920-01-01") + chrono::TimeDelta::days(days);
        let id = ResidentId::synthesize("450123", birth, seq).as_str().to_string();
        let mut written = String::new();
        for (i, c) in id.chars().enumerate() {
            written.push(if lower { c.to_ascii_lowercase() } else { c });
            if i < 17 {
                written.push_str(seps[i]);
            }
        }
        let text = format!("{before}{written}{after}");
        let r = redact_ids(&text);
        assert_no_hidden_digits(&id, &r, &text);
        prop_assert!(contains_id_like(&text));
    }

    /// Digit groups of at most 14 digits, set apart by what lists and prose use, are left as
    /// they are.
    #[test]
    fn short_numbers_are_left_alone(
        groups in proptest::collection::vec(("[0-9]{1,14}", prop_oneof![Just(", "), Just(" ("), Just(": "), Just(" to "), Just("; ")]), 0..8),
    ) {
        let text: String = groups.iter().map(|(g, s)| format!("{g}{s}")).collect();
        prop_assert_eq!(redact_ids(&text), text.as_str());
    }
}

/// Every field of every table, the ID written in every way: every row is refused, and no
/// message shows what the mask hides.
#[test]
fn an_id_in_every_field_is_refused_and_no_message_shows_its_hidden_digits() {
    let id = woman_id();
    for table in Table::ALL {
        let spec = table.spec();
        for form in id_forms(&id) {
            let mut row = base(table);
            for f in &spec.fields {
                row[f.name.as_str()] = json!(form);
            }
            let out = run(table, &[row]);
            assert_eq!(out.stored.num_rows(), 0, "{table} {form:?}: refused");
            assert!(!out.errors.is_empty());
            for e in &out.errors {
                assert_no_hidden_digits(&id, &e.message, &format!("{table} {}", e.code));
            }
        }
        // One field at a time, too: each is refused on its own.
        for f in spec.fields.iter().filter(|f| f.name != "id_number") {
            let mut row = base(table);
            row[f.name.as_str()] = json!(format!("{} {}", &id[..9], &id[9..]));
            let out = run(table, &[row]);
            assert_eq!(out.stored.num_rows(), 0, "{table}.{}: refused", f.name);
            for e in &out.errors {
                assert_no_hidden_digits(&id, &e.message, &format!("{table} {}", e.code));
            }
        }
    }
}

/// The birth-date, plausibility and check-digit messages name the problem without printing
/// the digits the mask hides (they used to print digits 7-14).
#[test]
fn id_number_messages_do_not_print_hidden_digits() {
    let first17 = "45012319851301024";
    let bad_date = format!("{first17}{}", check_char(first17.as_bytes()));
    let future = ResidentId::synthesize("450123", d("2030-01-01"), 122)
        .as_str()
        .to_string();
    let id = woman_id();
    let mut bad_check = id.clone();
    let last = bad_check.pop().unwrap();
    bad_check.push(if last == '0' { '1' } else { '0' });
    for (value, code) in [
        (bad_date.as_str(), "id_number.birth_date"),
        (future.as_str(), "id_number.birth_date"),
        (bad_check.as_str(), "id_number.check_digit"),
    ] {
        let mut row = base(Table::Women);
        row["id_number"] = json!(value);
        let out = run(Table::Women, &[row]);
        let e = out.errors.iter().find(|e| e.code == code).unwrap();
        assert!(e.message.contains(&mask_id(value)), "{}", e.message);
        assert_no_hidden_digits(value, &e.message, code);
    }
    let mut row = base(Table::Women);
    row["id_number"] = json!(bad_date);
    let m = &run(Table::Women, &[row]).errors[0].message;
    assert!(!m.contains("19851301") && !m.contains("1985"), "{m}");
}

#[test]
fn free_text_holding_an_id_is_a_row_error_naming_the_field() {
    let id = woman_id();
    let spaced = format!("{} {} {}", &id[..6], &id[6..14], &id[14..]);
    for (table, field) in [
        (Table::Women, "record_id"),
        (Table::Women, "record_version"),
        (Table::Services, "provider_unit"),
        (Table::Registrations, "reason"),
        (Table::GroupFlags, "detail"),
    ] {
        for value in [id.clone(), spaced.clone(), format!("身份证{id}")] {
            let mut row = base(table);
            if field == "detail" {
                row["group"] = json!("seriously_ill");
            }
            row[field] = json!(value);
            let out = run(table, &[row]);
            assert_eq!(out.stored.num_rows(), 0, "{table}.{field} {value:?}");
            let code = format!("{field}.personal_id");
            let e = out
                .errors
                .iter()
                .find(|e| e.code == code)
                .unwrap_or_else(|| panic!("{code}: {:?}", out.errors));
            assert!(e.message.starts_with(field), "{}", e.message);
            assert!(e.message.contains(&mask_id(&id)), "{}", e.message);
            assert_no_hidden_digits(&id, &e.message, &code);
        }
    }
    // Ordinary identifiers and text pass.
    for (table, field, value) in [
        (Table::Women, "record_id", "CA-2024-000123-7"),
        (
            Table::Women,
            "record_id",
            "0193a2b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b",
        ),
        (
            Table::Services,
            "provider_unit",
            "那桐镇卫生院 (电话 0771-6321234)",
        ),
        (
            Table::Registrations,
            "reason",
            "2024-03-01 摸底排查, 2024-04-01 复核",
        ),
    ] {
        let mut row = base(table);
        row[field] = json!(value);
        let out = run(table, &[row]);
        assert!(out.errors.is_empty(), "{value:?}: {:?}", out.errors);
    }
}

#[test]
fn record_id_refuses_control_and_invisible_characters() {
    for value in [
        "a\nb",
        "a\rb",
        "a\u{1b}[2Jb",
        "a\u{202E}b",
        "a\u{200B}b",
        "a\tb",
    ] {
        let mut row = base(Table::Women);
        row["record_id"] = json!(value);
        let out = run(Table::Women, &[row]);
        assert_eq!(out.stored.num_rows(), 0, "{value:?}");
        assert_eq!(
            out.errors[0].code, "record_id.control_character",
            "{value:?}"
        );
        assert!(out.errors[0].message.contains("U+"), "{:?}", out.errors);
    }
    let mut row = base(Table::Women);
    row["record_id"] = json!("a b·c");
    assert!(run(Table::Women, &[row]).errors.is_empty());
}

fn run_scoped(table: Table, rows: &[Value], scope: &str) -> ValidatedBatch {
    let spec = table.spec();
    let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let batch = arrow_json::ReaderBuilder::new(spec.wire_schema())
        .with_coerce_primitive(true)
        .build(Cursor::new(body.into_bytes()))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let key = key();
    let ctx = ValidationContext {
        source: "civil_affairs",
        today: d("2026-11-28"),
        key: &key,
        batch_id: "b-test",
        ingested_at: Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap(),
    };
    validate_batch_scoped(spec, &batch, &ctx, 0, Some(scope)).unwrap()
}

fn codes(out: &ValidatedBatch) -> Vec<&str> {
    out.errors.iter().map(|e| e.code.as_str()).collect()
}

#[test]
fn a_scoped_source_writes_only_rows_inside_its_scope() {
    // 马山县 (450125) is outside 隆安县's scope 450123.
    let mut outside = base(Table::Women);
    outside["region_code"] = json!(crate::VILLAGE_B);
    let inside = base(Table::Women);
    let out = run_scoped(Table::Women, &[inside.clone(), outside.clone()], "450123");
    assert_eq!(out.stored.num_rows(), 1);
    assert_eq!(codes(&out), ["region_code.out_of_scope"]);
    assert_eq!(out.errors[0].row, 2);
    // A retraction must name a region inside the scope too.
    let delete =
        json!({"source": "civil_affairs", "record_id": "r-9", "record_version": 2, "op": "delete"});
    let out = run_scoped(Table::Women, std::slice::from_ref(&delete), "450123");
    assert_eq!(codes(&out), ["region_code.required"]);
    let mut d2 = delete.clone();
    d2["region_code"] = json!(crate::VILLAGE_B);
    assert_eq!(
        codes(&run_scoped(Table::Women, &[d2], "450123")),
        ["region_code.out_of_scope"]
    );
    let mut d3 = delete.clone();
    d3["region_code"] = json!(crate::VILLAGE_A);
    assert!(run_scoped(Table::Women, &[d3], "450123").errors.is_empty());
    // A service without a region, and a flag (no region_code at all), cannot be placed.
    let mut service = base(Table::Services);
    service.as_object_mut().unwrap().remove("region_code");
    assert_eq!(
        codes(&run_scoped(Table::Services, &[service], "450123")),
        ["region_code.required"]
    );
    assert_eq!(
        codes(&run_scoped(
            Table::GroupFlags,
            &[base(Table::GroupFlags)],
            "450123"
        )),
        ["source.out_of_scope"]
    );
    // A county-level service code inside the scope is fine; the city above it is not.
    let mut county = base(Table::Services);
    county["region_code"] = json!("450123000000");
    assert!(
        run_scoped(Table::Services, &[county], "450123")
            .errors
            .is_empty()
    );
    let mut city = base(Table::Services);
    city["region_code"] = json!("450100000000");
    assert_eq!(
        codes(&run_scoped(Table::Services, &[city], "450123")),
        ["region_code.out_of_scope"]
    );
    // A scope that is no region prefix lets nothing through.
    assert_eq!(
        codes(&run_scoped(Table::Women, &[inside], "45x")),
        ["source.out_of_scope"]
    );
    // Without a scope, as before.
    assert!(run(Table::Women, &[outside]).errors.is_empty());
}
