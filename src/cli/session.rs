//! How a CLI command reaches the cache: through the admin API of the airlock serving this data
//! directory (found through `<data>/admin.json`), or, when none runs, through an embedded
//! engine started for the command (sled allows one process per index, so the command never
//! opens the index beside a running server).

use crate::app::{self, Running};
use crate::config::Config;
use crate::progress::Event;
use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A way to the admin API.
pub struct Session {
    http: reqwest::Client,
    base: String,
    token: String,
    embedded: Option<Running>,
}

impl Session {
    /// Connect to the running airlock of `config`'s data directory, or start an embedded one.
    pub async fn open(config: Config) -> anyhow::Result<Session> {
        // The admin API is on this machine: never through a proxy from the environment.
        let http = reqwest::Client::builder().no_proxy().build()?;
        let data = config.storage.path.clone();
        if let Some(advert) = app::read_advert(&data) {
            let alive = http
                .get(format!("{}/healthz", advert.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if alive {
                eprintln!(
                    "using the airlock serving {} (pid {})",
                    data.display(),
                    advert.pid
                );
                return Ok(Session {
                    http,
                    base: advert.url,
                    token: advert.token,
                    embedded: None,
                });
            }
        }
        let running = app::start_embedded(config).await.with_context(|| {
            format!(
                "no airlock answers for {} and it cannot be opened here",
                data.display()
            )
        })?;
        Ok(Session {
            http,
            base: format!("http://{}", running.admin_addr),
            token: running.token.clone(),
            embedded: Some(running),
        })
    }

    /// Stop the embedded engine, if any (flushes the index).
    pub async fn close(mut self) {
        if let Some(r) = self.embedded.take() {
            r.stop().await;
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Send a request; an error answer becomes an error carrying the API's message.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        Self::check(request.send().await?).await
    }

    async fn check(resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        // The registry's error shape: {"errors":[{"code","message","detail"}]}.
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        bail!(
            "{}",
            body["errors"][0]["message"]
                .as_str()
                .map_or_else(|| status.to_string(), str::to_string)
        )
    }

    /// GET a JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        Ok(resp.json().await?)
    }

    /// POST JSON, get JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        Ok(resp.json().await?)
    }

    /// POST, and hand each progress event of the answer to `on`; returns the final report.
    pub async fn events(
        &self,
        path: &str,
        body: reqwest::Body,
        mut on: impl FnMut(&Event),
    ) -> anyhow::Result<(bool, serde_json::Value)> {
        let resp = self
            .send(self.request(reqwest::Method::POST, path).body(body))
            .await?;
        let mut lines = resp.bytes_stream();
        let mut buf = Vec::new();
        // The server may close the connection right after it said why it failed (an import
        // refused while the upload was still going): that reason is the error, alone.
        let mut failure: Option<String> = None;
        let failed = |failure: Option<String>, otherwise: &str| match failure {
            Some(why) => Ok((false, serde_json::json!({ "error": why }))),
            None => Err(anyhow::anyhow!("{otherwise}")),
        };
        while let Some(chunk) = lines.next().await {
            let Ok(chunk) = chunk else {
                return failed(failure, "the admin API connection broke");
            };
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let event: Event = serde_json::from_slice(&line)
                    .context("the admin API sent a line that is not an event")?;
                if let Event::Report { ok, report } = event {
                    return Ok((ok, report));
                }
                if let Event::End {
                    ok: false,
                    message: Some(why),
                    ..
                } = &event
                {
                    failure = Some(why.clone());
                }
                on(&event);
            }
        }
        failed(failure, "the admin API ended without a report")
    }

    /// POST JSON and stream the answer's bytes (an export archive) to `on_chunk`; returns the
    /// answer's `x-airlock-export` summary.
    pub async fn download(
        &self,
        path: &str,
        body: &serde_json::Value,
        mut on_summary: impl FnMut(&serde_json::Value),
        mut on_chunk: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let resp = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        let summary = resp
            .headers()
            .get("x-airlock-export")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        on_summary(&summary);
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            on_chunk(&chunk.context("the export broke off: the archive is incomplete")?)?;
        }
        Ok(())
    }
}
