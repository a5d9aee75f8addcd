//! Integration tests of the model crate: one binary, one module per area.

mod privacy;
mod pseudonym;
mod status_cases;
mod status_props;
mod status_reference;
mod validation;

use chrono::NaiveDate;

pub(crate) fn d(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("test date")
}

/// Two rural villages in 隆安县 and 马山县, and a residents' committee (urban) in 隆安县.
pub(crate) const VILLAGE_A: &str = "450123100201";
pub(crate) const VILLAGE_B: &str = "450125100201";
pub(crate) const TOWN: &str = "450123100005";
