//! `careledger push --table T FILE…`: sends CSV / NDJSON / JSON files to a server in batches,
//! each with an idempotency key derived from the file's content (so pushing the same file
//! again stores nothing twice), retrying with backoff, and lists every rejected row in a CSV
//! file a clerk can open.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// The table the rows belong to: women, life_events, group_flags, services or registrations.
    #[arg(long)]
    table: String,
    /// Files: .csv (UTF-8 or GB18030, with a header line), .ndjson / .jsonl (one object a line),
    /// .json (an array of objects), .xlsx (the first sheet, sent whole; headers may be the
    /// Chinese ones of the mapping profiles in schemas/v1/sheets/).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Server URL.
    #[arg(
        long,
        env = "CARELEDGER_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// The source's bearer token (role source:<id>).
    #[arg(long, env = "CARELEDGER_TOKEN", hide_env_values = true)]
    token: String,
    /// Rows per request.
    #[arg(long, default_value_t = 5000)]
    batch_rows: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Attempts per batch on connection errors, 5xx, 408 and 429 (with exponential backoff).
    #[arg(long, default_value_t = 6)]
    attempts: u32,
    /// Refuse a whole batch if any of its rows is invalid (default: store the valid rows and
    /// list the invalid ones).
    #[arg(long)]
    atomic: bool,
    /// Text encoding of CSV files: auto (UTF-8, else GB18030 if it decodes cleanly), utf-8 or
    /// gb18030. JSON and NDJSON are always UTF-8.
    #[arg(long, default_value = "auto")]
    encoding: String,
    /// Where rejected rows are listed (CSV, UTF-8 with BOM so spreadsheets open it).
    #[arg(long, default_value = "careledger-rejects.csv")]
    rejects: PathBuf,
    /// Send each request body compressed with gzip (Content-Encoding: gzip); the server's
    /// size limits apply to the uncompressed body.
    #[arg(long)]
    gzip: bool,
    /// After a crash: first ask the server which of these batches it already stored (by their
    /// Idempotency-Keys, `GET /v1/batches`) and send only the others.
    #[arg(long)]
    resume: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csv {
        gb18030: bool,
    },
    Ndjson,
    JsonArray,
    /// An Excel workbook: sent whole (its first sheet; the server maps the headers).
    Xlsx,
}

impl Kind {
    fn content_type(self) -> &'static str {
        match self {
            Kind::Csv { gb18030: false } => "text/csv; charset=utf-8",
            Kind::Csv { gb18030: true } => "text/csv; charset=gb18030",
            Kind::Ndjson | Kind::JsonArray => "application/x-ndjson",
            Kind::Xlsx => careledger_decode::XLSX_MEDIA_TYPE,
        }
    }
}

/// One request's worth of rows from one file.
#[derive(Debug)]
struct Chunk {
    file: usize,
    body: Vec<u8>,
    content_type: &'static str,
    /// Where each record of the body starts in the file: (line, record), both 1-based.
    places: Vec<(Option<usize>, usize)>,
    key: String,
}

/// A row the server (or the file itself) refused.
#[derive(Debug)]
struct Rejected {
    file: usize,
    line: Option<usize>,
    record: Option<usize>,
    field: String,
    code: String,
    message: String,
}

/// Whether a CSV file is GB18030: as `--encoding` says, or, with `auto`, when it is not UTF-8
/// but decodes as GB18030 without a bad byte (otherwise the file is refused, not guessed).
fn csv_is_gb18030(path: &Path, bytes: &[u8], encoding: &str) -> Result<bool> {
    let utf8 = std::str::from_utf8(bytes);
    let gb = || {
        encoding_rs::GB18030
            .decode_without_bom_handling_and_without_replacement(bytes)
            .is_some()
    };
    match encoding {
        "utf-8" => match utf8 {
            Ok(_) => Ok(false),
            Err(e) => bail!("{}: not UTF-8 at byte {}", path.display(), e.valid_up_to()),
        },
        "gb18030" if gb() => Ok(true),
        "gb18030" => bail!("{}: not GB18030", path.display()),
        "auto" => match utf8 {
            Ok(_) => Ok(false),
            Err(_) if gb() => Ok(true),
            Err(e) => bail!(
                "{}: neither UTF-8 (bad byte at {}) nor GB18030; give --encoding",
                path.display(),
                e.valid_up_to()
            ),
        },
        other => bail!("--encoding {other}: use auto, utf-8 or gb18030"),
    }
}

fn kind_of(path: &Path, bytes: &[u8], encoding: &str) -> Result<Kind> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    Ok(match ext.as_str() {
        "csv" => Kind::Csv {
            gb18030: csv_is_gb18030(path, bytes, encoding)?,
        },
        "ndjson" | "jsonl" => Kind::Ndjson,
        "json" => Kind::JsonArray,
        "xlsx" => Kind::Xlsx,
        other => bail!(
            "{}: unknown file type {other:?}; use .csv, .ndjson, .jsonl, .json or .xlsx",
            path.display()
        ),
    })
}

/// Splits CSV bytes into records (quote-aware: a quoted field may hold newlines), with the
/// 1-based line each starts on. Works on raw bytes, so it is the same for UTF-8 and GB18030
/// (neither uses `"` or `\n` inside a multi-byte character).
fn csv_records(bytes: &[u8]) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut line = 1;
    let mut start_line = 1;
    let mut quoted = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' => {
                line += 1;
                if !quoted {
                    out.push((start_line, &bytes[start..=i]));
                    start = i + 1;
                    start_line = line;
                }
            }
            _ => {}
        }
    }
    if start < bytes.len() {
        out.push((start_line, &bytes[start..]));
    }
    out.retain(|(_, r)| !r.iter().all(u8::is_ascii_whitespace));
    out
}

/// Cuts one file into chunks of at most `batch_rows` records. Lines that are not JSON objects
/// (NDJSON) are listed as rejected here and never sent.
fn chunk_file(
    file: usize,
    path: &Path,
    table: &str,
    batch_rows: usize,
    encoding: &str,
    rejected: &mut Vec<Rejected>,
) -> Result<Vec<Chunk>> {
    let batch_rows = batch_rows.max(1);
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let kind = kind_of(path, &bytes, encoding)?;
    let digest = Sha256::new()
        .chain_update(table.as_bytes())
        .chain_update([0])
        .chain_update(&bytes)
        .finalize();
    let file_id = hex::encode(&digest[..12]);
    let mut chunks = Vec::new();
    let mut push_chunk = |body: Vec<u8>, places: Vec<(Option<usize>, usize)>| {
        let key = format!("push-{file_id}-{batch_rows}-{}", chunks.len());
        chunks.push(Chunk {
            file,
            body,
            content_type: kind.content_type(),
            places,
            key,
        });
    };
    match kind {
        Kind::Csv { .. } => {
            let records = csv_records(&bytes);
            let Some(((_, header), rows)) = records.split_first() else {
                bail!("{}: empty file", path.display());
            };
            let mut header = header.to_vec();
            if !header.ends_with(b"\n") {
                header.push(b'\n');
            }
            for (n, group) in rows.chunks(batch_rows.max(1)).enumerate() {
                let mut body = header.clone();
                let mut places = Vec::with_capacity(group.len());
                for (i, (line, rec)) in group.iter().enumerate() {
                    body.extend_from_slice(rec);
                    if !rec.ends_with(b"\n") {
                        body.push(b'\n');
                    }
                    places.push((Some(*line), n * batch_rows + i + 1));
                }
                push_chunk(body, places);
            }
        }
        Kind::Ndjson => {
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: NDJSON must be UTF-8; bad byte at {}",
                    path.display(),
                    e.valid_up_to()
                )
            })?;
            let mut body = Vec::new();
            let mut places = Vec::new();
            let mut record = 0;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim_start_matches('\u{feff}');
                if line.trim().is_empty() {
                    continue;
                }
                record += 1;
                match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(_)) => {}
                    Ok(_) => {
                        rejected.push(Rejected {
                            file,
                            line: Some(i + 1),
                            record: Some(record),
                            field: String::new(),
                            code: "row.not_an_object".into(),
                            message: "the line is JSON but not an object".into(),
                        });
                        continue;
                    }
                    Err(e) => {
                        rejected.push(Rejected {
                            file,
                            line: Some(i + 1),
                            record: Some(record),
                            field: String::new(),
                            code: "row.malformed_json".into(),
                            message: format!("not JSON: {e}"),
                        });
                        continue;
                    }
                }
                body.extend_from_slice(line.as_bytes());
                body.push(b'\n');
                places.push((Some(i + 1), record));
                if places.len() == batch_rows.max(1) {
                    push_chunk(std::mem::take(&mut body), std::mem::take(&mut places));
                }
            }
            if !places.is_empty() {
                push_chunk(body, places);
            }
        }
        Kind::Xlsx => {
            // One request for the whole workbook: rows are numbered as the server reads them,
            // placed at their sheet rows for the messages.
            let rows = careledger_decode::sheet_records(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            if rows.is_empty() {
                bail!(
                    "{}: the first sheet has a header and no rows",
                    path.display()
                );
            }
            let places = rows
                .into_iter()
                .enumerate()
                .map(|(i, sheet_row)| (Some(sheet_row), i + 1))
                .collect();
            push_chunk(bytes.clone(), places);
        }
        Kind::JsonArray => {
            let text = std::str::from_utf8(&bytes)
                .with_context(|| format!("{}: not UTF-8", path.display()))?;
            let rows: Vec<Value> = serde_json::from_str(text.trim_start_matches('\u{feff}'))
                .with_context(|| format!("{}: not a JSON array of objects", path.display()))?;
            let mut body = Vec::new();
            let mut places = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                if !row.is_object() {
                    rejected.push(Rejected {
                        file,
                        line: None,
                        record: Some(i + 1),
                        field: String::new(),
                        code: "row.not_an_object".into(),
                        message: "the array element is not an object".into(),
                    });
                    continue;
                }
                serde_json::to_writer(&mut body, row)?;
                body.push(b'\n');
                places.push((None, i + 1));
                if places.len() == batch_rows.max(1) {
                    push_chunk(std::mem::take(&mut body), std::mem::take(&mut places));
                }
            }
            if !places.is_empty() {
                push_chunk(body, places);
            }
        }
    }
    Ok(chunks)
}

/// What the server said of one chunk, after retries.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The receipt (2xx), or the receipt inside a 422 atomic refusal (nothing stored).
    Receipt { receipt: Value, stored: bool },
    /// Refused as a whole: status and problem detail.
    Failed(String),
}

/// The receipt of the batch stored under `key` by this token's source, if any (marked
/// `resumed`); None when it is not stored or the server cannot say.
async fn stored_receipt(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    key: &str,
) -> Option<Value> {
    let resp = client
        .get(format!("{base}/v1/batches"))
        .query(&[("idempotency_key", key)])
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    let v: Value = resp.json().await.ok()?;
    let mut b = v["batches"].as_array()?.first()?.clone();
    b["resumed"] = Value::Bool(true);
    Some(b)
}

/// Posts one batch with its Idempotency-Key, retrying connection errors, 5xx, 408, 429 and a
/// key still in progress with exponential backoff (Retry-After honoured). Also used by `demo`.
pub(crate) async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    content_headers: &[(&str, &str)],
    key: &str,
    body: &[u8],
    attempts: u32,
) -> Outcome {
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 1..=attempts.max(1) {
        let mut req = client.post(url).bearer_auth(token);
        for (name, value) in content_headers {
            req = req.header(*name, *value);
        }
        let resp = req
            .header("idempotency-key", key)
            .body(body.to_vec())
            .send()
            .await;
        let mut wait = delay;
        match resp {
            Ok(r) => {
                let status = r.status();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if status.is_success() {
                    return Outcome::Receipt {
                        receipt: body,
                        stored: true,
                    };
                }
                if status.as_u16() == 409 && body["duplicate"] == true {
                    // Another gateway process already committed this key: stored once.
                    return Outcome::Receipt {
                        receipt: serde_json::json!({"duplicate": true}),
                        stored: true,
                    };
                }
                if status.as_u16() == 422 && body.get("receipt").is_some() {
                    return Outcome::Receipt {
                        receipt: body["receipt"].clone(),
                        stored: false,
                    };
                }
                last = format!(
                    "{status}: {}",
                    body["detail"].as_str().unwrap_or("(no detail)")
                );
                // A key still "in progress" is an earlier attempt whose commit is running.
                let in_progress = body["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("/idempotency-key-in-progress"));
                let retryable =
                    status.is_server_error() || matches!(status.as_u16(), 408 | 429) || in_progress;
                if !retryable {
                    return Outcome::Failed(last);
                }
                if let Some(s) = retry_after {
                    wait = Duration::from_secs(s.min(60));
                }
            }
            Err(e) => last = format!("{e}"),
        }
        if attempt < attempts {
            tracing::warn!(%key, attempt, error = %last, "retrying");
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
    Outcome::Failed(format!("gave up after {attempts} attempts: {last}"))
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub(crate) async fn run(args: PushArgs) -> Result<()> {
    let started = Instant::now();
    let mut rejected: Vec<Rejected> = Vec::new();
    let mut chunks = Vec::new();
    for (i, path) in args.files.iter().enumerate() {
        chunks.extend(chunk_file(
            i,
            path,
            &args.table,
            args.batch_rows,
            &args.encoding,
            &mut rejected,
        )?);
    }
    let total_rows: usize = chunks.iter().map(|c| c.places.len()).sum();
    let bar = ProgressBar::new(total_rows as u64);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} rows  {per_sec}  {msg}")
            .expect("template"),
    );
    let url = format!(
        "{}/v1/ingest/{}?atomic={}&errors=all",
        args.server.trim_end_matches('/'),
        args.table,
        args.atomic
    );
    let client = reqwest::Client::new();
    let base = args.server.trim_end_matches('/').to_string();
    if args.resume {
        let me: Value = client
            .get(format!("{base}/v1/sources/me"))
            .bearer_auth(&args.token)
            .send()
            .await
            .with_context(|| format!("GET {base}/v1/sources/me"))?
            .json()
            .await
            .context("reading /v1/sources/me")?;
        if me["source"].is_null() {
            anyhow::bail!("--resume: the server did not say what this source stored: {me}");
        }
        eprintln!(
            "resuming for source {}: {} batches stored so far, highest Batch-Seq {}",
            me["source"].as_str().unwrap_or_default(),
            me["batches"],
            me["last_batch_seq"]
        );
    }
    let mut resumed = 0usize;
    let mut accepted = 0u64;
    let mut not_stored = 0u64;
    let mut duplicates = 0usize;
    let mut failed = 0usize;
    let mut rows_rejected = rejected.len() as u64; // refused here, never sent
    let mut results = futures::stream::iter(chunks.iter().map(|chunk| {
        let client = &client;
        let url = &url;
        let token = &args.token;
        let attempts = args.attempts;
        let gzip = args.gzip;
        let resume = args.resume.then_some(&base);
        async move {
            if let Some(base) = resume
                && let Some(receipt) = stored_receipt(client, base, token, &chunk.key).await
            {
                return (
                    chunk,
                    Outcome::Receipt {
                        receipt,
                        stored: true,
                    },
                );
            }
            let outcome = if gzip {
                match gzipped(&chunk.body) {
                    Ok(body) => {
                        let headers = [
                            ("content-type", chunk.content_type),
                            ("content-encoding", "gzip"),
                        ];
                        send(client, url, token, &headers, &chunk.key, &body, attempts).await
                    }
                    Err(e) => Outcome::Failed(format!("could not compress the batch: {e}")),
                }
            } else {
                let headers = [("content-type", chunk.content_type)];
                send(
                    client,
                    url,
                    token,
                    &headers,
                    &chunk.key,
                    &chunk.body,
                    attempts,
                )
                .await
            };
            (chunk, outcome)
        }
    }))
    .buffer_unordered(args.parallel.max(1));
    while let Some((chunk, outcome)) = results.next().await {
        match outcome {
            Outcome::Receipt { receipt, stored } => {
                if receipt["resumed"] == true {
                    resumed += 1;
                    accepted += receipt["rows_accepted"].as_u64().unwrap_or(0);
                    bar.inc(chunk.places.len() as u64);
                    continue;
                }
                if receipt["duplicate"] == true {
                    duplicates += 1;
                } else if stored {
                    accepted += receipt["rows_accepted"].as_u64().unwrap_or(0);
                } else {
                    not_stored += receipt["rows_received"].as_u64().unwrap_or(0);
                }
                rows_rejected += receipt["rows_rejected"].as_u64().unwrap_or(0);
                let errors = receipt["errors"].as_array().cloned().unwrap_or_default();
                for e in &errors {
                    let row = e["row"].as_u64().unwrap_or(0) as usize;
                    let place = row.checked_sub(1).and_then(|i| chunk.places.get(i));
                    rejected.push(Rejected {
                        file: chunk.file,
                        line: place.and_then(|p| p.0),
                        record: place.map(|p| p.1),
                        field: e["field"].as_str().unwrap_or_default().into(),
                        code: e["code"].as_str().unwrap_or_default().into(),
                        message: e["message"].as_str().unwrap_or_default().into(),
                    });
                }
                let count = receipt["error_count"].as_u64().unwrap_or(0) as usize;
                if count > errors.len() {
                    rejected.push(Rejected {
                        file: chunk.file,
                        line: chunk.places.first().and_then(|p| p.0),
                        record: chunk.places.first().map(|p| p.1),
                        field: String::new(),
                        code: "batch.more_errors".into(),
                        message: format!(
                            "{} more errors in this batch were not listed by the server (batch {})",
                            count - errors.len(),
                            receipt["batch_id"].as_str().unwrap_or_default()
                        ),
                    });
                }
            }
            Outcome::Failed(message) => {
                failed += 1;
                let first = chunk.places.first();
                let last = chunk.places.last();
                rejected.push(Rejected {
                    file: chunk.file,
                    line: first.and_then(|p| p.0),
                    record: first.map(|p| p.1),
                    field: String::new(),
                    code: "batch.failed".into(),
                    message: format!(
                        "nothing stored from {}: {message}",
                        records_span(
                            first.map(|p| p.1).unwrap_or(0),
                            last.map(|p| p.1).unwrap_or(0)
                        )
                    ),
                });
            }
        }
        bar.inc(chunk.places.len() as u64);
        bar.set_message(format!("{rows_rejected} rejected"));
    }
    bar.finish_and_clear();
    drop(results);

    if !rejected.is_empty() {
        rejected.sort_by_key(|r| (r.file, r.record, r.line));
        let mut text = String::from("\u{feff}file,line,record,field,code,message\n");
        for r in &rejected {
            text.push_str(&format!(
                "{},{},{},{},{},{}\n",
                csv_cell(&args.files[r.file].display().to_string()),
                r.line.map(|l| l.to_string()).unwrap_or_default(),
                r.record.map(|l| l.to_string()).unwrap_or_default(),
                csv_cell(&r.field),
                csv_cell(&r.code),
                csv_cell(&r.message)
            ));
        }
        std::fs::write(&args.rejects, text)
            .with_context(|| format!("writing {}", args.rejects.display()))?;
    }
    println!(
        "pushed {} file(s) to {} in {} batches in {:.1} s: {accepted} rows accepted, {rows_rejected} rejected{}, {duplicates} batches already sent before (answered from their receipts){}{}",
        args.files.len(),
        args.table,
        chunks.len(),
        started.elapsed().as_secs_f64(),
        if args.resume {
            format!(", {resumed} batches found stored and not sent again (--resume)")
        } else {
            String::new()
        },
        if not_stored > 0 {
            format!(", {not_stored} not stored because their batch had an invalid row (--atomic)")
        } else {
            String::new()
        },
        if failed > 0 {
            format!(", {failed} batches failed")
        } else {
            String::new()
        },
    );
    if !rejected.is_empty() {
        println!("rejections listed in {}", args.rejects.display());
    }
    if failed > 0 {
        bail!(
            "{failed} of {} batches were not stored; see {}",
            chunks.len(),
            args.rejects.display()
        );
    }
    Ok(())
}

/// "record 3" or "records 1–5" (an en dash), as a person writes a span of record numbers.
fn records_span(first: usize, last: usize) -> String {
    if first == last {
        format!("record {first}")
    } else {
        format!("records {first}\u{2013}{last}")
    }
}

/// `body` compressed with gzip (the default level: batches are text, a few MB at most).
fn gzipped(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::default(),
    );
    e.write_all(body)?;
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::{csv_is_gb18030, csv_records, records_span};
    use std::path::Path;

    #[test]
    fn csv_encoding_is_utf8_or_clean_gb18030_never_a_guess() {
        let p = Path::new("f.csv");
        assert!(!csv_is_gb18030(p, "名字\n台账".as_bytes(), "auto").unwrap());
        let (gb, _, bad) = encoding_rs::GB18030.encode("名字,台账\n");
        assert!(!bad);
        assert!(csv_is_gb18030(p, &gb, "auto").unwrap());
        // A lone 0x81 is neither UTF-8 nor GB18030: refused, naming the byte.
        let err = csv_is_gb18030(p, b"ab,\x81", "auto")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad byte at 3"), "{err}");
        assert!(csv_is_gb18030(p, &gb, "utf-8").is_err());
        assert!(csv_is_gb18030(p, b"x", "latin1").is_err());
    }

    #[test]
    fn csv_records_keep_quoted_newlines_and_count_lines() {
        let text = b"a,b\n1,\"x\ny\"\n\n2,z";
        let recs = csv_records(text);
        let lines: Vec<usize> = recs.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![1, 2, 5]);
        assert_eq!(recs[1].1, b"1,\"x\ny\"\n");
        assert_eq!(recs[2].1, b"2,z");
    }

    #[test]
    fn record_spans_are_written_for_people() {
        assert_eq!(records_span(1, 1), "record 1");
        assert_eq!(records_span(1, 5), "records 1\u{2013}5");
    }
}
