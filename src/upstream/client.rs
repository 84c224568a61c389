//! [`HttpUpstream`]: the pull side of the Registry v2 API over reqwest + rustls.
//!
//! Redirects are followed by hand (Docker Hub sends blobs to a CDN) so the registry's
//! `Authorization` header is never sent to another origin. Statuses are classified once, in
//! [`HttpUpstream::send`]: 404 is an answer, everything else that is not success an [`Error`].

use super::auth::{Auth, Challenge};
use super::breaker::{Breaker, Health};
use super::budget::Budget;
use super::credentials::CredentialProvider;
use super::trust;
use super::{BlobBody, FetchedManifest, Upstream};
use crate::config::{CredentialsConfig, UpstreamConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Digest, Reference, Registry, RepoName};
use anyhow::Context as _;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Method, StatusCode, header};
use reqwest::Url;
use std::sync::Arc;
use std::time::Duration;

mod referrers;

const MAX_REDIRECTS: usize = 5;
const MAX_TAG_PAGES: usize = 100;

/// An upstream reached over HTTP(S).
pub struct HttpUpstream {
    registry: String,
    base: Url,
    /// `?ns=<registry>` for every request, when the upstream is a mirror that routes on it.
    ns: Option<String>,
    http: reqwest::Client,
    auth: Auth,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    /// Hosts besides the registry's own allowed to serve its token realm.
    token_hosts: Vec<String>,
    budget: Budget,
    budget_recheck: Duration,
}

impl HttpUpstream {
    /// A client for one `[[upstream]]` section, with credential sources from `credentials`.
    /// Fails with a message naming the key when the URL, CA file or a credential source is
    /// unusable.
    pub fn new(
        config: &UpstreamConfig,
        credentials: &CredentialsConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<HttpUpstream> {
        let base = Url::parse(&config.effective_url())?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).with_context(|| {
                format!("upstream {}: ca_file {}", config.registry, path.display())
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!(
                    "upstream {}: ca_file {} holds no PEM certificates",
                    config.registry,
                    path.display()
                )
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        if config.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        // An upstream outside never gets airlock to connect inside (see upstream::resolve).
        if !trust::internal(&base)
            && let Some(host) = base.host_str()
        {
            let mut exempt = config.token_hosts.clone();
            exempt.extend(trust::realm_hosts_for(host));
            builder =
                builder.dns_resolver(Arc::new(super::resolve::OutsideOnly::new(host, &exempt)));
        }
        let http = builder.build()?;
        let provider = CredentialProvider::from_config(config, credentials)?;
        let registry: Registry = config.registry.parse()?;
        Ok(HttpUpstream {
            registry: config.registry.clone(),
            ns: config.mirror.then(|| registry.to_string()),
            auth: Auth::new(
                config.registry.clone(),
                provider,
                http.clone(),
                config.request_timeout,
            ),
            metrics,
            breaker: Breaker::new(
                &config.registry,
                config.failure_threshold,
                config.backoff,
                config.max_backoff,
            ),
            base,
            http,
            request_timeout: config.request_timeout,
            token_hosts: config.token_hosts.clone(),
            budget: Budget::new(config.ratelimit_reserve),
            budget_recheck: config.ratelimit_recheck,
        })
    }

    /// Up or down, as the circuit breaker sees it.
    pub fn health(&self) -> Health {
        self.breaker.health()
    }

    /// Where the credentials come from (for the start-up log).
    pub fn credentials(&self) -> String {
        self.auth.describe_credentials()
    }

    fn url(&self, repo: &RepoName, tail: &str) -> Result<Url> {
        let base = self.base.as_str().trim_end_matches('/');
        let mut url = Url::parse(&format!("{base}/v2/{repo}/{tail}")).map_err(Error::internal)?;
        if let Some(ns) = &self.ns {
            url.query_pairs_mut().append_pair("ns", ns);
        }
        Ok(url)
    }

    fn unavailable(&self, message: String) -> Error {
        Error::UpstreamUnavailable {
            registry: self.registry.clone(),
            message,
        }
    }

    fn invalid(&self, message: String) -> Error {
        Error::UpstreamInvalid {
            registry: self.registry.clone(),
            message,
        }
    }

    /// Send a request with authentication (answering one 401 challenge) and redirects.
    /// Returns the response when it is a success or a 404.
    async fn send(
        &self,
        method: Method,
        url: Url,
        repo: &RepoName,
        accept: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response> {
        let mut auth = self.auth.header(repo.as_str(), None).await?;
        let mut resp = self
            .follow(&method, url.clone(), accept, timeout, auth.as_ref())
            .await?;
        // First 401: learn the challenge and authenticate. Second: a credential helper may
        // have fresher credentials (ECR's expire every 12 hours): ask it again, once.
        for attempt in 0..2 {
            if resp.status() != StatusCode::UNAUTHORIZED {
                break;
            }
            if attempt == 1 && !self.auth.refresh_credentials().await {
                break;
            }
            let challenge = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok().and_then(Challenge::parse))
                .max_by_key(|c| matches!(c, Challenge::Bearer { .. }));
            // A challenge counts only from the registry itself (not a CDN it redirected to),
            // and credentials go only to a realm on its host or one named for it.
            if resp.url().origin() != self.base.origin() {
                break;
            }
            match challenge {
                Some(c) => {
                    if let Challenge::Bearer { realm, .. } = &c
                        && let Err(why) = trust::realm(&self.base, realm, &self.token_hosts)
                    {
                        tracing::warn!(registry = %self.registry, reason = %why, "token realm refused");
                        return Err(self.invalid(why));
                    }
                    self.auth.learn(c)
                }
                None if attempt == 0 => break,
                None => {}
            }
            let rejected = auth.take();
            auth = self.auth.header(repo.as_str(), rejected.as_ref()).await?;
            // Nothing new to offer (no credentials, or the same ones again): stop, rather
            // than count another failed login against the account.
            if auth.is_none() || auth == rejected {
                break;
            }
            resp = self
                .follow(&method, url.clone(), accept, timeout, auth.as_ref())
                .await?;
        }
        // The budget is the registry's own word, not a CDN's it redirected to.
        if resp.url().origin() == self.base.origin()
            && let Some(r) = self.budget.observe(resp.headers())
        {
            let m = &self.metrics;
            let label = m.registry_label(&self.registry);
            m.upstream_ratelimit
                .with_label_values(&[label, "limit"])
                .set(r.limit as i64);
            m.upstream_ratelimit
                .with_label_values(&[label, "remaining"])
                .set(r.remaining as i64);
        }
        let status = resp.status();
        match status {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(resp),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(Error::Unauthorized {
                registry: self.registry.clone(),
                message: if auth.is_none() {
                    format!(
                        "{status} for {repo}: it wants credentials, give airlock some for this registry"
                    )
                } else {
                    format!("{status} for {repo}: it refused the credentials airlock has for it")
                },
            }),
            StatusCode::TOO_MANY_REQUESTS => Err(Error::TooManyRequests(self.registry.clone())),
            s if s.is_server_error() && s != StatusCode::NOT_IMPLEMENTED => {
                Err(self.unavailable(format!("{method} {} answered {s}", resp.url().path())))
            }
            s => Err(self.invalid(format!("{method} {} answered {s}", resp.url().path()))),
        }
    }

    /// One request through the breaker: refused at once while the upstream is marked down;
    /// its outcome (answered, or unreachable/timed out/5xx/429) is recorded.
    async fn follow(
        &self,
        method: &Method,
        url: Url,
        accept: Option<&str>,
        timeout: Option<Duration>,
        auth: Option<&HeaderValue>,
    ) -> Result<reqwest::Response> {
        let registry = self.metrics.registry_label(&self.registry).to_string();
        let up = self.metrics.upstream_up.with_label_values(&[&registry]);
        let attempt = match self.breaker.attempt() {
            Ok(a) => a,
            Err(e) => {
                up.set(0);
                return Err(e);
            }
        };
        let started = std::time::Instant::now();
        let result = self.follow_hops(method, url, accept, timeout, auth).await;
        self.metrics
            .upstream_seconds
            .with_label_values(&[&registry])
            .observe(started.elapsed().as_secs_f64());
        let class = match &result {
            Ok(r) => Metrics::status_class(r.status().as_u16()),
            Err(_) => "error",
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[&registry, class])
            .inc();
        match &result {
            // 501 says an endpoint is not offered (the referrers API on some registries): an
            // answer, not an outage.
            Ok(r)
                if (r.status().is_server_error() && r.status() != StatusCode::NOT_IMPLEMENTED)
                    || r.status() == StatusCode::TOO_MANY_REQUESTS =>
            {
                attempt.failure(&format!("answered {}", r.status()))
            }
            Ok(_) => attempt.success(),
            Err(e) => attempt.failure(&e.to_string()),
        }
        up.set(i64::from(self.breaker.health() == Health::Up));
        result
    }

    /// One request and its redirects. `Authorization` goes only to the registry's own origin.
    async fn follow_hops(
        &self,
        method: &Method,
        mut url: Url,
        accept: Option<&str>,
        timeout: Option<Duration>,
        auth: Option<&HeaderValue>,
    ) -> Result<reqwest::Response> {
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(a) = accept {
                req = req.header(header::ACCEPT, a);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(a) = auth.filter(|_| url.origin() == self.base.origin()) {
                req = req.header(header::AUTHORIZATION, a.clone());
            }
            let resp = req.send().await.map_err(|e| self.transport(e))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| {
                    self.invalid(format!(
                        "{} redirect without a usable Location",
                        resp.status()
                    ))
                })?;
            trust::redirect(&self.base, &url, &location)
                .map_err(|why| self.invalid(format!("refused {why}")))?;
            url = location;
        }
        Err(self.invalid(format!("more than {MAX_REDIRECTS} redirects")))
    }

    fn transport(&self, e: reqwest::Error) -> Error {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        // reqwest's Display names the URL; the chain names the cause (refused, reset, …).
        let mut msg = format!("{what}: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        self.unavailable(msg)
    }

    /// Read a whole (small) body, refusing more than `limit` bytes.
    async fn read_limited(&self, resp: reqwest::Response, limit: usize) -> Result<Bytes> {
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(self.invalid(format!("a manifest larger than {limit} bytes")));
        }
        let mut buf = BytesMut::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            if buf.len() + chunk.len() > limit {
                return Err(self.invalid(format!("a manifest larger than {limit} bytes")));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

impl HttpUpstream {
    /// GET one page of a paginated listing (tags, referrers): `None` when the upstream
    /// answers 404, else the body (at most a manifest's size) and the next page's URL from
    /// `Link`, refused unless it stays on the registry's origin.
    async fn page(
        &self,
        url: &Url,
        repo: &RepoName,
        accept: Option<&str>,
    ) -> Result<Option<(Bytes, Option<Url>)>> {
        let resp = self
            .send(
                Method::GET,
                url.clone(),
                repo,
                accept,
                Some(self.request_timeout),
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let next = header_str(&resp, header::LINK)
            .and_then(next_link)
            .and_then(|l| url.join(&l).ok());
        if let Some(n) = &next {
            trust::link(&self.base, n).map_err(|why| self.invalid(format!("refused {why}")))?;
        }
        let body = self.read_limited(resp, MAX_MANIFEST_BYTES).await?;
        Ok(Some((body, next)))
    }
}

fn header_str(resp: &reqwest::Response, name: header::HeaderName) -> Option<&str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[async_trait]
impl Upstream for HttpUpstream {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &str,
        head: bool,
    ) -> Result<Option<FetchedManifest>> {
        let url = self.url(repo, &format!("manifests/{reference}"))?;
        let method = if head { Method::HEAD } else { Method::GET };
        let resp = self
            .send(method, url, repo, Some(accept), Some(self.request_timeout))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let media_type = header_str(&resp, header::CONTENT_TYPE)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                self.invalid(format!(
                    "manifest {repo}:{reference} without a Content-Type"
                ))
            })?;
        let digest = header_str(&resp, "docker-content-digest".parse().expect("static"))
            .and_then(|d| d.parse().ok());
        let bytes = if head {
            None
        } else {
            Some(self.read_limited(resp, MAX_MANIFEST_BYTES).await?)
        };
        Ok(Some(FetchedManifest {
            media_type,
            digest,
            bytes,
        }))
    }

    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobBody>> {
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let resp = self.send(Method::GET, url, repo, None, None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if resp.status() != StatusCode::OK {
            return Err(self.invalid(format!("blob {digest} answered {}", resp.status())));
        }
        let size = resp.content_length();
        let registry = self.registry.clone();
        let stream = resp
            .bytes_stream()
            .map(move |r| {
                r.map_err(|e| Error::UpstreamUnavailable {
                    registry: registry.clone(),
                    message: format!("blob transfer broke: {e}"),
                })
            })
            .boxed();
        Ok(Some(BlobBody { size, stream }))
    }

    async fn blob_exists(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Option<u64>>> {
        let url = self.url(repo, &format!("blobs/{digest}"))?;
        let resp = self
            .send(Method::HEAD, url, repo, None, Some(self.request_timeout))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        // reqwest reports no body length for HEAD: read the header itself.
        Ok(Some(
            header_str(&resp, header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
        ))
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Option<Vec<crate::oci::referrers::Referrer>>> {
        self.fetch_referrers(repo, subject).await
    }

    fn budget_low(&self) -> Option<String> {
        self.budget.low()
    }

    fn budget_recheck(&self) -> Duration {
        self.budget_recheck
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(repo, "tags/list")?;
        let mut all = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let Some((body, next)) = self.page(&url, repo, None).await? else {
                return Ok(None);
            };
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| self.invalid(format!("tag list of {repo} is not JSON: {e}")))?;
            all.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => url = n,
                None => return Ok(Some(all)),
            }
        }
        tracing::warn!(%repo, tags = all.len(), "tag list cut after {MAX_TAG_PAGES} pages");
        Ok(Some(all))
    }
}

/// The target of `<…>; rel="next"` in a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().trim_start_matches("rel=").trim_matches('"') == "next")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::next_link;

    #[test]
    fn finds_the_next_page() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(next_link(r#"<x>; rel="prev""#), None);
        assert_eq!(next_link(""), None);
    }
}
