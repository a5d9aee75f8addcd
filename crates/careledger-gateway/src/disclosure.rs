//! Disclosure control for published (dashboard) tables: count cells below k (zero included)
//! are suppressed, then complementary cells, so that no suppressed value can be recovered by
//! subtracting the visible cells of its row or column from a total.

use std::collections::BTreeSet;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

/// Suppressed cells as (row, column), rows counted across all batches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub cells: BTreeSet<(usize, usize)>,
}

fn is_count(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

fn is_rate(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..)
    )
}

/// Decides which cells of `batch` to suppress for threshold `k`.
pub fn suppress(batch: &RecordBatch, k: i64) -> Suppression {
    let rows = batch.num_rows();
    let schema = batch.schema();
    let count_cols: Vec<usize> = (0..batch.num_columns())
        .filter(|&c| is_count(schema.field(c).data_type()))
        .collect();
    // Counts as i64 (null = not a cell to protect).
    let values: Vec<Vec<Option<i64>>> = count_cols
        .iter()
        .map(|&c| {
            let col = arrow_cast::cast(batch.column(c), &DataType::Int64)
                .expect("integers cast to Int64");
            let col = col.as_primitive::<Int64Type>();
            (0..rows)
                .map(|r| (!col.is_null(r)).then(|| col.value(r)))
                .collect()
        })
        .collect();
    let mut cells: BTreeSet<(usize, usize)> = BTreeSet::new();
    for (column, &c) in values.iter().zip(&count_cols) {
        for (r, v) in column.iter().enumerate() {
            if v.is_some_and(|v| v < k) {
                cells.insert((r, c));
            }
        }
    }
    // Complementary suppression until no row or column has exactly one hidden count.
    #[allow(clippy::needless_range_loop)] // rows index every column's values
    loop {
        let mut added = false;
        for (i, &c) in count_cols.iter().enumerate() {
            let hidden = (0..rows).filter(|r| cells.contains(&(*r, c))).count();
            if hidden == 1 && rows > 1 {
                let pick = (0..rows)
                    .filter(|r| !cells.contains(&(*r, c)) && values[i][*r].is_some())
                    .min_by_key(|r| values[i][*r]);
                if let Some(r) = pick {
                    cells.insert((r, c));
                    added = true;
                }
            }
        }
        for r in 0..rows {
            let hidden = count_cols
                .iter()
                .filter(|c| cells.contains(&(r, **c)))
                .count();
            if hidden == 1 && count_cols.len() > 1 {
                let pick = count_cols
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| !cells.contains(&(r, **c)) && values[*i][r].is_some())
                    .min_by_key(|(i, _)| values[*i][r])
                    .map(|(_, c)| *c);
                if let Some(c) = pick {
                    cells.insert((r, c));
                    added = true;
                }
            }
        }
        if !added {
            break;
        }
    }
    // Rates derive from the counts of their row: hide them where any count is hidden.
    let hidden_rows: BTreeSet<usize> = cells.iter().map(|(r, _)| *r).collect();
    for c in (0..batch.num_columns()).filter(|&c| is_rate(schema.field(c).data_type())) {
        for &r in &hidden_rows {
            cells.insert((r, c));
        }
    }
    Suppression { cells }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{Field, Schema};

    use super::*;

    #[test]
    fn small_cells_and_their_complements_are_hidden() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, false),
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["x", "y", "z"])),
                Arc::new(Int64Array::from(vec![3, 40, 50])),
                Arc::new(Int64Array::from(vec![20, 30, 60])),
            ],
        )
        .unwrap();
        let s = suppress(&batch, 5);
        // (0,1) is 3 < 5; its column needs a second hidden cell (40 at row 1), its row too
        // (20 at (0,2)); then column 2 needs one more (30 at row 1), which also completes row 1.
        assert!(s.cells.contains(&(0, 1)));
        for c in [1, 2] {
            assert_ne!(
                s.cells.iter().filter(|(_, cc)| *cc == c).count(),
                1,
                "column {c}"
            );
        }
        for r in 0..3 {
            assert_ne!(
                s.cells.iter().filter(|(rr, _)| *rr == r).count(),
                1,
                "row {r}"
            );
        }
        assert!(
            !s.cells.iter().any(|(_, c)| *c == 0),
            "labels are never hidden"
        );
    }

    #[test]
    fn zero_is_below_k_and_large_tables_keep_large_cells() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![0, 100, 200, 300]))],
        )
        .unwrap();
        let s = suppress(&batch, 5);
        assert_eq!(
            s.cells.iter().copied().collect::<Vec<_>>(),
            vec![(0, 0), (1, 0)]
        );
    }
}
