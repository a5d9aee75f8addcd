//! What every target checks: a body decoded against each pushed table's wire schema either is
//! refused with a non-empty detail, or yields wire-schema batches and record faults (in row
//! order, each on a row of the body) that `validate_batch_refusing` accepts without an error
//! (a row's problems are row errors, never a failure), every faulted row rejected, and whose
//! stored rows and rejects add up. Any panic, including in these assertions, is a finding.

use std::sync::OnceLock;

use careledger_decode::{BodyFormat, DECODE_BATCH_ROWS, decode_records};
use careledger_model::{PseudonymKey, RowError, Table, ValidationContext, validate_batch_refusing};
use chrono::{NaiveDate, TimeZone, Utc};

/// Small, so that a few bytes per row can also exercise the row limit.
const MAX_ROWS: usize = 20_000;

fn key() -> &'static PseudonymKey {
    static KEY: OnceLock<PseudonymKey> = OnceLock::new();
    KEY.get_or_init(|| PseudonymKey::new(b"fuzzing-secret-0123456789abcdef").expect("key"))
}

pub fn check(format: BodyFormat, body: &[u8]) {
    let ctx = ValidationContext {
        source: "civil_affairs",
        today: NaiveDate::from_ymd_opt(2026, 6, 30).expect("date"),
        key: key(),
        batch_id: "fuzz",
        ingested_at: Utc.with_ymd_and_hms(2026, 6, 30, 12, 0, 0).unwrap(),
    };
    for table in Table::ALL {
        let spec = table.spec();
        let wire = spec.wire_schema();
        let decoded = match decode_records(format, body, &wire, MAX_ROWS) {
            Ok(d) => d,
            Err(e) => {
                assert!(!e.detail.is_empty(), "{e:?}");
                continue;
            }
        };
        let batches = decoded.batches;
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let refused: Vec<RowError> = decoded
            .faults
            .into_iter()
            .map(|f| RowError {
                row: f.row,
                field: f.field,
                code: f.code,
                message: f.message,
            })
            .collect();
        assert!(refused.windows(2).all(|w| w[0].row <= w[1].row));
        assert!(
            refused
                .iter()
                .all(|e| e.row >= 1 && e.row <= total && !e.message.is_empty())
        );
        let mut first_row = 0;
        for batch in &batches {
            assert_eq!(batch.schema(), wire);
            assert!(batch.num_rows() > 0 && batch.num_rows() <= DECODE_BATCH_ROWS);
            let v = validate_batch_refusing(spec, batch, &ctx, first_row, None, &refused)
                .unwrap_or_else(|e| {
                    panic!("{table}: validation failed instead of refusing rows: {e}")
                });
            for e in refused
                .iter()
                .filter(|e| e.row > first_row && e.row <= first_row + v.rows)
            {
                assert!(v.rejected.contains(&(e.row - first_row - 1)), "{e:?}");
            }
            assert_eq!(v.rows, batch.num_rows());
            assert_eq!(v.stored.num_rows() + v.rejected.len(), v.rows);
            assert_eq!(v.stored.schema(), spec.stored_schema());
            assert!(v.rejected.is_empty() || !v.errors.is_empty());
            for e in &v.errors {
                assert!(e.row > first_row && e.row <= first_row + v.rows, "{e:?}");
                assert!(
                    e.message.len() < 2048,
                    "{}: message of {} bytes",
                    e.code,
                    e.message.len()
                );
            }
            first_row += v.rows;
        }
        assert!(first_row <= MAX_ROWS);
    }
}
