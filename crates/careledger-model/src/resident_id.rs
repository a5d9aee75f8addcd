//! The 18-digit resident identity number (GB 11643): parsing, check digit, derived facts.
//! It arrives on the wire and is never stored: see [`crate::pseudonym`].

use std::borrow::Cow;

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

/// The only form an ID may take in an error message or a reject row. An 18-character value
/// keeps its first 6 and last 4 characters (`450123********0129`: the hukou county and the
/// sequence and check digit; the birth date, digits 7-14, is hidden). Any other value is all
/// stars, since its first and last characters may sit anywhere in a mistyped or cut number
/// and so show digits the 18-character mask hides; past 24 characters the stars are elided,
/// so that a huge value cannot make a message huge.
pub fn mask_id(raw: &str) -> String {
    let raw = raw.trim();
    if raw.chars().nth(24).is_some() {
        return mask_chars(&[' '; 25]);
    }
    let chars: Vec<char> = raw.chars().collect();
    mask_chars(&chars)
}

fn mask_chars(chars: &[char]) -> String {
    match chars.len() {
        18 => {
            let head: String = chars[..6].iter().collect();
            let tail: String = chars[14..].iter().collect();
            format!("{head}********{tail}")
        }
        n if n <= 24 => "*".repeat(n),
        _ => "****…****".to_string(),
    }
}

/// What an ID-like run must have: 15 or more digits (an 18-digit number, or the old 15-digit
/// one), counting a trailing check character X.
const ID_LIKE_MIN: usize = 15;

/// Characters that may stand, one to three at a time, between two digit groups of one ID-like
/// run: whitespace and control characters, dashes, dots, slashes, underscores, middle dots and
/// invisible format characters (a number typed as `4501 2319 8806 0101 29` or
/// `450123-19880601-0129` is still one number).
fn soft_separator(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '-' | '‐'
                | '‑'
                | '‒'
                | '–'
                | '—'
                | '―'
                | '−'
                | '－'
                | '.'
                | '．'
                | '。'
                | '/'
                | '／'
                | '\\'
                | '_'
                | '＿'
                | '·'
                | '・'
                | '\u{AD}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2060}'..='\u{2064}'
                | '\u{FEFF}'
        )
}

/// A digit of an ID-like run: ASCII, full-width (`０`–`９`) or any other numeric character.
fn id_digit(c: char) -> bool {
    c.is_numeric()
}

fn check_x(c: char) -> bool {
    matches!(c, 'X' | 'x' | 'Ｘ' | 'ｘ')
}

/// How many characters at `at` join the digit group before them to the one after: one to three
/// soft separators, or one thousands separator (`,` `，` `'`) followed by three digits.
/// 0 when the run ends here.
fn gap_len(chars: &[(usize, char)], at: usize) -> usize {
    let digit_at = |i: usize| chars.get(i).is_some_and(|&(_, c)| id_digit(c));
    match chars.get(at) {
        Some(&(_, ',' | '，' | '\'' | '’')) => usize::from((1..=3).all(|k| digit_at(at + k))),
        Some(_) => {
            let k = chars[at..]
                .iter()
                .take(4)
                .take_while(|&&(_, c)| soft_separator(c))
                .count();
            if (1..=3).contains(&k) && digit_at(at + k) {
                k
            } else {
                0
            }
        }
        None => 0,
    }
}

/// The ID-like runs of `text`: byte ranges and their digits (and check character), separators
/// left out.
fn id_runs(text: &str) -> Vec<(std::ops::Range<usize>, Vec<char>)> {
    // Fewer numeric characters than a run needs: nothing to find (the common case).
    if text.chars().filter(|&c| id_digit(c)).count() < ID_LIKE_MIN - 1 {
        return Vec::new();
    }
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut runs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !id_digit(chars[i].1) {
            i += 1;
            continue;
        }
        let start = i;
        let mut kept = Vec::new();
        let mut j = i;
        loop {
            while j < chars.len() && id_digit(chars[j].1) {
                kept.push(chars[j].1);
                j += 1;
            }
            match gap_len(&chars, j) {
                0 => break,
                g => j += g,
            }
        }
        if j < chars.len() && check_x(chars[j].1) {
            kept.push(chars[j].1);
            j += 1;
        }
        if kept.len() >= ID_LIKE_MIN {
            runs.push((byte_at(start)..byte_at(j), kept));
        }
        i = j;
    }
    runs
}

/// Whether `text` holds anything that may be a resident ID number (see [`redact_ids`]).
pub fn contains_id_like(text: &str) -> bool {
    !id_runs(text).is_empty()
}

/// `text` with every ID-like run masked by [`mask_id`] (separators dropped: an 18-character
/// run keeps its first 6 and last 4, any other is all stars). A run is 15 or more digits,
/// optionally ending in X, ASCII or full-width, also when broken by spaces, dashes, dots,
/// slashes or thousands separators. Generous on purpose: a false positive masks a number in a
/// message, a false negative would store an ID. Every text that may echo sent values passes
/// through here before it is stored or answered (messages, reject rows, receipts).
pub fn redact_ids(text: &str) -> Cow<'_, str> {
    let runs = id_runs(text);
    if runs.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (range, kept) in runs {
        out.push_str(&text[copied..range.start]);
        out.push_str(&mask_chars(&kept));
        copied = range.end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

impl ResidentId {
    /// Parses and checks an ID number as of `today` (birth dates after it are refused).
    /// A lower-case `x` check character is accepted and normalised.
    pub fn parse(raw: &str, today: NaiveDate) -> Result<ResidentId, IdError> {
        let text = raw.trim().to_ascii_uppercase();
        let bytes = text.as_bytes();
        let masked = mask_id(&text);
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
                    "ID number {masked} fails its check digit (GB 11643); check for a mistyped digit"
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
            message: format!("ID number {masked}: digits 7-14 (the birth date) are not a date"),
        })?;
        if birth > today || birth.year() < 1900 {
            return Err(IdError {
                code: "id_number.birth_date",
                message: format!(
                    "ID number {masked}: the birth date (digits 7-14) is after today or before 1900"
                ),
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
