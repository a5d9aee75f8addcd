//! The 18-digit resident identity number (GB 11643): parsing, check digit, derived facts.
//! It arrives on the wire and is never stored: see [`crate::pseudonym`].

use chrono::{Datelike, NaiveDate};

/// A resident ID that passed every check. Holding one proves the number is well-formed.
#[derive(Clone, PartialEq, Eq)]
pub struct ResidentId(String);

impl std::fmt::Debug for ResidentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResidentId({})", mask_id(&self.0))
    }
}

/// Why an ID number was refused: a stable code (`id_number.check_digit`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    pub code: &'static str,
    pub message: String,
}

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK_CHARS: [u8; 11] = *b"10X98765432";

/// Province-level codes (first two digits) of mainland China, Taiwan, Hong Kong and Macao.
const PROVINCES: [&str; 34] = [
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41",
    "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71",
    "81", "82",
];

/// The GB 11643 check character for the first 17 digits.
pub fn check_char(first17: &[u8]) -> char {
    let sum: u32 = first17
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    CHECK_CHARS[(sum % 11) as usize] as char
}

/// First 6 and last 4 characters, the rest starred: the only form an ID may take in an error
/// message or a reject row. Works on malformed input too.
pub fn mask_id(raw: &str) -> String {
    let chars: Vec<char> = raw.trim().chars().collect();
    if chars.len() < 10 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 10))
}

/// [`mask_id`] for an error message: past 24 characters the stars are elided, so that a
/// huge value cannot make its message huge.
fn mask_for_message(text: &str) -> String {
    let count = text.chars().count();
    if count <= 24 {
        return mask_id(text);
    }
    let head: String = text.chars().take(6).collect();
    let mut tail: Vec<char> = text.chars().rev().take(4).collect();
    tail.reverse();
    format!("{head}**…**{}", tail.into_iter().collect::<String>())
}

impl ResidentId {
    /// Parses and checks an ID number as of `today` (birth dates after it are refused).
    /// A lower-case `x` check character is accepted and normalised.
    pub fn parse(raw: &str, today: NaiveDate) -> Result<ResidentId, IdError> {
        let text = raw.trim().to_ascii_uppercase();
        let bytes = text.as_bytes();
        let masked = mask_for_message(&text);
        if bytes.len() != 18
            || !bytes[..17].iter().all(u8::is_ascii_digit)
            || !(bytes[17].is_ascii_digit() || bytes[17] == b'X')
        {
            return Err(IdError {
                code: "id_number.format",
                message: format!(
                    "ID number {masked} must be 18 characters: 17 digits then a digit or X (it has {})",
                    text.chars().count()
                ),
            });
        }
        let expected = check_char(&bytes[..17]);
        if bytes[17] as char != expected {
            return Err(IdError {
                code: "id_number.check_digit",
                message: format!(
                    "ID number {masked} fails its check digit (GB 11643): the last character should be {expected}; check for a mistyped digit"
                ),
            });
        }
        let province = &text[..2];
        if !PROVINCES.contains(&province) {
            return Err(IdError {
                code: "id_number.hukou_province",
                message: format!(
                    "ID number {masked} starts with {province}, which is no province code"
                ),
            });
        }
        if &text[2..4] == "00" {
            return Err(IdError {
                code: "id_number.hukou_county",
                message: format!(
                    "ID number {masked}: {} is a province-level code, not the code of a county",
                    &text[..6]
                ),
            });
        }
        let birth = NaiveDate::parse_from_str(&text[6..14], "%Y%m%d").map_err(|_| IdError {
            code: "id_number.birth_date",
            message: format!(
                "ID number {masked}: digits 7-14 ({}) are not a date",
                &text[6..14]
            ),
        })?;
        if birth > today || birth.year() < 1900 {
            return Err(IdError {
                code: "id_number.birth_date",
                message: format!("ID number {masked}: birth date {birth} is not plausible"),
            });
        }
        Ok(ResidentId(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Birth date (digits 7–14).
    pub fn birth_date(&self) -> NaiveDate {
        NaiveDate::parse_from_str(&self.0[6..14], "%Y%m%d").expect("checked in parse")
    }

    /// Hukou county: the first six digits (the issuing county, possibly an older code).
    pub fn hukou_county(&self) -> &str {
        &self.0[..6]
    }

    /// `F` or `M` from the parity of digit 17.
    pub fn sex(&self) -> char {
        if (self.0.as_bytes()[16] - b'0') % 2 == 1 {
            'M'
        } else {
            'F'
        }
    }

    /// The masked form (first 6 + last 4).
    pub fn masked(&self) -> String {
        mask_id(&self.0)
    }

    /// Builds a valid ID from a 6-digit area code, a birth date and a 3-digit sequence
    /// (even for women). Used by the simulator and tests.
    pub fn synthesize(area6: &str, birth: NaiveDate, seq: u16) -> ResidentId {
        let first17 = format!("{area6}{}{:03}", birth.format("%Y%m%d"), seq % 1000);
        let check = check_char(first17.as_bytes());
        ResidentId(format!("{first17}{check}"))
    }
}
