//! The admin API, on its own local listener: `/healthz`, `/readyz`, and under `/admin/` the
//! cache operations the CLI drives (preload, import, export, ls, pin, rm, gc, verify), which
//! need the token airlock writes to `<data>/admin.token` at start. Long operations answer
//! with a stream of JSON lines (progress events, then a report).

use super::body::{self, Body};
use super::server::Handle;
use crate::bundle;
use crate::cache::Cache;
use crate::error::Error;
use crate::gc::{self, Cap};
use crate::inventory;
use crate::oci::{ImageRef, Registry};
use crate::preload;
use crate::progress::{Event, Progress};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
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
    /// The cache it operates on.
    pub cache: Cache,
    /// The bearer token `/admin/` requires.
    pub token: String,
    /// Registry of references that name none.
    pub default_registry: Registry,
    /// The size cap, if any (for eviction after imports and preloads).
    pub cap: Option<Cap>,
    /// Set while a verify runs (one at a time: it reads the whole store).
    pub verifying: std::sync::Arc<std::sync::atomic::AtomicBool>,
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

/// An admin failure: status and message (JSON `{"error": …}`).
struct Failure(StatusCode, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(e.status(), e.to_string())
    }
}

type Answer = Result<Response<Body>, Failure>;

impl Admin {
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let result = match (method.clone(), path.as_str()) {
            (Method::GET, "/healthz") => Ok(text("ok\n")),
            (Method::GET, "/readyz") => self.ready(),
            (Method::GET, "/metrics") => {
                let mut r = Response::new(body::full(self.cache.metrics().render()));
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
            _ => Err(Failure(
                StatusCode::NOT_FOUND,
                format!("{path} is not an admin endpoint"),
            )),
        };
        let resp = result.unwrap_or_else(|Failure(status, message)| {
            let mut r = json(&serde_json::json!({ "error": message }));
            *r.status_mut() = status;
            r
        });
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "admin");
        resp
    }

    fn ready(&self) -> Answer {
        self.cache.index().tags(&crate::oci::Repository {
            registry: self.default_registry.clone(),
            name: "library/readyz".parse().map_err(Failure::from)?,
        })?;
        if let Some(why) = self.cache.write_trouble() {
            return Err(Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cached content is served, but new content cannot be stored: {why}"),
            ));
        }
        Ok(text("ready\n"))
    }

    fn authorized<B>(&self, req: &Request<B>) -> Result<(), Failure> {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Ok(()),
            _ => Err(Failure(
                StatusCode::UNAUTHORIZED,
                "the admin API needs the token in <data>/admin.token".into(),
            )),
        }
    }

    async fn operation(&self, req: Request<Incoming>, method: &Method, path: &str) -> Answer {
        match (method, path) {
            (&Method::GET, "/admin/images") => self.images().await,
            (&Method::POST, "/admin/preload") => self.preload(read_json(req).await?),
            (&Method::POST, "/admin/pin") => self.pin(read_json(req).await?, true).await,
            (&Method::POST, "/admin/unpin") => self.pin(read_json(req).await?, false).await,
            (&Method::POST, "/admin/rm") => self.remove(read_json(req).await?).await,
            (&Method::POST, "/admin/gc") => Ok(json(&gc::collect(&self.cache).await?)),
            (&Method::POST, "/admin/evict") => self.evict().await,
            (&Method::GET, "/admin/usage") => {
                let cache = self.cache.clone();
                let usage = tokio::task::spawn_blocking(move || gc::usage(&cache))
                    .await
                    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
                Ok(json(&usage))
            }
            (&Method::POST, "/admin/verify") => self.verify(),
            (&Method::POST, "/admin/export") => self.export(read_json(req).await?).await,
            (&Method::POST, "/admin/import") => Ok(self.import(req)),
            _ => Err(Failure(
                StatusCode::NOT_FOUND,
                format!("{method} {path} is not an admin operation"),
            )),
        }
    }

    async fn images(&self) -> Answer {
        let (store, index) = (self.cache.store().clone(), self.cache.index().clone());
        let images =
            tokio::task::spawn_blocking(move || inventory::images(store.as_ref(), index.as_ref()))
                .await
                .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        Ok(json(
            &images.iter().map(ImageSummary::from).collect::<Vec<_>>(),
        ))
    }

    fn preload(&self, request: preload::Request) -> Answer {
        let (cache, default, cap) = (self.cache.clone(), self.default_registry.clone(), self.cap);
        Ok(stream_events("preload", true, move |progress| async move {
            let report = preload::preload(&cache, &default, &request, &progress).await;
            // Eviction is not the client's to cancel: it holds the maintenance lock and
            // deletes in the blocking pool, so it runs to its end on its own.
            if let Some(cap) = cap {
                let _ = tokio::spawn(async move { gc::evict(&cache, cap).await }).await;
            }
            Event::Report {
                ok: report.ok,
                report: serde_json::to_value(&report).unwrap_or_default(),
            }
        }))
    }

    async fn pin(&self, body: ImageArg, pinned: bool) -> Answer {
        let reference = ImageRef::parse(&body.image, &self.default_registry)?;
        let name = reference.to_string();
        // Not while an eviction is deciding what is unpinned.
        let maintenance = self.cache.maintenance();
        let _exclusive = maintenance.lock().await;
        let index = self.cache.index();
        let before = match (pinned, inventory::resolve(index.as_ref(), &reference)?) {
            (true, Some(digest)) => index.pin_at(&name, &digest)?,
            (true, None) => index.set_pinned(&name, true)?,
            (false, _) => index.set_pinned(&name, false)?,
        };
        Ok(json(
            &serde_json::json!({ "image": name, "pinned": pinned, "changed": before != pinned }),
        ))
    }

    async fn remove(&self, body: ImageArg) -> Answer {
        let reference = ImageRef::parse(&body.image, &self.default_registry)?;
        Ok(json(&gc::remove(&self.cache, &reference).await?))
    }

    async fn evict(&self) -> Answer {
        match self.cap {
            Some(cap) => Ok(json(&gc::evict(&self.cache, cap).await?)),
            None => Err(Failure(
                StatusCode::BAD_REQUEST,
                "no storage.max_size is configured".into(),
            )),
        }
    }

    fn verify(&self) -> Answer {
        use std::sync::atomic::Ordering;
        let running = self.verifying.clone();
        if running.swap(true, Ordering::SeqCst) {
            return Err(Failure(
                StatusCode::CONFLICT,
                "a verify is already running".into(),
            ));
        }
        let cache = self.cache.clone();
        /// Clears the flag however the verify ends (cancelled by its client included).
        struct Done(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let done = Done(running);
        Ok(stream_events("verify", true, move |progress| async move {
            let _done = done;
            let result = gc::verify(&cache, &progress).await;
            match result {
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
        let cache = self.cache.clone();
        // Planning reads every manifest from disk: off the async runtime.
        let plan = tokio::task::spawn_blocking(move || {
            bundle::plan_export(&cache, &body.selection, &exclude)
        })
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
        let cache = self.cache.clone();
        let plan2 = plan.clone();
        // Everything planned stays put until the archive is written.
        let holds: Vec<_> = plan.blobs.iter().map(|(d, _)| self.cache.hold(d)).collect();
        tokio::task::spawn_blocking(move || {
            let _holds = holds;
            let mut out = ChannelWriter {
                tx: tx.clone(),
                buf: BytesMut::new(),
            };
            let result = bundle::write_export(&cache, &plan2, &mut out, &Progress::none())
                .and_then(|()| out.flush_buf().map_err(Error::from));
            if let Err(e) = result {
                tracing::error!(error = %e, "export failed");
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        });
        let stream = tokio_stream(rx);
        let mut resp = Response::new(body::stream(stream));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-tar"),
        );
        if let Ok(v) =
            HeaderValue::from_str(&serde_json::to_string(&plan_header(&plan)).unwrap_or_default())
        {
            h.insert("x-airlock-export", v);
        }
        Ok(resp)
    }

    fn import(&self, req: Request<Incoming>) -> Response<Body> {
        let cache = self.cache.clone();
        let cap = self.cap;
        let body = req
            .into_body()
            .into_data_stream()
            .map(|r| r.map_err(io::Error::other));
        // Not cancelled with its client: a broken upload already fails the import, and once
        // the batch is published its invalidations and eviction must follow.
        stream_events("import", false, move |progress| async move {
            let reader = tokio_util::io::StreamReader::new(body);
            let cache2 = cache.clone();
            let imported = tokio::task::spawn_blocking(move || {
                let mut sync = tokio_util::io::SyncIoBridge::new(reader);
                bundle::import(&cache2, &mut sync, &progress)
            })
            .await;
            match imported {
                Ok(Ok(report)) => {
                    let m = cache.metrics();
                    m.imports.with_label_values(&["ok"]).inc();
                    m.import_bytes.inc_by(report.bytes);
                    for image in &report.images {
                        if let Ok(r) = ImageRef::parse(image, &Registry::docker_hub())
                            && let crate::oci::Reference::Tag(t) = &r.reference
                        {
                            cache.forget_tag_answer(&r.repo, t).await;
                        }
                    }
                    if let Some(cap) = cap {
                        let _ = gc::evict(&cache, cap).await;
                    }
                    Event::Report {
                        ok: true,
                        report: serde_json::to_value(&report).unwrap_or_default(),
                    }
                }
                Ok(Err(e)) => {
                    cache
                        .metrics()
                        .imports
                        .with_label_values(&["refused"])
                        .inc();
                    failed(e)
                }
                Err(e) => failed(Error::internal(e)),
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

/// One image in `cache ls`.
#[derive(Serialize)]
struct ImageSummary {
    image: String,
    digest: String,
    media_type: String,
    size: u64,
    platforms: Vec<String>,
    complete: bool,
    last_access_ms: Option<u64>,
    fetched_at_ms: u64,
    pinned: bool,
}

impl From<&inventory::Image> for ImageSummary {
    fn from(i: &inventory::Image) -> Self {
        ImageSummary {
            image: i.reference.to_string(),
            digest: i.digest.to_string(),
            media_type: i.media_type.clone(),
            size: i.size,
            platforms: i
                .closure
                .platforms
                .iter()
                .filter(|p| p.complete)
                .map(|p| {
                    p.platform
                        .as_ref()
                        .map_or("-".to_string(), |p| p.to_string())
                })
                .collect(),
            complete: i.closure.missing.is_empty(),
            last_access_ms: i.last_access_ms,
            fetched_at_ms: i.fetched_at_ms,
            pinned: i.pinned,
        }
    }
}

#[derive(serde::Deserialize)]
struct ImageArg {
    image: String,
}

#[derive(serde::Deserialize)]
struct ExportArg {
    #[serde(flatten)]
    selection: bundle::Selection,
    #[serde(default)]
    exclude: Vec<String>,
}

async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Failure> {
    let bytes = Limited::new(req.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("reading the request: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, format!("bad request JSON: {e}")))
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
    F: FnOnce(Progress) -> Fut + Send + 'static,
    Fut: Future<Output = Event> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    let progress = Progress::to(tx.clone());
    tokio::spawn(async move {
        if !cancellable {
            let _ = tx.send(op(progress).await);
            return;
        }
        tokio::select! {
            last = op(progress) => {
                let _ = tx.send(last);
            }
            () = tx.closed() => {
                tracing::warn!(operation = what, "the client went away: {what} cancelled");
            }
        }
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

fn tokio_stream(rx: mpsc::Receiver<io::Result<Bytes>>) -> crate::cache::BlobStream {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
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
