//! The dashboard page at `/`: static files compiled into the binary (`assets/dashboard/`,
//! Apache ECharts vendored with its licence), so the page works with no network. It signs in
//! with a dashboard or analyst token and reads `/v1/reports` like any other client; the
//! server gives it nothing a token would not give a script.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

const INDEX: &str = include_str!("../assets/dashboard/index.html");

/// (name, media type, bytes) of every file under `/assets/`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard/app.css"),
    ),
    (
        "echarts.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard/echarts.min.js"),
    ),
    (
        "LICENSE-echarts",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/dashboard/LICENSE-echarts"),
    ),
    (
        "LICENSE-echarts-d3",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/dashboard/LICENSE-echarts-d3"),
    ),
    (
        "NOTICE-echarts",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/dashboard/NOTICE-echarts"),
    ),
];

/// Scripts and styles from this origin only; requests to this origin only; never framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn with_headers(mut resp: Response, media: &'static str, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `GET /`.
pub async fn index() -> Response {
    with_headers(
        INDEX.into_response(),
        "text/html; charset=utf-8",
        "no-cache",
    )
}

/// `GET /assets/{name}`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, media, bytes)) => with_headers(
            bytes.to_vec().into_response(),
            media,
            // The page's own files change with the binary; ECharts is pinned.
            if name == "echarts.min.js" {
                "public, max-age=86400"
            } else {
                "no-cache"
            },
        ),
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!(
                "no asset {:?}; the page's files are {}",
                name.chars().take(64).collect::<String>(),
                asset_names().collect::<Vec<_>>().join(", ")
            ),
        )
        .into_response(),
    }
}

/// The names under `/assets/`.
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(n, _, _)| *n)
}
