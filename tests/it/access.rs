//! Client authentication, access rules and the fetch policy, against real registries and a
//! real client (skopeo): htpasswd users (written by `htpasswd -B`) log in through airlock's
//! token endpoint; a token names who holds it and the rules decide on every request by the
//! full `registry/repository` name; an external issuer's tokens are verified offline; anonymous
//! clients are let in by network only; refused fetches cost the upstream nothing.

use crate::support;

mod external;
mod fetch;

use airlock::config::AccessRule;
use base64::Engine;
use support::airlock::{Airlock, client, config, error_code, upstream};
use support::image::{ACCEPT_ALL, Image};
use support::push;
use support::registry::{Registry, htpasswd_entry};
use support::skopeo;

fn rule(name: &str, repos: &[&str]) -> AccessRule {
    AccessRule {
        name: Some(name.into()),
        repositories: repos.iter().map(|s| s.to_string()).collect(),
        users: vec![],
        groups: vec![],
        authenticated: false,
        anonymous: vec![],
    }
}

/// An htpasswd file with these users, as `htpasswd -B` writes it.
fn htpasswd(dir: &std::path::Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let text: String = users.iter().map(|(u, p)| htpasswd_entry(u, p)).collect();
    std::fs::write(&path, text).expect("write htpasswd");
    path
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Status, OCI code and `WWW-Authenticate` of a GET with an optional Authorization value.
async fn get(url: &str, authorization: Option<&str>) -> (u16, String, String) {
    let mut req = client().get(url).header("Accept", ACCEPT_ALL);
    if let Some(a) = authorization {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.expect("GET");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (
        status,
        error_code(&resp.bytes().await.expect("body")),
        challenge,
    )
}

/// A token from airlock's endpoint for `scope`, with Basic credentials.
async fn token(airlock: &Airlock, scope: &str, user: &str, pass: &str) -> String {
    let resp = client()
        .get(format!(
            "{}/auth/token?service=airlock&scope={scope}",
            airlock.url()
        ))
        .header("Authorization", basic(user, pass))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200, "token for {user}");
    let v: serde_json::Value = resp.json().await.expect("token JSON");
    assert_eq!(v["token"], v["access_token"]);
    v["token"].as_str().expect("token").to_string()
}

struct Site {
    hub: Registry,
    ghcr: Registry,
    app: Image,
    lib: Image,
    dir: tempfile::TempDir,
}

/// docker.io holds org/app:v1 and library/base:v1; ghcr.io holds org/app:v1 (other content).
async fn site() -> Site {
    let hub = Registry::start().await;
    let ghcr = Registry::start().await;
    let app = Image::oci("access-hub-app", &[20_000, 30_000]);
    let lib = Image::oci("access-hub-lib", &[10_000]);
    push::push(&hub.url(), "org/app", &["v1"], &app).await;
    push::push(&hub.url(), "library/base", &["v1"], &lib).await;
    push::push(
        &ghcr.url(),
        "org/app",
        &["v1"],
        &Image::oci("access-ghcr-app", &[5_000]),
    )
    .await;
    Site {
        hub,
        ghcr,
        app,
        lib,
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

/// alice may pull docker.io/org/*; bob anything on ghcr.io; 127.0.0.1 anonymously
/// docker.io/library/*.
async fn guarded(site: &Site) -> Airlock {
    let mut hub = upstream("docker.io", &site.hub.url());
    hub.aliases = vec!["hub".into()];
    let mut c = config(vec![hub, upstream("ghcr.io", &site.ghcr.url())]);
    c.auth.htpasswd = Some(htpasswd(
        site.dir.path(),
        &[("alice", "alice-pw"), ("bob", "bob-pw")],
    ));
    c.access = vec![
        AccessRule {
            users: vec!["alice".into()],
            ..rule("org", &["docker.io/org/*"])
        },
        AccessRule {
            users: vec!["bob".into()],
            ..rule("ghcr", &["ghcr.io/**"])
        },
        AccessRule {
            anonymous: vec!["127.0.0.1/32".into()],
            ..rule("library", &["docker.io/library/*"])
        },
    ];
    Airlock::start(c).await
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_logs_in_and_gets_what_its_user_may() {
    let site = site().await;
    let airlock = guarded(&site).await;
    let dir = tempfile::tempdir().unwrap();
    let src = format!("{}/org/app:v1", airlock.host);
    skopeo::copy_with_creds(&src, dir.path(), true, "alice:alice-pw")
        .await
        .expect("alice pulls docker.io/org/app");
    skopeo::read_dir(dir.path()).assert_matches(&site.app, true);

    let anonymous = skopeo::copy(&src, tempfile::tempdir().unwrap().path(), true, &[])
        .await
        .expect_err("no credentials");
    assert!(
        anonymous.contains("401") || anonymous.to_lowercase().contains("unauthorized"),
        "{anonymous}"
    );
    let bob = skopeo::copy_with_creds(
        &src,
        tempfile::tempdir().unwrap().path(),
        true,
        "bob:bob-pw",
    )
    .await
    .expect_err("bob may not");
    assert!(bob.contains("denied") || bob.contains("403"), "{bob}");
    let wrong = skopeo::copy_with_creds(
        &src,
        tempfile::tempdir().unwrap().path(),
        true,
        "alice:nope",
    )
    .await
    .expect_err("a wrong password");
    assert!(
        wrong.to_lowercase().contains("unauthorized") || wrong.contains("401"),
        "{wrong}"
    );

    // The challenge names airlock's token endpoint and the repository as the path wrote it.
    let (status, code, challenge) =
        get(&format!("{}/v2/org/app/manifests/v1", airlock.url()), None).await;
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}/auth/token\",service=\"airlock\",scope=\"repository:org/app:pull\"",
            airlock.url()
        )
    );
    let (status, _, challenge) =
        get(&format!("{}/v2/", airlock.url()), Some(&basic("x", "y"))).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    // A 403 names the rule that refused.
    let t = token(&airlock, "repository:org/app:pull", "bob", "bob-pw").await;
    let resp = client()
        .get(format!("{}/v2/org/app/manifests/v1", airlock.url()))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("\"org\"") && msg.contains("bob"), "{msg}");
    assert!(
        !msg.contains("ghcr"),
        "nothing about other repositories: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_docker_io_org_app_grants_nothing_on_ghcr_io_org_app() {
    let site = site().await;
    let airlock = guarded(&site).await;
    let t = token(&airlock, "repository:org/app:pull", "alice", "alice-pw").await;
    let bearer = format!("Bearer {t}");
    let m = format!("{}/v2/org/app/manifests/v1", airlock.url());
    assert_eq!(
        get(&m, Some(&bearer)).await.0,
        200,
        "docker.io by the bare path"
    );
    assert_eq!(
        get(&format!("{m}?ns=docker.io"), Some(&bearer)).await.0,
        200
    );
    for other in [
        format!("{m}?ns=ghcr.io"),
        format!("{}/v2/ghcr.io/org/app/manifests/v1", airlock.url()),
    ] {
        let (status, code, _) = get(&other, Some(&bearer)).await;
        assert!(matches!(status, 401 | 403), "{other}: {status} {code}");
    }
    assert_eq!(
        get(&format!("{m}?ns=ghcr.io"), Some(&bearer)).await.0,
        403,
        "alice may not read ghcr.io"
    );
    // Not issued for another name, even one alice may read.
    let other_name = format!("{}/v2/org/other/manifests/v1", airlock.url());
    assert_eq!(get(&other_name, Some(&bearer)).await.0, 401);
    // bob's token for the same path name is good on ghcr.io only.
    let b = format!(
        "Bearer {}",
        token(&airlock, "repository:org/app:pull", "bob", "bob-pw").await
    );
    assert_eq!(get(&format!("{m}?ns=ghcr.io"), Some(&b)).await.0, 200);
    assert_eq!(get(&m, Some(&b)).await.0, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_clients_get_nothing_of_a_private_image_through_any_route() {
    let site = site().await;
    let airlock = guarded(&site).await;
    skopeo::copy_with_creds(
        &format!("{}/org/app:v1", airlock.host),
        tempfile::tempdir().unwrap().path(),
        true,
        "alice:alice-pw",
    )
    .await
    .expect("alice brings org/app into the cache");
    let base = airlock.url();
    let mut paths = Vec::new();
    for (prefix, query) in [
        ("/v2/org/app", ""),
        ("/v2/org/app", "?ns=docker.io"),
        ("/v2/docker.io/org/app", ""),
        ("/v2/hub/org/app", ""),
        ("/v2/org/app", "?ns=hub"),
    ] {
        paths.push(format!("{prefix}/manifests/v1{query}"));
        paths.push(format!("{prefix}/manifests/{}{query}", site.app.digest));
        paths.push(format!("{prefix}/tags/list{query}"));
        for blob in site.app.layers.iter().chain([&site.app.config]) {
            paths.push(format!("{prefix}/blobs/{}{query}", blob.digest));
        }
    }
    for p in &paths {
        for head in [false, true] {
            let url = format!("{base}{p}");
            let req = if head {
                client().head(&url)
            } else {
                client().get(&url)
            };
            let resp = req.header("Accept", ACCEPT_ALL).send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            assert_eq!(status, 401, "{} {p}", if head { "HEAD" } else { "GET" });
            if !head {
                assert_eq!(error_code(&body), "UNAUTHORIZED", "{p}");
                let text = String::from_utf8_lossy(&body);
                assert!(!text.contains(&site.app.digest[7..20]), "{p}: {text}");
            }
        }
    }
    // The anonymous rule still lets 127.0.0.1 pull the library (with an anonymous token).
    airlock.pull("library/base:v1", &site.lib).await;
    assert_eq!(
        get(&format!("{base}/v2/library/base/manifests/v1"), None)
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_client_outside_the_network_is_refused() {
    let site = site().await;
    let airlock = guarded(&site).await;
    let url = format!("{}/v2/library/base/manifests/v1", airlock.url());
    let outside = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let status = |c: reqwest::Client, u: String| async move {
        c.get(&u)
            .header("Accept", ACCEPT_ALL)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(client(), url.clone()).await, 200, "from 127.0.0.1");
    assert_eq!(
        status(outside.clone(), url.clone()).await,
        401,
        "from 127.0.0.2"
    );
    assert_eq!(
        status(client(), format!("{}/v2/", airlock.url())).await,
        401,
        "the ping challenges everyone"
    );
    // An anonymous token fetched inside the network is worth nothing outside it.
    let resp = client()
        .get(format!(
            "{}/auth/token?scope=repository:library/base:pull",
            airlock.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let t: serde_json::Value = resp.json().await.unwrap();
    let bearer = format!("Bearer {}", t["token"].as_str().unwrap());
    assert_eq!(get(&url, Some(&bearer)).await.0, 200, "inside");
    let from_outside = outside
        .get(&url)
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(from_outside.status(), 401, "the same token outside");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_htpasswd_file_works_without_a_restart() {
    let site = site().await;
    let airlock = guarded(&site).await;
    let v2 = format!("{}/v2/", airlock.url());
    assert_eq!(get(&v2, Some(&basic("alice", "alice-pw"))).await.0, 200);
    htpasswd(
        site.dir.path(),
        &[("alice", "new-pw"), ("carol", "carol-pw")],
    );
    let mut changed = false;
    for _ in 0..100 {
        if get(&v2, Some(&basic("alice", "new-pw"))).await.0 == 200 {
            changed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(changed, "the new password works while airlock runs");
    assert_eq!(
        get(&v2, Some(&basic("alice", "alice-pw"))).await.0,
        401,
        "the old one does not"
    );
    assert_eq!(
        get(&v2, Some(&basic("carol", "carol-pw"))).await.0,
        200,
        "a new user"
    );
    // A token is worth nothing once its user is gone, and never buys a new token.
    let t = token(&airlock, "repository:org/app:pull", "alice", "new-pw").await;
    let m = format!("{}/v2/org/app/manifests/v1", airlock.url());
    assert_eq!(get(&m, Some(&format!("Bearer {t}"))).await.0, 200);
    let renew = client()
        .get(format!(
            "{}/auth/token?scope=repository:org/app:pull",
            airlock.url()
        ))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(renew.status(), 401, "no renewal from airlock's own token");
    htpasswd(site.dir.path(), &[("carol", "carol-pw")]);
    let mut gone = false;
    for _ in 0..100 {
        if get(&m, Some(&format!("Bearer {t}"))).await.0 == 401 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "alice's token is refused once she is removed");
    htpasswd(
        site.dir.path(),
        &[("alice", "new-pw"), ("carol", "carol-pw")],
    );
    for _ in 0..100 {
        if get(&v2, Some(&basic("alice", "new-pw"))).await.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A broken file keeps the users in force.
    std::fs::write(site.dir.path().join("htpasswd"), "alice:plaintext\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(get(&v2, Some(&basic("alice", "new-pw"))).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_credentials_get_a_clear_401_and_nothing_else() {
    let site = site().await;
    let airlock = guarded(&site).await;
    let m = format!("{}/v2/org/app/manifests/v1", airlock.url());
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let junk = [
        "Basic".to_string(),
        "Basic !!!not-base64".into(),
        format!("Basic {}", b64("no-colon")),
        format!("Basic {}", b64(":no-user")),
        format!("Basic {}", b64("mallory:guess")),
        "Bearer".into(),
        "Bearer not.a.jwt".into(),
        format!("Bearer {}", "A".repeat(12_000)),
        "Digest username=\"alice\"".into(),
        "alice:alice-pw".into(),
    ];
    for value in &junk {
        let (status, code, _) = get(&m, Some(value)).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "UNAUTHORIZED"),
            "{}",
            &value[..value.len().min(40)]
        );
    }
    // Still serving the right user.
    assert_eq!(get(&m, Some(&basic("alice", "alice-pw"))).await.0, 200);
    // A file with an entry that is not bcrypt is refused at start, naming the line.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("htpasswd");
    std::fs::write(&bad, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
    let mut c = config(vec![upstream("docker.io", &site.hub.url())]);
    c.auth.htpasswd = Some(bad);
    let err = airlock::app::start(c)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("line 1 (alice): only bcrypt"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_says_who_asked_and_exposed_credentials_are_refused_at_start() {
    use support::daemon::{Daemon, run_cli, text};
    let site = site().await;
    let file = htpasswd(site.dir.path(), &[("alice", "alice-pw")]);
    let extra = format!(
        "[auth]\nhtpasswd = \"{}\"\n\n[[upstream]]\nregistry = \"docker.io\"\nurl = \"{}\"\n",
        file.display(),
        site.hub.url()
    );
    let daemon = Daemon::start(&extra, &[]).await;
    skopeo::copy_with_creds(
        &format!("{}/org/app:v1", daemon.host()),
        tempfile::tempdir().unwrap().path(),
        true,
        "alice:alice-pw",
    )
    .await
    .expect("alice pulls");
    assert_eq!(
        get(&format!("{}/v2/org/app/manifests/v1", daemon.url()), None)
            .await
            .0,
        401
    );
    assert!(
        daemon
            .wait_log("path=/v2/org/app/manifests/v1 status=401", 50)
            .await
    );
    let log = daemon.log();
    assert!(
        log.lines().any(|l| l.contains("/v2/org/app/manifests/v1")
            && l.contains("status=200")
            && l.contains("user=alice")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("status=401")
            && l.contains("user=-")
            && l.contains("client=127.0.0.1")),
        "{log}"
    );
    assert!(
        log.contains("AUTHENTICATION IS ON WITHOUT TLS"),
        "the warning at start:\n{log}"
    );

    // Upstream credentials on a port open to the network, with no authentication and no
    // anonymous rule: refused before anything binds, saying what to add.
    let exposed = site.dir.path().join("exposed.toml");
    std::fs::write(
        &exposed,
        format!(
            "[server]\nlisten = \"0.0.0.0:1\"\n[storage]\npath = \"{}\"\n[[upstream]]\nregistry = \"registry.example.internal\"\ncredential_helper = \"ecr-login\"\n",
            site.dir.path().join("data").display()
        ),
    )
    .unwrap();
    for cmd in ["check-config", "serve"] {
        let out = run_cli(&exposed, &[cmd]).await;
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("[auth] htpasswd") && err.contains("[[access]]"),
            "{err}"
        );
    }
}
