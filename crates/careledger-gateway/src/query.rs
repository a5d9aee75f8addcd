//! Query serving: read-only SQL (`POST /v1/sql`), named reports (`GET /v1/reports/{name}`),
//! the report catalog and the table list. Who may see what is decided here, once: the role of
//! the token and its region scope select a [`careledger_warehouse::Access`], and every table a
//! query can name is already filtered to it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use careledger_warehouse::{catalog, reports};
use datafusion::common::ScalarValue;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::audit::AuditEntry;
use crate::auth::{Principal, Role};
use crate::disclosure::check_reference_periods;
use crate::engine::{
    self, Door, Ran, Want, access_of, datafusion_problem, forbid, known_at_of, query_problem,
    query_runtime, timeout_problem,
};
use crate::output::{CsvText, Format, Lang, SheetInfo, concat, encode, with_labels};
use crate::problem::Problem;

/// Query limits and disclosure settings.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    pub timeout: Duration,
    /// Bytes of memory all queries together may hold (one pool; spilling where DataFusion
    /// can). It also sets the per-batch and per-value limits of user SQL (see `sql_guard`).
    pub memory_limit: usize,
    /// `POST /v1/sql` queries running at once; past it, 503 with Retry-After.
    pub max_concurrent: usize,
    pub json_row_cap: usize,
    /// Disclosure threshold k for dashboard output.
    pub disclosure_k: i64,
    /// Report responses kept for repeated identical requests.
    pub cache_entries: usize,
    /// Bytes of SQL text one `POST /v1/sql` may carry.
    pub max_sql_bytes: usize,
    /// Every query waits (within `timeout`) until the derived tables reflect every commit
    /// made before it arrived, as if it asked `wait_for=latest` (`serve --read-your-writes`).
    pub read_your_writes: bool,
    /// Bytes of audit entries waiting to be written past which new queries are refused (503
    /// audit-backlog, Retry-After).
    pub audit_backlog_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> QueryConfig {
        QueryConfig {
            timeout: Duration::from_secs(30),
            memory_limit: 2 << 30,
            max_concurrent: 4,
            json_row_cap: 100_000,
            disclosure_k: 5,
            cache_entries: 64,
            max_sql_bytes: 100 * 1024,
            read_your_writes: false,
            audit_backlog_bytes: crate::audit::AUDIT_BACKLOG_BYTES,
        }
    }
}

/// A bounded cache of encoded report responses by ETag (least recently used out first):
/// at most `cache_entries` answers and [`RESULT_CACHE_BYTES`] bytes together.
#[derive(Debug, Default)]
pub struct ResultCache {
    entries: Mutex<VecDeque<(String, Bytes)>>,
}

/// The bytes the report cache holds at most; an answer larger than an eighth of it is not kept.
pub const RESULT_CACHE_BYTES: usize = 64 << 20;

impl ResultCache {
    fn get(&self, key: &str) -> Option<Bytes> {
        let mut e = self.entries.lock().expect("lock");
        let i = e.iter().position(|(k, _)| k == key)?;
        let hit = e.remove(i).expect("present");
        let body = hit.1.clone();
        e.push_back(hit);
        Some(body)
    }

    fn put(&self, key: String, body: Bytes, cap: usize) {
        let mut e = self.entries.lock().expect("lock");
        e.retain(|(k, _)| *k != key);
        if body.len() > RESULT_CACHE_BYTES / 8 {
            return;
        }
        e.push_back((key, body));
        let mut bytes: usize = e.iter().map(|(_, b)| b.len()).sum();
        while e.len() > cap || bytes > RESULT_CACHE_BYTES {
            match e.pop_front() {
                Some((_, b)) => bytes -= b.len(),
                None => break,
            }
        }
    }
}

fn json_to_scalar(name: &str, v: &Value) -> Result<ScalarValue, Problem> {
    Ok(match v {
        Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Value::Number(n) if n.is_i64() => ScalarValue::Int64(n.as_i64()),
        Value::Number(n) => ScalarValue::Float64(n.as_f64()),
        Value::Null => ScalarValue::Null,
        _ => {
            return Err(Problem::bad_request(
                "bad-parameter",
                format!("parameter {name} must be a string, number, boolean or null"),
            ));
        }
    })
}

/// Body of `POST /v1/sql`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SqlRequest {
    /// One read-only statement; `$name` placeholders take `params`.
    #[schema(
        example = "SELECT exit_reason, count(*) AS women FROM status_episodes WHERE start_date >= $from GROUP BY 1 ORDER BY 1"
    )]
    pub sql: String,
    /// Values of the `$name` placeholders.
    #[serde(default)]
    #[schema(example = json!({"from": "2024-01-01"}))]
    pub params: BTreeMap<String, Value>,
    /// Answer as the ledger was known at this instant.
    pub known_at: Option<String>,
    /// A receipt's batch id, or `latest`: wait until the answer reflects it.
    #[schema(example = "latest")]
    pub wait_for: Option<String>,
}

/// `format=`, `wait_for=`, `bom=` and `charset=` beside the report parameters (`known_at` is
/// one of them).
fn split_query(q: &HashMap<String, String>) -> (Option<String>, HashMap<String, String>) {
    let format = q.get("format").cloned();
    let params = q
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "format" | "wait_for" | "bom" | "charset" | "labels"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (format, params)
}

/// What an answer reflects, as JSON: the deriver's cycle, the latest commit time of pushed
/// rows it includes, and the version of every pushed table it has read.
pub(crate) fn reflects_json(d: &careledger_warehouse::DerivedState) -> Value {
    json!({
        "cycle": d.cycle,
        "ingested_at": d.reflects_at().map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        "table_versions": d.sources,
    })
}

/// The freshness headers: `Careledger-Reflects-Ingested-At` (the latest commit time of pushed
/// rows the answer includes) and `Careledger-Derived-Cycle`.
fn freshness_headers(resp: &mut Response, d: &careledger_warehouse::DerivedState) {
    if let Some(t) = d.reflects_at()
        && let Ok(v) =
            HeaderValue::from_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    {
        resp.headers_mut()
            .insert("careledger-reflects-ingested-at", v);
    }
    resp.headers_mut().insert(
        "careledger-derived-cycle",
        HeaderValue::from_str(&d.cycle.to_string()).expect("digits"),
    );
}

/// Waits, at most the query timeout, until the derived tables reflect what `wait_for` names:
/// a batch id (its table's version at its commit), or `latest` (every commit made before
/// now). Without `wait_for`, only when the server reads its own writes. An unknown batch is a
/// 404; not reflected in time, a 503 with Retry-After.
pub(crate) async fn wait_if_asked(state: &AppState, wait_for: Option<&str>) -> Result<(), Problem> {
    let wait_for = match wait_for {
        Some(w) => w.trim(),
        None if state.query.read_your_writes => "latest",
        None => return Ok(()),
    };
    let mut targets = Vec::new();
    if wait_for == "latest" {
        for t in careledger_model::Table::ALL {
            let v = state
                .store
                .refresh(t.as_str())
                .await
                .map_err(|e| Problem::internal("reading table versions", &e))?
                .version()
                .unwrap_or(0);
            targets.push((t.as_str().to_string(), v));
        }
    } else {
        // The receipt reaches `batches` after its answer: wait for those answered before.
        state.committer.batches.settled().await;
        let found = state
            .warehouse
            .batch_version(wait_for)
            .await
            .map_err(query_problem)?;
        let Some((table, version)) = found else {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-batch",
                format!(
                    "wait_for {wait_for:?} names no committed batch (give the batch_id of a receipt, or latest)"
                ),
            ));
        };
        targets.push((table, version));
    }
    if state.deriver.wait_for(&targets, state.query.timeout).await {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not-reflected-yet",
        format!(
            "the derived ledger does not reflect {wait_for} after {} s; retry, or ask without wait_for for what it reflects now",
            state.query.timeout.as_secs()
        ),
    ))
}

/// A whole answer: its media type (CSV's charset as asked), a download name for file
/// formats, the ETag, and compression as the client accepts.
fn respond(
    (format, csv, name): (Format, CsvText, &str),
    body: Bytes,
    etag: Option<&str>,
    accept: &HeaderMap,
) -> Response {
    let (body, encoding) = compress_for(accept, body);
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(csv.content_type(format)),
    );
    if let Some(v) = crate::output::attachment(format, name) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(e) = encoding {
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    if let Some(v) = etag.and_then(|tag| HeaderValue::from_str(tag).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// A whole answer of more than 1 KiB compressed as the client accepts (`Accept-Encoding`: zstd
/// preferred, then gzip); streamed answers go as they are.
fn compress_for(headers: &HeaderMap, body: Bytes) -> (Bytes, Option<&'static str>) {
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let offered = |name: &str| {
        accept.split(',').any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let refused = it.any(|q| matches!(q.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            coding.eq_ignore_ascii_case(name) && !refused
        })
    };
    if body.len() <= 1024 {
        return (body, None);
    }
    if offered("zstd")
        && let Ok(z) = zstd::bulk::compress(&body, 3)
    {
        return (Bytes::from(z), Some("zstd"));
    }
    if offered("gzip") {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if enc.write_all(&body).is_ok()
            && let Ok(z) = enc.finish()
        {
            return (Bytes::from(z), Some("gzip"));
        }
    }
    (body, None)
}

/// The body of `POST /v1/sql`, read up to `limit` bytes: past it, a 413 problem.
async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, Problem> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("the request body exceeds the limit of {limit} bytes for POST /v1/sql"),
            )
        } else {
            Problem::bad_request("body-read", format!("could not read the body: {e}"))
        }
    })
}

/// `POST /v1/sql`: analysts and admins; read-only, single statement, bound parameters.
pub async fn sql(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let p = state.tokens.authenticate(&headers)?;
    engine::may_run_sql(&p)?;
    // The SQL text plus parameters: room for the longest SQL accepted, and at least 1 MiB.
    let body = read_body(body, (state.query.max_sql_bytes * 2).max(1 << 20)).await?;
    let req: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "malformed-body",
            format!("body must be JSON {{\"sql\": …, \"params\": {{…}}, \"known_at\": …}}: {e}"),
        )
    })?;
    answer_sql(state, p, headers, q, req, started).await
}

/// `GET /v1/sql?q=…`: the same as POST, the statement in the query string (`known_at`,
/// `wait_for` and `format` beside it; no parameters), for tools that can only GET.
pub async fn sql_get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let p = state.tokens.authenticate(&headers)?;
    engine::may_run_sql(&p)?;
    let Some(sql) = q.get("q").cloned() else {
        return Err(Problem::bad_request(
            "bad-parameter",
            "GET /v1/sql needs the statement in q= (URL-encoded); POST /v1/sql takes it as JSON",
        ));
    };
    let req = SqlRequest {
        sql,
        params: BTreeMap::new(),
        known_at: q.get("known_at").cloned(),
        wait_for: None,
    };
    answer_sql(state, p, headers, q, req, started).await
}

/// Runs one `/v1/sql` request through the engine and encodes the answer.
async fn answer_sql(
    state: Arc<AppState>,
    p: Principal,
    headers: HeaderMap,
    q: HashMap<String, String>,
    req: SqlRequest,
    started: Instant,
) -> Result<Response, Problem> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::choose(q.get("format").map(String::as_str), accept)?;
    let csv = CsvText::choose(
        format,
        q.get("bom").map(String::as_str),
        q.get("charset").map(String::as_str),
        accept,
    )?;
    let known_at = known_at_of(&state.engine, req.known_at.as_deref())?;
    wait_if_asked(
        &state,
        q.get("wait_for")
            .or(req.wait_for.as_ref())
            .map(String::as_str),
    )
    .await?;
    let values: Vec<(String, ScalarValue)> = req
        .params
        .iter()
        .map(|(k, v)| Ok((k.clone(), json_to_scalar(k, v)?)))
        .collect::<Result<_, Problem>>()?;
    // Large results stream (CSV, Arrow): batch by batch, never held whole.
    let want = match format {
        Format::Csv | Format::Arrow => Want::Stream,
        Format::Json => Want::Whole(Some(state.query.json_row_cap)),
        Format::Parquet => Want::Whole(None),
        Format::Xlsx => Want::Whole(Some(crate::sheet::XLSX_MAX_ROWS)),
    };
    let (sql_text, known_at_text) = (req.sql.clone(), req.known_at.clone());
    let ask = engine::Ask {
        sql: req.sql,
        params: (!values.is_empty()).then(|| values.into()),
        params_text: Some(json!(req.params).to_string()),
        known_at,
        want,
    };
    let (ran, reflects, audit) =
        match engine::run(&state.engine, &p, Door::Http, ask, started).await {
            Ok(ran) => ran,
            Err(e) if e.slug == "too-many-queries" => {
                let mut resp = e.into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(resp);
            }
            Err(e) => return Err(e),
        };
    let mut resp = match ran {
        Ran::Stream(stream, running) => {
            let schema = stream.schema();
            let batches = engine::pump(state.engine.clone(), stream, running, audit, started);
            stream_response(format, csv, &schema, batches)?
        }
        Ran::Whole(schema, batches) => {
            let encoded = concat(&schema, &batches).and_then(|batch| {
                let sheet = (format == Format::Xlsx).then(|| SheetInfo {
                    title: "careledger SQL".into(),
                    lines: vec![
                        ("SQL".into(), sql_text.chars().take(2000).collect()),
                        (
                            "知识时点 known_at".into(),
                            known_at_text
                                .clone()
                                .unwrap_or_else(|| "最新 latest".into()),
                        ),
                        ("数据截至 reflects".into(), reflects_line(&reflects)),
                    ],
                });
                let bytes = encode(
                    format,
                    &batch,
                    None,
                    state.query.json_row_cap,
                    Some(&reflects_json(&reflects)),
                    sheet.as_ref(),
                )?;
                Ok((batch.num_rows(), bytes))
            });
            audit.finish(encoded.as_ref().map(|(rows, _)| *rows));
            respond(
                (format, csv, "careledger-sql"),
                csv.apply(true, encoded?.1),
                None,
                &headers,
            )
        }
        Ran::Described(..) => return Err(Problem::internal("the query", &"planned only")),
    };
    freshness_headers(&mut resp, &reflects);
    Ok(resp)
}

/// Streams a result as the engine hands its batches over. An error after the first bytes
/// can only cut the body short (the status is already sent).
fn stream_response(
    format: Format,
    csv: CsvText,
    schema: &SchemaRef,
    batches: engine::Batches,
) -> Result<Response, Problem> {
    let encoder = crate::output::StreamEncoder::new(format, schema)?;
    let body = futures::stream::unfold(
        (batches, Some(encoder), true),
        move |(mut batches, encoder, first)| async move {
            let mut encoder = encoder?;
            let item = match futures::StreamExt::next(&mut batches).await {
                Some(Ok(batch)) => encoder.batch(&batch),
                None => {
                    let last = encoder.finish().map(|b| csv.apply(first, b));
                    return Some((last.map_err(cut), (batches, None, false)));
                }
                Some(Err(e)) => Err(e),
            };
            match item {
                Ok(bytes) if bytes.is_empty() => Some((Ok(bytes), (batches, Some(encoder), first))),
                Ok(bytes) => Some((Ok(csv.apply(first, bytes)), (batches, Some(encoder), false))),
                // Cut the body with an error (not a clean end a client could take for the
                // whole result).
                Err(e) => Some((Err(cut(e)), (batches, None, false))),
            }
        },
    );
    let mut resp = (StatusCode::OK, axum::body::Body::from_stream(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(csv.content_type(format)),
    );
    if let Some(v) = crate::output::attachment(format, "careledger-sql") {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

fn cut(e: Problem) -> std::io::Error {
    std::io::Error::other(e.detail)
}

/// `GET /v1/reports`: the catalog (dashboards see the publishable reports only).
pub async fn list_reports(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let p = state.tokens.authenticate(&headers)?;
    if matches!(p.role, Role::Source(_)) {
        return Err(forbid(&p, "read reports"));
    }
    let list: Vec<&careledger_warehouse::ReportSpec> = catalog()
        .iter()
        .filter(|r| p.role != Role::Dashboard || r.audience.as_deref() != Some("analyst"))
        .collect();
    // Who asks, so that a page can start at the caller's own region.
    Ok(
        Json(json!({"reports": list, "role": p.role.as_string(), "scope": p.scope}))
            .into_response(),
    )
}

/// `GET /v1/reports/{name}`: with ETag / If-None-Match and a bounded result cache.
pub async fn run_report(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let started = Instant::now();
    let p = state.tokens.authenticate(&headers)?;
    if matches!(p.role, Role::Source(_)) {
        return Err(forbid(&p, "read reports"));
    }
    let spec = reports::find(&name).map_err(query_problem)?;
    state.audit_log.admit()?;
    if p.role == Role::Dashboard && spec.audience.as_deref() == Some("analyst") {
        return Err(forbid(
            &p,
            &format!("read the case list {name}; it is for analysts only"),
        ));
    }
    let (format_param, params) = split_query(&q);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::choose(format_param.as_deref(), accept)?;
    let csv = CsvText::choose(
        format,
        q.get("bom").map(String::as_str),
        q.get("charset").map(String::as_str),
        accept,
    )?;
    // Code columns' labels beside them: asked for, or in a workbook (Chinese) unless
    // labels=none.
    let lang = Lang::choose(
        q.get("labels").map(String::as_str),
        (format == Format::Xlsx).then_some(Lang::Zh),
    )?;
    reports::bind(spec, &params, state.warehouse.zone()).map_err(query_problem)?;
    // Checked again where the report runs; here so a refusal comes before ETag and cache.
    reports::scoped_params(spec, &params, &access_of(&p)).map_err(query_problem)?;
    known_at_of(&state.engine, params.get("known_at").map(String::as_str))?;
    if p.role == Role::Dashboard {
        check_reference_periods(spec, &params)?;
    }
    wait_if_asked(&state, q.get("wait_for").map(String::as_str)).await?;
    // What the derived tables reflect: part of the ETag (a report reads them), and stated in
    // the answer. A cycle completing before the report's own snapshot makes the answer newer
    // than stated, never older.
    let derived = careledger_warehouse::DerivedState::read(&state.store)
        .await
        .map_err(query_problem)?;

    // The ETag names everything the answer depends on: report, parameters, who asks (role
    // and scope), the format, and the version of every table read (`batches` once the
    // receipts answered before this request are in it).
    state.committer.batches.settled().await;
    let mut versions = BTreeMap::new();
    for t in careledger_model::Table::ALL
        .iter()
        .map(|t| t.as_str())
        .chain([careledger_store::BATCHES])
    {
        let v = state
            .store
            .refresh(t)
            .await
            .map_err(|e| Problem::internal("reading table versions", &e))?
            .version();
        versions.insert(t, v);
    }
    let sorted: BTreeMap<&String, &String> = params.iter().collect();
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&json!({
        "report": name, "params": sorted, "role": p.role.as_string(), "scope": p.scope,
        "format": format.as_str(), "csv": csv.key(), "labels": lang.map(Lang::as_str), "versions": versions, "rule": state.warehouse.rule().rule_version(),
        "derived": [derived.cycle, derived.floor],
        "k": state.query.disclosure_k,
    })).expect("json"));
    let etag = format!("\"{}\"", hex::encode(&h.finalize()[..16]));
    // The download's name: the report and its parameters (`stock_as_of=2024-12-31_level=county`).
    let download = std::iter::once(name.clone())
        .chain(sorted.iter().map(|(k, v)| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join("_");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        state.metrics.not_modified();
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
        freshness_headers(&mut resp, &derived);
        return Ok(resp);
    }
    if let Some(body) = state.cache.get(&etag) {
        state.metrics.cache_hit();
        let mut resp = respond((format, csv, &download), body, Some(&etag), &headers);
        freshness_headers(&mut resp, &derived);
        return Ok(resp);
    }
    state.metrics.cache_miss();
    let outcome = async {
        let t = state.query.timeout;
        let warehouse_state = state.clone();
        let access = access_of(&p);
        let (report, report_params) = (name.clone(), params.clone());
        // On the query runtime: a report's long synchronous steps (deriving the status
        // tables) hold one of its threads, not one serving HTTP.
        let mut task = query_runtime().spawn(async move {
            warehouse_state
                .warehouse
                .run_report_with_schema(&report, &report_params, &access)
                .await
        });
        let (schema, batches) = match tokio::time::timeout(t, &mut task).await {
            Ok(joined) => joined
                .map_err(|e| Problem::internal("the report task", &e))?
                .map_err(query_problem)?,
            Err(_) => {
                task.abort();
                return Err(timeout_problem(t));
            }
        };
        let batch = concat(&schema, &batches)?;
        let (batch, suppression) = if p.role == Role::Dashboard {
            let (batch, s) = state
                .publisher
                .publish(spec, &params, p.scope.as_deref(), &batch)?;
            (batch, Some(s))
        } else {
            (batch, None)
        };
        let (batch, suppression) = match (lang, &spec.publish) {
            (Some(lang), Some(publish)) => with_labels(&batch, &publish.labels, lang, suppression)?,
            _ => (batch, suppression),
        };
        let sheet = (format == Format::Xlsx).then(|| {
            report_sheet(
                spec,
                &params,
                &derived,
                &state.warehouse.rule().rule_version(),
                suppression.is_some(),
            )
        });
        let bytes = encode(
            format,
            &batch,
            suppression.as_ref(),
            state.query.json_row_cap,
            Some(&reflects_json(&derived)),
            sheet.as_ref(),
        )?;
        Ok::<_, Problem>((batch.num_rows(), bytes))
    }
    .await;
    state.audit(AuditEntry::new(
        &p,
        "report",
        &name,
        Some(json!(sorted).to_string()),
        &outcome,
        started,
    ));
    state.metrics.query(started.elapsed());
    let (_, bytes) = outcome?;
    let bytes = csv.apply(true, bytes);
    state
        .cache
        .put(etag.clone(), bytes.clone(), state.query.cache_entries);
    let mut resp = respond((format, csv, &download), bytes, Some(&etag), &headers);
    freshness_headers(&mut resp, &derived);
    Ok(resp)
}

/// "2025-01-10T08:00:00Z (派生周期 cycle 42)": what an answer reflects, for a sheet.
fn reflects_line(d: &careledger_warehouse::DerivedState) -> String {
    let at = d
        .reflects_at()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into());
    format!("{at} (派生周期 cycle {})", d.cycle)
}

/// The lines above a report's workbook table: its titles, every parameter as used (defaults
/// included), the knowledge instant, the rule version and what it reflects.
fn report_sheet(
    spec: &careledger_warehouse::ReportSpec,
    given: &HashMap<String, String>,
    derived: &careledger_warehouse::DerivedState,
    rule_version: &str,
    published: bool,
) -> SheetInfo {
    let params = spec
        .params
        .iter()
        .map(|p| {
            let v = given
                .get(&p.name)
                .or(p.default.as_ref())
                .map(String::as_str)
                .unwrap_or("");
            format!("{}={v}", p.name)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut lines = vec![
        ("报表 report".into(), spec.name.clone()),
        ("参数 parameters".into(), params),
        (
            "知识时点 known_at".into(),
            given
                .get("known_at")
                .cloned()
                .unwrap_or_else(|| "最新 latest".into()),
        ),
        ("规则版本 rule version".into(), rule_version.to_string()),
        ("数据截至 reflects".into(), reflects_line(derived)),
    ];
    if published {
        lines.push((
            "披露 disclosure".into(),
            "人数含少量一致性噪声（单元键法）；过小的人数及由其算出的数已抑制 / counts carry a small consistent noise (cell-key method); counts below the threshold, and numbers derived from them, are suppressed".into(),
        ));
    }
    SheetInfo {
        title: format!("{} {}", spec.title_zh, spec.title_en),
        lines,
    }
}

/// Table-level descriptions for `GET /v1/tables`.
fn table_description(name: &str) -> &'static str {
    match name {
        "women" | "life_events" | "group_flags" | "services" | "registrations" => {
            "Current view: per (source, record_id) the highest record_version known at known_at, retractions removed."
        }
        n if n.starts_with("raw_") => {
            "History: every stored version of the pushed table known at known_at."
        }
        "batches" => {
            "One row per acknowledged batch: the receipt (who sent what, when). For a region-scoped token: the batches holding rows of women in scope, rows_accepted counting those rows, and NULL for what cannot be split by region (receipt, rows received and rejected, idempotency key, Batch-Seq, table version)."
        }
        "rejects" => {
            "Rows refused in non-atomic batches, ID numbers masked (unscoped admins only)."
        }
        "access" => {
            "One row: what this caller's SQL sees: scope (region code prefix, NULL = all of Guangxi) and whether rejects is readable."
        }
        "people" => "One row per woman with a women record (the most recently ingested wins).",
        "status_episodes" => {
            "Her stays in the ledger [start_date, end_date) derived by the status rule, with entry and exit reasons."
        }
        "residence" => {
            "Her village over time [valid_from, valid_to); region_code null = moved out of rural residence."
        }
        "ledger_runs" => {
            "Pieces of an episode inside one region at each level; stock, entries and exits count these."
        }
        "group_episodes" => "Priority-group memberships [valid_from, valid_until).",
        "regions" => "Guangxi division codes (2023) with the rural flag.",
        "region_levels" => "Each code's ancestor at every level at or above its own.",
        "codes" => "Every code list with Chinese and English labels.",
        "calendar_months" => "Months 2000-2049 [month_start, month_end).",
        _ => "",
    }
}

/// Descriptions of the columns of the tables careledger derives or ships (the pushed tables'
/// columns carry theirs from the contracts in `schemas/`).
fn column_description(table: &str, column: &str) -> Option<&'static str> {
    Some(match (table, column) {
        (_, "person_key") => {
            "Pseudonym of the woman: HMAC-SHA256 of her ID number under the operator's secret (32 hex digits)."
        }
        ("access", "scope") => "Region code prefix this caller sees; NULL = all of Guangxi.",
        ("access", "rejects") => "Whether this caller may read the rejects table.",
        ("calendar_months", "month_start") => "First day of the month.",
        ("calendar_months", "month_end") => "First day of the next month (exclusive).",
        ("codes", "list") => "Which code list (entry_reason, exit_reason, service_type, group, …).",
        ("codes", "code") => "The code as stored.",
        ("codes", "zh") => "Chinese label.",
        ("codes", "en") => "English label.",
        ("codes", "measure") => "For service types: the measure area the service counts under.",
        ("people", "region_code") => "Her village (division code) in her latest women record.",
        ("people", "marital_status") => "Marital status code of her latest women record.",
        ("people", "ethnicity") => "Ethnicity code of her latest women record.",
        ("people", "birth_date") => "Birth date of her latest women record.",
        ("status_episodes", "episode_no") => "1 for her first stay in the ledger, then 2, 3, …",
        ("status_episodes", "start_date") => "First day in the ledger.",
        ("status_episodes", "end_date") => {
            "First day out of the ledger (exclusive); NULL = still in it."
        }
        ("status_episodes" | "ledger_runs", "entry_reason") => {
            "Why she entered (code list entry_reason)."
        }
        ("status_episodes" | "ledger_runs", "exit_reason") => {
            "Why she left (code list exit_reason); NULL = still in the ledger."
        }
        ("status_episodes", "region_at_start") => "Her village on the first day.",
        ("status_episodes", "region_at_end") => "Her village on the last day in the ledger.",
        ("status_episodes", "rule_version") => {
            "Version of the status rule that derived the episode."
        }
        ("residence", "valid_from") => "First day at this village.",
        ("residence", "valid_to") => "First day elsewhere (exclusive); NULL = still there.",
        ("residence", "region_code") => "Village code; NULL = not resident in a rural village.",
        ("ledger_runs", "level") => "province, city, county, township or village.",
        ("ledger_runs", "region_code") => "The region at that level the piece lies in.",
        ("ledger_runs", "episode_no") => "The episode this piece belongs to.",
        ("ledger_runs", "run_start") => "First day of the piece in this region.",
        ("ledger_runs", "run_end") => "First day after the piece (exclusive); NULL = open.",
        ("regions", "code") => "Division code (2023 edition).",
        ("regions", "name") => "Official name.",
        ("regions", "level") => "province, city, county, township or village.",
        ("regions", "parent_code") => "The code of the region one level up.",
        ("regions", "rural") => "Villages only: whether it is a rural village committee (村委会).",
        ("region_levels", "code") => "A division code.",
        ("region_levels", "level") => "A level at or above the code's own.",
        ("region_levels", "region_code") => "The code's ancestor at that level.",
        ("batches", "batch_id") => "The batch's id (UUID), as in its receipt.",
        ("batches" | "rejects", "table_name") => "The pushed table.",
        ("batches" | "rejects", "source") => "The pushing source.",
        ("batches", "idempotency_key") => "The Idempotency-Key the batch was sent with.",
        ("batches", "batch_seq") => "The Batch-Seq the batch was sent with.",
        ("batches", "format") => "The body's media type (csv, ndjson, json).",
        ("batches", "atomic") => "Whether one invalid row refused the whole batch.",
        ("batches", "rows_received") => "Rows in the body.",
        ("batches", "rows_accepted") => "Rows stored.",
        ("batches", "rows_rejected") => "Rows refused.",
        ("batches", "table_version") => "The Delta table version the rows landed in.",
        ("batches", "received_at") => "When the body arrived (UTC).",
        ("batches", "committed_at") => "When the rows were committed (UTC).",
        ("batches", "receipt") => "The receipt as sent to the source (JSON).",
        ("rejects", "batch_id") => "The batch the row came in.",
        ("rejects", "row") => "The row's number in the batch (1 = first row).",
        ("rejects", "codes") => "Why it was refused: error codes, one per field.",
        ("rejects", "messages") => "Why it was refused, in words.",
        ("rejects", "raw") => "The row as sent, ID numbers masked.",
        ("rejects", "ingested_at") => "When the batch arrived (UTC).",
        _ => return None,
    })
}

/// One table SQL can name, as `GET /v1/tables` and the shell's `\d` show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TableInfo {
    pub name: String,
    pub description: String,
    pub columns: Vec<ColumnInfo>,
}

/// One column of a [`TableInfo`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    /// The Arrow type, as DataFusion prints it (`Utf8`, `Date32`, `Int64`, …).
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// The tables a snapshot's SQL can name, sorted, with their columns and descriptions.
pub async fn describe_tables(
    ctx: &datafusion::prelude::SessionContext,
) -> Result<Vec<TableInfo>, Problem> {
    let schema = ctx
        .catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .ok_or_else(|| Problem::internal("catalog", &"no public schema"))?;
    let mut names = schema.table_names();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(table) = schema.table(&name).await.map_err(datafusion_problem)? else {
            continue;
        };
        let columns = table
            .schema()
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
                description: f
                    .metadata()
                    .get("description")
                    .cloned()
                    .or_else(|| column_description(&name, f.name()).map(str::to_string)),
            })
            .collect();
        out.push(TableInfo {
            description: table_description(&name).to_string(),
            name,
            columns,
        });
    }
    Ok(out)
}

/// `GET /v1/tables`: what the caller's SQL can name, with columns and types.
pub async fn tables(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let p = state.tokens.authenticate(&headers)?;
    if !matches!(p.role, Role::Analyst | Role::Admin) {
        return Err(forbid(&p, "list the SQL tables"));
    }
    let snap = state
        .warehouse
        .snapshot_as(None, &access_of(&p))
        .await
        .map_err(query_problem)?;
    let out = describe_tables(&snap.ctx).await?;
    Ok(Json(json!({"tables": out, "scope": p.scope})).into_response())
}
