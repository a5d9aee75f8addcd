//! `careledger demo`: the server on its local store, and the simulated departments pushing a
//! realistic history through the HTTP API; then a few reports and the URLs to try next.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use careledger_gateway::Role;
use careledger_sim::{SimBatch, ndjson, simulate};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::push::Outcome;
use crate::table::print_table;
use crate::{DemoArgs, start};

/// What the pushes added up to.
#[derive(Debug, Default)]
struct Tally {
    batches: usize,
    accepted: u64,
    rejected: u64,
    duplicates: usize,
}

/// One simulated batch through `push`'s sender (same retries); a refusal ends the demo.
async fn push(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    batch: &SimBatch,
) -> Result<Value> {
    let url = format!("{base}/v1/ingest/{}?atomic=false", batch.table);
    let body = ndjson(&batch.rows);
    match crate::push::send(
        client,
        &url,
        token,
        &[("content-type", "application/x-ndjson")],
        &batch.idempotency_key,
        body.as_bytes(),
        5,
    )
    .await
    {
        Outcome::Receipt { receipt, .. } => Ok(receipt),
        Outcome::Failed(message) => bail!("{url}: {message}"),
    }
}

pub(crate) async fn run(mut args: DemoArgs) -> Result<()> {
    // The demo's pushes, `in_flight` at once, may all be one source's: let them all in.
    if args.serve.max_in_flight_per_token != 0 {
        args.serve.max_in_flight_per_token = args.serve.max_in_flight_per_token.max(args.in_flight);
    }
    let running = start(&args.serve).await?;
    running.announce();
    let base = format!("http://{}", running.addr);

    // Tokens for this run: one per source and an admin token, kept in memory only.
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let mut tokens: HashMap<String, String> = HashMap::new();
    for code in &careledger_model::vocabulary().list("sources").codes {
        let t = running.tokens.create(
            &format!("demo-{stamp}-{}", code.code),
            &Role::Source(code.code.clone()),
            None,
        )?;
        tokens.insert(code.code.clone(), t);
    }
    let admin = running
        .tokens
        .create(&format!("demo-{stamp}-admin"), &Role::Admin, None)?;

    let config = args.sim.config();
    let end = config.end;
    let t = Instant::now();
    println!(
        "\nsimulating {} women of {} departments, {} to {} …",
        config.women,
        tokens.len(),
        config.start,
        config.end
    );
    let batches = tokio::task::spawn_blocking(move || simulate(&config))
        .await
        .context("the simulation")?;
    let rows: usize = batches.iter().map(|b| b.rows.len()).sum();
    println!(
        "{} batches, {rows} rows, simulated in {:.1} s; pushing over HTTP",
        batches.len(),
        t.elapsed().as_secs_f64()
    );

    let bar = ProgressBar::new(rows as u64);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} rows  {per_sec}  {msg}")
            .expect("template"),
    );
    let client = reqwest::Client::new();
    let mut tally = Tally::default();
    let t = Instant::now();
    // Batches go in their push order, many in flight (departments push independently; the
    // gateway group-commits what arrives together).
    let mut results = futures::stream::iter(batches.iter().map(|b| {
        let client = &client;
        let base = &base;
        let token = tokens.get(&b.source).cloned().unwrap_or_default();
        async move {
            let first = push(client, base, &token, b).await?;
            let again = if b.send_twice {
                Some(push(client, base, &token, b).await?)
            } else {
                None
            };
            Ok::<_, anyhow::Error>((b.rows.len(), first, again))
        }
    }))
    .buffered(args.in_flight.max(1));
    while let Some(r) = results.next().await {
        let (n, first, again) = r?;
        tally.batches += 1;
        tally.accepted += first["rows_accepted"].as_u64().unwrap_or(0);
        tally.rejected += first["rows_rejected"].as_u64().unwrap_or(0);
        if first["duplicate"] == true {
            tally.duplicates += 1;
        }
        if let Some(a) = again {
            if a["duplicate"] != true {
                bail!("a batch sent twice was stored twice: {a}");
            }
            tally.duplicates += 1;
        }
        bar.inc(n as u64);
        bar.set_message(format!("{} rejected", tally.rejected));
    }
    bar.finish();
    println!(
        "pushed {} batches in {:.1} s: {} rows accepted, {} rejected (kept in the rejects table), {} duplicate sends answered from their receipts",
        tally.batches,
        t.elapsed().as_secs_f64(),
        tally.accepted,
        tally.rejected,
        tally.duplicates
    );

    let as_of = (end - chrono::Days::new(1)).to_string();
    let year_start = format!("{}-01-01", &as_of[..4]);
    let to = end.to_string();
    let t = Instant::now();
    for (title, path, limit) in [
        (
            format!("Stock on {as_of}, by city (台账在册人数)"),
            format!("/v1/reports/stock?as_of={as_of}&level=city"),
            14,
        ),
        (
            format!("Entries {year_start} .. {as_of} by reason, whole region"),
            format!("/v1/reports/entries?from={year_start}&to={to}&level=province"),
            40,
        ),
        (
            format!("Exits {year_start} .. {as_of} by reason, whole region"),
            format!("/v1/reports/exits?from={year_start}&to={to}&level=province"),
            60,
        ),
        (
            format!("Coverage by measure {year_start} .. {as_of}, whole region"),
            format!("/v1/reports/coverage_by_measure?from={year_start}&to={to}&level=province"),
            7,
        ),
        (
            format!("Registration discrepancies on {as_of}, by city"),
            format!("/v1/reports/registration_discrepancies?as_of={as_of}&level=city"),
            14,
        ),
    ] {
        // Reflecting every batch pushed above (the deriver runs beside the server).
        let resp = client
            .get(format!("{base}{path}&wait_for=latest"))
            .bearer_auth(&admin)
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {v}");
        }
        print_table(&title, &v, limit);
    }
    println!("\nreports computed in {:.1} s", t.elapsed().as_secs_f64());
    println!("\nTry next (an admin token of this run is below; it lives in tokens.json, hashed):");
    println!("  export TOKEN={admin}");
    println!("  curl -s {base}/v1/reports -H \"Authorization: Bearer $TOKEN\"");
    println!(
        "  curl -s '{base}/v1/reports/turnover_and_returns?from={year_start}&to={to}&level=city' -H \"Authorization: Bearer $TOKEN\""
    );
    println!(
        "  curl -s {base}/v1/sql -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"sql\": \"SELECT exit_reason, count(*) FROM status_episodes GROUP BY 1\"}}'"
    );
    println!(
        "  curl -s -OJ '{base}/v1/reports/entries?from={year_start}&to={to}&level=city&format=xlsx' -H \"Authorization: Bearer $TOKEN\"   # a workbook"
    );
    println!("  curl -s {base}/v1/openapi.json");
    println!("  the dashboard page: {base}/ (sign in with the token above)");
    if args.exit {
        return running.finish(true).await;
    }
    println!("\nserving until Ctrl-C");
    running.finish(false).await
}
