//! Authenticated upstreams, for real: distribution behind token auth (the Docker Hub and GHCR
//! flow, with a token issuer from the fixtures) and behind htpasswd Basic auth (the ECR and
//! Artifactory flow), with credentials from the config, a file or the environment.

use crate::support;

use support::airlock::{Airlock, client, config, error_code, upstream};
use support::daemon::Daemon;
use support::image::{ACCEPT_ALL, Image, Index, Platform};
use support::registry::Registry;
use support::token::TokenIssuer;
use support::{push, skopeo};

async fn manifest_status(airlock: &Airlock, path: &str) -> (u16, String) {
    let resp = client()
        .get(format!("{}/v2/{path}", airlock.url()))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    (status, error_code(&resp.bytes().await.expect("body")))
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_anonymous_pulls_reuse_one_token_per_repository() {
    let plain = Registry::start().await;
    let index = Index::oci(
        "tok-index",
        &[Platform::amd64(), Platform::arm64()],
        &[50_000, 10_000],
    );
    let other = Image::docker("tok-other", &[20_000]);
    push::push(&plain.url(), "library/alpine", &["3.19", "latest"], &index).await;
    push::push(&plain.url(), "org/other", &["v1"], &other).await;
    let issuer = TokenIssuer::start();
    let registry = Registry::start_token(&issuer, &plain).await;
    let airlock = Airlock::for_upstream(&registry.url()).await;

    airlock
        .try_pull("alpine:3.19")
        .await
        .expect("pull")
        .assert_matches(&index, true);
    let after_first = issuer.token_requests();
    assert!(after_first >= 1, "a token was asked for");
    let scopes: Vec<String> = issuer
        .request_log()
        .iter()
        .flat_map(|r| r.scopes.clone())
        .collect();
    assert!(
        scopes.iter().all(|s| s == "repository:library/alpine:pull"),
        "pull scope only: {scopes:?}"
    );
    assert!(
        issuer.request_log().iter().all(|r| r.user.is_none()),
        "anonymous"
    );

    // Another tag of the same repository: the token is reused.
    airlock
        .try_pull("alpine:latest")
        .await
        .expect("pull")
        .assert_matches(&index, true);
    assert_eq!(
        issuer.token_requests(),
        after_first,
        "token reused until it expires"
    );

    // Another repository needs its own token.
    airlock
        .try_pull("org/other:v1")
        .await
        .expect("pull")
        .assert_matches(&other, true);
    assert_eq!(issuer.token_requests(), after_first + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_with_credentials_and_without() {
    let plain = Registry::start().await;
    let img = Image::oci("tok-private", &[30_000]);
    push::push(&plain.url(), "team/private", &["v1"], &img).await;
    let issuer = TokenIssuer::start();
    issuer.set_require_auth(true);
    let registry = Registry::start_token(&issuer, &plain).await;

    let anonymous = Airlock::for_upstream(&registry.url()).await;
    assert_eq!(
        manifest_status(&anonymous, "team/private/manifests/v1").await,
        (401, "UNAUTHORIZED".into())
    );
    assert!(anonymous.try_pull("team/private:v1").await.is_err());

    let mut cfg = config(vec![upstream("docker.io", &registry.url())]);
    cfg.upstream[0].username = Some("testuser".into());
    cfg.upstream[0].password = Some(airlock::config::Secret("testpass".into()));
    let with_creds = Airlock::start(cfg).await;
    with_creds
        .try_pull("team/private:v1")
        .await
        .expect("pull with credentials")
        .assert_matches(&img, true);
    assert!(
        issuer
            .request_log()
            .iter()
            .any(|r| r.user.as_deref() == Some("testuser") && r.status == 200)
    );

    let mut cfg = config(vec![upstream("docker.io", &registry.url())]);
    cfg.upstream[0].username = Some("testuser".into());
    cfg.upstream[0].password = Some(airlock::config::Secret("wrong".into()));
    let wrong = Airlock::start(cfg).await;
    assert_eq!(
        manifest_status(&wrong, "team/private/manifests/v1").await,
        (401, "UNAUTHORIZED".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_with_a_password_file_or_variable_and_without() {
    let plain = Registry::start().await;
    let img = Image::docker("basic", &[40_000]);
    push::push(&plain.url(), "ecr/app", &["v1"], &img).await;
    let registry = Registry::start_htpasswd("testuser", "testpass", &plain).await;

    let anonymous = Airlock::for_upstream(&registry.url()).await;
    assert_eq!(
        manifest_status(&anonymous, "ecr/app/manifests/v1").await,
        (401, "UNAUTHORIZED".into())
    );

    let secrets = tempfile::tempdir().expect("tempdir");
    let file = secrets.path().join("password");
    std::fs::write(&file, "testpass\n").expect("write password file");
    let mut cfg = config(vec![upstream("docker.io", &registry.url())]);
    cfg.upstream[0].username = Some("testuser".into());
    cfg.upstream[0].password_file = Some(file);
    let from_file = Airlock::start(cfg).await;
    from_file
        .try_pull("ecr/app:v1")
        .await
        .expect("pull with a password file")
        .assert_matches(&img, true);
    assert_eq!(
        registry.blob_gets("ecr/app", &img.layers[0].digest).await,
        1
    );

    // The variable is set for the server process only: the test process's environment is
    // shared by every test of the binary and is never changed. (Not AIRLOCK_*: those are
    // configuration keys, and airlock refuses unknown ones.)
    let section = format!(
        "[[upstream]]\nregistry = \"docker.io\"\nurl = \"{}\"\nusername = \"testuser\"\npassword_env = \"ECR_TEST_PASSWORD\"\n",
        registry.url()
    );
    let from_env = Daemon::start_with_env(&section, &[("ECR_TEST_PASSWORD", "testpass")]).await;
    skopeo::pull(&from_env.host(), "ecr/app:v1", &img).await;
}
