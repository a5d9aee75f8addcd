//! Region scopes below the HTTP layer: which levels a scope may ask a report about, the
//! figures it gets there, and the runs a scope whose code ends in zeros must not see.

use std::collections::HashMap;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use careledger_model::RegionLevel;
use careledger_model::status::RuleParams;
use careledger_warehouse::{Access, Warehouse, WarehouseError, scope_levels};

use crate::ledger;

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn scoped(scope: &str) -> Access {
    Access {
        scope: Some(scope.to_string()),
        ..Access::default()
    }
}

/// (region_code, eligible_not_registered, registered_not_eligible) per row.
fn discrepancies(batches: &[RecordBatch]) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let code = b.column_by_name("region_code").unwrap().as_string::<i32>();
        let int = |name: &str| {
            let c = arrow_cast::cast(
                b.column_by_name(name).unwrap(),
                &arrow_schema::DataType::Int64,
            )
            .unwrap();
            c.as_primitive::<arrow_array::types::Int64Type>().clone()
        };
        let (missing, stale) = (
            int("eligible_not_registered"),
            int("registered_not_eligible"),
        );
        for i in 0..b.num_rows() {
            out.push((code.value(i).to_string(), missing.value(i), stale.value(i)));
        }
    }
    out
}

#[test]
fn a_scope_may_ask_for_its_own_level_and_below() {
    use RegionLevel::*;
    let levels = |s: &str| scope_levels(s);
    assert_eq!(
        levels("45"),
        vec![Province, City, County, Township, Village]
    );
    assert_eq!(levels("4501"), vec![City, County, Township, Village]);
    assert_eq!(levels("450123"), vec![County, Township, Village]);
    assert_eq!(levels("450123100"), vec![Township, Village]);
    assert_eq!(levels("450123100201"), vec![Village]);
    // A prefix between two levels covers part of a region of the level above: next level down.
    assert_eq!(levels("45012"), vec![County, Township, Village]);
    assert_eq!(levels("4501231"), vec![Township, Village]);
    assert_eq!(Access::all().levels().len(), 5);
}

#[tokio::test]
async fn a_county_scope_gets_its_county_figures_and_is_refused_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = ledger::load(dir.path(), &ledger::two_counties()).await;
    let wh = Warehouse::new(store, RuleParams::default());
    let at = |level: &str| params(&[("as_of", "2024-06-30"), ("level", level)]);

    let all = discrepancies(
        &wh.run_report("registration_discrepancies", &at("county"))
            .await
            .unwrap(),
    );
    assert_eq!(
        all,
        vec![
            ("450123000000".to_string(), 6, 1),
            ("450125000000".to_string(), 3, 1)
        ]
    );
    let province = discrepancies(
        &wh.run_report("registration_discrepancies", &at("province"))
            .await
            .unwrap(),
    );
    assert_eq!(
        province,
        vec![("450000000000".to_string(), 9, 2)],
        "the province is the sum of its counties"
    );

    let county = scoped("450123");
    let mine = discrepancies(
        &wh.run_report_as("registration_discrepancies", &at("county"), &county)
            .await
            .unwrap(),
    );
    assert_eq!(mine, vec![("450123000000".to_string(), 6, 1)]);
    let below = discrepancies(
        &wh.run_report_as("registration_discrepancies", &at("township"), &county)
            .await
            .unwrap(),
    );
    assert!(below.iter().all(|(c, _, _)| c.starts_with("450123")));
    assert_eq!(
        below
            .iter()
            .map(|r| (r.1, r.2))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
        (6, 1)
    );

    for (report, level) in [
        ("registration_discrepancies", "province"),
        ("registration_discrepancies", "city"),
        ("stock", "province"),
        ("entries", "city"),
        ("revisions", "province"),
    ] {
        match wh.run_report_as(report, &at(level), &county).await {
            Err(WarehouseError::OutOfScope { name, message }) => {
                assert_eq!(name, "level");
                assert!(
                    message.contains("450123") && message.contains("county, township, village"),
                    "{report} {level}: {message}"
                );
            }
            other => panic!("{report} at {level} with a county scope: {other:?}"),
        }
    }
    // A region outside the scope is refused; one containing it is narrowed to it.
    let other = params(&[
        ("as_of", "2024-06-30"),
        ("level", "county"),
        ("region", "450125"),
    ]);
    assert!(matches!(
        wh.run_report_as("stock", &other, &county).await,
        Err(WarehouseError::OutOfScope { .. })
    ));
}

#[tokio::test]
async fn a_scope_ending_in_zeros_does_not_see_the_runs_of_the_region_above() {
    let dir = tempfile::tempdir().unwrap();
    let store = ledger::load(dir.path(), &ledger::two_counties()).await;
    let wh = Warehouse::new(store, RuleParams::default());
    // 450100 is 南宁市's six-digit code, a likely mistake for the city scope 4501; as a prefix
    // it names no county, but the city's runs are coded 450100000000.
    let snap = wh.snapshot_as(None, &scoped("450100")).await.unwrap();
    let n = snap
        .ctx
        .sql("SELECT count(*) AS n FROM ledger_runs")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let n = n[0]
        .column(0)
        .as_primitive::<arrow_array::types::Int64Type>()
        .value(0);
    assert_eq!(n, 0, "runs of women outside the scope");
}
