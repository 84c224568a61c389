//! Bad input gets an OCI error and touches nothing: traversal attempts, percent-encoding,
//! overlong names, malformed digests, unknown algorithms, huge headers, push methods. And a
//! blob is served under a repository only if it belongs there: no leak across names.

use crate::support;

use support::airlock::{Airlock, client, error_code, raw_get, raw_request};
use support::image::{ACCEPT_ALL, Image};
use support::registry::Registry;
use support::{push, skopeo};

const HEX: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Every file under `dir`, with its size and modification time.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let m = e.metadata().expect("metadata");
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().expect("mtime")));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_oci_errors_and_touch_no_file() {
    // The upstream would answer anything: nothing bad may get far enough to ask it.
    let reg = Registry::start().await;
    let airlock = Airlock::for_upstream(&reg.url()).await;
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("passwd"), "root:x:0:0").expect("canary");
    let canary = outside.path().display().to_string();
    let before = snapshot(outside.path());
    let data_before = snapshot(&airlock.data().join("blobs"));

    let long = "a".repeat(256);
    let cases: Vec<(String, u16, &str)> = vec![
        ("/v2/../../etc/blobs/sha256:abc".into(), 400, "NAME_INVALID"),
        (
            format!("/v2/../../../..{canary}/blobs/sha256:{HEX}"),
            400,
            "NAME_INVALID",
        ),
        // Slashes make it no endpoint at all: there is no digest to judge.
        (
            format!("/v2/a/blobs/sha256:../../..{canary}/passwd"),
            404,
            "UNSUPPORTED",
        ),
        (format!("/v2/a/blobs/sha256%3a{HEX}"), 400, "NAME_INVALID"),
        (
            "/v2/%2e%2e/%2e%2e/etc/manifests/latest".into(),
            400,
            "NAME_INVALID",
        ),
        ("/v2/a/%2E%2E/manifests/latest".into(), 400, "NAME_INVALID"),
        (format!("/v2/{long}/manifests/latest"), 400, "NAME_INVALID"),
        ("/v2/UPPER/manifests/latest".into(), 400, "NAME_INVALID"),
        ("/v2/a/blobs/sha256:abc".into(), 400, "DIGEST_INVALID"),
        (
            format!("/v2/a/blobs/sha256:{}", HEX.to_uppercase()),
            400,
            "DIGEST_INVALID",
        ),
        (
            format!("/v2/a/blobs/sha512:{HEX}{HEX}"),
            400,
            "DIGEST_INVALID",
        ),
        (format!("/v2/a/blobs/blake3:{HEX}"), 400, "DIGEST_INVALID"),
        ("/v2/a/manifests/sha256:xyz".into(), 400, "DIGEST_INVALID"),
        ("/v2/a/manifests/.hidden".into(), 404, "MANIFEST_UNKNOWN"),
        (
            format!("/v2/a/manifests/{}", "t".repeat(129)),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/a/tags/list?ns=bad%20host".into(), 400, "NAME_INVALID"),
        ("/v2/_catalog".into(), 404, "UNSUPPORTED"),
        ("/etc/passwd".into(), 404, "UNSUPPORTED"),
    ];
    for (path, status, code) in &cases {
        let (got, body) = raw_get(&airlock.host, path).await;
        assert_eq!(
            (got, error_code(&body).as_str()),
            (*status, *code),
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // A large header: an OCI error, not a bare status; past hyper's 64 KiB buffer, hyper's
    // own 431 (nothing more is read or kept).
    let header = |n: usize| {
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "b".repeat(n)
        )
    };
    let (status, body) = raw_request(&airlock.host, header(32 << 10).as_bytes()).await;
    assert_eq!((status, error_code(&body).as_str()), (431, "UNSUPPORTED"));
    let (status, _) = raw_request(&airlock.host, header(128 << 10).as_bytes()).await;
    assert_eq!(status, 431);

    // Pushes and deletes: 405 UNSUPPORTED.
    for (method, path) in [
        ("POST", "/v2/a/blobs/uploads/".to_string()),
        ("PATCH", "/v2/a/blobs/uploads/some-id".to_string()),
        ("PUT", "/v2/a/manifests/latest".to_string()),
        ("DELETE", format!("/v2/a/manifests/sha256:{HEX}")),
        ("DELETE", format!("/v2/a/blobs/sha256:{HEX}")),
    ] {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = raw_request(&airlock.host, req.as_bytes()).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (405, "UNSUPPORTED"),
            "{method} {path}"
        );
    }

    reg.wait_for_log_quiet().await;
    let asked: Vec<String> = reg
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .filter(|t| t != "/v2/")
        .collect();
    assert!(
        asked.is_empty(),
        "bad input reached the upstream: {asked:?}"
    );
    assert_eq!(
        snapshot(outside.path()),
        before,
        "nothing outside the data directory changed"
    );
    assert_eq!(
        snapshot(&airlock.data().join("blobs")),
        data_before,
        "nothing was stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_is_served_only_under_repositories_it_belongs_to() {
    let reg = Registry::start().await;
    let private = Image::oci("private", &[100_000]);
    let public = Image::oci("public", &[90_000]);
    push::push(&reg.url(), "team/private", &["v1"], &private).await;
    push::push(&reg.url(), "team/public", &["v1"], &public).await;
    // Another repository that shares the private image's layer legitimately.
    push::push(&reg.url(), "team/sharing", &["v1"], &private).await;
    let airlock = Airlock::for_upstream(&reg.url()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    skopeo::copy(
        &format!("{}/team/private:v1", airlock.host),
        dir.path(),
        true,
        &[],
    )
    .await
    .expect("pull");
    let secret = &private.layers[0].digest;
    assert!(airlock.has_blob(secret));

    let get = |repo: &str, what: &str| {
        client()
            .get(format!("{}/v2/{repo}/{what}", airlock.url()))
            .header("Accept", ACCEPT_ALL)
            .send()
    };
    for method_head in [false, true] {
        let url = format!("{}/v2/team/public/blobs/{secret}", airlock.url());
        let req = if method_head {
            client().head(&url)
        } else {
            client().get(&url)
        };
        let resp = req.send().await.expect("request");
        assert_eq!(
            resp.status(),
            404,
            "head={method_head}: the private blob leaked through another name"
        );
        if !method_head {
            assert_eq!(error_code(&resp.bytes().await.unwrap()), "BLOB_UNKNOWN");
        }
    }
    let resp = get("team/public", &format!("manifests/{}", private.digest))
        .await
        .expect("GET");
    assert_eq!(resp.status(), 404, "a manifest does not leak either");

    // A repository the upstream confirms gets it from the cache, without a second download.
    let resp = get("team/sharing", &format!("blobs/{secret}"))
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), private.layers[0].data);
    assert_eq!(
        reg.blob_gets("team/sharing", secret).await,
        0,
        "confirmed by HEAD, served from the cache"
    );
    assert_eq!(reg.blob_gets("*", secret).await, 1);
}
