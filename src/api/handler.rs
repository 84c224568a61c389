//! Route → cache call → response: status, `Content-Type`, `Content-Length`,
//! `Docker-Content-Digest`, `Range`, `HEAD`; errors through [`errors::response`].

use super::body::{self, Body, LogLine, Logged};
use super::errors;
use super::range::ByteRange;
use super::route::{Route, Router};
use super::token;
use crate::auth::{Auth, Who};
use crate::cache::{Cache, Outcome};
use crate::error::{Error, Result};
use crate::oci::manifest::OCI_INDEX;
use crate::oci::referrers;
use crate::oci::{Digest, Reference, Repository};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Request headers larger than this (in all) are refused with an OCI error.
pub const MAX_HEADER_BYTES: usize = 16 << 10;

/// What the handlers share.
pub struct State {
    /// The cache.
    pub cache: Cache,
    /// Path → route.
    pub router: Router,
    /// Who may do what.
    pub auth: Arc<Auth>,
    /// Whether the listener serves TLS (for the scheme of the token realm).
    pub tls: bool,
    /// Which images must be signed, by whom.
    pub signatures: Arc<crate::signatures::Policy>,
}

/// What the log, the metrics and an authentication challenge need to know about a request.
#[derive(Default)]
struct Meta {
    kind: &'static str,
    /// The registry's label, when it is a configured one.
    registry: Option<Arc<str>>,
    /// Who, once identified as a user.
    user: Option<String>,
}

const API_VERSION: &str = "docker-distribution-api-version";
const CONTENT_DIGEST: &str = "docker-content-digest";
const FILTERS_APPLIED: header::HeaderName = header::HeaderName::from_static("oci-filters-applied");

impl super::server::Handle for State {
    fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        self.answer_logged(req, peer)
    }
}

impl State {
    /// Answer one request from `peer`. Never fails: errors become OCI error responses.
    pub async fn answer_logged(
        &self,
        req: Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let start = Instant::now();
        let head = req.method() == Method::HEAD;
        let uri = req.uri().clone();
        let method = req.method().clone();
        let metrics = self.cache.metrics().clone();
        // Given back however this request ends, also if the client goes away mid-answer.
        let in_flight = crate::metrics::InFlight::new(&metrics.requests_in_flight);
        let mut meta = Meta {
            kind: "other",
            ..Meta::default()
        };
        // The request is kept (not handed to the token endpoint) when a challenge may need it.
        let (result, kept) = if req.uri().path() == token::PATH {
            let answer = token::answer(self, req, peer, &mut meta.user).await;
            (answer.map(|r| (r, None)), None)
        } else {
            (self.answer(&req, peer, &mut meta).await, Some(req))
        };
        let (mut resp, outcome) = match result {
            Ok((r, o)) => (r, o),
            Err(e) => {
                let mut r = errors::response(&e, head);
                if let (Error::AuthRequired(_), Some(req)) = (&e, &kept) {
                    let realm = self.realm(req.headers(), req.uri());
                    self.challenge(r.headers_mut(), &realm, path_name(req.uri().path()));
                }
                (r, None)
            }
        };
        drop(kept);
        resp.headers_mut()
            .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        let line = LogLine {
            start,
            method,
            uri,
            status: resp.status().as_u16(),
            kind: meta.kind,
            registry: meta.registry,
            user: meta.user.map_or(Cow::Borrowed("-"), Cow::Owned),
            client: peer.ip().to_canonical(),
            outcome,
            metrics: metrics.clone(),
            _in_flight: in_flight,
            length: match head {
                true => Some(0),
                false => resp
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok()),
            },
        };
        resp.map(|b| Logged::new(b, line).boxed_unsync())
    }

    async fn answer<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
        meta: &mut Meta,
    ) -> Result<(Response<Body>, Option<Outcome>)> {
        let size: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if size > MAX_HEADER_BYTES {
            return Err(Error::HeadersTooLarge {
                size,
                limit: MAX_HEADER_BYTES,
            });
        }
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            ref m => {
                return Err(Error::MethodNotAllowed(format!(
                    "airlock is a read-only pull-through cache: {m} is not supported"
                )));
            }
        };
        let route = self.router.parse(req.uri().path(), req.uri().query())?;
        let (kind, repo) = match &route {
            Route::Base => ("base", None),
            Route::Manifest { repo, .. } => ("manifest", Some(repo)),
            Route::Blob { repo, .. } => ("blob", Some(repo)),
            Route::Tags { repo, .. } => ("tags", Some(repo)),
            Route::Referrers { repo, .. } => ("referrers", Some(repo)),
        };
        meta.kind = kind;
        meta.registry = repo.and_then(|r| self.cache.metrics().known_registry(r.registry.as_str()));
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .map_err(|_| Error::AuthRequired("the Authorization header is not text".into()))
            })
            .transpose()?;
        let caller = self.auth.identify(authorization, peer.ip()).await?;
        if let Who::User(u) = &caller.who {
            meta.user = Some(u.name.clone());
        }
        match repo {
            None => self.auth.base(&caller)?,
            Some(repo) => self.auth.authorize(
                &caller,
                repo,
                path_name(req.uri().path()).unwrap_or_default(),
            )?,
        }
        match route {
            Route::Base => {
                let mut r = Response::new(if head {
                    body::empty()
                } else {
                    body::full("{}")
                });
                set(r.headers_mut(), header::CONTENT_TYPE, "application/json");
                Ok((r, None))
            }
            Route::Manifest { repo, reference } => {
                self.manifest(req.headers(), &repo, &reference, head).await
            }
            Route::Blob { repo, digest } if head => self.blob_head(&repo, &digest).await,
            Route::Blob { repo, digest } => self.blob(req.headers(), &repo, &digest).await,
            Route::Tags { repo, n, last } => self.tags(req, &repo, n, last, head).await,
            Route::Referrers {
                repo,
                digest,
                artifact_types,
                n,
                last,
            } => {
                let page = Page { n, last, head };
                self.referrers(req, &repo, &digest, &artifact_types, page)
                    .await
            }
        }
    }

    /// The token endpoint's URL: configured, or this server as the client reached it.
    fn realm(&self, headers: &HeaderMap, uri: &http::Uri) -> String {
        if let Some(r) = self.auth.realm() {
            return r.to_string();
        }
        let host = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(String::from)
            })
            .filter(|h| {
                !h.is_empty()
                    && h.len() <= 255
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .unwrap_or_else(|| "localhost".into());
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{host}{}", token::PATH)
    }

    /// `WWW-Authenticate: Bearer realm=…,service=…[,scope=repository:NAME:pull]`.
    fn challenge(&self, h: &mut HeaderMap, realm: &str, path_name: Option<&str>) {
        let mut value = format!(
            "Bearer realm=\"{realm}\",service=\"{}\"",
            self.auth.service()
        );
        if let Some(name) = path_name {
            value.push_str(&format!(",scope=\"repository:{name}:pull\""));
        }
        set(h, header::WWW_AUTHENTICATE, &value);
    }

    async fn manifest(
        &self,
        headers: &HeaderMap,
        repo: &Repository,
        reference: &Reference,
        head: bool,
    ) -> Result<(Response<Body>, Option<Outcome>)> {
        let accept: Vec<&str> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let answer = self.cache.manifest(repo, reference, &accept).await?;
        let m = answer.manifest;
        if !self.signatures.is_empty() {
            self.signatures.gate(&self.cache, repo, &m).await?;
        }
        let len = m.bytes.len();
        let mut r = Response::new(if head {
            body::empty()
        } else {
            body::full(m.bytes.clone())
        });
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let names = [
            header::CONTENT_TYPE,
            header::HeaderName::from_static(CONTENT_DIGEST),
            header::ETAG,
        ];
        for (name, value) in names.into_iter().zip(&m.headers) {
            if let Some(v) = value {
                h.insert(name, v.clone());
            }
        }
        Ok((r, Some(answer.outcome)))
    }

    async fn blob_head(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<(Response<Body>, Option<Outcome>)> {
        let (size, outcome) = self.cache.blob_size(repo, digest).await?;
        let mut r = Response::new(body::empty());
        let h = r.headers_mut();
        if let Some(n) = size {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        blob_headers(h, digest);
        Ok((r, Some(outcome)))
    }

    async fn blob(
        &self,
        headers: &HeaderMap,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<(Response<Body>, Option<Outcome>)> {
        let answer = self.cache.blob(repo, digest).await?;
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(ByteRange::parse);
        let Some(range) = range else {
            let size = answer.source.size();
            let mut r = Response::new(body::stream(answer.source.stream(0, None, !self.tls)));
            if let Some(n) = size {
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            blob_headers(r.headers_mut(), digest);
            return Ok((r, Some(answer.outcome)));
        };
        // A range of a blob still downloading waits for the verified file.
        let source = answer
            .source
            .verified()
            .await
            .map_err(|e| Error::UpstreamUnavailable {
                registry: repo.registry.to_string(),
                message: e.to_string(),
            })?;
        let size = source.size().unwrap_or(0);
        let (start, end) = range
            .resolve(size)
            .ok_or(Error::RangeNotSatisfiable { size })?;
        let mut r = Response::new(body::stream(source.stream(start, Some(end), !self.tls)));
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        set(
            h,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{size}", end - 1),
        );
        blob_headers(h, digest);
        Ok((r, Some(answer.outcome)))
    }

    async fn tags<B>(
        &self,
        req: &Request<B>,
        repo: &Repository,
        n: Option<usize>,
        last: Option<String>,
        head: bool,
    ) -> Result<(Response<Body>, Option<Outcome>)> {
        let (all, outcome) = self.cache.tags(repo).await?;
        let after: Vec<&String> = all
            .iter()
            .filter(|t| last.as_ref().is_none_or(|l| *t > l))
            .collect();
        let page: Vec<&String> = after
            .iter()
            .take(n.unwrap_or(usize::MAX))
            .copied()
            .collect();
        let json = serde_json::json!({ "name": repo.name.as_str(), "tags": page });
        let bytes = serde_json::to_vec(&json).map_err(Error::internal)?;
        let len = bytes.len();
        let mut r = Response::new(if head {
            body::empty()
        } else {
            body::full(bytes)
        });
        let h = r.headers_mut();
        set(h, header::CONTENT_TYPE, "application/json");
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let (Some(n), Some(last)) = (n, page.last())
            && after.len() > page.len()
        {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query
                .append_pair("n", &n.to_string())
                .append_pair("last", last);
            set(h, header::LINK, &next_link(req, query));
        }
        Ok((r, Some(outcome)))
    }

    /// The referrers of `subject`: an image index (an empty one when there are none), only
    /// the given artifact types when asked (then `OCI-Filters-Applied` says so), in pages of
    /// `n` (at most [`referrers::PAGE`]) with a `Link` to the next.
    async fn referrers<B>(
        &self,
        req: &Request<B>,
        repo: &Repository,
        subject: &Digest,
        types: &[String],
        page: Page,
    ) -> Result<(Response<Body>, Option<Outcome>)> {
        let (all, outcome) = self.cache.referrers(repo, subject).await?;
        let listed = referrers::filter(&all, types);
        let n = page.n.unwrap_or(referrers::PAGE).min(referrers::PAGE);
        let (shown, more) = referrers::page(&listed, n, page.last.as_deref());
        let bytes = referrers::encode(&shown);
        let len = bytes.len();
        let mut r = Response::new(if page.head {
            body::empty()
        } else {
            body::full(bytes)
        });
        let h = r.headers_mut();
        set(h, header::CONTENT_TYPE, OCI_INDEX);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if !types.is_empty() {
            h.insert(FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
        }
        if more && let Some(last) = shown.last() {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query
                .append_pair("n", &n.to_string())
                .append_pair("last", &last.digest.to_string());
            for t in types {
                query.append_pair("artifactType", t);
            }
            set(h, header::LINK, &next_link(req, query));
        }
        Ok((r, Some(outcome)))
    }
}

/// Which page of a list a request asks for, and whether it is a `HEAD`.
struct Page {
    n: Option<usize>,
    last: Option<String>,
    head: bool,
}

/// `<path>?<query>; rel="next"`, keeping the request's `ns` (containerd's registry).
fn next_link<B>(req: &Request<B>, mut query: form_urlencoded::Serializer<String>) -> String {
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if k == "ns" {
            query.append_pair("ns", &v);
        }
    }
    format!("<{}?{}>; rel=\"next\"", req.uri().path(), query.finish())
}

/// The repository name as the request path wrote it (`org/app`, `ghcr.io/org/app`).
fn path_name(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    // As the router reads it: a tag list first, else the keyword that occurs last ends the
    // name (`/v2/a/manifests/x/referrers/<d>` is repository `a/manifests/x`).
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(name);
    }
    ["/manifests/", "/blobs/", "/referrers/"]
        .iter()
        .filter_map(|kw| rest.rfind(kw))
        .max()
        .map(|i| &rest[..i])
}

pub(super) fn set(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn digest_headers(h: &mut HeaderMap, digest: &Digest) {
    set(
        h,
        header::HeaderName::from_static(CONTENT_DIGEST),
        &digest.to_string(),
    );
    set(h, header::ETAG, &format!("\"{digest}\""));
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest) {
    set(h, header::CONTENT_TYPE, "application/octet-stream");
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    digest_headers(h, digest);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name a token's scope is checked against is the one the router serves: a keyword
    /// inside a name does not end it early.
    #[test]
    fn the_path_name_is_the_routed_name() {
        let d = format!("sha256:{}", "a".repeat(64));
        let router = Router::new(crate::oci::Registry::docker_hub(), Default::default());
        for (path, name) in [
            (
                format!("/v2/o/a/manifests/x/referrers/{d}"),
                "o/a/manifests/x",
            ),
            (
                "/v2/o/a/manifests/b/tags/list".to_string(),
                "o/a/manifests/b",
            ),
            ("/v2/o/a/blobs/manifests/latest".to_string(), "o/a/blobs"),
            (format!("/v2/o/a/manifests/blobs/{d}"), "o/a/manifests"),
            ("/v2/o/a/manifests/v1".to_string(), "o/a"),
        ] {
            assert_eq!(path_name(&path), Some(name), "{path}");
            let routed = match router.parse(&path, None).unwrap() {
                Route::Manifest { repo, .. }
                | Route::Blob { repo, .. }
                | Route::Tags { repo, .. }
                | Route::Referrers { repo, .. } => repo,
                Route::Base => unreachable!(),
            };
            assert_eq!(routed.name.as_str(), name, "{path}");
        }
    }
}
