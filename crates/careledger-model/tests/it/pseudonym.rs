//! Pseudonymisation: stable, keyed, and the raw ID in no stored schema.

use careledger_model::{PseudonymKey, ResidentId, Table, mask_id};

use crate::d;

fn id() -> ResidentId {
    ResidentId::synthesize("450123", d("1985-03-14"), 242)
}

#[test]
fn person_key_is_stable_and_keyed() {
    let k1 = PseudonymKey::new(b"operator-secret-number-one!").unwrap();
    let k1_again = PseudonymKey::from_hex(&hex_of(b"operator-secret-number-one!")).unwrap();
    let k2 = PseudonymKey::new(b"operator-secret-number-two!").unwrap();
    let a = k1.person_key(&id());
    assert_eq!(a, k1.person_key(&id()), "same key, same ID: same pseudonym");
    assert_eq!(
        a,
        k1_again.person_key(&id()),
        "the hex form of the secret is the same key"
    );
    assert_ne!(
        a,
        k2.person_key(&id()),
        "another key gives another pseudonym"
    );
    assert_eq!(a.len(), 32);
    assert!(!a.contains(id().as_str()));
    let other = ResidentId::synthesize("450123", d("1985-03-14"), 244);
    assert_ne!(a, k1.person_key(&other));
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn short_secrets_are_refused_and_debug_hides_the_key() {
    assert!(PseudonymKey::new(b"short").is_err());
    let k = PseudonymKey::new(b"operator-secret-number-one!").unwrap();
    assert!(!format!("{k:?}").contains("operator"));
    assert!(
        !format!("{:?}", id()).contains(id().as_str()),
        "Debug of an ID is masked"
    );
}

#[test]
fn derived_facts_and_mask() {
    let id = id();
    assert_eq!(id.sex(), 'F');
    assert_eq!(id.birth_date(), d("1985-03-14"));
    assert_eq!(id.hukou_county(), "450123");
    assert_eq!(id.masked(), format!("450123********{}", &id.as_str()[14..]));
    assert_eq!(mask_id("12345"), "*****");
}

#[test]
fn raw_id_is_in_no_stored_schema() {
    for t in Table::ALL {
        let stored = t.spec().stored_schema();
        let wire = t.spec().wire_schema();
        assert!(
            wire.field_with_name("id_number").is_ok(),
            "{t}: the wire takes the ID"
        );
        assert!(
            stored.field_with_name("id_number").is_err(),
            "{t}: the ID must never be stored"
        );
        for f in stored.fields() {
            assert!(
                !f.name().contains("id_number"),
                "{t}: stored column {}",
                f.name()
            );
        }
        for c in [
            "person_key",
            "sex",
            "birth_date",
            "hukou_county",
            "batch_id",
            "ingested_at",
            "source",
            "record_id",
            "record_version",
            "op",
        ] {
            assert!(stored.field_with_name(c).is_ok(), "{t} lacks {c}");
        }
    }
}
