//! Days are Beijing days (the configured zone): `local_date`, `local_day_start` and a
//! date-only `known_at`.

use careledger_model::LocalZone;
use careledger_model::status::RuleParams;
use careledger_warehouse::Warehouse;
use careledger_warehouse::reports::parse_instant;

async fn sql_text(wh: &Warehouse, sql: &str) -> String {
    let snap = wh.snapshot(None).await.unwrap();
    let batches = snap.ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow_cast::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn days_are_counted_in_the_configured_zone() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        careledger_store::Store::open(dir.path().to_str().unwrap())
            .await
            .unwrap(),
    );
    let beijing = Warehouse::new(store.clone(), RuleParams::default());
    // 01:00 on 10 August in Beijing is still 9 August in UTC: the frozen-period rule (on or
    // after the 10th of the next month) must see the 10th.
    let q = "SELECT local_date(TIMESTAMP '2024-08-09T17:00:00Z') AS d, \
             local_day_start(DATE '2024-07-10') AS s";
    let text = sql_text(&beijing, q).await;
    assert!(text.contains("2024-08-10"), "{text}");
    assert!(text.contains("2024-07-09T16:00:00Z"), "{text}");
    // frozen_from(d) is the 10th of the next month, as the date arithmetic says it, every
    // day of three years.
    let frozen_q = "SELECT count(*) AS days, sum(CASE WHEN frozen_from(d) = CAST(date_trunc('month', d) \
             + INTERVAL '1 month' + INTERVAL '9 days' AS DATE) THEN 1 ELSE 0 END) AS same \
             FROM (SELECT CAST(d AS DATE) AS d FROM unnest(range(DATE '2023-01-01', \
             DATE '2026-01-01', INTERVAL '1 day')) AS t(d))";
    let frozen = sql_text(&beijing, frozen_q).await;
    assert!(frozen.contains("| 1096 | 1096 |"), "{frozen}");
    let utc = Warehouse::new(store, RuleParams::default())
        .with_time_zone(LocalZone::parse("UTC").unwrap());
    let text = sql_text(&utc, q).await;
    assert!(
        text.contains("2024-08-09") && text.contains("2024-07-10T00:00:00Z"),
        "{text}"
    );
    // A date-only known_at is the start of that day in Beijing.
    assert_eq!(
        parse_instant("2024-07-10", beijing.zone())
            .unwrap()
            .to_rfc3339(),
        "2024-07-09T16:00:00+00:00"
    );
}
