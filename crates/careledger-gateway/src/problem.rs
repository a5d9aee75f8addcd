//! The one place that turns errors into HTTP: `application/problem+json` (RFC 9457) bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// An API error: status, a stable slug (`problems/<slug>`), a title and a detail a person can
/// act on, plus optional extra members (e.g. the row errors of a refused batch).
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub slug: &'static str,
    pub detail: String,
    pub extra: Map<String, Value>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            slug,
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, slug, detail)
    }

    pub fn with(mut self, key: &str, value: Value) -> Problem {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// A server-side failure: the detail is logged, the client gets no internals.
    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Problem {
        tracing::error!(%err, context, "internal error");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "{context} failed on the server; nothing was stored. Retry later with the same Idempotency-Key."
            ),
        )
    }
}

/// A refused body: 415 for a content type or charset the gateway does not take, 413 for too
/// many rows, 400 for everything else (the detail names the place).
impl From<careledger_decode::DecodeError> for Problem {
    fn from(e: careledger_decode::DecodeError) -> Problem {
        use careledger_decode::DecodeErrorKind as K;
        let (status, slug) = match e.kind {
            K::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            K::UnsupportedCharset => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-charset"),
            K::Malformed => (StatusCode::BAD_REQUEST, "malformed-body"),
            K::TooManyRows => (StatusCode::PAYLOAD_TOO_LARGE, "too-many-rows"),
        };
        Problem::new(status, slug, e.detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let mut body = json!({
            "type": format!("https://careledger.invalid/problems/{}", self.slug),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        body.as_object_mut().expect("object").extend(self.extra);
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.slug == crate::audit::AUDIT_BACKLOG {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        resp
    }
}
