//! A scripted fake upstream registry for faults a real registry will not produce.
//!
//! [`FaultyUpstream`] serves `GET|HEAD /v2/` (200), `/v2/<repo>/manifests/<tag|digest>` (with
//! Content-Type and Docker-Content-Digest) and `/v2/<repo>/blobs/<digest>` (any repo, with
//! `Range: bytes=a-b` support) and `/v2/<repo>/referrers/<digest>` (only where added) from
//! content added at runtime, and misbehaves on request:
//! wrong bytes of the right length, a short body then a closed connection, an error status,
//! stalls before or after the headers or mid-body, a slow trickle, or a gate that holds
//! responses until the test opens it. [`BlackHole`] is a port that never accepts at all.
//! Every request is counted per path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use super::image::{Artifact, sha256_digest};
use super::server::{Body, ServerThread, empty, full};

/// How to answer the requests a rule matches.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Serve normally.
    Normal,
    /// Same length and headers, but every byte flipped (digest mismatch).
    WrongBytes,
    /// Content-Length of the full body, but only this many bytes, then the connection closes.
    ShortBody(usize),
    /// No Content-Length: the body goes chunked, this many bytes of it, then the connection
    /// closes without the last chunk (a cut the length cannot reveal).
    ChunkedCut(usize),
    /// Send this many bytes, then nothing more; the connection stays open.
    StallMidBody(usize),
    /// Answer this status (e.g. 429 with `Retry-After: 1`, 500, 503) with a registry error body.
    Status(u16),
    /// Read the request and never answer.
    StallBeforeHeaders,
    /// Send the headers (with Content-Length), then never a byte of body.
    StallAfterHeaders,
    /// Send the body in `chunk`-byte pieces with `pause` before each.
    Slow {
        /// Bytes per piece.
        chunk: usize,
        /// Pause before each piece.
        pause: Duration,
    },
    /// Hold the request until the gate opens, then serve normally.
    Gate(Gate),
    /// 200 with an HTML page, as a captive portal or a proxy's login page answers.
    CaptivePortal,
}

/// A gate that holds requests until [`Gate::open`].
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<GateInner>);

#[derive(Debug, Default)]
struct GateInner {
    open: AtomicBool,
    waiting: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }
    /// Let every held and future request through.
    pub fn open(&self) {
        self.0.open.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }
    /// Number of requests held right now.
    pub fn waiting(&self) -> usize {
        self.0.waiting.load(Ordering::SeqCst)
    }
    /// Wait (bounded by `timeout`) until at least `n` requests are held; returns whether they are.
    pub async fn wait_for_waiting(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.waiting() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
    async fn pass(&self) {
        self.0.waiting.fetch_add(1, Ordering::SeqCst);
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.open.load(Ordering::SeqCst) {
                break;
            }
            notified.await;
        }
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Rule {
    target: String,
    mode: Mode,
    remaining: Option<usize>,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Bytes>,
    manifests: HashMap<(String, String), (String, Bytes)>,
    /// Referrers API answers by (repository, subject digest).
    referrers: HashMap<(String, String), Bytes>,
    rules: Vec<Rule>,
    log: Vec<(String, String)>,
    /// Docker Hub's pull budget: (limit, remaining); a manifest GET spends one, a HEAD none.
    ratelimit: Option<(u64, u64)>,
}

/// The scripted upstream (own thread). Dropping it stops it.
pub struct FaultyUpstream {
    state: Arc<Mutex<State>>,
    server: ServerThread,
}

impl FaultyUpstream {
    /// Start with no content and every request served normally.
    pub fn start() -> FaultyUpstream {
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let server = ServerThread::spawn(
            "faulty-upstream",
            Arc::new(move |req| {
                let st = st.clone();
                Box::pin(async move { handle(st, req).await })
            }),
        );
        FaultyUpstream { state, server }
    }

    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// "127.0.0.1:PORT".
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// Serve `data` as a blob (in every repository); returns its digest.
    pub fn add_blob(&self, data: impl Into<Bytes>) -> String {
        let data = data.into();
        let digest = sha256_digest(&data);
        self.lock().blobs.insert(digest.clone(), data);
        digest
    }

    /// Serve a manifest as `repo:reference` and as `repo@digest`; returns the digest.
    pub fn add_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        data: impl Into<Bytes>,
    ) -> String {
        let data = data.into();
        let digest = sha256_digest(&data);
        let mut st = self.lock();
        st.manifests.insert(
            (repo.into(), reference.into()),
            (media_type.into(), data.clone()),
        );
        st.manifests
            .insert((repo.into(), digest.clone()), (media_type.into(), data));
        digest
    }

    /// Serve `artifact` (image or index, with all child manifests and blobs) under `repo:tag`.
    pub fn add_artifact<A: Artifact + ?Sized>(&self, repo: &str, tag: &str, artifact: &A) {
        for (_, data) in artifact.blobs() {
            self.add_blob(data);
        }
        for (digest, (mt, data)) in artifact.manifests() {
            self.add_manifest(repo, &digest, &mt, data);
        }
        self.add_manifest(
            repo,
            tag,
            artifact.media_type(),
            artifact.manifest().clone(),
        );
    }

    /// Offer the referrers API for `subject` in `repo`: answer `index` (an OCI image index).
    /// Without one, the API answers 404, as a registry without it does.
    pub fn add_referrers(&self, repo: &str, subject: &str, index: impl Into<Bytes>) {
        self.lock()
            .referrers
            .insert((repo.into(), subject.into()), index.into());
    }

    /// Announce a pull budget as Docker Hub does (`ratelimit-limit`/`ratelimit-remaining` on
    /// manifest answers); each manifest GET spends one pull of `remaining`.
    pub fn set_ratelimit(&self, limit: u64, remaining: u64) {
        self.state.lock().expect("faulty state lock").ratelimit = Some((limit, remaining));
    }

    /// Pulls left in the announced budget.
    pub fn ratelimit_remaining(&self) -> Option<u64> {
        let s = self.state.lock().expect("faulty state lock");
        s.ratelimit.map(|(_, r)| r)
    }

    /// From now on answer requests for `target` with `mode`. `target` is a blob digest or a
    /// manifest reference (matched against the last path segment), a full path starting with
    /// '/', or "*" for every request except `/v2/`. Replaces an earlier rule for `target`;
    /// rules for specific targets win over "*".
    pub fn set_mode(&self, target: &str, mode: Mode) {
        self.set_rule(target, mode, None);
    }

    /// Like [`FaultyUpstream::set_mode`] for the next `times` matching requests only.
    pub fn set_mode_times(&self, target: &str, mode: Mode, times: usize) {
        self.set_rule(target, mode, Some(times));
    }

    /// Remove every rule: serve everything normally.
    pub fn clear_modes(&self) {
        self.lock().rules.clear();
    }

    /// Number of requests (any method) whose path equals `target`, or whose last path segment
    /// equals it (a digest or tag); "*" counts every request.
    pub fn requests(&self, target: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|(_, p)| target == "*" || matches(target, p))
            .count()
    }

    /// Number of requests with `method` whose path matches `target` as in [`FaultyUpstream::requests`].
    pub fn count(&self, method: &str, target: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|(m, p)| {
                m.eq_ignore_ascii_case(method) && (target == "*" || matches(target, p))
            })
            .count()
    }

    /// Every request so far as (method, path).
    pub fn request_log(&self) -> Vec<(String, String)> {
        self.lock().log.clone()
    }

    fn set_rule(&self, target: &str, mode: Mode, remaining: Option<usize>) {
        let mut st = self.lock();
        st.rules.retain(|r| r.target != target);
        let rule = Rule {
            target: target.into(),
            mode,
            remaining,
        };
        if target == "*" {
            st.rules.push(rule)
        } else {
            st.rules.insert(0, rule)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("faulty state lock")
    }
}

/// A port that is bound and listening but never accepts: connects succeed (kernel backlog),
/// and nothing is ever read or answered.
pub struct BlackHole {
    listener: std::net::TcpListener,
}

impl BlackHole {
    /// Bind 127.0.0.1:0 and never accept.
    pub fn start() -> BlackHole {
        BlackHole {
            listener: std::net::TcpListener::bind("127.0.0.1:0").expect("bind black hole"),
        }
    }
    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }
    /// "127.0.0.1:PORT".
    pub fn host(&self) -> String {
        self.listener
            .local_addr()
            .expect("black hole addr")
            .to_string()
    }
}

fn matches(target: &str, path: &str) -> bool {
    if target.starts_with('/') {
        path == target
    } else {
        path.rsplit('/').next() == Some(target)
    }
}

fn take_mode(st: &mut State, path: &str) -> Mode {
    let Some(i) = st
        .rules
        .iter()
        .position(|r| r.target == "*" || matches(&r.target, path))
    else {
        return Mode::Normal;
    };
    let mode = st.rules[i].mode.clone();
    if let Some(n) = st.rules[i].remaining.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.rules.remove(i);
        }
    }
    mode
}

async fn handle(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mode = {
        let mut s = st.lock().expect("faulty state lock");
        s.log.push((method.to_string(), path.clone()));
        if path == "/v2/" || path == "/v2" {
            return Response::builder()
                .header("Docker-Distribution-API-Version", "registry/2.0")
                .header("Content-Type", "application/json")
                .body(full("{}"))
                .expect("response");
        }
        take_mode(&mut s, &path)
    };
    match &mode {
        Mode::StallBeforeHeaders => {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            return error(500, "STALLED", "stalled");
        }
        Mode::Status(code) => return error(*code, "SCRIPTED", "scripted failure"),
        Mode::CaptivePortal => {
            return Response::builder()
                .header("Content-Type", "text/html; charset=utf-8")
                .body(full(
                    "<html><body>Please log in to the guest network</body></html>",
                ))
                .expect("portal page");
        }
        Mode::Gate(g) => g.pass().await,
        _ => {}
    }
    let (found, budget) = {
        let mut s = st.lock().expect("faulty state lock");
        let found = lookup(&s, &path);
        let manifest = path.contains("/manifests/");
        if manifest
            && method == Method::GET
            && found.is_some()
            && let Some((_, r)) = s.ratelimit.as_mut()
        {
            *r = r.saturating_sub(1);
        }
        (found, s.ratelimit.filter(|_| manifest))
    };
    let Some((content_type, digest, data)) = found else {
        return if path.contains("/manifests/") {
            error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        } else if path.contains("/blobs/") {
            error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        } else {
            error(404, "NAME_UNKNOWN", "not found")
        };
    };
    let total = data.len();
    let mut b = Response::builder();
    if let Some((limit, remaining)) = budget {
        b = b
            .header("ratelimit-limit", format!("{limit};w=21600"))
            .header("ratelimit-remaining", format!("{remaining};w=21600"));
    }
    let mut b = b
        .header("Content-Type", content_type)
        .header("Docker-Content-Digest", digest)
        .header("Docker-Distribution-API-Version", "registry/2.0")
        .header("Accept-Ranges", "bytes");
    let mut data = data;
    if let Some((start, end)) = range.as_deref().and_then(|r| parse_range(r, total)) {
        b = b
            .status(StatusCode::PARTIAL_CONTENT)
            .header("Content-Range", format!("bytes {start}-{end}/{total}"));
        data = data.slice(start..=end);
    }
    let b = if matches!(mode, Mode::ChunkedCut(_)) {
        b
    } else {
        b.header("Content-Length", data.len().to_string())
    };
    if method == Method::HEAD {
        return b.body(empty()).expect("response");
    }
    b.body(body_for(&mode, data)).expect("response")
}

/// (content type, digest, bytes) for a manifest or blob path.
fn lookup(st: &State, path: &str) -> Option<(String, String, Bytes)> {
    let rest = path.strip_prefix("/v2/")?;
    if let Some(i) = rest.rfind("/manifests/") {
        let (repo, reference) = (&rest[..i], &rest[i + "/manifests/".len()..]);
        let (mt, data) = st
            .manifests
            .get(&(repo.to_string(), reference.to_string()))?;
        return Some((mt.clone(), sha256_digest(data), data.clone()));
    }
    if let Some(i) = rest.rfind("/referrers/") {
        let (repo, subject) = (&rest[..i], &rest[i + "/referrers/".len()..]);
        let data = st.referrers.get(&(repo.to_string(), subject.to_string()))?;
        return Some((
            "application/vnd.oci.image.index.v1+json".into(),
            sha256_digest(data),
            data.clone(),
        ));
    }
    let i = rest.rfind("/blobs/")?;
    let digest = &rest[i + "/blobs/".len()..];
    let data = st.blobs.get(digest)?;
    Some((
        "application/octet-stream".into(),
        digest.to_string(),
        data.clone(),
    ))
}

/// "bytes=a-b" / "bytes=a-" -> inclusive (a, b) within `total`.
fn parse_range(r: &str, total: usize) -> Option<(usize, usize)> {
    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        total.checked_sub(1)?
    } else {
        b.trim().parse::<usize>().ok()?.min(total - 1)
    };
    (start <= end && end < total).then_some((start, end))
}

fn body_for(mode: &Mode, data: Bytes) -> Body {
    type Item = Result<Frame<Bytes>, std::io::Error>;
    let frame = |b: Bytes| -> Item { Ok(Frame::data(b)) };
    match mode {
        Mode::WrongBytes => full(data.iter().map(|b| b ^ 0xff).collect::<Vec<u8>>()),
        Mode::ShortBody(n) | Mode::ChunkedCut(n) => {
            let n = (*n).min(data.len().saturating_sub(1));
            // Pause before failing so hyper flushes the headers and the partial body first.
            let cut = futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<Frame<Bytes>, _>(std::io::Error::other("scripted short body"))
            });
            let head = futures_util::stream::iter(vec![frame(data.slice(..n))]);
            BodyExt::boxed(StreamBody::new(head.chain(cut)))
        }
        Mode::StallMidBody(n) => {
            let n = (*n).min(data.len());
            let head = futures_util::stream::iter(vec![frame(data.slice(..n))]);
            BodyExt::boxed(StreamBody::new(
                head.chain(futures_util::stream::pending::<Item>()),
            ))
        }
        Mode::StallAfterHeaders => {
            BodyExt::boxed(StreamBody::new(futures_util::stream::pending::<Item>()))
        }
        Mode::Slow { chunk, pause } => {
            let (chunk, pause) = ((*chunk).max(1), *pause);
            let s = futures_util::stream::unfold(data, move |rest| async move {
                if rest.is_empty() {
                    return None;
                }
                tokio::time::sleep(pause).await;
                let n = chunk.min(rest.len());
                Some((
                    Ok::<_, std::io::Error>(Frame::data(rest.slice(..n))),
                    rest.slice(n..),
                ))
            });
            BodyExt::boxed(StreamBody::new(s))
        }
        _ => full(data),
    }
}

/// A registry-style JSON error response (429 also gets `Retry-After: 1`).
fn error(status: u16, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/json")
        .header("Docker-Distribution-API-Version", "registry/2.0");
    if status == 429 {
        b = b.header("Retry-After", "1");
    }
    b.body(full(body.to_string())).expect("error response")
}
