//! TLS both ways, with a certificate authority made by the fixture: airlock serving HTTPS
//! (HTTP/2 and HTTP/1.1 by ALPN, verified by skopeo and curl), and an upstream registry
//! serving HTTPS, trusted through `ca_file`, refused without it, or accepted with `insecure`.

use crate::support;

use airlock::config::TlsConfig;
use support::airlock::{Airlock, client, config, error_code, upstream};
use support::certs::TestCerts;
use support::image::{ACCEPT_ALL, Image};
use support::registry::{Registry, RegistryOptions};
use support::{push, skopeo};

fn curl_http_version(args: &[&str], url: &str) -> String {
    let out = crate::support::tools::CURL
        .command()
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--max-time",
            "30",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn airlock_serves_https_with_http2_and_skopeo_verifies_it() {
    let reg = Registry::start().await;
    let img = Image::oci("tls-serve", &[70_000]);
    push::push(&reg.url(), "org/app", &["v1"], &img).await;
    let certs = TestCerts::new();
    let mut cfg = config(vec![upstream("docker.io", &reg.url())]);
    cfg.server.tls = Some(TlsConfig {
        cert: certs.cert.clone(),
        key: certs.key.clone(),
    });
    let airlock = Airlock::start(cfg).await;
    let base = format!("https://{}/v2/", airlock.host);
    let ca = certs.ca.to_str().unwrap();

    assert_eq!(
        curl_http_version(&["--http2", "--cacert", ca], &base),
        "2",
        "HTTP/2 negotiated by ALPN"
    );
    assert_eq!(
        curl_http_version(&["--http1.1", "--cacert", ca], &base),
        "1.1"
    );

    // skopeo with verification on, trusting the CA through --src-cert-dir.
    let cert_dir = certs.cert_dir();
    let dir = tempfile::tempdir().unwrap();
    let verify = [
        "--src-tls-verify=true",
        "--src-cert-dir",
        cert_dir.path().to_str().unwrap(),
    ];
    skopeo::copy(
        &format!("{}/org/app:v1", airlock.host),
        dir.path(),
        true,
        &verify,
    )
    .await
    .expect("skopeo over verified TLS");
    skopeo::read_dir(dir.path()).assert_matches(&img, true);
    // Without the CA, verification fails: it really is checking.
    let empty = tempfile::tempdir().unwrap();
    let strict = [
        "--src-tls-verify=true",
        "--src-cert-dir",
        empty.path().to_str().unwrap(),
    ];
    let e = skopeo::copy(
        &format!("{}/org/app:v1", airlock.host),
        tempfile::tempdir().unwrap().path(),
        true,
        &strict,
    )
    .await;
    assert!(e.is_err(), "an unknown CA must be refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_trusted_through_ca_file_or_insecure_only() {
    let plain = Registry::start().await;
    let img = Image::docker("tls-upstream", &[50_000]);
    push::push(&plain.url(), "org/app", &["v1"], &img).await;
    let certs = TestCerts::new();
    let tls_reg = Registry::start_with(RegistryOptions {
        storage: Some(plain.storage()),
        read_only: true,
        tls: Some((certs.cert.clone(), certs.key.clone())),
        ..Default::default()
    })
    .await;
    assert!(tls_reg.url().starts_with("https://"));
    let get = |a: &Airlock| {
        client()
            .get(format!("{}/v2/org/app/manifests/v1", a.url()))
            .header("Accept", ACCEPT_ALL)
            .send()
    };

    let untrusted = Airlock::for_upstream(&tls_reg.url()).await;
    let resp = get(&untrusted).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        error_code(&body),
        "UNAVAILABLE",
        "{}",
        String::from_utf8_lossy(&body)
    );

    let mut u = upstream("docker.io", &tls_reg.url());
    u.ca_file = Some(certs.ca.clone());
    let trusted = Airlock::start(config(vec![u])).await;
    let dir = tempfile::tempdir().unwrap();
    skopeo::copy(
        &format!("{}/org/app:v1", trusted.host),
        dir.path(),
        true,
        &[],
    )
    .await
    .expect("pull via ca_file");
    skopeo::read_dir(dir.path()).assert_matches(&img, true);

    let mut u = upstream("docker.io", &tls_reg.url());
    u.insecure = true;
    let insecure = Airlock::start(config(vec![u])).await;
    assert_eq!(get(&insecure).await.unwrap().status(), 200);
}
