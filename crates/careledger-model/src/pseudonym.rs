//! Pseudonymisation: `person_key` = HMAC-SHA256 of the resident ID under an operator secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::resident_id::ResidentId;

/// The operator's pseudonym secret. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct PseudonymKey(Vec<u8>);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

/// The shortest secret accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

impl PseudonymKey {
    /// A key from raw secret bytes (at least 16).
    pub fn new(secret: &[u8]) -> Result<PseudonymKey, String> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "pseudonym secret has {} bytes, at least {MIN_KEY_BYTES} are required",
                secret.len()
            ));
        }
        Ok(PseudonymKey(secret.to_vec()))
    }

    /// A key from a hex string, as kept in the secret file.
    pub fn from_hex(text: &str) -> Result<PseudonymKey, String> {
        let bytes =
            hex::decode(text.trim()).map_err(|e| format!("pseudonym secret is not hex: {e}"))?;
        PseudonymKey::new(&bytes)
    }

    /// A secret for another purpose, derived from this one (HMAC-SHA256 of the purpose's
    /// name), so that one operator secret serves several keyed functions without any of them
    /// revealing another's key.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(b"careledger derived secret: ");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The stable pseudonym of a person: 32 hex digits (128 bits) of HMAC-SHA256.
    /// The same ID under the same key always gives the same key; another key gives another.
    pub fn person_key(&self, id: &ResidentId) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        hex::encode(&digest[..16])
    }
}

/// The 64-bit number of a `person_key`: its first 16 hex digits as a big-endian integer,
/// reinterpreted as a signed 64-bit value (`person_id` in the derived tables, for joins and
/// groupings on an integer instead of a 32-character text). `None` for a text that does not
/// start with 16 hex digits. Two women share a `person_id` only if the first 64 bits of
/// their pseudonyms agree: probability about N²/2⁶⁵ for N women (3·10⁻⁸ at a million,
/// 3·10⁻⁶ at ten million); the deriver checks the stored ledger for it.
pub fn person_id(person_key: &str) -> Option<i64> {
    let head = person_key.get(..16)?;
    if !head.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(head, 16).ok().map(|v| v as i64)
}

#[cfg(test)]
mod person_id_tests {
    use super::person_id;

    #[test]
    fn person_id_is_the_first_64_bits() {
        assert_eq!(person_id("0000000000000001ffffffffffffffff"), Some(1));
        assert_eq!(person_id("ffffffffffffffff0000000000000000"), Some(-1));
        assert_eq!(
            person_id("7fffffffffffffff0000000000000000"),
            Some(i64::MAX)
        );
        assert_eq!(person_id("8000000000000000"), Some(i64::MIN));
        assert_eq!(person_id("0123"), None);
        assert_eq!(person_id("g000000000000000aaaa"), None);
        assert_eq!(person_id("+00000000000000faaaa"), None);
    }
}
