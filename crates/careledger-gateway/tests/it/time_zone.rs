//! "Today" at ingest is today in the configured zone, not in UTC: a row dated today where the
//! departments are is accepted, a row dated after it is refused as in the future.

use std::time::Duration;

use axum::http::StatusCode;
use careledger_gateway::{CommitConfig, GatewayConfig};
use careledger_model::LocalZone;
use chrono::{Timelike, Utc};
use serde_json::json;

use crate::{Harness, id, ndjson};

#[tokio::test]
async fn a_date_is_in_the_future_by_the_configured_zone() {
    let now = Utc::now();
    // A zone whose day differs from UTC's right now, so the test tells the two apart at any
    // hour: UTC+14 is a day ahead from 10:00 UTC on, UTC−12 a day behind until 12:00 UTC.
    let (zone, ahead) = if now.hour() >= 10 {
        ("Etc/GMT-14", true)
    } else {
        ("Etc/GMT+12", false)
    };
    let zone = LocalZone::parse(zone).unwrap();
    let local_today = zone.today();
    let utc_today = now.date_naive();
    if local_today == utc_today {
        return; // the hour turned while the test started; nothing to tell apart
    }
    let h = Harness::with_config(GatewayConfig {
        commit: CommitConfig {
            window: Duration::from_millis(20),
            max_rows: 100_000,
            receipt_cache: careledger_gateway::commit::RECEIPT_CACHE,
        },
        time_zone: zone,
        ..GatewayConfig::default()
    })
    .await;
    // Ahead: the local today is tomorrow in UTC, and must be accepted. Behind: UTC's today is
    // tomorrow here, and must be refused.
    let day = if ahead { local_today } else { utc_today };
    let row = json!({"record_id": "e-1", "record_version": 1, "op": "upsert", "id_number": id(1),
                     "event_type": "died", "event_date": day.to_string()});
    let (s, _, r) = h
        .post(
            "/v1/ingest/life_events?atomic=false",
            h.tok("civil_affairs"),
            "application/x-ndjson",
            ndjson(&[row]),
            &[],
        )
        .await;
    if ahead {
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["rows_rejected"], 0, "{r}");
    } else {
        assert_eq!(r["errors"][0]["code"], "event_date.future", "{s} {r}");
    }
}
