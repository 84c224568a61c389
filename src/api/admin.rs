//! The admin API, on its own local listener: `/healthz`, `/readyz`, and under `/admin/` the
//! cache operations the CLI drives (preload, import, export, ls, pin, rm, gc, verify,
//! verify-signatures), which
//! need the token airlock writes to `<data>/admin.token` at start. Long operations answer
//! with a stream of JSON lines (progress events, then a report).

use super::body::{self, Body};
use super::server::Handle;
use crate::bundle;
use crate::error::Error;
use crate::oci::{ImageRef, Registry};
use crate::ops::Operations;
use crate::preload;
use crate::progress::Event;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::future::Future;
use std::io;
use tokio::sync::mpsc;

/// Largest JSON request body.
const MAX_JSON: usize = 1 << 20;

/// The admin API.
pub struct Admin {
    /// The operations it routes to.
    pub ops: Operations,
    /// The bearer token `/admin/` requires.
    pub token: String,
    /// Registry of references that name none.
    pub default_registry: Registry,
}

impl Handle for Admin {
    fn handle(
        &self,
        req: Request<Incoming>,
        _peer: std::net::SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send {
        self.answer(req)
    }
}

/// An answer, or the error it is (answered in the registry's error shape, `api::errors`).
type Answer = Result<Response<Body>, Error>;

impl Admin {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let result = match (method.clone(), path.as_str()) {
            (Method::GET, "/healthz") => Ok(text("ok\n")),
            (Method::GET, "/readyz") => self.ready(),
            (Method::GET, "/metrics") => {
                let mut r = Response::new(body::full(self.ops.cache().metrics().render()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                Ok(r)
            }
            (_, p) if p.starts_with("/admin/") => match self.authorized(&req) {
                Ok(()) => self.operation(req, &method, &path).await,
                Err(f) => Err(f),
            },
            _ => Err(Error::Unsupported(format!(
                "{path} is not an admin endpoint"
            ))),
        };
        let resp = result.unwrap_or_else(|e| super::errors::response(&e, method == Method::HEAD));
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "admin");
        resp
    }

    fn ready(&self) -> Answer {
        if let Some(why) = self.ops.unready(&self.default_registry)? {
            return Err(Error::StorageFull(why));
        }
        Ok(text("ready\n"))
    }

    fn authorized<B>(&self, req: &Request<B>) -> Result<(), Error> {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Ok(()),
            _ => Err(Error::AuthRequired(
                "the admin API needs the token in <data>/admin.token".into(),
            )),
        }
    }

    async fn operation(&self, req: Request<Incoming>, method: &Method, path: &str) -> Answer {
        let ops = &self.ops;
        match (method, path) {
            (&Method::GET, "/admin/images") => {
                let ops = ops.clone();
                Ok(streamed("cache ls", "application/json", move |out| {
                    ops.write_images(out)
                }))
            }
            (&Method::POST, "/admin/preload") => self.preload(read_json(req).await?),
            (&Method::POST, "/admin/pin") => self.pin(read_json(req).await?, true).await,
            (&Method::POST, "/admin/unpin") => self.pin(read_json(req).await?, false).await,
            (&Method::POST, "/admin/rm") => {
                let body: ImageArg = read_json(req).await?;
                Ok(json(&ops.remove(&self.image(&body)?).await?))
            }
            (&Method::POST, "/admin/gc") => Ok(json(&ops.collect().await?)),
            (&Method::POST, "/admin/evict") => match ops.evict().await? {
                Some(removal) => Ok(json(&removal)),
                None => Err(Error::BadRequest(
                    "no storage.max_size is configured: there is nothing to evict to".into(),
                )),
            },
            (&Method::GET, "/admin/usage") => Ok(json(&ops.usage().await?)),
            (&Method::POST, "/admin/verify") => self.verify(),
            (&Method::POST, "/admin/verify-signatures") => {
                let body: ImagesArg = read_json(req).await?;
                Ok(json(
                    &ops.verify_signatures(&self.default_registry, &body.images)
                        .await?,
                ))
            }
            (&Method::POST, "/admin/export") => self.export(read_json(req).await?).await,
            (&Method::POST, "/admin/import") => Ok(self.import(req)),
            _ => Err(Error::Unsupported(format!(
                "{method} {path} is not an admin operation"
            ))),
        }
    }

    fn image(&self, arg: &ImageArg) -> Result<ImageRef, Error> {
        ImageRef::parse(&arg.image, &self.default_registry)
    }

    fn preload(&self, request: preload::Request) -> Answer {
        let (ops, default) = (self.ops.clone(), self.default_registry.clone());
        Ok(stream_events("preload", true, move |progress| async move {
            let report = ops.preload(&default, &request, &progress).await;
            Event::Report {
                ok: report.ok,
                report: serde_json::to_value(&report).unwrap_or_default(),
            }
        }))
    }

    async fn pin(&self, body: ImageArg, pinned: bool) -> Answer {
        Ok(json(&self.ops.pin(&self.image(&body)?, pinned).await?))
    }

    fn verify(&self) -> Answer {
        let Some(turn) = self.ops.verify_turn() else {
            return Err(Error::Throttled(
                "a verify is already running: try again when it ends".into(),
            ));
        };
        let ops = self.ops.clone();
        // The turn ends however the verify does (cancelled by its client included).
        Ok(stream_events("verify", true, move |progress| async move {
            match ops.verify(&turn, &progress).await {
                Ok(r) => Event::Report {
                    ok: r.corrupt.is_empty(),
                    report: serde_json::to_value(&r).unwrap_or_default(),
                },
                Err(e) => failed(e),
            }
        }))
    }

    async fn export(&self, body: ExportArg) -> Answer {
        let exclude: HashSet<_> = body.exclude.iter().filter_map(|d| d.parse().ok()).collect();
        let plan = self.ops.plan_export(body.selection, exclude).await?;
        let summary = plan_header(&plan);
        let export = self.ops.export(plan);
        let mut resp = streamed("export", "application/x-tar", move |out| export.write(out));
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&serde_json::to_string(&summary).unwrap_or_default()) {
            h.insert("x-airlock-export", v);
        }
        Ok(resp)
    }

    fn import(&self, req: Request<Incoming>) -> Response<Body> {
        let ops = self.ops.clone();
        let body = req
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(io::Error::other));
        // Not cancelled with its client: a broken upload already fails the import, and once
        // the batch is published its invalidations and eviction must follow.
        stream_events("import", false, move |progress| async move {
            let reader = tokio_util::io::StreamReader::new(body);
            let input = Box::new(tokio_util::io::SyncIoBridge::new(reader));
            match ops.import(input, progress).await {
                Ok(report) => Event::Report {
                    ok: true,
                    report: serde_json::to_value(&report).unwrap_or_default(),
                },
                Err(e) => failed(e),
            }
        })
    }
}

fn failed(e: Error) -> Event {
    Event::Report {
        ok: false,
        report: serde_json::json!({ "error": e.to_string() }),
    }
}

/// The export plan's summary, sent as a header before the archive.
fn plan_header(plan: &bundle::ExportPlan) -> serde_json::Value {
    serde_json::json!({ "images": plan.images.len(), "blobs": plan.blobs.len(), "total_bytes": plan.total_bytes })
}

#[derive(serde::Deserialize)]
struct ImageArg {
    image: String,
}

#[derive(serde::Deserialize)]
struct ImagesArg {
    #[serde(default)]
    images: Vec<String>,
}

#[derive(serde::Deserialize)]
struct ExportArg {
    #[serde(flatten)]
    selection: bundle::Selection,
    #[serde(default)]
    exclude: Vec<String>,
}

async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Error> {
    let bytes = Limited::new(req.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|e| Error::BadRequest(format!("reading the request: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| Error::BadRequest(format!("bad request JSON: {e}")))
}

fn text(s: &'static str) -> Response<Body> {
    let mut r = Response::new(body::full(s));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(body::full(bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Run `op` with a progress sender and answer with its events as JSON lines; the last line is
/// the event `op` returns. When `cancellable`, a client that goes away (a CLI stopped with
/// Ctrl-C) cancels `op`: what it did stays done (downloads it started and others share run
/// on), the rest is not started.
fn stream_events<F, Fut>(what: &'static str, cancellable: bool, op: F) -> Response<Body>
where
    F: FnOnce(crate::progress::Progress) -> Fut + Send + 'static,
    Fut: Future<Output = Event> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    let progress = crate::progress::Progress::to(tx.clone());
    tokio::spawn(async move {
        if !cancellable {
            let _ = tx.send(op(progress).await);
        } else {
            tokio::select! {
                last = op(progress) => {
                    let _ = tx.send(last);
                }
                () = tx.closed() => {
                    tracing::warn!(operation = what, "the client went away: {what} cancelled");
                }
            }
        }
        let _ = tokio::task::spawn_blocking(crate::memory::release).await;
    });
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok(Bytes::from(line)), rx))
    });
    let mut r = Response::new(body::stream(lines.boxed()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// A body of `content_type` that `write` writes on the blocking pool, a few chunks ahead of
/// the client: what the server holds is those chunks, whatever the size of the answer. A
/// failure ends the body with an error (the client sees a broken transfer, never a short
/// answer that parses) and is logged as `what` failing.
fn streamed(
    what: &'static str,
    content_type: &'static str,
    write: impl FnOnce(&mut dyn io::Write) -> crate::error::Result<()> + Send + 'static,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: BytesMut::new(),
        };
        let result = write(&mut out).and_then(|()| out.flush_buf().map_err(Error::from));
        if let Err(e) = result {
            tracing::error!(error = %e, "{what} failed");
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        crate::memory::release();
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    let mut resp = Response::new(body::stream(stream));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A blocking `Write` that sends its bytes, in chunks, to an async body.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn flush_buf(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.tx
                .blocking_send(Ok(chunk))
                .map_err(|_| io::Error::other("the client went away"))?;
        }
        Ok(())
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 << 10 {
            self.flush_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
