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
