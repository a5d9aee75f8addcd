//! Request bodies sent with `Content-Encoding`: gzip and zstd are decompressed, the body size
//! limit applies to what they decompress to (a bomb is refused without being inflated whole),
//! and an unknown encoding is a 415 naming it.

use std::io::Write;

use axum::http::StatusCode;
use careledger_gateway::{CommitConfig, GatewayConfig};
use serde_json::Value;

use crate::{Harness, assert_problem, ndjson, woman};

const NDJSON: &str = "application/x-ndjson";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn gzip_and_zstd_bodies_are_decompressed_before_decoding() {
    let h = Harness::new().await;
    let tok = h.tok("civil_affairs").to_string();
    let rows: Vec<Value> = (0..3).map(|n| woman(n, "civil_affairs")).collect();
    let body = ndjson(&rows);
    let zstd_body = zstd::stream::encode_all(body.as_bytes(), 3).unwrap();
    // Two gzip members one after the other are one body.
    let (first, second) = body.split_at(body.len() / 2);
    let two_members = [gzip(first.as_bytes()), gzip(second.as_bytes())].concat();
    for (encoding, sent) in [
        ("gzip", gzip(body.as_bytes())),
        ("zstd", zstd_body),
        ("GZIP", two_members),
        ("identity", body.clone().into_bytes()),
    ] {
        let key = format!("enc-{encoding}");
        let (s, _, r) = h
            .post(
                "/v1/ingest/women",
                &tok,
                NDJSON,
                sent,
                &[("content-encoding", encoding), ("idempotency-key", &key)],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{encoding}: {r}");
        assert_eq!(r["rows_accepted"], 3, "{encoding}: {r}");
    }
}

#[tokio::test]
async fn the_size_limit_holds_after_decompression_and_unknown_encodings_are_named() {
    let limit = 1024 * 1024;
    let h = Harness::with_config(GatewayConfig {
        max_body_bytes: limit,
        commit: CommitConfig {
            window: std::time::Duration::from_millis(20),
            max_rows: 100_000,
            receipt_cache: careledger_gateway::commit::RECEIPT_CACHE,
        },
        ..GatewayConfig::default()
    })
    .await;
    let tok = h.tok("civil_affairs").to_string();

    // A bomb: 32 gzip members of 16 MiB of blanks each, 512 MiB in all from about 512 KiB
    // sent (under the limit as sent). Refused at the limit, quickly.
    let member = gzip(&vec![b' '; 16 << 20]);
    let bomb: Vec<u8> = member.repeat(32);
    assert!(bomb.len() < limit, "{}", bomb.len());
    let started = std::time::Instant::now();
    let (s, hd, r) = h
        .post(
            "/v1/ingest/women",
            &tok,
            NDJSON,
            bomb,
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_problem(&hd, &r, StatusCode::PAYLOAD_TOO_LARGE, s);
    let detail = r["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("limit of {limit} bytes")),
        "{detail}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "inflated only up to the limit: {:?}",
        started.elapsed()
    );
    let zbomb = zstd::stream::encode_all(&vec![b' '; 8 << 20][..], 1).unwrap();
    let (s, hd, r) = h
        .post(
            "/v1/ingest/women",
            &tok,
            NDJSON,
            zbomb,
            &[("content-encoding", "zstd")],
        )
        .await;
    assert_problem(&hd, &r, StatusCode::PAYLOAD_TOO_LARGE, s);

    // A body that decompresses to just under the limit is fine.
    let rows: Vec<Value> = (0..2).map(|n| woman(n, "civil_affairs")).collect();
    let mut body = ndjson(&rows);
    body.push_str(&" ".repeat(limit - body.len() - 1));
    body.push('\n');
    let (s, _, r) = h
        .post(
            "/v1/ingest/women",
            &tok,
            NDJSON,
            gzip(body.as_bytes()),
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["rows_accepted"], 2, "{r}");

    // An encoding the gateway does not speak, and a body that is not what it claims.
    let (s, hd, r) = h
        .post(
            "/v1/ingest/women",
            &tok,
            NDJSON,
            "x",
            &[("content-encoding", "br")],
        )
        .await;
    assert_problem(&hd, &r, StatusCode::UNSUPPORTED_MEDIA_TYPE, s);
    assert!(r["detail"].as_str().unwrap().contains("\"br\""), "{r}");
    let (s, hd, r) = h
        .post(
            "/v1/ingest/women",
            &tok,
            NDJSON,
            ndjson(&rows),
            &[("content-encoding", "gzip")],
        )
        .await;
    assert_problem(&hd, &r, StatusCode::BAD_REQUEST, s);
    assert!(
        r["detail"].as_str().unwrap().contains("not valid gzip"),
        "{r}"
    );
    assert_eq!(h.count("women").await, 2);
}
