//! Where `sql`, `report` and the shell send their questions: a running server (with a token)
//! or a local store opened directly (read-only SQL, full access).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use careledger_gateway::QueryConfig;
use careledger_gateway::engine::Engine;
use careledger_gateway::output::{Format, concat, encode};
use careledger_gateway::query::{TableInfo, describe_tables};
use careledger_model::RuleParams;
use careledger_store::Store;
use careledger_warehouse::{Access, Warehouse};
use serde_json::{Value, json};

use crate::table::{render_expanded, render_table};

/// Where the answers come from.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Target {
    /// Server URL.
    #[arg(
        long,
        env = "CARELEDGER_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub(crate) server: String,
    /// Bearer token (analyst or admin for SQL; dashboards may run reports).
    #[arg(long, env = "CARELEDGER_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Read a local store directly instead of asking a server (read-only, and with full
    /// access: whoever can read the directory can read everything in it). SQL runs under
    /// the server's default limits (30 s, 2 GiB, the same shape limits and SQL guard).
    #[arg(long)]
    pub(crate) store: Option<String>,
}

/// How answers are printed or saved.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Output {
    /// Output: an aligned table on the terminal, or csv / json / arrow / parquet.
    #[arg(long, default_value = "table")]
    pub(crate) format: String,
    /// Write the answer to this file instead of the terminal.
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
}

impl Output {
    /// The format asked of the backend (`table` is drawn from JSON).
    pub(crate) fn wire_format(&self) -> Result<Format> {
        match self.format.as_str() {
            "table" | "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "arrow" => Ok(Format::Arrow),
            "parquet" => Ok(Format::Parquet),
            other => bail!("format {other}: use table, csv, json, arrow or parquet"),
        }
    }

    /// Prints the answer, or writes it to `--output`.
    pub(crate) fn deliver(&self, body: &Bytes) -> Result<()> {
        if let Some(path) = &self.output {
            std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {} bytes to {}", body.len(), path.display());
            return Ok(());
        }
        print!("{}", self.text(body, false)?);
        Ok(())
    }

    /// An answer as text: drawn as a table (`expanded`: one block per record, the shell's
    /// `\x`), or CSV / JSON as received.
    pub(crate) fn text(&self, body: &Bytes, expanded: bool) -> Result<String> {
        match self.format.as_str() {
            "table" => {
                let v: Value = serde_json::from_slice(body)?;
                Ok(if expanded {
                    render_expanded(&v, usize::MAX)
                } else {
                    render_table(&v, usize::MAX)
                })
            }
            "csv" | "json" => Ok(String::from_utf8_lossy(body).into_owned()),
            other => bail!("format {other} is binary: give --output FILE"),
        }
    }
}

/// A server or a local store.
#[derive(Debug)]
pub(crate) enum Backend {
    Remote {
        client: reqwest::Client,
        server: String,
        token: String,
    },
    Local {
        /// The same engine the server's SQL doors use, over the store opened directly.
        engine: Arc<Engine>,
    },
}

/// Whether `location` (a directory or file:// URL) holds a careledger store.
fn local_store_exists(location: &str) -> bool {
    if location.contains("://") && !location.starts_with("file://") {
        return true; // other object stores: let opening tell
    }
    let dir = Path::new(location.strip_prefix("file://").unwrap_or(location));
    dir.join("women").join("_delta_log").is_dir()
}

impl Backend {
    pub(crate) async fn connect(target: &Target) -> Result<Backend> {
        if let Some(location) = &target.store {
            if !local_store_exists(location) {
                bail!(
                    "no careledger store at {location} (a store has women/_delta_log; `careledger serve --store {location}` creates one)"
                );
            }
            let store = Store::open_existing(location)
                .await
                .with_context(|| format!("opening store {location}"))?;
            let warehouse = Warehouse::new(Arc::new(store), RuleParams::default())
                .with_time_zone(crate::configured_zone()?);
            return Ok(Backend::Local {
                engine: Engine::local(warehouse, QueryConfig::default()),
            });
        }
        let Some(token) = target.token.clone() else {
            bail!(
                "give --token (or CARELEDGER_TOKEN) to ask the server at {}, or --store DIR to read a local store",
                target.server
            );
        };
        Ok(Backend::Remote {
            client: http_client()?,
            server: target.server.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// Runs one read-only SQL statement.
    pub(crate) async fn sql(
        &self,
        statement: &str,
        known_at: Option<&str>,
        format: Format,
    ) -> Result<Bytes> {
        match self {
            Backend::Remote {
                client,
                server,
                token,
            } => {
                // What this user pushed before is in the answer (bounded by the server's
                // query timeout).
                let url = format!("{server}/v1/sql?format={}&wait_for=latest", format.as_str());
                let resp = client
                    .post(&url)
                    .bearer_auth(token)
                    .json(&json!({"sql": statement, "known_at": known_at}))
                    .send()
                    .await
                    .with_context(|| format!("POST {url}"))?;
                answer(resp).await
            }
            Backend::Local { engine } => {
                let (schema, batches) = engine
                    .answer_locally(statement, known_at)
                    .await
                    .map_err(|p| anyhow::anyhow!("{}", p.detail))?;
                local_encode(format, &schema, &batches)
            }
        }
    }

    /// Runs a named report with `name=value` parameters.
    pub(crate) async fn report(
        &self,
        name: &str,
        params: &[(String, String)],
        format: Format,
    ) -> Result<Bytes> {
        match self {
            Backend::Remote {
                client,
                server,
                token,
            } => {
                let mut query: Vec<(String, String)> = params.to_vec();
                query.push(("format".into(), format.as_str().into()));
                if !params.iter().any(|(k, _)| k == "wait_for") {
                    query.push(("wait_for".into(), "latest".into()));
                }
                let url = format!("{server}/v1/reports/{name}");
                let resp = client
                    .get(&url)
                    .bearer_auth(token)
                    .query(&query)
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                answer(resp).await
            }
            Backend::Local { engine } => {
                let given: HashMap<String, String> = params.iter().cloned().collect();
                let (schema, batches) = engine
                    .warehouse()
                    .run_report_with_schema(name, &given, &Access::all())
                    .await?;
                local_encode(format, &schema, &batches)
            }
        }
    }

    /// The tables SQL can read, with their columns (for completion and `\d`).
    pub(crate) async fn tables(&self) -> Result<Vec<TableInfo>> {
        match self {
            Backend::Remote {
                client,
                server,
                token,
            } => {
                let url = format!("{server}/v1/tables");
                let resp = client
                    .get(&url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                #[derive(serde::Deserialize)]
                struct Tables {
                    tables: Vec<TableInfo>,
                }
                let body = answer(resp).await?;
                let list: Tables = serde_json::from_slice(&body)
                    .with_context(|| format!("reading the answer of GET {url}"))?;
                Ok(list.tables)
            }
            Backend::Local { engine } => {
                let snap = engine.warehouse().snapshot_as(None, &Access::all()).await?;
                describe_tables(&snap.ctx)
                    .await
                    .map_err(|p| anyhow::anyhow!("{}", p.detail))
            }
        }
    }

    /// Where the answers come from, for the shell's banner.
    pub(crate) fn location(&self) -> String {
        match self {
            Backend::Remote { server, .. } => server.clone(),
            Backend::Local { engine } => engine.warehouse().store().url().to_string(),
        }
    }
}

fn local_encode(
    format: Format,
    schema: &arrow_schema::SchemaRef,
    batches: &[arrow_array::RecordBatch],
) -> Result<Bytes> {
    let batch = concat(schema, batches).map_err(|p| anyhow::anyhow!("{}", p.detail))?;
    encode(format, &batch, None, usize::MAX, None, None)
        .map_err(|p| anyhow::anyhow!("{}", p.detail))
}

/// The body of a successful answer, or the server's problem as an error.
async fn answer(resp: reqwest::Response) -> Result<Bytes> {
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        let detail = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_string));
        bail!(
            "{status}: {}",
            detail.unwrap_or_else(|| String::from_utf8_lossy(&body).into())
        );
    }
    Ok(body)
}

/// `name=value` pairs from `--param`.
pub(crate) fn parse_params(params: &[String]) -> Result<Vec<(String, String)>> {
    params
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--param {p}: write it as name=value"))
        })
        .collect()
}

/// The HTTP client of `sql`, `report` and the shell. An idle connection is dropped after a
/// few seconds, before the server closes it (it closes a connection that sends no request
/// within its header timeout, 10 s by default): reusing one the server had closed failed the
/// next statement of an idle shell with "connection closed before message completed".
pub(crate) fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(4))
        .build()?)
}
