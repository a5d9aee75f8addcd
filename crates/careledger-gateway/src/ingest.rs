//! `POST /v1/ingest/{table}`: authenticate, decode, validate column-wise, then group-commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{Array, RecordBatch, StringArray};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use careledger_decode::{BodyFormat, CellKind, SheetColumn, SheetSpec, decode_records};
use careledger_model::{
    MAX_MESSAGE_CHARS, RowError, Table, ValidationContext, mask_id, redact_ids,
    validate_batch_refusing,
};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::AppState;
use crate::auth::Role;
use crate::commit::{Admission, Job};
use crate::problem::Problem;
use crate::receipt::{MAX_RECEIPT_ERRORS, Receipt};

/// Query parameters of an ingest request.
#[derive(Debug, Deserialize)]
pub struct IngestParams {
    /// true (default): one invalid row refuses the whole batch.
    pub atomic: Option<bool>,
    /// true: validate and answer, store nothing.
    pub dry_run: Option<bool>,
    /// `all`: the reply lists every row error (up to [`MAX_LISTED_ERRORS`]), not the first
    /// [`MAX_RECEIPT_ERRORS`]. The receipt kept in the store keeps the first ones only.
    pub errors: Option<String>,
}

/// A request body's `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

fn content_encoding(headers: &HeaderMap) -> Result<Encoding, Problem> {
    let Some(value) = header_str(headers, header::CONTENT_ENCODING.as_str())? else {
        return Ok(Encoding::Identity);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-encoding",
            format!(
                "Content-Encoding {:?} is not accepted; send the body as is, or compressed with gzip or zstd (one encoding)",
                value.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// The decompressed body, refused (413) as soon as it passes `limit` bytes: a small body
/// that inflates to gigabytes is never held whole, only `limit + 1` bytes of it.
fn decompress(encoding: Encoding, bytes: Bytes, limit: usize) -> Result<Bytes, Problem> {
    use std::io::Read;
    let mut reader: Box<dyn Read + '_> = match encoding {
        Encoding::Identity => return Ok(bytes),
        // Concatenated gzip members are one body (as `cat a.gz b.gz` makes).
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&bytes[..])),
        Encoding::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(&bytes[..])
                .map_err(|e| Problem::internal("zstd decoder", &e))?;
            // A frame may ask for a window of up to 2 GiB; 128 MiB is zstd's default bound.
            d.window_log_max(27)
                .map_err(|e| Problem::internal("zstd decoder", &e))?;
            Box::new(d)
        }
    };
    let cap = limit.saturating_add(1);
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while out.len() < cap {
        let room = (cap - out.len()).min(buf.len());
        let n = match reader.read(&mut buf[..room]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Problem::bad_request(
                    "bad-encoding",
                    format!(
                        "the body is not valid {} data after {} decompressed bytes: {e}",
                        encoding.as_str(),
                        out.len()
                    ),
                ));
            }
        };
        if out.capacity() - out.len() < n {
            // Grow by doubling, but never past the cap.
            let want = (out.capacity() * 2).max(256 * 1024).min(cap);
            out.reserve_exact(want.max(out.len() + n) - out.len());
        }
        out.extend_from_slice(&buf[..n]);
    }
    if out.len() > limit {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!(
                "the body decompresses ({}) to more than the limit of {limit} bytes; split it into smaller batches",
                encoding.as_str()
            ),
        ));
    }
    Ok(Bytes::from(out))
}

/// The most row errors one reply lists with `errors=all`.
pub const MAX_LISTED_ERRORS: usize = 100_000;

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Problem> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                Problem::bad_request("bad-header", format!("header {name} is not visible ASCII"))
            })
        })
        .transpose()
}

/// Reserves this body's bytes (KiB) of the ingest budget: its `Content-Length` when it is
/// sent uncompressed, else the body limit (what it may decompress to); never more than the
/// whole budget, so one body alone always fits. Waits at most a second (None: no room).
async fn reserve_budget(
    state: &AppState,
    headers: &HeaderMap,
    encoding: &Encoding,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|_| matches!(encoding, Encoding::Identity));
    let bytes = declared
        .unwrap_or(state.config.max_body_bytes)
        .min(state.config.max_body_bytes)
        .min(state.config.ingest_budget_bytes);
    let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    tokio::time::timeout(
        Duration::from_secs(1),
        state.ingest_budget.clone().acquire_many_owned(kib),
    )
    .await
    .ok()?
    .ok()
}

/// 503 with Retry-After and `Connection: close`: the bodies in flight fill the ingest budget.
fn budget_exhausted(state: &AppState) -> Response {
    let mut resp = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ingest-busy",
        format!(
            "the server is holding its budget of {} MiB of ingest bodies from other senders; nothing of this batch was read or stored: retry after the time in Retry-After with the same Idempotency-Key",
            state.config.ingest_budget_bytes / (1024 * 1024)
        ),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    // The body was not read: the connection is not reused.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

pub async fn ingest(
    State(state): State<Arc<AppState>>,
    Path(table_name): Path<String>,
    params: Result<Query<IngestParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let received_at = Utc::now();
    let principal = state.tokens.authenticate(&headers)?;
    let Query(params) = params.map_err(|e| {
        Problem::bad_request(
            "bad-parameter",
            format!(
                "{}; the parameters are atomic=true|false and dry_run=true|false",
                e.body_text()
            ),
        )
    })?;
    let table = Table::parse(&table_name).ok_or_else(|| {
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.as_str()).collect();
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-table",
            format!(
                "there is no table {table_name:?}; the pushed tables are {}",
                names.join(", ")
            ),
        )
    })?;
    let Role::Source(source) = &principal.role else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {} has role {}; only a source token (source:<id>) may push records",
                principal.name,
                principal.role.as_string()
            ),
        ));
    };
    let format =
        BodyFormat::from_content_type(header_str(&headers, header::CONTENT_TYPE.as_str())?)?;
    let encoding = content_encoding(&headers)?;
    let key = header_str(&headers, "idempotency-key")?.map(str::to_string);
    if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 200) {
        return Err(Problem::bad_request(
            "bad-idempotency-key",
            "Idempotency-Key must be 1 to 200 characters",
        ));
    }
    let seq = header_str(&headers, "batch-seq")?
        .map(|s| s.trim().parse::<i64>().ok().filter(|v| *v >= 0))
        .map(|v| {
            v.ok_or_else(|| {
                Problem::bad_request("bad-batch-seq", "Batch-Seq must be a non-negative integer")
            })
        })
        .transpose()?;
    let atomic = params.atomic.unwrap_or(true);
    let dry_run = params.dry_run.unwrap_or(false);

    // The body's share of the server's ingest budget, held until the batch is answered.
    let Some(_budget) = reserve_budget(&state, &headers, &encoding).await else {
        return Ok(budget_exhausted(&state));
    };
    let bytes = axum::body::to_bytes(body, state.config.max_body_bytes)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e).is_some_and(|s| {
                s.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
            }) || e.to_string().contains("length limit");
            if too_large {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    format!(
                        "the body exceeds the limit of {} bytes; split it into smaller batches",
                        state.config.max_body_bytes
                    ),
                )
            } else {
                Problem::bad_request("body-read", format!("could not read the body: {e}"))
            }
        })?;
    // The size limit holds for the body as sent and again for what it decompresses to.
    let bytes = decompress(encoding, bytes, state.config.max_body_bytes)?;

    let error_cap = match params.errors.as_deref() {
        None | Some("first") => MAX_RECEIPT_ERRORS,
        Some("all") => MAX_LISTED_ERRORS,
        Some(other) => {
            return Err(Problem::bad_request(
                "bad-parameter",
                format!("errors={other}: use errors=all or errors=first"),
            ));
        }
    };
    // Duplicates are answered before any work on the body.
    let admission = if dry_run {
        Admission::Fresh { seq_gap: None }
    } else {
        state
            .committer
            .dedup
            .admit(&state.store, source, key.as_deref(), seq)
            .await?
    };
    let seq_gap = match admission {
        Admission::Duplicate(r) => return Ok((StatusCode::OK, Json(*r)).into_response()),
        Admission::Fresh { seq_gap } => seq_gap,
    };
    let receipt = Receipt {
        batch_id: uuid::Uuid::now_v7().to_string(),
        table: table.as_str().to_string(),
        source: source.clone(),
        format: format.as_str().to_string(),
        atomic,
        dry_run,
        duplicate: false,
        rows_received: 0,
        rows_accepted: 0,
        rows_rejected: 0,
        error_count: 0,
        errors: Vec::new(),
        idempotency_key: key.clone(),
        idempotency_key_redacted: false,
        batch_seq: seq,
        seq_gap,
        table_version: None,
        commit_group: None,
        received_at,
        committed_at: None,
    };
    // Decoding, validation and pseudonymisation of up to the body limit are CPU work: they
    // run on the blocking pool, so the async workers keep answering other requests meanwhile.
    let (prepared, mut receipt) = {
        let state = state.clone();
        let sender = (source.to_string(), principal.scope.clone());
        tokio::task::spawn_blocking(move || {
            let mut receipt = receipt;
            let prepared = prepare(
                &state,
                table,
                (sender.0.as_str(), sender.1.as_deref()),
                format,
                &bytes,
                &mut receipt,
                error_cap,
            );
            (prepared, receipt)
        })
        .await
        .map_err(|e| Problem::internal("decoding the body", &e))?
    };
    let (stored, rejects) = match prepared {
        Ok(x) => x,
        Err(p) => {
            if !dry_run {
                state.committer.dedup.release(&receipt, false);
            }
            return Err(p);
        }
    };
    if dry_run {
        return Ok((StatusCode::OK, Json(receipt)).into_response());
    }
    if atomic && receipt.rows_rejected > 0 {
        state.committer.dedup.release(&receipt, false);
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-rows",
            format!(
                "{} of {} rows are invalid, so nothing was stored (atomic=true){}; fix them, or send atomic=false to store the valid rows",
                receipt.rows_rejected,
                receipt.rows_received,
                first_error(&receipt.errors)
            ),
        )
        .with("receipt", serde_json::to_value(&receipt).expect("receipt serializes")));
    }
    // The stored receipt lists the first errors; the reply may list them all.
    let all_errors = (receipt.errors.len() > MAX_RECEIPT_ERRORS).then(|| receipt.errors.clone());
    receipt.errors.truncate(MAX_RECEIPT_ERRORS);
    let (reply, answer) = oneshot::channel();
    let job = Job {
        receipt: receipt.clone(),
        stored,
        rejects,
        reply,
    };
    if let Err(p) = state.committer.submit(table, job).await {
        state.committer.dedup.release(&receipt, false);
        return Err(p);
    }
    match answer.await {
        Ok(Ok(mut r)) => {
            state
                .metrics
                .ingest(table.as_str(), &r.source, r.rows_accepted, r.rows_rejected);
            if let Some(all) = all_errors {
                r.errors = all;
            }
            Ok((StatusCode::OK, Json(r)).into_response())
        }
        Ok(Err(p)) => Err(p),
        Err(_) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the commit task stopped; nothing was acknowledged, retry with the same Idempotency-Key",
        )),
    }
}

/// "; the first: row 3, …" for a refusal's detail (messages are already screened for IDs).
fn first_error(errors: &[RowError]) -> String {
    errors
        .iter()
        .min_by_key(|e| e.row)
        .map(|e| {
            let m: String = e.message.chars().take(300).collect();
            format!("; the first: row {} ({}): {m}", e.row, e.code)
        })
        .unwrap_or_default()
}

type Prepared = (Vec<RecordBatch>, Option<RecordBatch>);

/// Decodes and validates; fills the counts and errors of `receipt`. Works batch by batch and
/// keeps only what the answer needs (the first errors, the rejects as compact Arrow rows), so
/// memory stays proportional to the body even when every row has several errors. `sender` is
/// the token's source and region scope: a scoped source writes only rows inside its scope.
/// How a source's `.xlsx` sheets of a table map onto its fields: headers from the mapping
/// profiles (`schemas/v1/sheets/`), each field's kind from the contract, code labels from the
/// code lists; a sheet with no `source` column is the sender's, and (workbooks only,
/// `upsert_by_default`) one with no `op` upserts.
fn sheet_spec(
    spec: &careledger_model::TableSpec,
    source: &str,
    upsert_by_default: bool,
) -> SheetSpec {
    use careledger_model::FieldKind;
    let (profile, headers, ignore) = careledger_model::sheet_headers(source, spec.table);
    let columns = spec
        .fields
        .iter()
        .map(|f| SheetColumn {
            field: f.name.clone(),
            headers: headers.get(&f.name).cloned().unwrap_or_default(),
            kind: match &f.kind {
                FieldKind::Integer { .. } => CellKind::Integer,
                FieldKind::Decimal { .. } => CellKind::Decimal,
                FieldKind::Date { .. } => CellKind::Date,
                FieldKind::PersonalId => CellKind::PersonalId,
                FieldKind::Code { list } => CellKind::Code(
                    careledger_model::vocabulary()
                        .list(list)
                        .codes
                        .iter()
                        .map(|c| (c.code.clone(), vec![c.zh.clone(), c.en.clone()]))
                        .collect(),
                ),
                FieldKind::Text { .. } | FieldKind::Region { .. } => CellKind::Text,
            },
            default: match f.name.as_str() {
                "source" => Some(source.to_string()),
                "op" if upsert_by_default => Some("upsert".to_string()),
                _ => None,
            },
        })
        .collect();
    SheetSpec {
        profile,
        columns,
        ignore,
    }
}

fn prepare(
    state: &AppState,
    table: Table,
    sender: (&str, Option<&str>),
    format: BodyFormat,
    bytes: &[u8],
    receipt: &mut Receipt,
    error_cap: usize,
) -> Result<Prepared, Problem> {
    let spec = table.spec();
    // Records the decoder refused (unknown or malformed fields, an NDJSON line that is not
    // an object) are row errors like any other: validation rejects their rows with them.
    // Spreadsheets (workbooks, and CSV saved from them) go through the mapping profiles.
    let decoded = if format == BodyFormat::Xlsx {
        careledger_decode::decode_sheet(
            bytes,
            &spec.wire_schema(),
            &sheet_spec(spec, sender.0, true),
            state.config.max_rows_per_body,
        )?
    } else if let BodyFormat::Csv { gb18030 } = format {
        careledger_decode::decode_csv_sheet(
            gb18030,
            bytes,
            &spec.wire_schema(),
            &sheet_spec(spec, sender.0, false),
            state.config.max_rows_per_body,
        )?
    } else {
        decode_records(
            format,
            bytes,
            &spec.wire_schema(),
            state.config.max_rows_per_body,
        )?
    };
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
    let wire = decoded.batches;
    let (source, scope) = sender;
    let ctx = ValidationContext {
        source,
        today: state.config.time_zone.today(),
        key: &state.key,
        batch_id: &receipt.batch_id,
        ingested_at: receipt.received_at,
    };
    let mut stored = Vec::with_capacity(wire.len());
    let mut errors: Vec<RowError> = Vec::new();
    let mut rejects: Vec<RecordBatch> = Vec::new();
    let mut first_row = 0;
    for batch in wire {
        // The decoder's faults come in row order: this batch's are one slice.
        let lo = refused.partition_point(|e| e.row <= first_row);
        let hi = refused.partition_point(|e| e.row <= first_row + batch.num_rows());
        let v = validate_batch_refusing(spec, &batch, &ctx, first_row, scope, &refused[lo..hi])
            .map_err(|e| Problem::internal("validation", &e))?;
        receipt.rows_received += v.rows;
        receipt.rows_accepted += v.stored.num_rows();
        receipt.rows_rejected += v.rejected.len();
        receipt.error_count += v.errors.len();
        if !receipt.atomic && !v.rejected.is_empty() {
            let mut by_row: HashMap<usize, Vec<RowError>> = HashMap::new();
            for e in &v.errors {
                by_row.entry(e.row).or_default().push(e.clone());
            }
            let reject_rows: Vec<_> = v
                .rejected
                .iter()
                .map(|&i| {
                    let row = first_row + i + 1;
                    (
                        row,
                        by_row.remove(&row).unwrap_or_default(),
                        raw_row(&batch, i),
                    )
                })
                .collect();
            rejects.push(
                rejects_batch(&reject_rows, receipt)
                    .map_err(|e| Problem::internal("building rejects", &e))?,
            );
        }
        let room = error_cap.saturating_sub(errors.len());
        errors.extend(v.errors.into_iter().take(room));
        // An atomic batch with an invalid row stores nothing: stop holding its valid rows.
        if receipt.atomic && receipt.rows_rejected > 0 {
            stored.clear();
        } else if v.stored.num_rows() > 0 {
            stored.push(v.stored);
        }
        first_row += v.rows;
    }
    if receipt.rows_received == 0 {
        return Err(Problem::bad_request(
            "empty-batch",
            "the body holds no rows",
        ));
    }
    receipt.errors = errors;
    let rejects = match rejects.len() {
        0 => None,
        1 => rejects.pop(),
        _ => Some(
            arrow_select::concat::concat_batches(&careledger_store::rejects_schema(), &rejects)
                .map_err(|e| Problem::internal("building rejects", &e))?,
        ),
    };
    Ok((stored, rejects))
}

/// The most characters of one sent value that a reject row keeps.
pub const MAX_RAW_VALUE_CHARS: usize = 256;

/// The most characters of a reject row's joined messages.
const MAX_REJECT_MESSAGES_CHARS: usize = 8 * MAX_MESSAGE_CHARS;

/// `text` cut to `max` characters, with a note of its full length if cut.
fn cut_noted(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((i, _)) => format!(
            "{}…[cut: {} characters in all]",
            &text[..i],
            text.chars().count()
        ),
    }
}

/// A sent value as a reject row keeps it: ID-like runs masked, cut to [`MAX_RAW_VALUE_CHARS`].
fn kept_value(v: &str) -> String {
    let redacted = redact_ids(v);
    match redacted.char_indices().nth(MAX_RAW_VALUE_CHARS) {
        None => redacted.into_owned(),
        Some((i, _)) => format!(
            "{}…[cut: {} characters in all]",
            &redacted[..i],
            v.chars().count()
        ),
    }
}

/// The sent row as JSON, with the ID number masked (every value is screened and cut where the
/// reject row is built, [`rejects_batch`]).
fn raw_row(batch: &RecordBatch, i: usize) -> Map<String, Value> {
    let mut out = Map::new();
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let Some(col) = col.as_any().downcast_ref::<StringArray>() else {
            continue;
        };
        if col.is_null(i) {
            continue;
        }
        let v = col.value(i);
        let v = if f.name() == "id_number" {
            mask_id(v)
        } else {
            v.to_string()
        };
        out.insert(f.name().clone(), Value::String(v));
    }
    out
}

/// The `rejects` rows of a batch: the one place they are built, so every message and every
/// sent value passes [`redact_ids`] here and is cut (a value to [`MAX_RAW_VALUE_CHARS`]).
fn rejects_batch(
    rows: &[(usize, Vec<RowError>, Map<String, Value>)],
    receipt: &Receipt,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut batch_id = StringBuilder::new();
    let mut table = StringBuilder::new();
    let mut source = StringBuilder::new();
    let mut row = Int64Builder::new();
    let mut codes = StringBuilder::new();
    let mut messages = StringBuilder::new();
    let mut raw = StringBuilder::new();
    let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for (n, errs, obj) in rows {
        batch_id.append_value(&receipt.batch_id);
        table.append_value(&receipt.table);
        source.append_value(&receipt.source);
        row.append_value(*n as i64);
        codes.append_value(
            errs.iter()
                .map(|e| e.code.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        let joined = errs
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        messages.append_value(cut_noted(&redact_ids(&joined), MAX_REJECT_MESSAGES_CHARS));
        let screened: Map<String, Value> = obj
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => Value::String(kept_value(s)),
                    other => Value::String(kept_value(&other.to_string())),
                };
                (k.clone(), v)
            })
            .collect();
        raw.append_value(Value::Object(screened).to_string());
        at.append_value(receipt.received_at.timestamp_micros());
    }
    RecordBatch::try_new(
        careledger_store::rejects_schema(),
        vec![
            Arc::new(batch_id.finish()),
            Arc::new(table.finish()),
            Arc::new(source.finish()),
            Arc::new(row.finish()),
            Arc::new(codes.finish()),
            Arc::new(messages.finish()),
            Arc::new(raw.finish()),
            Arc::new(at.finish()),
        ],
    )
}
