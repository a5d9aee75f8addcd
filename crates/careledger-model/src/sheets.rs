//! Mapping profiles for spreadsheet uploads (`schemas/v1/sheets/*.json`): the Chinese column
//! headers that name each field of the contracts. `default` holds the common headers; a
//! source's own profile adds the headers of its sheets (for one table or for all).

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::schema::Table;

/// One profile file.
#[derive(Debug, Clone, Deserialize)]
pub struct SheetProfile {
    pub profile: String,
    pub description: String,
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Field name → headers, for every table.
    #[serde(default)]
    pub fields: BTreeMap<String, Vec<String>>,
    /// Table → field name → headers, for that table only.
    #[serde(default)]
    pub tables: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

macro_rules! sheet_files {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../schemas/v1/sheets/", $name, ".json")))),*]
    };
}

/// The profile files compiled into this build (name, JSON text).
pub const SHEET_FILES: &[(&str, &str)] = sheet_files!("default", "civil_affairs");

fn profiles() -> &'static HashMap<String, SheetProfile> {
    static P: OnceLock<HashMap<String, SheetProfile>> = OnceLock::new();
    P.get_or_init(|| {
        SHEET_FILES
            .iter()
            .map(|(name, text)| {
                let p: SheetProfile = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("schemas/v1/sheets/{name}.json is malformed: {e}"));
                assert_eq!(
                    &p.profile, name,
                    "sheet profile {name} names itself {}",
                    p.profile
                );
                (p.profile.clone(), p)
            })
            .collect()
    })
}

/// The headers a source's sheets of `table` may use: its profile's (when it has one) and the
/// default's. Returns the profile name used, the headers per field, and the ignored headers.
pub fn sheet_headers(
    source: &str,
    table: Table,
) -> (String, BTreeMap<String, Vec<String>>, Vec<String>) {
    let all = profiles();
    let mut chain = vec![&all["default"]];
    let mut name = "default".to_string();
    if let Some(own) = all.get(source).filter(|_| source != "default") {
        chain.push(own);
        name = format!("{source} (on default)");
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut ignore = Vec::new();
    for p in chain {
        ignore.extend(p.ignore.iter().cloned());
        let own = p.tables.get(table.as_str());
        for (field, labels) in p.fields.iter().chain(own.into_iter().flatten()) {
            headers
                .entry(field.clone())
                .or_default()
                .extend(labels.iter().cloned());
        }
    }
    (name, headers, ignore)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_names_real_fields_and_no_header_twice() {
        for p in profiles().values() {
            for table in Table::ALL {
                let spec = table.spec();
                let (_, headers, _) = sheet_headers(&p.profile, table);
                let mut seen = std::collections::HashSet::new();
                for (field, labels) in &headers {
                    let Some(_) = spec.fields.iter().find(|f| &f.name == field) else {
                        // Shared fields are listed once for all tables.
                        assert!(
                            Table::ALL.iter().any(|t| t
                                .spec()
                                .fields
                                .iter()
                                .any(|f| &f.name == field)),
                            "profile {} names {field}, a field of no table",
                            p.profile
                        );
                        continue;
                    };
                    for l in labels {
                        assert!(
                            seen.insert(l.clone()),
                            "profile {}: header {l} names two fields of {table}",
                            p.profile
                        );
                    }
                }
            }
            for table in p.tables.keys() {
                assert!(
                    Table::ALL.iter().any(|t| t.as_str() == table),
                    "profile {} names table {table}",
                    p.profile
                );
            }
        }
    }
}
