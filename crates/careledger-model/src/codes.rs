//! Code lists (`schemas/v1/codes/*.json`): every code with its Chinese and English label.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

/// One code of a list, e.g. `M1` 解困帮扶 / relief.
#[derive(Debug, Clone, Deserialize)]
pub struct Code {
    pub code: String,
    pub zh: String,
    pub en: String,
    /// For service types: the measure area the type belongs to.
    #[serde(default)]
    pub measure: Option<String>,
    /// For service types: the sources (units) responsible for it.
    #[serde(default)]
    pub units: Vec<String>,
}

/// A versioned code list.
#[derive(Debug, Clone, Deserialize)]
pub struct CodeList {
    pub list: String,
    pub version: String,
    pub title_zh: String,
    pub title_en: String,
    pub description: String,
    pub codes: Vec<Code>,
}

impl CodeList {
    pub fn get(&self, code: &str) -> Option<&Code> {
        self.codes.iter().find(|c| c.code == code)
    }

    pub fn contains(&self, code: &str) -> bool {
        self.get(code).is_some()
    }

    /// The codes joined for an error message (`M1, M2, …`), shortened for long lists.
    pub fn summary(&self) -> String {
        let shown: Vec<&str> = self
            .codes
            .iter()
            .take(12)
            .map(|c| c.code.as_str())
            .collect();
        let more = self.codes.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} … ({more} more)", shown.join(", "))
        } else {
            shown.join(", ")
        }
    }
}

/// All code lists of the contract.
#[derive(Debug)]
pub struct Vocabulary {
    lists: BTreeMap<String, CodeList>,
}

macro_rules! code_files {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../schemas/v1/codes/", $name, ".json")))),*]
    };
}

/// The code-list files compiled into this build (name, JSON text).
pub const CODE_FILES: &[(&str, &str)] = code_files!(
    "sources",
    "measures",
    "service_types",
    "event_types",
    "entry_reasons",
    "exit_reasons",
    "priority_groups",
    "hardship_kinds",
    "ethnicity",
    "marital_status",
    "education",
    "destinations",
    "work_types",
    "registration_actions",
    "ops",
    "disability_grades",
);

impl Vocabulary {
    fn load() -> Vocabulary {
        let mut lists = BTreeMap::new();
        for (name, text) in CODE_FILES {
            let list: CodeList = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("schemas/v1/codes/{name}.json is malformed: {e}"));
            assert_eq!(
                &list.list, name,
                "code list file {name} names itself {}",
                list.list
            );
            lists.insert(list.list.clone(), list);
        }
        Vocabulary { lists }
    }

    /// A list by name; panics on a name that is not compiled in (a programming error).
    pub fn list(&self, name: &str) -> &CodeList {
        self.lists
            .get(name)
            .unwrap_or_else(|| panic!("no code list named {name}"))
    }

    pub fn try_list(&self, name: &str) -> Option<&CodeList> {
        self.lists.get(name)
    }

    pub fn lists(&self) -> impl Iterator<Item = &CodeList> {
        self.lists.values()
    }
}

/// The vocabulary of this build, parsed once.
pub fn vocabulary() -> &'static Vocabulary {
    static VOCAB: OnceLock<Vocabulary> = OnceLock::new();
    VOCAB.get_or_init(Vocabulary::load)
}
