//! A rebuild's single pass over the pushed tables: every row is written to the spill file of
//! the rebuild bucket of its woman, so that each bucket then reads its own rows only, instead of
//! scanning every pushed table twice per bucket (which made small buckets, and so a bounded
//! memory, too slow to use).
//!
//! A bucket must see *every version* of each record one of its women is named in (a later
//! version may name another woman, or none: a retraction), so rows are routed by record, in two
//! scans per table:
//! 1. `source`, `record_id`, `person_key` of every row: each record's hash with the bucket of
//!    each of its rows, sorted; records whose rows fall in more than one bucket, or have a row
//!    with no woman, are *shared*, with the set of buckets they touch.
//! 2. every column of every row: a shared record's rows go to each bucket it touches; any other
//!    row to its woman's bucket. Rows of records that name no woman at all go nowhere (no
//!    derivation reads them).
//!
//! Two records with the same hash are treated as one shared record: both reach the buckets of
//! either, where the deriver keeps only the rows of that bucket's women, so a collision costs
//! a few rows read twice, never a wrong answer.
//!
//! The files are Arrow IPC streams (LZ4) in a directory the deriver names (`derived/.spill` of
//! a local store), removed when the [`Spill`] is dropped; a bucket's files are removed as soon
//! as it has been read.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Schema, SchemaRef, TimeUnit};
use careledger_model::Table;
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::ipc::CompressionType;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::deriver::utf8;
use crate::{Result, WarehouseError};

/// No bucket: a row without a woman (or with a key that is not hex).
const NONE: u64 = 256;
/// The low bits of a packed (record hash, bucket) word that hold the bucket (0..=256).
const BUCKET_BITS: u32 = 9;

/// The bucket of a woman's key: its first two hex digits, modulo the number of buckets (the
/// same rule as the deriver's prefixes).
pub(crate) fn bucket_of(key: &str, buckets: usize) -> Option<usize> {
    let b = u8::from_str_radix(key.get(..2)?, 16).ok()?;
    Some(b as usize % buckets)
}

/// A record's identity as a number: the high bits of a fixed hash of (source, record_id).
fn record_hash(source: &str, record_id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    record_id.hash(&mut h);
    h.finish() >> BUCKET_BITS
}

/// The buckets a shared record touches (a bit per bucket, up to 256).
type BucketSet = [u64; 4];

/// Every column as stored, all nullable (what the deriver's scans are cast to).
pub(crate) fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

/// The pushed tables' rows, split by rebuild bucket, on local disk.
pub(crate) struct Spill {
    dir: tempfile::TempDir,
    buckets: usize,
    /// The latest `ingested_at` read (microseconds), over all tables.
    pub(crate) reflects: Option<i64>,
    /// Rows written to the spill files (a shared record's rows once per bucket).
    pub(crate) rows: u64,
}

impl Spill {
    /// Splits the tables registered in `ctx` as `delta_<name>` into `buckets` buckets.
    /// `conform` casts a scanned batch to the table's stored schema.
    pub(crate) async fn write(
        ctx: &SessionContext,
        buckets: usize,
        conform: fn(&RecordBatch, &SchemaRef) -> Result<RecordBatch>,
        dir: &std::path::Path,
    ) -> Result<Spill> {
        let dir = tempfile::Builder::new()
            .prefix("rebuild-")
            .tempdir_in(dir)
            .map_err(|e| {
                WarehouseError::Deriver(format!("cannot create the spill directory: {e}"))
            })?;
        let mut spill = Spill {
            dir,
            buckets,
            reflects: None,
            rows: 0,
        };
        for t in Table::ALL {
            let shared = spill.shared_records(ctx, t).await?;
            spill.split(ctx, t, &shared, conform).await?;
        }
        Ok(spill)
    }

    fn path(&self, t: Table, bucket: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}-{bucket}.arrows", t.as_str()))
    }

    /// Scan 1: the records of `t` whose rows fall in more than one bucket (or have a row
    /// without a woman), with the buckets they touch. Also notes the latest `ingested_at`.
    async fn shared_records(
        &mut self,
        ctx: &SessionContext,
        t: Table,
    ) -> Result<HashMap<u64, BucketSet>> {
        let mut stream = ctx
            .sql(&format!(
                "SELECT source, record_id, person_key, ingested_at FROM delta_{}",
                t.as_str()
            ))
            .await?
            .execute_stream()
            .await?;
        let mut packed: Vec<u64> = Vec::new();
        while let Some(b) = stream.next().await {
            let b = b?;
            let (src, rid, pk) = (
                utf8(&b, "source")?,
                utf8(&b, "record_id")?,
                utf8(&b, "person_key")?,
            );
            let ing = b.column_by_name("ingested_at").ok_or_else(|| {
                WarehouseError::Deriver("column ingested_at is missing from the input".into())
            })?;
            let ing = cast(
                ing,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )?;
            let ing = ing.as_primitive::<TimestampMicrosecondType>();
            if let Some(m) = datafusion::arrow::compute::max(ing) {
                self.reflects = Some(self.reflects.unwrap_or(i64::MIN).max(m));
            }
            packed.reserve(b.num_rows());
            for i in 0..b.num_rows() {
                let bucket = (!pk.is_null(i))
                    .then(|| bucket_of(pk.value(i), self.buckets))
                    .flatten()
                    .map_or(NONE, |b| b as u64);
                packed.push((record_hash(src.value(i), rid.value(i)) << BUCKET_BITS) | bucket);
            }
        }
        drop(stream);
        packed.sort_unstable();
        let mut shared = HashMap::new();
        for group in packed.chunk_by(|a, b| a >> BUCKET_BITS == b >> BUCKET_BITS) {
            let low = |w: u64| w & ((1 << BUCKET_BITS) - 1);
            // Sorted: one bucket throughout iff the first and last agree.
            if low(group[0]) == low(group[group.len() - 1]) {
                continue;
            }
            let mut set: BucketSet = [0; 4];
            for &w in group {
                let b = low(w);
                if b != NONE {
                    set[(b / 64) as usize] |= 1 << (b % 64);
                }
            }
            shared.insert(group[0] >> BUCKET_BITS, set);
        }
        Ok(shared)
    }

    /// Scan 2: every row of `t` to the spill file of each bucket it belongs to.
    async fn split(
        &mut self,
        ctx: &SessionContext,
        t: Table,
        shared: &HashMap<u64, BucketSet>,
        conform: fn(&RecordBatch, &SchemaRef) -> Result<RecordBatch>,
    ) -> Result<()> {
        let stored = t.spec().stored_schema();
        let schema = nullable(&stored);
        let mut stream = ctx
            .sql(&format!("SELECT * FROM delta_{}", t.as_str()))
            .await?
            .execute_stream()
            .await?;
        // Rows wait per bucket until there are enough to write as one message; all the
        // buckets' waiting rows together stay under about 256k rows.
        let flush_at = (262_144 / self.buckets).max(1024);
        let mut pending: Vec<(Vec<RecordBatch>, usize)> = vec![(Vec::new(), 0); self.buckets];
        let mut writers: Vec<Option<StreamWriter<BufWriter<File>>>> =
            (0..self.buckets).map(|_| None).collect();
        let options =
            IpcWriteOptions::default().try_with_compression(Some(CompressionType::LZ4_FRAME))?;
        while let Some(b) = stream.next().await {
            let b = conform(&b?, &stored)?;
            let (src, rid, pk) = (
                utf8(&b, "source")?,
                utf8(&b, "record_id")?,
                utf8(&b, "person_key")?,
            );
            let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.buckets];
            for i in 0..b.num_rows() {
                if let Some(set) = shared.get(&record_hash(src.value(i), rid.value(i))) {
                    for (bucket, rows) in rows.iter_mut().enumerate() {
                        if set[bucket / 64] & (1 << (bucket % 64)) != 0 {
                            rows.push(i as u32);
                        }
                    }
                } else if !pk.is_null(i)
                    && let Some(bucket) = bucket_of(pk.value(i), self.buckets)
                {
                    rows[bucket].push(i as u32);
                }
            }
            for (bucket, rows) in rows.into_iter().enumerate() {
                if rows.is_empty() {
                    continue;
                }
                let part = take_record_batch(&b, &UInt32Array::from(rows))?;
                let (waiting, n) = &mut pending[bucket];
                *n += part.num_rows();
                waiting.push(part);
                if *n >= flush_at {
                    self.flush(t, bucket, &schema, &options, &mut writers, &mut pending)?;
                }
            }
        }
        drop(stream);
        for bucket in 0..self.buckets {
            self.flush(t, bucket, &schema, &options, &mut writers, &mut pending)?;
            if let Some(mut w) = writers[bucket].take() {
                w.finish()?;
            }
        }
        Ok(())
    }

    fn flush(
        &mut self,
        t: Table,
        bucket: usize,
        schema: &SchemaRef,
        options: &IpcWriteOptions,
        writers: &mut [Option<StreamWriter<BufWriter<File>>>],
        pending: &mut [(Vec<RecordBatch>, usize)],
    ) -> Result<()> {
        let (waiting, n) = &mut pending[bucket];
        if waiting.is_empty() {
            return Ok(());
        }
        let batch = concat_batches(schema, waiting.iter())?;
        waiting.clear();
        *n = 0;
        let writer = match &mut writers[bucket] {
            Some(w) => w,
            slot => {
                let file = File::create(self.path(t, bucket)).map_err(|e| {
                    WarehouseError::Deriver(format!("cannot create a spill file: {e}"))
                })?;
                slot.insert(StreamWriter::try_new_with_options(
                    BufWriter::with_capacity(1 << 20, file),
                    schema,
                    options.clone(),
                )?)
            }
        };
        writer.write(&batch)?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// The rows of `bucket`, one batch per pushed table in [`Table::ALL`] order (stored
    /// schema, nullable), and removes its files.
    pub(crate) fn take(&self, bucket: usize) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::with_capacity(Table::ALL.len());
        for t in Table::ALL {
            let schema = nullable(&t.spec().stored_schema());
            let path = self.path(t, bucket);
            let batches = match File::open(&path) {
                Ok(f) => StreamReader::try_new(BufReader::with_capacity(1 << 20, f), None)?
                    .collect::<std::result::Result<Vec<_>, _>>()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(WarehouseError::Deriver(format!(
                        "cannot read a spill file: {e}"
                    )));
                }
            };
            out.push(concat_batches(&schema, &batches)?);
            drop(batches);
            let _ = std::fs::remove_file(&path);
        }
        Ok(out)
    }
}
