//! Limits per request, below the connection cap of [`crate::serve()`], so that slow senders and
//! one token's many requests cannot hold every connection slot:
//!
//! - A request body must keep arriving at a minimum average rate once a short grace period
//!   has passed ([`crate::GatewayConfig::min_body_rate`]); a slower one ends in a 408 problem
//!   naming the rate, and the connection is closed.
//! - One token may have [`crate::GatewayConfig::max_in_flight_per_token`] requests in flight;
//!   past it the answer is 429 with `Retry-After`, given before the body is read, and the
//!   connection is closed.
//!
//! Either way the request's body is dropped unread, and hyper then closes the connection's read
//! side instead of waiting for the rest of a slow body.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::AppState;
use crate::problem::Problem;

/// What the middleware needs: the tokens and settings, and the counts of requests in flight.
#[derive(Debug, Clone)]
pub(crate) struct RequestLimits {
    state: Arc<AppState>,
    in_flight: Arc<InFlight>,
}

impl RequestLimits {
    pub(crate) fn new(state: Arc<AppState>) -> RequestLimits {
        RequestLimits {
            state,
            in_flight: Arc::new(InFlight::default()),
        }
    }
}

/// Requests in flight per token (by name: live tokens have distinct names).
#[derive(Debug, Default)]
struct InFlight {
    counts: Mutex<HashMap<String, usize>>,
}

/// One request counted in [`InFlight`], until it is dropped.
struct Permit {
    owner: Arc<InFlight>,
    name: String,
}

impl InFlight {
    fn enter(self: &Arc<Self>, name: &str, cap: usize) -> Option<Permit> {
        let mut counts = self.counts.lock().expect("lock");
        let n = counts.entry(name.to_string()).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Permit {
            owner: self.clone(),
            name: name.to_string(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().expect("lock");
        if let Some(n) = counts.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.name);
            }
        }
    }
}

fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The per-token cap and the minimum body rate (see the module documentation).
pub(crate) async fn limit_request(
    State(limits): State<RequestLimits>,
    req: Request,
    next: Next,
) -> Response {
    let config = &limits.state.config;
    let _permit = match config.max_in_flight_per_token {
        0 => None,
        // A token that is refused is the handler's to answer (before it reads the body).
        cap => match limits.state.tokens.authenticate(req.headers()) {
            Err(_) => None,
            Ok(p) => match limits.in_flight.enter(&p.name, cap) {
                Some(permit) => Some(permit),
                None => {
                    let mut resp = closing(
                        Problem::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "too-many-in-flight",
                            format!(
                                "token {} already has {cap} requests in flight, the most one token may have; wait for an answer before sending more (retry after the time in Retry-After)",
                                p.name
                            ),
                        )
                        .into_response(),
                    );
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return resp;
                }
            },
        },
    };
    if config.min_body_rate == 0 || req.body().is_end_stream() {
        return next.run(req).await;
    }
    let (rate, grace) = (config.min_body_rate, config.body_grace);
    let tripped = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| Body::new(MinRate::new(body, rate, grace, tripped.clone())));
    let resp = next.run(req).await;
    if !tripped.load(Ordering::Acquire) {
        return resp;
    }
    // Whatever the handler made of the failed read, the answer is the rate.
    closing(
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-too-slow",
            format!(
                "the request body arrived at less than {rate} bytes/s on average after a grace period of {}, the minimum rate; the connection is closed. Send the body at once, or smaller batches; nothing was stored, so a retry with the same Idempotency-Key is safe",
                crate::duration_text(grace)
            ),
        )
        .into_response(),
    )
}

/// The error a body read gets when the body is too slow.
#[derive(Debug)]
struct TooSlow;

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body arrived below the minimum rate")
    }
}

impl std::error::Error for TooSlow {}

/// A request body that fails once it falls behind `rate` bytes/s on average, counted from
/// `grace` after the request started: byte `n` must have arrived by `grace + n / rate`. The
/// clock runs only while the handler waits for the body.
struct MinRate {
    inner: Body,
    started: tokio::time::Instant,
    received: u64,
    rate: u64,
    grace: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    tripped: Arc<AtomicBool>,
}

impl MinRate {
    fn new(inner: Body, rate: u64, grace: Duration, tripped: Arc<AtomicBool>) -> MinRate {
        let started = tokio::time::Instant::now();
        MinRate {
            inner,
            started,
            received: 0,
            rate: rate.max(1),
            grace,
            timer: Box::pin(tokio::time::sleep_until(started + grace)),
            tripped,
        }
    }

    /// When more than `received` bytes must have arrived.
    fn due(&self) -> tokio::time::Instant {
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / self.rate);
        self.started
            .checked_add(self.grace.saturating_add(earned))
            .unwrap_or_else(|| self.started + Duration::from_secs(365 * 86_400))
    }
}

impl HttpBody for MinRate {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.tripped.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(axum::Error::new(TooSlow))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let due = this.due();
                if this.timer.deadline() != due {
                    this.timer.as_mut().reset(due);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.tripped.store(true, Ordering::Release);
                        Poll::Ready(Some(Err(axum::Error::new(TooSlow))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            done => done,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
