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

/// A CDN (another origin) that answers 401 with a challenge is not the registry: airlock never
/// follows its realm, gives the client an OCI error, caches nothing, and the next pull, once
/// the CDN behaves, works (the registry's own auth state was not touched).
#[tokio::test(flavor = "multi_thread")]
async fn a_401_from_a_redirect_target_is_an_error_and_teaches_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (digest, data) = blob();
    let realm_hits = Arc::new(AtomicUsize::new(0));
    let realm = {
        let hits = realm_hits.clone();
        let handler: Handler = Arc::new(move |_req| {
            hits.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { hyper::Response::new(full(r#"{"token":"stolen"}"#)) })
        });
        ServerThread::spawn("realm", handler)
    };
    let refuse = Arc::new(AtomicBool::new(true));
    let cdn = {
        let (refuse, data) = (refuse.clone(), data.clone());
        let challenge = format!(
            "Bearer realm=\"http://{}/token\",service=\"cdn\"",
            realm.addr()
        );
        let handler: Handler = Arc::new(move |_req| {
            let (refuse, data, challenge) = (refuse.clone(), data.clone(), challenge.clone());
            Box::pin(async move {
                if refuse.load(Ordering::SeqCst) {
                    let mut resp = hyper::Response::new(empty());
                    *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                    resp.headers_mut()
                        .insert("www-authenticate", challenge.parse().unwrap());
                    resp
                } else {
                    hyper::Response::new(full(data))
                }
            })
        });
        ServerThread::spawn("cdn", handler)
    };
    let registry = {
        let cdn_url = format!("http://{}/blobs/{}", cdn.addr(), digest);
        let handler: Handler = Arc::new(move |req| {
            let path = req.uri().path().to_string();
            let cdn_url = cdn_url.clone();
            Box::pin(async move {
                let mut resp = hyper::Response::new(empty());
                if path.starts_with("/v2/org/app/blobs/") {
                    *resp.status_mut() = hyper::StatusCode::TEMPORARY_REDIRECT;
                    resp.headers_mut()
                        .insert("location", cdn_url.parse().unwrap());
                } else if path != "/v2/" {
                    *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
                }
                resp
            })
        });
        ServerThread::spawn("registry", handler)
    };
    let cfg = config(vec![upstream(
        "docker.io",
        &format!("http://{}", registry.addr()),
    )]);
    let airlock = Airlock::start(cfg).await;
    let url = format!("{}/v2/org/app/blobs/{digest}", airlock.url());
    let resp = client().get(&url).send().await.expect("GET");
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{status}"
    );
    assert!(
        !support::airlock::error_code(&body).is_empty(),
        "an OCI error: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        realm_hits.load(Ordering::SeqCst),
        0,
        "the CDN's realm is never asked"
    );
    assert!(!airlock.has_blob(&digest), "nothing cached");

    refuse.store(false, Ordering::SeqCst);
    let resp = client().get(&url).send().await.expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.expect("body"), data);
    assert_eq!(realm_hits.load(Ordering::SeqCst), 0);
}
