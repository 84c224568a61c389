//! Pushing images into a registry through the real push API (reqwest):
//! `HEAD` each blob, upload missing ones with `POST /v2/<repo>/blobs/uploads/` + monolithic
//! `PUT <location>?digest=..`, push an index's child manifests by digest, then `PUT` the
//! top-level manifest under each tag. Afterwards every tag is read back with an Accept of all
//! four manifest types and must return the local bytes and digest. Failures panic.

use bytes::Bytes;
use reqwest::{Client, StatusCode};

use super::image::{ACCEPT_ALL, Artifact};

/// A plain HTTP client for fixture use (no proxy, 60 s timeout).
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

/// Push `artifact` (an [`super::image::Image`] or [`super::image::Index`]) to `registry_url`
/// (e.g. `registry.url()`) as `repo:tag` for each tag (by digest only when `tags` is empty),
/// then verify each tag reads back byte-for-byte.
pub async fn push<A: Artifact + ?Sized>(
    registry_url: &str,
    repo: &str,
    tags: &[&str],
    artifact: &A,
) {
    let c = client();
    for (digest, data) in artifact.blobs() {
        push_blob(&c, registry_url, repo, &digest, data).await;
    }
    for child in artifact.children() {
        push_manifest(
            &c,
            registry_url,
            repo,
            &child.digest,
            child.media_type,
            child.manifest.clone(),
        )
        .await;
    }
    let refs: Vec<&str> = if tags.is_empty() {
        vec![artifact.digest()]
    } else {
        tags.to_vec()
    };
    for r in &refs {
        push_manifest(
            &c,
            registry_url,
            repo,
            r,
            artifact.media_type(),
            artifact.manifest().clone(),
        )
        .await;
    }
    for r in &refs {
        let got = get_manifest(&c, registry_url, repo, r).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "GET {repo}:{r} after push: {}",
            got.status
        );
        assert_eq!(
            got.digest.as_deref(),
            Some(artifact.digest()),
            "Docker-Content-Digest of {repo}:{r}"
        );
        assert_eq!(
            got.content_type.as_deref(),
            Some(artifact.media_type()),
            "Content-Type of {repo}:{r}"
        );
        assert!(
            got.body == *artifact.manifest(),
            "manifest bytes of {repo}:{r} differ after push"
        );
    }
}

/// Upload one blob unless `HEAD` says the repository already has it.
pub async fn push_blob(c: &Client, registry_url: &str, repo: &str, digest: &str, data: Bytes) {
    let head = c
        .head(format!("{registry_url}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .expect("HEAD blob");
    if head.status() == StatusCode::OK {
        return;
    }
    let start = c
        .post(format!("{registry_url}/v2/{repo}/blobs/uploads/"))
        .header("Content-Length", "0")
        .send()
        .await
        .expect("POST blob upload");
    assert_eq!(
        start.status(),
        StatusCode::ACCEPTED,
        "POST /v2/{repo}/blobs/uploads/: {}",
        start.status()
    );
    let loc = start
        .headers()
        .get("Location")
        .and_then(|v| v.to_str().ok())
        .expect("upload Location header")
        .to_string();
    let loc = if loc.starts_with('/') {
        format!("{registry_url}{loc}")
    } else {
        loc
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let put = c
        .put(format!("{loc}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", data.len().to_string())
        .body(data)
        .send()
        .await
        .expect("PUT blob");
    let status = put.status();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "PUT blob {digest} into {repo}: {status} {}",
        put.text().await.unwrap_or_default()
    );
}

/// `PUT /v2/<repo>/manifests/<reference>` with this media type.
pub async fn push_manifest(
    c: &Client,
    registry_url: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: Bytes,
) {
    let resp = c
        .put(format!("{registry_url}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .body(body)
        .send()
        .await
        .expect("PUT manifest");
    let status = resp.status();
    assert_eq!(
        status,
        StatusCode::CREATED,
        "PUT manifest {repo}:{reference}: {status} {}",
        resp.text().await.unwrap_or_default()
    );
}

/// What a manifest GET returned.
#[derive(Debug)]
pub struct FetchedManifest {
    /// HTTP status.
    pub status: StatusCode,
    /// Content-Type header.
    pub content_type: Option<String>,
    /// Docker-Content-Digest header.
    pub digest: Option<String>,
    /// Body bytes.
    pub body: Bytes,
}

/// `GET /v2/<repo>/manifests/<reference>` with an Accept of all four manifest types.
pub async fn get_manifest(
    c: &Client,
    registry_url: &str,
    repo: &str,
    reference: &str,
) -> FetchedManifest {
    let resp = c
        .get(format!("{registry_url}/v2/{repo}/manifests/{reference}"))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .expect("GET manifest");
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let (content_type, digest) = (h("Content-Type"), h("Docker-Content-Digest"));
    let status = resp.status();
    FetchedManifest {
        status,
        content_type,
        digest,
        body: resp.bytes().await.expect("manifest body"),
    }
}

/// `DELETE /v2/<repo>/manifests/<digest>` (the fixture registries enable deletes); returns the status.
pub async fn delete_manifest(registry_url: &str, repo: &str, digest: &str) -> StatusCode {
    client()
        .delete(format!("{registry_url}/v2/{repo}/manifests/{digest}"))
        .send()
        .await
        .expect("DELETE manifest")
        .status()
}
