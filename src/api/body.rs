//! The response body type, and the request log: one line per request, written when its body
//! is finished (or dropped), so it knows the bytes actually sent and whether the transfer
//! completed.

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Every response body: boxed, and an `Err` frame aborts the transfer.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body streamed from blob bytes.
pub fn stream(s: crate::cache::BlobStream) -> Body {
    use futures_util::StreamExt;
    StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
}

/// `body`, carrying `guard` until it is done or dropped (a request counted in progress).
pub fn guarded<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    Guarded {
        body,
        _guard: guard,
    }
    .boxed_unsync()
}

struct Guarded<G> {
    body: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        // `Body` is Unpin (boxed), so the projection is safe code.
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What the log line says about a request besides what the body learns.
pub struct LogLine {
    /// When the request arrived.
    pub start: Instant,
    /// Method.
    pub method: http::Method,
    /// The request's URI (its path and query are logged; cloning it copies no bytes).
    pub uri: http::Uri,
    /// Status sent.
    pub status: u16,
    /// `Content-Length` sent, if any: hyper stops polling a body once that much is out.
    pub length: Option<u64>,
    /// Request kind (`manifest`, `blob`, `tags`, `base`, `other`).
    pub kind: &'static str,
    /// Registry label, if a configured registry (`other` otherwise).
    pub registry: Option<std::sync::Arc<str>>,
    /// Who asked: a user name, or `-`.
    pub user: std::borrow::Cow<'static, str>,
    /// The peer address.
    pub client: std::net::IpAddr,
    /// Cache outcome, when the cache answered.
    pub outcome: Option<crate::cache::Outcome>,
    /// Where the request is counted.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Its place in `requests_in_flight`, given back when the line is logged.
    pub _in_flight: crate::metrics::InFlight,
}

impl LogLine {
    /// Count the request: by kind, method and status; its cache outcome; the bytes it sent.
    fn record(&self, bytes: u64) {
        use crate::cache::Outcome;
        let m = &self.metrics;
        let seconds = self.start.elapsed().as_secs_f64();
        m.count_request(self.kind, &self.method, self.status, seconds);
        if let Some(outcome) = self.outcome {
            m.cache_results
                .with_label_values(&[
                    self.kind,
                    self.registry.as_deref().unwrap_or("other"),
                    outcome.as_str(),
                ])
                .inc();
            m.count_served(outcome != Outcome::Miss, bytes);
        }
    }
}

/// A body that counts what it sends and logs the request when done.
pub struct Logged {
    inner: Body,
    line: LogLine,
    bytes: u64,
    outcome: &'static str,
}

impl Logged {
    /// Wrap `inner`; the line is logged once `inner` ends, fails or is dropped.
    pub fn new(inner: Body, line: LogLine) -> Logged {
        Logged {
            inner,
            line,
            bytes: 0,
            outcome: "aborted",
        }
    }
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.outcome = "failed",
            Poll::Ready(None) => self.outcome = "complete",
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.outcome == "aborted"
            && (self.inner.is_end_stream() || self.line.length == Some(self.bytes))
        {
            self.outcome = "complete";
        }
        self.line.record(self.bytes);
        let l = &self.line;
        crate::logging::request(&crate::logging::Request {
            method: l.method.as_str(),
            path: l.uri.path_and_query().map_or(l.uri.path(), |p| p.as_str()),
            status: l.status,
            user: &l.user,
            client: l.client,
            bytes: self.bytes,
            cache: l.outcome.map_or("-", crate::cache::Outcome::as_str),
            transfer: self.outcome,
            ms: l.start.elapsed().as_millis() as u64,
        });
    }
}
