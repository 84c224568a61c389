//! Blob redirects as Docker Hub does them (registry → CDN): followed, and the registry's
//! `Authorization` header goes to the registry's own origin only, never to the CDN. A
//! scripted pair of servers, because no registry package here redirects to another host.

mod netns;

use crate::support;

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use support::airlock::{Airlock, client, config, upstream};
use support::server::{Handler, ServerThread, empty, full};

const AUTH: &str = "Basic dGVzdHVzZXI6dGVzdHBhc3M="; // testuser:testpass

/// (path, Authorization header) of each request a server saw.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

fn blob() -> (String, Bytes) {
    let data = Bytes::from(vec![42u8; 300_000]);
    (support::image::sha256_digest(&data), data)
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_followed_and_credentials_stay_with_the_registry() {
    let (digest, data) = blob();
    let cdn_seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let cdn = {
        let (seen, data) = (cdn_seen.clone(), data.clone());
        let handler: Handler = Arc::new(move |req| {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("?").to_string());
            seen.lock().unwrap().push(auth);
            let data = data.clone();
            Box::pin(async move { hyper::Response::new(full(data)) })
        });
        ServerThread::spawn("cdn", handler)
    };
    let registry_seen: Seen = Arc::default();
    let registry = {
        let seen = registry_seen.clone();
        let cdn_url = format!("http://{}/blobs/{}?signature=abc", cdn.addr(), digest);
        let handler: Handler = Arc::new(move |req| {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("?").to_string());
            let path = req.uri().path().to_string();
            seen.lock().unwrap().push((path.clone(), auth.clone()));
            let cdn_url = cdn_url.clone();
            Box::pin(async move {
                let mut resp = hyper::Response::new(empty());
                if auth.as_deref() != Some(AUTH) {
                    *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                    resp.headers_mut()
                        .insert("www-authenticate", "Basic realm=\"test\"".parse().unwrap());
                } else if path.starts_with("/v2/org/app/blobs/") {
                    // First hop: same origin, relative Location (auth still due).
                    *resp.status_mut() = hyper::StatusCode::TEMPORARY_REDIRECT;
                    resp.headers_mut()
                        .insert("location", "/storage/blob".parse().unwrap());
                } else if path == "/storage/blob" {
                    // Second hop: another origin (the "CDN").
                    *resp.status_mut() = hyper::StatusCode::TEMPORARY_REDIRECT;
                    resp.headers_mut()
                        .insert("location", cdn_url.parse().unwrap());
                } else {
                    *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
                }
                resp
            })
        });
        ServerThread::spawn("registry", handler)
    };

    let mut cfg = config(vec![upstream(
        "docker.io",
        &format!("http://{}", registry.addr()),
    )]);
    cfg.upstream[0].username = Some("testuser".into());
    cfg.upstream[0].password = Some(airlock::config::Secret("testpass".into()));
    let airlock = Airlock::start(cfg).await;
    let resp = client()
        .get(format!("{}/v2/org/app/blobs/{digest}", airlock.url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.expect("body"), data);

    let registry_seen = registry_seen.lock().unwrap().clone();
    assert!(
        registry_seen
            .iter()
            .any(|(p, a)| p == "/storage/blob" && a.as_deref() == Some(AUTH)),
        "same-origin redirect keeps the credentials: {registry_seen:?}"
    );
    let cdn_seen = cdn_seen.lock().unwrap().clone();
    assert_eq!(
        cdn_seen,
        vec![None],
        "the CDN never sees the registry's Authorization"
    );
}
