//! `careledger sql` and `careledger report`: one-shot queries against a running server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::table::print_table;

/// Where the server is and who is asking.
#[derive(Debug, clap::Args)]
pub(crate) struct Remote {
    /// Server URL.
    #[arg(
        long,
        env = "CARELEDGER_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Bearer token (analyst or admin for SQL; dashboards may run reports).
    #[arg(long, env = "CARELEDGER_TOKEN")]
    token: String,
    /// Output: an aligned table on the terminal, or csv / json / arrow / parquet.
    #[arg(long, default_value = "table")]
    format: String,
    /// Write the answer to this file instead of the terminal.
    #[arg(long)]
    output: Option<PathBuf>,
}

impl Remote {
    fn wire_format(&self) -> Result<&str> {
        match self.format.as_str() {
            "table" | "json" => Ok("json"),
            "csv" | "arrow" | "parquet" => Ok(&self.format),
            other => bail!("--format {other}: use table, csv, json, arrow or parquet"),
        }
    }

    async fn deliver(&self, resp: reqwest::Response) -> Result<()> {
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
        if let Some(path) = &self.output {
            std::fs::write(path, &body).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {} bytes to {}", body.len(), path.display());
            return Ok(());
        }
        match self.format.as_str() {
            "table" => {
                let v: Value = serde_json::from_slice(&body)?;
                print_table("", &v, usize::MAX);
                Ok(())
            }
            "csv" | "json" => {
                print!("{}", String::from_utf8_lossy(&body));
                Ok(())
            }
            other => bail!("--format {other} is binary: give --output FILE"),
        }
    }
}

/// Runs one SQL statement on the server.
pub(crate) async fn sql(remote: Remote, statement: String, known_at: Option<String>) -> Result<()> {
    let url = format!(
        "{}/v1/sql?format={}",
        remote.server.trim_end_matches('/'),
        remote.wire_format()?
    );
    let body = json!({"sql": statement, "known_at": known_at});
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&remote.token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    remote.deliver(resp).await
}

/// Runs a named report on the server with `k=v` parameters.
pub(crate) async fn report(remote: Remote, name: String, params: Vec<String>) -> Result<()> {
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for p in params {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--param {p}: write it as name=value")
        };
        query.insert(k.to_string(), v.to_string());
    }
    query.insert("format".into(), remote.wire_format()?.to_string());
    let url = format!("{}/v1/reports/{name}", remote.server.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&remote.token)
        .query(&query)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    remote.deliver(resp).await
}
