//! Self-test of the integration-test fixtures in `support/`: real registries, pushes, skopeo
//! pulls, token and htpasswd auth, the scripted faulty upstream, stop/restart and cleanup.

use crate::support;

use std::time::{Duration, Instant};

use support::faulty::{BlackHole, FaultyUpstream, Gate, Mode};
use support::image::{Artifact, Format, Image, ImageBuilder, Index, Platform, sha256_digest};
use support::registry::Registry;
use support::token::{TokenIssuer, TokenOptions};
use support::{push, skopeo};

/// One registry shared by several tests (and so by several tokio runtimes).
static SHARED: tokio::sync::OnceCell<Registry> = tokio::sync::OnceCell::const_new();

async fn shared() -> &'static Registry {
    SHARED.get_or_init(Registry::start).await
}

/// Fixtures can live in statics shared by tests.
#[allow(dead_code)]
fn fixtures_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Registry>();
    check::<TokenIssuer>();
    check::<FaultyUpstream>();
    check::<BlackHole>();
    check::<support::process::GuardedChild>();
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_registry_push_and_skopeo_roundtrip() {
    let reg = Registry::start().await;
    let t = Instant::now();
    let big = ImageBuilder::new("selftest-big").layer(64 << 20).build();
    eprintln!("64 MiB image built in {:?}", t.elapsed());
    let oci = Image::oci("selftest-oci", &[4096, 300_000]);
    let docker = Image::docker("selftest-docker", &[10_000]);
    let plats = [Platform::amd64(), Platform::arm64()];
    let oci_index = Index::oci("selftest-index", &plats, &[2048, 1024]);
    let docker_list = Index::docker("selftest-list", &plats, &[2048]);
    let cases: Vec<(&str, &dyn Artifact)> = vec![
        ("selftest/oci", &oci),
        ("selftest/docker", &docker),
        ("selftest/index", &oci_index),
        ("selftest/list", &docker_list),
        ("selftest/big", &big),
    ];
    for (repo, art) in &cases {
        push::push(&reg.url(), repo, &["v1", "latest"], *art).await;
    }
    assert_eq!(oci.media_type, support::image::OCI_MANIFEST);
    assert_eq!(docker.config.media_type, support::image::DOCKER_CONFIG);
    assert_eq!(docker_list.media_type, support::image::DOCKER_LIST);
    for (repo, art) in &cases {
        let dir = tmp();
        skopeo::copy(&format!("{}/{repo}:v1", reg.host()), dir.path(), true, &[])
            .await
            .unwrap_or_else(|e| panic!("skopeo copy {repo}: {e}"));
        let got = skopeo::read_dir(dir.path());
        got.assert_matches(*art, true);
        assert_eq!(got.digest(), art.digest());
        for d in art.blobs().keys() {
            assert_eq!(reg.blob_gets(repo, d).await, 1, "GETs of {repo} blob {d}");
            assert_eq!(reg.blob_gets("*", d).await, 1);
        }
    }
    // A second pull of one image: counts go up by one per blob.
    let dir = tmp();
    skopeo::copy(
        &format!("{}/selftest/oci:latest", reg.host()),
        dir.path(),
        false,
        &[],
    )
    .await
    .expect("copy again");
    assert_eq!(
        reg.blob_gets("selftest/oci", &oci.layers[0].digest).await,
        2
    );
    assert!(
        reg.count_requests("GET", "/v2/selftest/oci/manifests/", &[200])
            .await
            >= 2
    );
    assert!(reg.count_requests("PUT", "/blobs/uploads/", &[201]).await >= 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_deterministic_real_tar_gz() {
    let a = Image::oci("det", &[5000]);
    assert_eq!(a.digest, Image::oci("det", &[5000]).digest);
    assert_ne!(
        a.layers[0].digest,
        Image::oci("det2", &[5000]).layers[0].digest
    );
    let shared1 = ImageBuilder::new("s1")
        .shared_layer("base", 3000)
        .layer(10)
        .build();
    let shared2 = ImageBuilder::new("s2")
        .format(Format::Docker)
        .shared_layer("base", 3000)
        .build();
    assert_eq!(shared1.layers[0].digest, shared2.layers[0].digest);
    assert_ne!(shared1.config.digest, shared2.config.digest);
    // gzip -dc | sha256 = diff_id, and tar lists the files.
    let dir = tmp();
    let gz = dir.path().join("layer.tar.gz");
    std::fs::write(&gz, &a.layers[0].data).expect("write layer");
    let out = crate::support::tools::SH
        .command()
        .arg("-c")
        .arg("gzip -dc \"$1\" | sha256sum && tar -tzvf \"$1\"")
        .arg("sh")
        .arg(&gz)
        .output()
        .expect("gzip/tar");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(a.diff_ids[0].trim_start_matches("sha256:")),
        "{text}"
    );
    assert!(
        text.contains("data/det-linux-amd64-layer0.bin") && text.contains(" 5000 "),
        "{text}"
    );
    let cfg: serde_json::Value = serde_json::from_slice(&a.config.data).expect("config json");
    assert_eq!(cfg["rootfs"]["diff_ids"][0], a.diff_ids[0]);
    let arm = Index::oci("det-idx", &[Platform::arm64()], &[10]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&arm.images[0].config.data).expect("config json");
    assert_eq!(
        (cfg["architecture"].as_str(), cfg["variant"].as_str()),
        (Some("arm64"), Some("v8"))
    );
    let idx: serde_json::Value = serde_json::from_slice(&arm.manifest).expect("index json");
    assert_eq!(idx["manifests"][0]["platform"]["variant"], "v8");
    assert_eq!(
        sha256_digest(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_registry_anonymous_and_authenticated() {
    let rw = shared().await;
    let img = Image::oci("selftest-token", &[2048]);
    push::push(&rw.url(), "tok/app", &["v1"], &img).await;
    let issuer = TokenIssuer::start_with(TokenOptions {
        expires_in: 120,
        ..Default::default()
    });
    let reg = Registry::start_token(&issuer, rw).await;

    // The challenge points at the issuer.
    let c = push::client();
    let r = c
        .get(format!("{}/v2/", reg.url()))
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(r.status(), 401);
    let chal = r.headers()["WWW-Authenticate"]
        .to_str()
        .expect("challenge")
        .to_string();
    assert!(
        chal.starts_with("Bearer ") && chal.contains(&issuer.realm()),
        "{chal}"
    );

    let dir = tmp();
    skopeo::copy(
        &format!("{}/tok/app:v1", reg.host()),
        dir.path(),
        false,
        &[],
    )
    .await
    .expect("anonymous pull");
    skopeo::read_dir(dir.path()).assert_matches(&img, false);
    let n = issuer.token_requests();
    assert!(n >= 1, "the issuer served {n} requests");
    assert!(
        issuer
            .request_log()
            .iter()
            .any(|r| r.user.is_none() && r.status == 200)
    );

    // Direct token flows: GET anonymous (pull only), GET with creds, POST password grant, wrong creds.
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("service", &issuer.service())
        .append_pair("scope", "repository:tok/app:pull,push")
        .finish();
    let token_url = format!("{}?{q}", issuer.realm());
    let anon: serde_json::Value = c
        .get(&token_url)
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    assert_eq!(anon["expires_in"], 120);
    let claims = jwt_claims(anon["token"].as_str().expect("token"));
    assert_eq!(claims["access"][0]["actions"], serde_json::json!(["pull"]));
    let auth: serde_json::Value = c
        .get(&token_url)
        .basic_auth("testuser", Some("testpass"))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    assert_eq!(
        jwt_claims(auth["access_token"].as_str().expect("token"))["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    let wrong = c
        .get(&token_url)
        .basic_auth("testuser", Some("nope"))
        .send()
        .await
        .expect("token");
    assert_eq!(wrong.status(), 401);
    let form = [
        ("grant_type", "password"),
        ("username", "testuser"),
        ("password", "testpass"),
        ("service", "airlock-registry"),
        ("scope", "repository:tok/app:pull"),
        ("client_id", "selftest"),
    ];
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let post = c
        .post(issuer.realm())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("POST token");
    assert_eq!(post.status(), 200);
    let post: serde_json::Value = post.json().await.expect("json");
    // The POST token works against the registry.
    let m = c
        .get(format!("{}/v2/tok/app/manifests/v1", reg.url()))
        .header("Accept", support::image::ACCEPT_ALL)
        .bearer_auth(post["access_token"].as_str().expect("access_token"))
        .send()
        .await
        .expect("GET manifest with token");
    assert_eq!(m.status(), 200);
    assert_eq!(m.headers()["Docker-Content-Digest"], img.digest.as_str());

    issuer.set_require_auth(true);
    let dir = tmp();
    let err = skopeo::copy(
        &format!("{}/tok/app:v1", reg.host()),
        dir.path(),
        false,
        &[],
    )
    .await
    .expect_err("anonymous must fail");
    assert!(
        err.contains("401")
            || err.to_lowercase().contains("unauthorized")
            || err.contains("authentication"),
        "{err}"
    );
    let dir = tmp();
    skopeo::copy_with_creds(
        &format!("{}/tok/app:v1", reg.host()),
        dir.path(),
        false,
        "testuser:testpass",
    )
    .await
    .expect("authenticated pull");
    skopeo::read_dir(dir.path()).assert_matches(&img, false);
    assert_eq!(reg.blob_gets("tok/app", &img.layers[0].digest).await, 2);
}

fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).expect("jwt claims part");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&raw).expect("claims json")
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_registry_requires_credentials() {
    let rw = shared().await;
    let img = Image::docker("selftest-basic", &[1500]);
    push::push(&rw.url(), "basic/app", &["v1"], &img).await;
    let reg = Registry::start_htpasswd("testuser", "testpass", rw).await;
    let src = format!("{}/basic/app:v1", reg.host());
    let err = skopeo::copy(&src, tmp().path(), false, &[])
        .await
        .expect_err("pull without creds");
    assert!(err.contains("unauthorized"), "{err}");
    let err = skopeo::copy_with_creds(&src, tmp().path(), false, "testuser:bad")
        .await
        .expect_err("bad creds");
    assert!(err.contains("unauthorized"), "{err}");
    let dir = tmp();
    skopeo::copy_with_creds(&src, dir.path(), false, "testuser:testpass")
        .await
        .expect("pull with creds");
    skopeo::read_dir(dir.path()).assert_matches(&img, false);
    // Read-only: pushes are refused.
    let r = push::client()
        .post(format!("{}/v2/basic/app/blobs/uploads/", reg.url()))
        .basic_auth("testuser", Some("testpass"))
        .send()
        .await
        .expect("POST upload");
    assert!(
        !r.status().is_success(),
        "read-only registry accepted an upload: {}",
        r.status()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn faulty_upstream_scripts() {
    let f = FaultyUpstream::start();
    let img = Image::oci("selftest-faulty", &[100_000]);
    f.add_artifact("lib/x", "v1", &img);
    let layer = img.layers[0].clone();
    let url = format!("{}/v2/lib/x/blobs/{}", f.url(), layer.digest);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");

    assert_eq!(
        c.get(format!("{}/v2/", f.url()))
            .send()
            .await
            .expect("ping")
            .status(),
        200
    );
    let m = push::get_manifest(&c, &f.url(), "lib/x", "v1").await;
    assert_eq!(
        (m.status.as_u16(), m.digest.as_deref()),
        (200, Some(img.digest.as_str()))
    );
    assert_eq!(m.content_type.as_deref(), Some(img.media_type));
    let ok = c
        .get(&url)
        .send()
        .await
        .expect("normal GET")
        .bytes()
        .await
        .expect("body");
    assert!(ok == layer.data);
    let head = c.head(&url).send().await.expect("HEAD");
    assert_eq!(
        head.headers()["Content-Length"],
        layer.data.len().to_string().as_str()
    );
    let part = c
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    assert!(part.bytes().await.expect("range body") == layer.data.slice(10..20));

    f.set_mode(&layer.digest, Mode::WrongBytes);
    let bad = c
        .get(&url)
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    assert_eq!(bad.len(), layer.data.len());
    assert_ne!(sha256_digest(&bad), layer.digest);

    f.set_mode(&layer.digest, Mode::ShortBody(1000));
    let r = c.get(&url).send().await.expect("headers arrive");
    assert_eq!(r.content_length(), Some(layer.data.len() as u64));
    assert!(r.bytes().await.is_err(), "a short body must be an error");

    for code in [429u16, 500, 503] {
        f.set_mode_times(&layer.digest, Mode::Status(code), 1);
        let r = c.get(&url).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), code);
        if code == 429 {
            assert_eq!(r.headers()["Retry-After"], "1");
        }
        assert_eq!(
            c.get(&url).send().await.expect("GET").status(),
            200,
            "one-shot rule is used up"
        );
    }

    f.set_mode(&layer.digest, Mode::StallBeforeHeaders);
    assert!(
        c.get(&url)
            .send()
            .await
            .expect_err("stall before headers")
            .is_timeout()
    );
    f.set_mode(&layer.digest, Mode::StallAfterHeaders);
    let r = c.get(&url).send().await.expect("headers arrive");
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.expect_err("body stalls").is_timeout());
    f.set_mode(&layer.digest, Mode::StallMidBody(500));
    let r = c.get(&url).send().await.expect("headers arrive");
    assert!(
        r.bytes()
            .await
            .expect_err("body stalls mid-way")
            .is_timeout()
    );
    f.set_mode(
        &layer.digest,
        Mode::Slow {
            chunk: 25_000,
            pause: Duration::from_millis(10),
        },
    );
    assert!(
        c.get(&url)
            .send()
            .await
            .expect("slow")
            .bytes()
            .await
            .expect("slow body")
            == layer.data
    );

    let gate = Gate::new();
    f.set_mode(&layer.digest, Mode::Gate(gate.clone()));
    let held = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move {
            c.get(&url)
                .send()
                .await
                .expect("gated")
                .bytes()
                .await
                .expect("gated body")
        }
    });
    assert!(gate.wait_for_waiting(1, Duration::from_secs(5)).await);
    gate.open();
    assert!(held.await.expect("join") == layer.data);

    f.clear_modes();
    assert!(
        c.get(&url)
            .send()
            .await
            .expect("GET")
            .bytes()
            .await
            .expect("body")
            == layer.data
    );
    assert!(f.requests(&layer.digest) >= 14);
    assert_eq!(f.count("HEAD", &layer.digest), 1);
    assert_eq!(
        c.get(format!(
            "{}/v2/lib/x/blobs/sha256:{}",
            f.url(),
            "0".repeat(64)
        ))
        .send()
        .await
        .expect("GET")
        .status(),
        404
    );

    // TCP-level stall: connects, never answers.
    let hole = BlackHole::start();
    assert!(
        c.get(format!("{}/v2/", hole.url()))
            .send()
            .await
            .expect_err("black hole")
            .is_timeout()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_and_restart_on_same_port() {
    let reg = Registry::start().await;
    let img = Image::oci("selftest-restart", &[1234]);
    push::push(&reg.url(), "re/start", &["v1"], &img).await;
    let port = reg.port();
    reg.stop().await;
    assert!(!reg.is_running());
    assert!(!support::port_open(port), "port still open after stop");
    let c = push::client();
    assert!(
        c.get(format!("{}/v2/", reg.url()))
            .send()
            .await
            .expect_err("refused")
            .is_connect()
    );
    reg.restart().await;
    assert_eq!(reg.port(), port);
    let m = push::get_manifest(&c, &reg.url(), "re/start", "v1").await;
    assert_eq!(m.digest.as_deref(), Some(img.digest.as_str()));
    assert!(m.body == img.manifest);
    reg.restart().await; // restart while running works too
    assert_eq!(
        push::get_manifest(&c, &reg.url(), "re/start", "v1")
            .await
            .status,
        200
    );
    assert!(
        reg.access_log()
            .contains("\"GET /v2/re/start/manifests/v1 HTTP/1.1\" 200")
    );
}

/// In the re-executed copy of this binary: start a registry, print its pid, then die the way
/// `how` says.
async fn child_role(how: &str) {
    let reg = Registry::start().await;
    let pid = reg.pid().expect("registry pid");
    println!("\nREGISTRY_PID={pid}");
    use std::io::Write as _;
    std::io::stdout().flush().expect("flush");
    match how {
        "abort" => std::process::abort(),
        "exit" => std::process::exit(0),
        _ => tokio::time::sleep(Duration::from_secs(600)).await, // parent SIGKILLs us
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn child_processes_die_with_the_test_process() {
    // This test re-executes its own binary; the copy plays the dying test process.
    if let Ok(how) = std::env::var("AIRLOCK_FIXTURE_CHILD") {
        return child_role(&how).await;
    }
    for how in ["abort", "exit", "sigkill"] {
        let mut child = tokio::process::Command::new(std::env::current_exe().expect("current exe"))
            .args([
                "--exact",
                "fixtures::child_processes_die_with_the_test_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("AIRLOCK_FIXTURE_CHILD", how)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("re-exec test binary");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let pid = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(l) = lines.next_line().await.expect("read child stdout") {
                if let Some((_, p)) = l.split_once("REGISTRY_PID=") {
                    return p.trim().parse::<u32>().expect("pid");
                }
            }
            panic!("child exited without a registry pid");
        })
        .await
        .expect("child printed its registry pid");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "registry {pid} runs"
        );
        if how == "sigkill" {
            child.start_kill().expect("SIGKILL the child test process");
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("child exits");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "registry {pid} outlived its test process ({how})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_registry_survives_other_runtimes() {
    // Uses the static registry whichever test created it, in that test's (maybe finished) runtime.
    let reg = shared().await;
    let img = Image::oci("selftest-shared", &[777]);
    push::push(&reg.url(), "shared/app", &["v1"], &img).await;
    let dir = tmp();
    skopeo::copy(
        &format!("{}/shared/app:v1", reg.host()),
        dir.path(),
        false,
        &[],
    )
    .await
    .expect("copy");
    skopeo::read_dir(dir.path()).assert_matches(&img, false);
}
