//! The Guangxi region reference table (2023 statistical division codes) and its hierarchy.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The year of the division codes compiled in; codes change yearly.
pub const REGION_CODE_YEAR: u16 = 2023;

const REGIONS_CSV: &str = include_str!("../../../schemas/reference/guangxi_regions.csv");

/// Level of a division in the hierarchy province → city → county → township → village.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RegionLevel {
    Province,
    City,
    County,
    Township,
    Village,
}

impl RegionLevel {
    /// Every level, from the province down to the village.
    pub const ALL: [RegionLevel; 5] = [
        RegionLevel::Province,
        RegionLevel::City,
        RegionLevel::County,
        RegionLevel::Township,
        RegionLevel::Village,
    ];

    pub fn parse(text: &str) -> Option<RegionLevel> {
        Some(match text {
            "province" => RegionLevel::Province,
            "city" => RegionLevel::City,
            "county" => RegionLevel::County,
            "township" => RegionLevel::Township,
            "village" => RegionLevel::Village,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegionLevel::Province => "province",
            RegionLevel::City => "city",
            RegionLevel::County => "county",
            RegionLevel::Township => "township",
            RegionLevel::Village => "village",
        }
    }

    /// Number of leading digits of a 12-digit code that identify a division at this level.
    pub fn prefix_len(self) -> usize {
        match self {
            RegionLevel::Province => 2,
            RegionLevel::City => 4,
            RegionLevel::County => 6,
            RegionLevel::Township => 9,
            RegionLevel::Village => 12,
        }
    }
}

/// One division.
#[derive(Debug, Clone)]
pub struct Region {
    pub code: String,
    pub name: String,
    pub level: RegionLevel,
    pub parent_code: Option<String>,
    /// Villages only: a village committee (村委会) is rural.
    pub rural: bool,
}

/// All divisions, by code.
#[derive(Debug)]
pub struct RegionTable {
    by_code: HashMap<String, Region>,
    order: Vec<String>,
}

impl RegionTable {
    /// Parses the reference CSV (`code,name,level,parent_code,rural`).
    pub fn parse_csv(text: &str) -> Result<RegionTable, String> {
        let mut by_code = HashMap::new();
        let mut order = Vec::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split(',').collect();
            if cols.len() != 5 {
                return Err(format!("region table line {}: expected 5 columns", n + 1));
            }
            let level = RegionLevel::parse(cols[2])
                .ok_or_else(|| format!("region table line {}: unknown level {}", n + 1, cols[2]))?;
            let region = Region {
                code: cols[0].to_string(),
                name: cols[1].to_string(),
                level,
                parent_code: (!cols[3].is_empty()).then(|| cols[3].to_string()),
                rural: cols[4] == "true",
            };
            order.push(region.code.clone());
            by_code.insert(region.code.clone(), region);
        }
        Ok(RegionTable { by_code, order })
    }

    pub fn get(&self, code: &str) -> Option<&Region> {
        self.by_code.get(code)
    }

    /// Whether `code` is a rural village (village committee) of the table.
    pub fn is_rural_village(&self, code: &str) -> bool {
        self.get(code)
            .is_some_and(|r| r.level == RegionLevel::Village && r.rural)
    }

    /// The ancestor of `code` at `level` (itself when it is at that level).
    pub fn ancestor(&self, code: &str, level: RegionLevel) -> Option<&Region> {
        let mut cur = self.get(code)?;
        loop {
            if cur.level == level {
                return Some(cur);
            }
            if cur.level < level {
                return None;
            }
            cur = self.get(cur.parent_code.as_deref()?)?;
        }
    }

    /// All divisions in file order (province first, then depth-first as published).
    pub fn iter(&self) -> impl Iterator<Item = &Region> {
        self.order.iter().filter_map(|c| self.by_code.get(c))
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The table compiled into this build, parsed once.
pub fn regions() -> &'static RegionTable {
    static TABLE: OnceLock<RegionTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        RegionTable::parse_csv(REGIONS_CSV)
            .expect("schemas/reference/guangxi_regions.csv is malformed")
    })
}
