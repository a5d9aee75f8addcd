//! What a source can ask about its own pushes, to recover after a crash without resending
//! everything: `GET /v1/sources/me`, `GET /v1/batches`, `GET /v1/batches/{id}`,
//! `GET /v1/batches/{id}/rejects`. Only a source token, and only its own source's batches: a
//! batch of another source is "not found", never "forbidden", so its existence is not told.
//! Analysts and admins read the `batches` and `rejects` tables with SQL.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use careledger_store::{BATCHES, REJECTS};
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use serde_json::{Map, Value, json};

use crate::auth::Role;
use crate::output::cell;
use crate::{AppState, Problem};

/// The caller's source, or 403 for any other role.
fn source_of(state: &AppState, headers: &HeaderMap) -> Result<String, Problem> {
    let p = state.tokens.authenticate(headers)?;
    match p.role {
        Role::Source(s) => Ok(s),
        _ => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {} (role {}) is not a source's: these routes show a source its own batches; read the batches and rejects tables with SQL",
                p.name,
                p.role.as_string()
            ),
        )),
    }
}

/// Runs `sql` over the store's `batches` (as `b`) and `rejects` (as `r`) Delta tables.
async fn run(
    state: &AppState,
    sql: &str,
    params: Vec<ScalarValue>,
) -> Result<Vec<RecordBatch>, Problem> {
    let internal = |e: &dyn std::fmt::Display| Problem::internal("reading the receipts", e);
    // Every receipt answered before this request is in `batches` first.
    state.committer.batches.settled().await;
    let ctx = SessionContext::new();
    for (alias, table) in [("b", BATCHES), ("r", REJECTS)] {
        let t = state.store.refresh(table).await.map_err(|e| internal(&e))?;
        let provider = t.table_provider().await.map_err(|e| internal(&e))?;
        ctx.register_table(alias, provider)
            .map_err(|e| internal(&e))?;
    }
    ctx.sql(sql)
        .await
        .and_then(|df| df.with_param_values(params))
        .map_err(|e| internal(&e))?
        .collect()
        .await
        .map_err(|e| internal(&e))
}

/// Rows as JSON objects.
fn objects(batches: &[RecordBatch]) -> Vec<Value> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        for r in 0..b.num_rows() {
            let mut o = Map::new();
            for (f, c) in schema.fields().iter().zip(b.columns()) {
                o.insert(f.name().clone(), cell(c, r));
            }
            out.push(Value::Object(o));
        }
    }
    out
}

pub(crate) const COLUMNS: &str = "batch_id, table_name, idempotency_key, batch_seq, format, atomic, \
    rows_received, rows_accepted, rows_rejected, table_version, received_at, committed_at";

/// `GET /v1/sources/me`: the source's highest committed Batch-Seq, its counts, its last batch.
pub async fn me(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    let source = source_of(&state, &headers)?;
    let param = || vec![ScalarValue::Utf8(Some(source.clone()))];
    let totals = run(
        &state,
        "SELECT count(*) AS batches, coalesce(sum(rows_received), 0) AS rows_received, \
         coalesce(sum(rows_accepted), 0) AS rows_accepted, \
         coalesce(sum(rows_rejected), 0) AS rows_rejected FROM b WHERE source = $1",
        param(),
    )
    .await?;
    let last = run(
        &state,
        &format!(
            "SELECT {COLUMNS} FROM b WHERE source = $1 ORDER BY committed_at DESC, batch_id LIMIT 1"
        ),
        param(),
    )
    .await?;
    let mut body = objects(&totals).into_iter().next().unwrap_or(json!({}));
    body["source"] = json!(source);
    body["last_batch_seq"] = json!(state.committer.dedup.committed_seq(&source));
    body["last_batch"] = objects(&last).into_iter().next().unwrap_or(Value::Null);
    Ok(Json(body))
}

/// `GET /v1/batches?since=&idempotency_key=&batch_seq=&limit=`: the source's receipts, newest
/// first (at most `limit`, default 100, up to 1,000).
pub async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, Problem> {
    let source = source_of(&state, &headers)?;
    let mut conds = vec!["source = $1".to_string()];
    let mut params = vec![ScalarValue::Utf8(Some(source))];
    for (k, v) in &q {
        match k.as_str() {
            "since" => {
                let t = chrono::DateTime::parse_from_rfc3339(v).map_err(|_| {
                    Problem::bad_request(
                        "bad-parameter",
                        format!("since {v:?} is not an RFC 3339 instant"),
                    )
                })?;
                params.push(ScalarValue::TimestampMicrosecond(
                    Some(t.timestamp_micros()),
                    Some("UTC".into()),
                ));
                conds.push(format!("committed_at >= ${}", params.len()));
            }
            "idempotency_key" => {
                params.push(ScalarValue::Utf8(Some(v.clone())));
                conds.push(format!("idempotency_key = ${}", params.len()));
            }
            "batch_seq" => {
                let n: i64 = v.parse().map_err(|_| {
                    Problem::bad_request(
                        "bad-parameter",
                        format!("batch_seq {v:?} is not an integer"),
                    )
                })?;
                params.push(ScalarValue::Int64(Some(n)));
                conds.push(format!("batch_seq = ${}", params.len()));
            }
            "limit" => {}
            other => {
                return Err(Problem::bad_request(
                    "bad-parameter",
                    format!(
                        "unknown parameter {other:?}: use since, idempotency_key, batch_seq, limit"
                    ),
                ));
            }
        }
    }
    let limit: usize = match q.get("limit") {
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(
                    "bad-parameter",
                    format!("limit {v:?} is not a number from 1 to 1000"),
                )
            })?,
        None => 100,
    };
    let rows = run(
        &state,
        &format!(
            "SELECT {COLUMNS} FROM b WHERE {} ORDER BY committed_at DESC, batch_id LIMIT {limit}",
            conds.join(" AND ")
        ),
        params,
    )
    .await?;
    Ok(Json(json!({"batches": objects(&rows)})))
}

fn not_found(id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown-batch",
        format!("no batch {id:?} of this source"),
    )
}

/// `GET /v1/batches/{id}`: the receipt of one of the source's batches.
pub async fn one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let source = source_of(&state, &headers)?;
    let rows = run(
        &state,
        "SELECT receipt FROM b WHERE source = $1 AND batch_id = $2",
        vec![
            ScalarValue::Utf8(Some(source)),
            ScalarValue::Utf8(Some(id.clone())),
        ],
    )
    .await?;
    let receipt = objects(&rows)
        .into_iter()
        .next()
        .ok_or_else(|| not_found(&id))?;
    let text = receipt["receipt"].as_str().unwrap_or("null");
    let value: Value = serde_json::from_str(text).unwrap_or(Value::String(text.to_string()));
    Ok(Json(value))
}

/// `GET /v1/batches/{id}/rejects`: the rows of one of the source's batches that were refused
/// (`atomic=false`), ID numbers masked as stored.
pub async fn rejects(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let source = source_of(&state, &headers)?;
    let params = || {
        vec![
            ScalarValue::Utf8(Some(source.clone())),
            ScalarValue::Utf8(Some(id.clone())),
        ]
    };
    let known = run(
        &state,
        "SELECT count(*) AS n FROM b WHERE source = $1 AND batch_id = $2",
        params(),
    )
    .await?;
    if objects(&known).first().and_then(|o| o["n"].as_i64()) != Some(1) {
        return Err(not_found(&id));
    }
    let rows = run(
        &state,
        "SELECT row, codes, messages, raw FROM r WHERE source = $1 AND batch_id = $2 ORDER BY row",
        params(),
    )
    .await?;
    Ok(Json(json!({"batch_id": id, "rejects": objects(&rows)})))
}
