//! `/v1/openapi.json`: the routes of this server, described from one list that a test checks
//! against the router.

use serde_json::{Map, Value, json};

/// Every route: method, path (OpenAPI template), summary, whether it needs a token.
pub const ROUTES: &[(&str, &str, &str, bool)] = &[
    (
        "post",
        "/v1/ingest/{table}",
        "Push rows of a table (JSON array, NDJSON, CSV UTF-8/GB18030); answers a receipt after the commit.",
        true,
    ),
    (
        "post",
        "/v1/sql",
        "Run one read-only SQL query (analyst, admin) over the caller's scope.",
        true,
    ),
    (
        "get",
        "/v1/reports",
        "List the named reports with their typed parameters.",
        true,
    ),
    (
        "get",
        "/v1/reports/{name}",
        "Run a named report; dashboards get disclosure control. ETag / If-None-Match.",
        true,
    ),
    (
        "get",
        "/v1/tables",
        "Tables, columns and types that the caller's SQL can name.",
        true,
    ),
    (
        "get",
        "/v1/sources/me",
        "A source's own figures: highest committed Batch-Seq, batches and rows, its last batch (source tokens).",
        true,
    ),
    (
        "get",
        "/v1/batches",
        "A source's own receipts, newest first; since, idempotency_key, batch_seq, limit (source tokens).",
        true,
    ),
    (
        "get",
        "/v1/batches/{id}",
        "The receipt of one of the source's batches (source tokens; another source's is 404).",
        true,
    ),
    (
        "get",
        "/v1/batches/{id}/rejects",
        "The refused rows of one of the source's batches, ID numbers masked (source tokens).",
        true,
    ),
    ("get", "/v1/openapi.json", "This document.", false),
    ("get", "/healthz", "Liveness.", false),
    ("get", "/readyz", "Readiness: the store answers.", false),
    ("get", "/metrics", "Prometheus counters.", false),
];

fn problem_ref() -> Value {
    json!({"description": "Problem (RFC 9457)", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, auth) in ROUTES {
        let mut op = json!({"summary": summary, "responses": {"200": {"description": "OK"}, "default": problem_ref()}});
        if *auth {
            op["security"] = json!([{"bearer": []}]);
        }
        let mut parameters = Vec::new();
        for name in ["table", "name", "id"] {
            if path.contains(&format!("{{{name}}}")) {
                parameters.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
            }
        }
        match *path {
            "/v1/ingest/{table}" => {
                parameters.push(json!({"name": "atomic", "in": "query", "schema": {"type": "boolean", "default": true}}));
                parameters.push(json!({"name": "dry_run", "in": "query", "schema": {"type": "boolean", "default": false}}));
                parameters.push(json!({"name": "errors", "in": "query", "description": "all: list every row error in the reply (default: the first 100)", "schema": {"type": "string", "enum": ["first", "all"], "default": "first"}}));
                parameters.push(json!({"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}));
                parameters.push(json!({"name": "Batch-Seq", "in": "header", "schema": {"type": "integer", "minimum": 0}}));
                parameters.push(json!({"name": "Content-Encoding", "in": "header", "description": "gzip or zstd: the body is decompressed; the size limit applies to the decompressed body", "schema": {"type": "string", "enum": ["identity", "gzip", "zstd"]}}));
                op["requestBody"] = json!({"required": true, "content": {
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/csv": {"schema": {"type": "string"}}}});
            }
            "/v1/sql" => {
                op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["sql"],
                    "properties": {"sql": {"type": "string"}, "params": {"type": "object"}, "known_at": {"type": "string", "format": "date-time"}}}}}});
                parameters.push(json!({"name": "format", "in": "query", "schema": {"enum": ["json", "csv", "arrow", "parquet"]}}));
            }
            "/v1/reports/{name}" => {
                parameters.push(json!({"name": "format", "in": "query", "schema": {"enum": ["json", "csv", "arrow", "parquet"]}}));
                parameters.push(json!({"name": "known_at", "in": "query", "schema": {"type": "string", "format": "date-time"}}));
                parameters.push(
                    json!({"name": "If-None-Match", "in": "header", "schema": {"type": "string"}}),
                );
                op["responses"]["304"] = json!({"description": "Not modified"});
            }
            _ => {}
        }
        if !parameters.is_empty() {
            op["parameters"] = Value::Array(parameters);
        }
        paths.entry(path.to_string()).or_insert_with(|| json!({}))[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "careledger", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Data-sync gateway and warehouse for Guangxi's dynamic ledger of rural left-behind women."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}}}
        }
    })
}
