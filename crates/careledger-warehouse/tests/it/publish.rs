//! Publication's part of the warehouse: cell keys are computed only for publication, never in
//! an answer or a plan of anyone else; the record keys of the same women add up to the same
//! cell key in different reports; revisions takes both knowledge instants.

use std::collections::HashMap;

use careledger_model::status::RuleParams;
use careledger_warehouse::reports::{find, without_cell_keys};
use careledger_warehouse::{Access, Warehouse, WarehouseError};
use datafusion::physical_plan::displayable;

use crate::ledger;

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn warehouse() -> (tempfile::TempDir, Warehouse) {
    let ledger = ledger::two_counties();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        careledger_store::Store::open(dir.path().to_str().unwrap())
            .await
            .unwrap(),
    );
    for (n, b) in ledger.batches.iter().enumerate() {
        ledger::commit(&store, b, n).await;
    }
    let wh = Warehouse::new(store, RuleParams::default()).with_cell_key_secret([3; 32]);
    wh.catch_up().await.unwrap();
    (dir, wh)
}

fn publication() -> Access {
    Access {
        publication: true,
        ..Access::all()
    }
}

#[tokio::test]
async fn only_publication_computes_cell_keys() {
    let (_dir, wh) = warehouse().await;
    let given = params(&[("as_of", "2024-06-30"), ("level", "township")]);
    for name in [
        "stock",
        "turnover_and_returns",
        "coverage_by_measure",
        "balance",
    ] {
        let spec = find(name).unwrap();
        let snap = wh.snapshot(None).await.unwrap();
        let df =
            without_cell_keys(snap.report_frame(spec, &HashMap::new()).await.unwrap()).unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(true).to_string();
        assert!(
            !text.contains("cell_key"),
            "{name} computes cell keys for nobody:\n{text}"
        );
        let (schema, _) = wh
            .run_report_with_schema(name, &HashMap::new(), &Access::all())
            .await
            .unwrap();
        assert!(schema.fields().iter().all(|f| !f.name().ends_with("__ck")));
    }
    let (schema, batches) = wh
        .run_report_with_schema("stock", &given, &publication())
        .await
        .unwrap();
    let ck = schema.index_of("women__ck").unwrap();
    let keys = arrow_cast::cast(batches[0].column(ck), &arrow_schema::DataType::Int64).unwrap();
    let keys = keys
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap();
    assert!(keys.iter().all(|k| k.is_some_and(|k| k > 0)), "{keys:?}");
    // Without a secret there is no publication.
    let store = wh.store().clone();
    let plain = Warehouse::new(store, RuleParams::default());
    let e = plain
        .run_report_with_schema("stock", &given, &publication())
        .await
        .unwrap_err();
    assert!(matches!(e, WarehouseError::BadParam { .. }), "{e}");
}

#[tokio::test]
async fn the_same_women_have_the_same_cell_key_in_every_report() {
    let (_dir, wh) = warehouse().await;
    let cell = |batches: &[arrow_array::RecordBatch], col: &str| -> HashMap<String, (i64, i64)> {
        let mut out = HashMap::new();
        for b in batches {
            let region = arrow_cast::cast(
                b.column_by_name("region_code").unwrap(),
                &arrow_schema::DataType::Utf8,
            )
            .unwrap();
            let region = region
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            let value = arrow_cast::cast(
                b.column_by_name(col).unwrap(),
                &arrow_schema::DataType::Int64,
            )
            .unwrap();
            let value = value
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            let ck = arrow_cast::cast(
                b.column_by_name(&format!("{col}__ck")).unwrap(),
                &arrow_schema::DataType::Int64,
            )
            .unwrap();
            let ck = ck
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .unwrap();
            for r in 0..b.num_rows() {
                out.insert(region.value(r).to_string(), (value.value(r), ck.value(r)));
            }
        }
        out
    };
    // Stock at the end of May = stock_before of June in turnover = stock_at_end of May's balance.
    let (_, stock) = wh
        .run_report_with_schema(
            "stock",
            &params(&[("as_of", "2024-05-31"), ("level", "county")]),
            &publication(),
        )
        .await
        .unwrap();
    let (_, turnover) = wh
        .run_report_with_schema(
            "turnover_and_returns",
            &params(&[
                ("from", "2024-06-01"),
                ("to", "2024-07-01"),
                ("level", "county"),
            ]),
            &publication(),
        )
        .await
        .unwrap();
    let (_, balance) = wh
        .run_report_with_schema(
            "balance",
            &params(&[
                ("from", "2024-05-01"),
                ("to", "2024-06-01"),
                ("level", "county"),
            ]),
            &publication(),
        )
        .await
        .unwrap();
    let stock = cell(&stock, "women");
    assert!(!stock.is_empty());
    assert_eq!(stock, cell(&turnover, "stock_before"));
    assert_eq!(stock, cell(&balance, "stock_at_end"));
}

#[tokio::test]
async fn revisions_takes_both_instants() {
    let (_dir, wh) = warehouse().await;
    let e = wh
        .run_report(
            "revisions",
            &params(&[
                ("frozen_at", "2024-07-10T00:00:00Z"),
                ("known_at", "2024-07-01T00:00:00Z"),
            ]),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("known_at"), "{e}");
    // The later instant decides the "now" side: asked as known at the frozen instant itself,
    // nothing is revised.
    let same = wh
        .run_report(
            "revisions",
            &params(&[
                ("frozen_at", "2024-07-10T00:00:00Z"),
                ("known_at", "2024-07-10T00:00:00Z"),
                ("as_of", "2024-06-30"),
            ]),
        )
        .await
        .unwrap();
    let b = &same[0];
    let revision = b.column_by_name("stock_revision").unwrap();
    let revision = arrow_cast::cast(revision, &arrow_schema::DataType::Int64).unwrap();
    let revision = revision
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap();
    assert!(revision.iter().all(|v| v == Some(0)), "{revision:?}");
    assert!(b.column_by_name("coverage_now").is_some());
}

/// `exact_rate` rounds the exact quotient to 4 places, halves away from zero, for every
/// numerator and denominator up to 600 (a tie such as 351/480 = 0.73125 goes up, where the
/// double 351/480 = 0.73124999… rounded afterwards goes down), and gives the double nearest
/// that decimal; SQL gives the same as Rust, and NULL for a zero denominator or a NULL.
#[tokio::test]
async fn rates_are_rounded_exactly_in_rust_and_in_sql() {
    use careledger_warehouse::publish::exact_rate;
    for n in 0..=600_i64 {
        for d in 1..=600_i64 {
            let scaled = n * 10_000;
            let (floor, rem) = (scaled / d, scaled % d);
            let expected = if 2 * rem >= d { floor + 1 } else { floor };
            let got = exact_rate(n, d).unwrap();
            assert_eq!(got, expected as f64 / 10_000.0, "{n}/{d}");
            let shown = got.to_string();
            assert!(
                shown.split('.').nth(1).is_none_or(|f| f.len() <= 4),
                "{n}/{d} prints as {shown}"
            );
        }
    }
    assert_eq!(exact_rate(351, 480), Some(0.7313));
    assert_eq!(format!("{:.4}", 351.0_f64 / 480.0), "0.7312"); // a correctly rounded double
    assert_eq!(exact_rate(-1, 3), Some(-0.3333));
    assert_eq!(exact_rate(-1, 8), Some(-0.125));
    assert_eq!(exact_rate(5, 0), None);

    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        careledger_store::Store::open(dir.path().to_str().unwrap())
            .await
            .unwrap(),
    );
    let wh = careledger_warehouse::Warehouse::new(
        store,
        careledger_model::status::RuleParams::default(),
    );
    let snap = wh.snapshot(None).await.unwrap();
    let batches = snap
        .ctx
        .sql(
            "SELECT exact_rate(351, 480) AS tie, exact_rate(CAST(2 AS INT), count(*)) AS two_thirds, \
             exact_rate(1, 0) AS by_zero, exact_rate(NULL, 3) AS unknown \
             FROM (VALUES (1), (2), (3)) AS t(x)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow_cast::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains("| 0.7313 | 0.6667     |         |         |"),
        "{text}"
    );
}
