//! `/v1/openapi.json`: the routes of this server, described from the code.
//!
//! - The routes come from [`ROUTES`], which a test checks against the router.
//! - Answer and request schemas are derived from the Rust types (`utoipa::ToSchema`): the
//!   receipt, row errors, the report catalog, the SQL request, and the documentation types
//!   below for answers built as JSON by hand.
//! - The rows of `/v1/batches` and `/v1/batches/{id}/rejects` are described from the store's
//!   Arrow schemas of the `batches` and `rejects` tables.
//! - The pushed rows are the contracts in `schemas/v1/tables` (JSON Schema 2020-12, which
//!   OpenAPI 3.1 takes as is), with each code-list field's codes as its `enum`.
//! - Every named report is a path of its own, `/v1/reports/<name>`, with its declared
//!   parameters (type, default, choices) from `queries/<name>.sql`.
//!
//! `scripts/api-check` validates the document with `openapi-spec-validator` and runs
//! schemathesis against a running server (bounded in time; `.ci/run` calls it).

use std::collections::BTreeMap;

use arrow_schema::{DataType, SchemaRef};
use careledger_model::{Table, codes::vocabulary};
use careledger_warehouse::{ParamKind, ParamSpec, ReportSpec, reports::catalog};
use serde_json::{Map, Value, json};
use utoipa::{OpenApi, ToSchema};

use crate::query::SqlRequest;
use crate::receipt::{Receipt, SeqGap};

/// Every route: method, path (OpenAPI template), summary, whether it needs a token.
/// `/v1/reports/{name}` is documented as one path per report.
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
        "/v1/sql",
        "The same as POST, the statement in q= (no parameters): for tools that can only GET.",
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
    (
        "get",
        "/",
        "The dashboard page (Chinese, English switch): signs in with a dashboard or analyst token and reads the reports.",
        false,
    ),
    (
        "get",
        "/assets/{name}",
        "The dashboard page's script and style, and Apache ECharts (vendored, with its licence).",
        false,
    ),
    ("get", "/healthz", "Liveness.", false),
    ("get", "/readyz", "Readiness: the store answers.", false),
    (
        "get",
        "/metrics",
        "OpenMetrics text: latency histograms, rows by table and source, the deriver's lag, process figures.",
        false,
    ),
];

/// An error answer (RFC 9457 problem details). Some problems carry more members, e.g. the row
/// errors of a refused batch.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Problem {
    /// `https://careledger.invalid/problems/<slug>`: the stable kind of problem.
    #[schema(example = "https://careledger.invalid/problems/bad-parameter")]
    r#type: String,
    /// The HTTP status's reason phrase.
    title: String,
    status: u16,
    /// What was wrong and what to do about it.
    #[schema(example = "as_of \"2024-13-01\" is not a date (YYYY-MM-DD)")]
    detail: String,
}

/// One column of a JSON answer.
#[derive(ToSchema)]
#[allow(dead_code)]
struct AnswerColumn {
    name: String,
    /// `string`, `integer`, `number`, `boolean`, `date`, `timestamp`, `decimal(s)`, or the
    /// Arrow type's name.
    r#type: String,
}

/// What an answer reflects: the deriver's cycle, the latest commit of pushed rows it includes,
/// and the version of each pushed table it has read.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Reflects {
    cycle: u64,
    ingested_at: Option<String>,
    table_versions: BTreeMap<String, i64>,
}

/// A JSON answer (SQL or report): columns, then rows as arrays of cells in column order.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Answer {
    columns: Vec<AnswerColumn>,
    /// Each row an array of cells (any JSON value; null for NULL and for suppressed cells).
    rows: Vec<Vec<serde_json::Value>>,
    row_count: usize,
    reflects: Option<Reflects>,
    /// Dashboards: cells hidden by disclosure control, as `[row, column]` (0-based).
    suppressed: Option<Vec<Vec<usize>>>,
    /// Dashboards: how the figures were protected.
    disclosure: Option<String>,
}

/// `GET /v1/reports`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReportList {
    reports: Vec<ReportSpec>,
    /// The caller's role: `analyst`, `dashboard`, `admin` (sources may not list reports).
    role: String,
    /// The caller's region scope (a code prefix); null for all of Guangxi.
    scope: Option<String>,
}

/// One column an SQL query can name.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TableColumn {
    name: String,
    /// The Arrow type.
    r#type: String,
    nullable: bool,
    description: Option<String>,
}

/// One table an SQL query can name.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TableInfo {
    name: String,
    description: Option<String>,
    columns: Vec<TableColumn>,
}

/// `GET /v1/tables`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Tables {
    tables: Vec<TableInfo>,
    /// The caller's region scope (a code prefix); absent: all of Guangxi.
    scope: Option<String>,
}

/// `GET /v1/sources/me`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct SourceMe {
    source: String,
    batches: i64,
    rows_received: i64,
    rows_accepted: i64,
    rows_rejected: i64,
    /// The highest `Batch-Seq` committed for this source: resume after it.
    last_batch_seq: Option<i64>,
    #[schema(value_type = Option<BatchRow>)]
    last_batch: Option<serde_json::Value>,
}

/// `GET /v1/batches`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct BatchList {
    #[schema(value_type = Vec<BatchRow>)]
    batches: Vec<serde_json::Value>,
}

/// `GET /v1/batches/{id}/rejects`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Rejects {
    batch_id: String,
    #[schema(value_type = Vec<RejectRow>)]
    rejects: Vec<serde_json::Value>,
}

/// Placeholders named in `value_type` above; their schemas come from the store's tables.
#[derive(ToSchema)]
struct BatchRow;
#[derive(ToSchema)]
struct RejectRow;

#[derive(OpenApi)]
#[openapi(components(schemas(
    Problem,
    Receipt,
    SeqGap,
    careledger_model::RowError,
    SqlRequest,
    Answer,
    AnswerColumn,
    Reflects,
    ReportList,
    ReportSpec,
    ParamSpec,
    ParamKind,
    Tables,
    TableInfo,
    TableColumn,
    SourceMe,
    BatchList,
    Rejects,
)))]
struct Components;

/// The JSON Schema of rows as `objects()` in `sources.rs` writes them: the named columns of a
/// stored table, integers and booleans as such, everything else as text.
fn row_schema(schema: &SchemaRef, columns: &str, description: &str) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for name in columns.split(',').map(str::trim) {
        let field = schema
            .field_with_name(name)
            .unwrap_or_else(|_| panic!("{name} is a column of the table"));
        let ty = match field.data_type() {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "integer",
            DataType::Float32 | DataType::Float64 => "number",
            DataType::Boolean => "boolean",
            _ => "string",
        };
        let ty = if field.is_nullable() {
            json!([ty, "null"])
        } else {
            json!(ty)
        };
        properties.insert(name.to_string(), json!({"type": ty}));
        required.push(name);
    }
    json!({"type": "object", "description": description, "properties": properties, "required": required})
}

/// A pushed table's contract as an OpenAPI schema: the contract itself, without its `$id`
/// (it would change how references resolve), code-list fields with their codes as `enum`.
fn contract_schema(table: Table) -> Value {
    let mut s: Value = serde_json::from_str(table.schema_text()).expect("contracts are JSON");
    let obj = s.as_object_mut().expect("object");
    obj.remove("$id");
    obj.remove("$schema");
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for prop in props.values_mut() {
            if let Some(list) = prop.get("x-codelist").and_then(Value::as_str)
                && let Some(codes) = vocabulary().try_list(list)
            {
                prop["enum"] = json!(codes.codes.iter().map(|c| &c.code).collect::<Vec<_>>());
            }
        }
    }
    s
}

fn row_ref(table: Table) -> Value {
    json!({"$ref": format!("#/components/schemas/Row_{}", table.as_str())})
}

fn content(media: &str, schema: Value) -> Value {
    json!({media: {"schema": schema}})
}

fn json_ok(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": content("application/json", json!({"$ref": format!("#/components/schemas/{schema}")}))})
}

/// The answer in each format: JSON, CSV, Arrow IPC stream, Parquet, Excel workbook.
fn answer_ok(description: &str) -> Value {
    json!({"description": description, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Answer"}},
        "text/csv": {"schema": {"type": "string"}},
        "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "contentMediaType": "application/vnd.apache.arrow.stream"}},
        "application/vnd.apache.parquet": {"schema": {"type": "string", "contentMediaType": "application/vnd.apache.parquet"}},
        careledger_decode::XLSX_MEDIA_TYPE: {"schema": {"type": "string", "contentMediaType": careledger_decode::XLSX_MEDIA_TYPE}},
    }})
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": schema})
}

fn format_param() -> Value {
    query_param(
        "format",
        "Answer format (or the `Accept` header); JSON is refused above its row limit, xlsx above a sheet's (1,048,000 rows).",
        json!({"type": "string", "enum": ["json", "csv", "arrow", "parquet", "xlsx"]}),
    )
}

/// `bom=` and `charset=`: how a CSV answer is written (refused with other formats).
fn csv_params() -> [Value; 2] {
    [
        query_param(
            "bom",
            "format=csv only: a UTF-8 byte order mark first, so Excel reads UTF-8 (Chinese text is not garbled).",
            json!({"type": "string", "enum": ["true", "false"]}),
        ),
        query_param(
            "charset",
            "format=csv only: utf-8 (default) or gb18030, the code page Excel uses on Chinese-locale Windows (also `Accept: text/csv; charset=gb18030`).",
            json!({"type": "string", "enum": ["utf-8", "gb18030"]}),
        ),
    ]
}

fn wait_for_param() -> Value {
    query_param(
        "wait_for",
        "A receipt's batch_id, or `latest`: wait (at most the query timeout) until the answer reflects it. 503 not-reflected-yet after that, 404 unknown-batch.",
        json!({"type": "string", "examples": ["latest"]}),
    )
}

fn known_at_param() -> Value {
    query_param(
        "known_at",
        "Answer as the ledger was known at this instant (RFC 3339, or a local date-time in Asia/Shanghai).",
        json!({"type": "string"}),
    )
}

/// One declared report parameter as an OpenAPI query parameter.
fn report_param(p: &ParamSpec) -> Value {
    let mut schema = match p.kind {
        ParamKind::Date => json!({"type": "string", "format": "date"}),
        ParamKind::Timestamp => json!({"type": "string"}),
        ParamKind::Int => json!({"type": "integer"}),
        ParamKind::Text => json!({"type": "string"}),
    };
    if !p.choices.is_empty() {
        schema["enum"] = json!(p.choices);
    }
    if let Some(d) = &p.default {
        schema["default"] = match p.kind {
            ParamKind::Int => d.parse::<i64>().map_or_else(|_| json!(d), |n| json!(n)),
            _ => json!(d),
        };
    }
    let mut param = query_param(&p.name, &p.description, schema);
    if p.default.is_none() {
        param["required"] = json!(true);
    }
    param
}

/// The operation of one named report.
fn report_operation(r: &ReportSpec) -> Value {
    let mut parameters: Vec<Value> = r.params.iter().map(report_param).collect();
    if !r.params.iter().any(|p| p.name == "known_at") {
        parameters.push(known_at_param());
    }
    parameters.push(format_param());
    parameters.extend(csv_params());
    parameters.push(query_param(
        "labels",
        "zh or en: a column <col>_label after each code column (region names, code labels); none: no labels. Default: zh for format=xlsx, none otherwise.",
        json!({"type": "string", "enum": ["zh", "en", "none"]}),
    ));
    parameters.push(wait_for_param());
    parameters.push(json!({"name": "If-None-Match", "in": "header", "description": "The ETag of an earlier answer: 304 when the answer has not changed.", "schema": {"type": "string"}}));
    let audience = match r.audience.as_deref() {
        Some("analyst") => "Analysts and admins only (one row per woman).",
        _ if r.publish.is_some() => {
            "Analysts and admins; dashboards get it with disclosure control (noise and suppression)."
        }
        _ => "Analysts and admins.",
    };
    json!({
        "operationId": format!("report_{}", r.name),
        "tags": ["reports"],
        "summary": format!("{} / {}", r.title_en, r.title_zh),
        "description": format!("{}\n\n{audience}", r.description),
        "parameters": parameters,
        "security": [{"bearer": []}],
        "responses": {
            "200": answer_ok("The report's answer."),
            "304": {"description": "Not modified (If-None-Match matched the ETag)."},
            "default": problem(),
        }
    })
}

fn problem() -> Value {
    json!({"description": "Problem (RFC 9457): what was wrong, in `detail`.",
           "content": content("application/problem+json", json!({"$ref": "#/components/schemas/Problem"}))})
}

fn text_ok(description: &str, media: &str) -> Value {
    json!({"description": description, "content": content(media, json!({"type": "string"}))})
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let tables: Vec<&str> = Table::ALL.iter().map(|t| t.as_str()).collect();
    let mut paths = Map::new();
    for (method, path, summary, auth) in ROUTES {
        if *path == "/v1/reports/{name}" {
            for r in catalog() {
                paths.insert(
                    format!("/v1/reports/{}", r.name),
                    json!({"get": report_operation(r)}),
                );
            }
            continue;
        }
        let mut op = json!({"summary": summary, "responses": {"default": problem()}});
        if *auth {
            op["security"] = json!([{"bearer": []}]);
        }
        let mut parameters = Vec::new();
        let ok = match *path {
            "/v1/ingest/{table}" => {
                parameters.push(json!({"name": "table", "in": "path", "required": true, "schema": {"type": "string", "enum": tables}}));
                parameters.push(query_param("atomic", "true: one bad row refuses the whole batch; false: good rows are stored, bad rows listed.", json!({"type": "boolean", "default": true})));
                parameters.push(query_param(
                    "dry_run",
                    "Validate only: nothing is stored.",
                    json!({"type": "boolean", "default": false}),
                ));
                parameters.push(query_param(
                    "errors",
                    "all: list every row error in the reply (default: the first 100).",
                    json!({"type": "string", "enum": ["first", "all"], "default": "first"}),
                ));
                parameters.push(json!({"name": "Idempotency-Key", "in": "header", "description": "A retry with the same key gets the first receipt back (duplicate: true); nothing is stored twice.", "schema": {"type": "string"}}));
                parameters.push(json!({"name": "Batch-Seq", "in": "header", "description": "The source's own batch counter; a gap is reported in seq_gap, a repeat is 409.", "schema": {"type": "integer", "minimum": 0}}));
                parameters.push(json!({"name": "Content-Encoding", "in": "header", "description": "gzip or zstd: the body is decompressed; the size limit applies to the decompressed body.", "schema": {"type": "string", "enum": ["identity", "gzip", "zstd"]}}));
                let rows =
                    json!({"oneOf": Table::ALL.iter().map(|t| row_ref(*t)).collect::<Vec<_>>()});
                op["requestBody"] = json!({"required": true, "description": "Rows of the table named in the path, as its contract (`schemas/v1/tables/<table>.json`) describes them.", "content": {
                    "application/json": {"schema": {"type": "array", "items": rows}},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/csv": {"schema": {"type": "string"}},
                    careledger_decode::XLSX_MEDIA_TYPE: {"schema": {"type": "string", "contentMediaType": careledger_decode::XLSX_MEDIA_TYPE, "description": "The first sheet of a workbook; headers are field names or the Chinese headers of the mapping profiles (schemas/v1/sheets/)."}}}});
                json_ok(
                    "The receipt, after the rows are committed (or validated, dry_run).",
                    "Receipt",
                )
            }
            "/v1/sql" if *method == "get" => {
                parameters.push(query_param(
                    "q",
                    "One read-only statement (URL-encoded).",
                    json!({"type": "string", "example": "SELECT count(*) AS women FROM status_episodes"}),
                ));
                parameters.push(known_at_param());
                parameters.push(wait_for_param());
                parameters.push(format_param());
                parameters.extend(csv_params());
                answer_ok("The query's answer.")
            }
            "/v1/sql" => {
                op["requestBody"] = json!({"required": true, "content": content("application/json", json!({"$ref": "#/components/schemas/SqlRequest"}))});
                parameters.push(format_param());
                parameters.extend(csv_params());
                answer_ok("The query's answer.")
            }
            "/v1/reports" => json_ok("The reports the caller may run.", "ReportList"),
            "/v1/tables" => json_ok("What the caller's SQL can name.", "Tables"),
            "/v1/sources/me" => json_ok("The source's own figures.", "SourceMe"),
            "/v1/batches" => {
                parameters.push(query_param(
                    "since",
                    "Receipts committed at or after this instant (RFC 3339).",
                    json!({"type": "string", "format": "date-time"}),
                ));
                parameters.push(query_param(
                    "idempotency_key",
                    "Only the batch sent with this key.",
                    json!({"type": "string"}),
                ));
                parameters.push(query_param(
                    "batch_seq",
                    "Only the batch sent with this Batch-Seq.",
                    json!({"type": "integer"}),
                ));
                parameters.push(query_param(
                    "limit",
                    "At most this many (default 100).",
                    json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
                ));
                json_ok("The source's receipts, newest first.", "BatchList")
            }
            "/v1/batches/{id}" | "/v1/batches/{id}/rejects" => {
                parameters.push(json!({"name": "id", "in": "path", "required": true, "description": "The receipt's batch_id.", "schema": {"type": "string", "format": "uuid"}}));
                if path.ends_with("rejects") {
                    json_ok("The refused rows of the batch.", "Rejects")
                } else {
                    json_ok("The batch's receipt.", "Receipt")
                }
            }
            "/v1/openapi.json" => {
                json!({"description": "This document.", "content": content("application/json", json!({"type": "object"}))})
            }
            "/" => text_ok("The page.", "text/html"),
            "/assets/{name}" => {
                let names: Vec<&str> = crate::page::asset_names().collect();
                parameters.push(json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "enum": names}}));
                json!({"description": "The file.", "content": {
                    "text/javascript": {"schema": {"type": "string"}},
                    "text/css": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                }})
            }
            "/healthz" => text_ok("The process answers.", "text/plain"),
            "/readyz" => text_ok("The store answers.", "text/plain"),
            "/metrics" => text_ok("The metrics.", crate::metrics::CONTENT_TYPE),
            other => panic!("route {other} has no documented answer"),
        };
        op["responses"]["200"] = ok;
        if !parameters.is_empty() {
            op["parameters"] = Value::Array(parameters);
        }
        paths.entry(path.to_string()).or_insert_with(|| json!({}))[*method] = op;
    }

    let mut components =
        serde_json::to_value(Components::openapi().components).expect("components serialise");
    let schemas = components["schemas"]
        .as_object_mut()
        .expect("schemas object");
    schemas.insert(
        "BatchRow".into(),
        row_schema(
            &careledger_store::batches_schema(),
            crate::sources::COLUMNS,
            "One receipt as the `batches` table holds it.",
        ),
    );
    schemas.insert(
        "RejectRow".into(),
        row_schema(
            &careledger_store::rejects_schema(),
            "row, codes, messages, raw",
            "One refused row as the `rejects` table holds it: its row number, the error codes and messages, the raw row with ID numbers masked.",
        ),
    );
    for t in Table::ALL {
        schemas.insert(format!("Row_{}", t.as_str()), contract_schema(t));
    }
    // A row's cells are any JSON value.
    schemas["Answer"]["properties"]["rows"] = json!({"type": "array", "description": "Each row an array of cells in column order (any JSON value; null for NULL and for suppressed cells).", "items": {"type": "array", "items": {}}});
    components["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer", "description": "A careledger token (`careledger token create`)."}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "careledger", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Data-sync gateway and warehouse for Guangxi's dynamic ledger of rural left-behind women.",
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "paths": paths,
        "components": components,
    })
}
