//! A rebuild's sorted runs: each bucket's rows of a derived table with a cluster order are
//! sorted in memory (one bucket at a time) and spilled; at the end the runs are merged, a few
//! thousand rows from each at a time, into one stream in that order. So a derived table is
//! written as a few files sorted throughout (what the reports' filters prune by), not one
//! sorted file per bucket, without ever holding the table in memory.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

use arrow_array::RecordBatch;
use arrow_schema::{SchemaRef, SortOptions};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::ipc::CompressionType;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::{Result, WarehouseError};

/// Rows read from each run at a time (a merge holds one slice of every run), and rows per
/// merged batch.
const SLICE: usize = 2048;

/// Sorted runs of one table, on local disk (in the deriver's spill directory), removed when
/// dropped.
pub(crate) struct Runs {
    dir: tempfile::TempDir,
    files: Vec<PathBuf>,
    schema: Option<SchemaRef>,
    rows: usize,
}

impl Runs {
    pub(crate) fn new(dir: &std::path::Path) -> Result<Runs> {
        let dir = tempfile::Builder::new()
            .prefix("runs-")
            .tempdir_in(dir)
            .map_err(|e| {
                WarehouseError::Deriver(format!("cannot create a spill directory: {e}"))
            })?;
        Ok(Runs {
            dir,
            files: Vec::new(),
            schema: None,
            rows: 0,
        })
    }

    /// Rows spilled so far.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Spills one run (`batch`, already in the table's order).
    pub(crate) fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let path = self.dir.path().join(format!("{}.arrows", self.files.len()));
        let file = File::create(&path)
            .map_err(|e| WarehouseError::Deriver(format!("cannot create a spill file: {e}")))?;
        let options =
            IpcWriteOptions::default().try_with_compression(Some(CompressionType::LZ4_FRAME))?;
        let mut w = StreamWriter::try_new_with_options(
            BufWriter::with_capacity(1 << 20, file),
            &batch.schema(),
            options,
        )?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = SLICE.min(batch.num_rows() - offset);
            w.write(&batch.slice(offset, len))?;
            offset += len;
        }
        w.finish()?;
        self.rows += batch.num_rows();
        self.schema.get_or_insert_with(|| batch.schema());
        self.files.push(path);
        Ok(())
    }

    /// Merges the runs by `order` (ascending, nulls first, as they were sorted).
    pub(crate) fn merge(self, order: &[&str]) -> Result<Merge> {
        let Some(schema) = self.schema.clone() else {
            return Ok(Merge {
                _runs: self,
                schema: None,
                converter: None,
                order: vec![],
                cursors: vec![],
                heap: vec![],
                pool: vec![],
            });
        };
        let order: Vec<usize> = order
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<std::result::Result<_, _>>()?;
        let fields = order
            .iter()
            .map(|&i| {
                SortField::new_with_options(
                    schema.field(i).data_type().clone(),
                    SortOptions {
                        descending: false,
                        nulls_first: true,
                    },
                )
            })
            .collect();
        let converter = RowConverter::new(fields)?;
        let mut merge = Merge {
            schema: Some(schema),
            converter: Some(converter),
            order,
            cursors: Vec::with_capacity(self.files.len()),
            heap: Vec::new(),
            pool: Vec::new(),
            _runs: self,
        };
        for path in merge._runs.files.clone() {
            let f = File::open(&path)
                .map_err(|e| WarehouseError::Deriver(format!("cannot read a spill file: {e}")))?;
            let reader = StreamReader::try_new(BufReader::with_capacity(1 << 16, f), None)?;
            merge.cursors.push(Cursor {
                reader,
                batch: None,
                rows: None,
                at: 0,
                pooled: 0,
            });
            let run = merge.cursors.len() - 1;
            if merge.advance(run)? {
                merge.heap.push(run);
                let n = merge.heap.len() - 1;
                merge.sift_up(n);
            }
        }
        Ok(merge)
    }
}

struct Cursor {
    reader: StreamReader<BufReader<File>>,
    batch: Option<RecordBatch>,
    rows: Option<Rows>,
    at: usize,
    /// The index of `batch` in the merge's pool.
    pooled: usize,
}

/// The merged rows, in batches of up to [`SLICE`] rows ([`Merge::next_batch`]).
pub(crate) struct Merge {
    _runs: Runs,
    schema: Option<SchemaRef>,
    converter: Option<RowConverter>,
    order: Vec<usize>,
    cursors: Vec<Cursor>,
    /// A binary min-heap of the runs that have rows left, by their current row.
    heap: Vec<usize>,
    /// The batches the pending output rows point into.
    pool: Vec<RecordBatch>,
}

impl Merge {
    /// Loads the next batch of `run` (false when the run is done).
    fn advance(&mut self, run: usize) -> Result<bool> {
        let converter = self.converter.as_ref().expect("set with a schema");
        let cursor = &mut self.cursors[run];
        match cursor.reader.next() {
            Some(b) => {
                let b = b?;
                let cols: Vec<_> = self.order.iter().map(|&i| b.column(i).clone()).collect();
                cursor.rows = Some(converter.convert_columns(&cols)?);
                cursor.at = 0;
                cursor.pooled = self.pool.len();
                self.pool.push(b.clone());
                cursor.batch = Some(b);
                Ok(true)
            }
            None => {
                cursor.batch = None;
                cursor.rows = None;
                Ok(false)
            }
        }
    }

    fn less(&self, a: usize, b: usize) -> bool {
        let (ca, cb) = (&self.cursors[a], &self.cursors[b]);
        let ra = ca.rows.as_ref().expect("live run").row(ca.at);
        let rb = cb.rows.as_ref().expect("live run").row(cb.at);
        // Ties by run number: the merge is deterministic.
        (ra, a) < (rb, b)
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.less(self.heap[i], self.heap[parent]) {
                self.heap.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.less(self.heap[l], self.heap[least]) {
                least = l;
            }
            if r < self.heap.len() && self.less(self.heap[r], self.heap[least]) {
                least = r;
            }
            if least == i {
                return;
            }
            self.heap.swap(i, least);
            i = least;
        }
    }

    /// The next rows in order, or None when every run is done.
    pub(crate) fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some(schema) = self.schema.clone() else {
            return Ok(None);
        };
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(SLICE);
        while picks.len() < SLICE && !self.heap.is_empty() {
            let run = self.heap[0];
            let c = &mut self.cursors[run];
            picks.push((c.pooled, c.at));
            c.at += 1;
            let done = c.at == c.batch.as_ref().expect("live run").num_rows();
            if done && !self.advance(run)? {
                // The run is finished: the heap's last run takes its place.
                let last = self.heap.pop().expect("not empty");
                if !self.heap.is_empty() {
                    self.heap[0] = last;
                }
            }
            if !self.heap.is_empty() {
                self.sift_down(0);
            }
        }
        if picks.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&RecordBatch> = self.pool.iter().collect();
        let out = interleave_record_batch(&refs, &picks)?;
        // Keep only the batches the runs still read from.
        let mut pool = Vec::new();
        for c in self.cursors.iter_mut() {
            if let Some(b) = &c.batch {
                c.pooled = pool.len();
                pool.push(b.clone());
            }
        }
        self.pool = pool;
        debug_assert_eq!(out.schema().fields().len(), schema.fields().len());
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Array, ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};

    use super::*;

    fn sorted(batch: &RecordBatch) -> RecordBatch {
        let cols: Vec<SortColumn> = (0..2)
            .map(|i| SortColumn {
                values: batch.column(i).clone(),
                options: Some(SortOptions {
                    descending: false,
                    nulls_first: true,
                }),
            })
            .collect();
        take_record_batch(batch, &lexsort_to_indices(&cols, None).unwrap()).unwrap()
    }

    /// Runs of random rows (with nulls, ties, runs longer than a slice and empty ones) merge
    /// into exactly the rows of all runs, sorted as one sort of them all would sort them.
    #[test]
    fn merged_runs_equal_one_sort_of_all_rows() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        let mut runs = Runs::new(&std::env::temp_dir()).unwrap();
        let mut all = Vec::new();
        for len in [0usize, 1, 20_000, 5, 9_000, 8192] {
            let level: StringArray = (0..len)
                .map(|_| match next() % 4 {
                    0 => None,
                    n => Some(format!("l{n}")),
                })
                .collect();
            let day: Int64Array = (0..len)
                .map(|_| (next() % 10 != 0).then(|| (next() % 50) as i64))
                .collect();
            let id: Int64Array = (0..len).map(|_| Some(next() as i64)).collect();
            // One schema for every run, as a derived table's rows have.
            let b = RecordBatch::try_from_iter_with_nullable(vec![
                ("level", Arc::new(level) as ArrayRef, true),
                ("day", Arc::new(day) as ArrayRef, true),
                ("id", Arc::new(id) as ArrayRef, true),
            ])
            .unwrap();
            let b = sorted(&b);
            runs.push(&b).unwrap();
            if len > 0 {
                all.push(b);
            }
        }
        let schema = all[0].schema();
        let mut merge = runs.merge(&["level", "day"]).unwrap();
        let mut out = Vec::new();
        while let Some(b) = merge.next_batch().unwrap() {
            assert!(b.num_rows() <= SLICE);
            out.push(b);
        }
        let merged = datafusion::arrow::compute::concat_batches(&schema, &out).unwrap();
        let expected = datafusion::arrow::compute::concat_batches(&schema, &all).unwrap();
        assert_eq!(merged.num_rows(), expected.num_rows());
        // Same order of the keys as one sort of everything.
        let expected_sorted = sorted(&expected);
        assert_eq!(merged.column(0), expected_sorted.column(0));
        assert_eq!(merged.column(1), expected_sorted.column(1));
        // Same rows (the ids, as a multiset).
        let ids = |b: &RecordBatch| {
            let mut v: Vec<i64> = b
                .column(2)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec();
            v.sort_unstable();
            v
        };
        assert_eq!(ids(&merged), ids(&expected));
    }

    #[test]
    fn no_runs_merge_to_nothing() {
        let mut merge = Runs::new(&std::env::temp_dir())
            .unwrap()
            .merge(&["level"])
            .unwrap();
        assert!(merge.next_batch().unwrap().is_none());
    }
}
