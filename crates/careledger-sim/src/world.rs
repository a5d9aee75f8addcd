//! The simulated world: the departments (sources), the villages in scope and the service
//! catalogue, all taken from the model's reference tables and code lists.

use std::collections::HashMap;

use careledger_model::{Region, RegionLevel, regions, vocabulary};
use chrono::{Datelike, NaiveDate};

use crate::SimConfig;

/// A department that pushes data: one code of `schemas/v1/codes/sources.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Src {
    CivilAffairs,
    WomensFederation,
    HrSocialSecurity,
    Health,
    DisabledFederation,
    Justice,
    PublicSecurity,
    Agriculture,
    CultureTourism,
    Sport,
    RuralRevitalisation,
    WomenChildrenCommittee,
}

impl Src {
    const ALL: [Src; 12] = [
        Src::CivilAffairs,
        Src::WomensFederation,
        Src::HrSocialSecurity,
        Src::Health,
        Src::DisabledFederation,
        Src::Justice,
        Src::PublicSecurity,
        Src::Agriculture,
        Src::CultureTourism,
        Src::Sport,
        Src::RuralRevitalisation,
        Src::WomenChildrenCommittee,
    ];

    pub(crate) fn code(self) -> &'static str {
        match self {
            Src::CivilAffairs => "civil_affairs",
            Src::WomensFederation => "womens_federation",
            Src::HrSocialSecurity => "hr_social_security",
            Src::Health => "health",
            Src::DisabledFederation => "disabled_federation",
            Src::Justice => "justice",
            Src::PublicSecurity => "public_security",
            Src::Agriculture => "agriculture",
            Src::CultureTourism => "culture_tourism",
            Src::Sport => "sport",
            Src::RuralRevitalisation => "rural_revitalisation",
            Src::WomenChildrenCommittee => "women_children_committee",
        }
    }

    pub(crate) fn parse(code: &str) -> Option<Src> {
        Src::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Prefix of the department's own record identifiers (pinyin initials of the unit).
    pub(crate) fn abbr(self) -> &'static str {
        match self {
            Src::CivilAffairs => "mz",
            Src::WomensFederation => "fl",
            Src::HrSocialSecurity => "rs",
            Src::Health => "wj",
            Src::DisabledFederation => "cl",
            Src::Justice => "sf",
            Src::PublicSecurity => "ga",
            Src::Agriculture => "nn",
            Src::CultureTourism => "wl",
            Src::Sport => "ty",
            Src::RuralRevitalisation => "xc",
            Src::WomenChildrenCommittee => "fe",
        }
    }

    /// Days between two pushes of one table: the ledger keeper, the women's federation and the
    /// police push weekly, the big service departments fortnightly, the small ones monthly.
    pub(crate) fn push_period(self) -> i64 {
        match self {
            Src::CivilAffairs | Src::WomensFederation | Src::PublicSecurity => 7,
            Src::HrSocialSecurity
            | Src::Health
            | Src::DisabledFederation
            | Src::Justice
            | Src::Agriculture => 14,
            Src::CultureTourism
            | Src::Sport
            | Src::RuralRevitalisation
            | Src::WomenChildrenCommittee => 28,
        }
    }

    /// The weekday (0 = Monday) the department's interface job runs.
    pub(crate) fn push_weekday(self) -> u32 {
        match self {
            Src::CivilAffairs | Src::Justice | Src::Sport => 0,
            Src::WomensFederation | Src::Agriculture => 1,
            Src::Health | Src::CultureTourism => 2,
            Src::PublicSecurity | Src::RuralRevitalisation => 3,
            Src::HrSocialSecurity | Src::DisabledFederation | Src::WomenChildrenCommittee => 4,
        }
    }

    /// The county-level unit, appended to the county's name (`隆安县` + `妇联`).
    pub(crate) fn county_unit(self) -> &'static str {
        match self {
            Src::CivilAffairs => "民政局",
            Src::WomensFederation => "妇联",
            Src::HrSocialSecurity => "人力资源和社会保障局",
            Src::Health => "卫生健康局",
            Src::DisabledFederation => "残疾人联合会",
            Src::Justice => "司法局",
            Src::PublicSecurity => "公安局",
            Src::Agriculture => "农业农村局",
            Src::CultureTourism => "文化广电体育和旅游局",
            Src::Sport => "体育运动服务中心",
            Src::RuralRevitalisation => "乡村振兴局",
            Src::WomenChildrenCommittee => "妇女儿童工作委员会办公室",
        }
    }

    /// The township-level outpost, appended to the township's name (`城厢镇` + `卫生院`).
    pub(crate) fn township_unit(self) -> &'static str {
        match self {
            Src::CivilAffairs => "社会事务办",
            Src::WomensFederation => "妇联",
            Src::HrSocialSecurity => "人力资源和社会保障服务站",
            Src::Health => "卫生院",
            Src::DisabledFederation => "残联",
            Src::Justice => "司法所",
            Src::PublicSecurity => "派出所",
            Src::Agriculture => "农业服务中心",
            Src::CultureTourism | Src::Sport => "综合文化站",
            Src::RuralRevitalisation => "乡村振兴工作站",
            Src::WomenChildrenCommittee => "妇儿工委",
        }
    }
}

/// A service type of `service_types.json` with its measure and responsible sources.
#[derive(Debug)]
pub(crate) struct ServiceType {
    pub(crate) code: &'static str,
    pub(crate) zh: &'static str,
    pub(crate) measure: &'static str,
    pub(crate) units: Vec<Src>,
}

/// Everything shared by all women of one run.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) seed: u64,
    pub(crate) start: NaiveDate,
    /// Last day anything may be dated or pushed: `min(config.end, today)`.
    pub(crate) horizon: NaiveDate,
    /// Rural villages (village committees) in scope, in file order.
    pub(crate) villages: Vec<&'static Region>,
    /// Rural villages in scope by county (first six digits).
    pub(crate) by_county: HashMap<&'static str, Vec<&'static Region>>,
    /// Rural villages in scope by township (first nine digits).
    pub(crate) by_township: HashMap<&'static str, Vec<&'static Region>>,
    /// Residents' committees (urban) of the counties in scope.
    pub(crate) urban_by_county: HashMap<&'static str, Vec<&'static Region>>,
    pub(crate) services: Vec<ServiceType>,
    service_index: HashMap<&'static str, u16>,
}

impl World {
    /// The world of `config`; `None` when nothing can happen (the horizon precedes the start).
    /// Panics when no rural village matches the county prefixes.
    pub(crate) fn new(config: &SimConfig, today: NaiveDate) -> Option<World> {
        let horizon = config.end.min(today);
        if horizon < config.start {
            return None;
        }
        let wanted = |code: &str| {
            config.county_prefixes.is_empty()
                || config
                    .county_prefixes
                    .iter()
                    .any(|p| code.starts_with(p.trim()))
        };
        let table = regions();
        let mut villages = Vec::new();
        let mut by_county: HashMap<&'static str, Vec<&'static Region>> = HashMap::new();
        let mut by_township: HashMap<&'static str, Vec<&'static Region>> = HashMap::new();
        for r in table.iter() {
            if r.level == RegionLevel::Village && r.rural && wanted(&r.code) {
                villages.push(r);
                by_county.entry(&r.code[..6]).or_default().push(r);
                by_township.entry(&r.code[..9]).or_default().push(r);
            }
        }
        assert!(
            !villages.is_empty(),
            "no rural village (村委会) of the 2023 division table matches the county prefixes {:?}",
            config.county_prefixes
        );
        let mut urban_by_county: HashMap<&'static str, Vec<&'static Region>> = HashMap::new();
        for r in table.iter() {
            if r.level == RegionLevel::Village && !r.rural && by_county.contains_key(&r.code[..6]) {
                urban_by_county.entry(&r.code[..6]).or_default().push(r);
            }
        }
        let mut services = Vec::new();
        let mut service_index = HashMap::new();
        for c in &vocabulary().list("service_types").codes {
            let (Some(measure), false) = (c.measure.as_deref(), c.units.is_empty()) else {
                continue;
            };
            let units: Vec<Src> = c.units.iter().filter_map(|u| Src::parse(u)).collect();
            if units.is_empty() {
                continue;
            }
            service_index.insert(c.code.as_str(), services.len() as u16);
            services.push(ServiceType {
                code: &c.code,
                zh: &c.zh,
                measure,
                units,
            });
        }
        Some(World {
            seed: config.seed,
            start: config.start,
            horizon,
            villages,
            by_county,
            by_township,
            urban_by_county,
            services,
            service_index,
        })
    }

    /// The catalogue index of a service type code, if the code list has it.
    pub(crate) fn service(&self, code: &str) -> Option<u16> {
        self.service_index.get(code).copied()
    }

    /// Years whose Spring Festival cycles the window touches.
    pub(crate) fn years(&self) -> std::ops::RangeInclusive<i32> {
        self.start.year()..=self.horizon.year()
    }
}

/// The ancestor code of `code` at `level` (the code itself when it has no such ancestor).
pub(crate) fn ancestor(code: &'static str, level: RegionLevel) -> &'static str {
    regions()
        .ancestor(code, level)
        .map_or(code, |r| r.code.as_str())
}
