//! The signature policy at the cache, with keys and signatures made by openssl in cosign's
//! format and checked by `openssl dgst -verify` (support::cosign): a signed image and a
//! signed multi-platform index pull with skopeo (`--all`) and podman; an unsigned one, one
//! signed by an untrusted key, one whose payload names another digest and one with a
//! malformed signature are refused with DENIED naming the rule; a repository no rule covers
//! and the signatures themselves pass; verdicts hold with the upstream gone; `warn` serves
//! and counts; a key file that is not a P-256 public key is a clear configuration error.

use crate::support;

use airlock::config::{SignatureMode, SignatureRule};
use support::airlock::{Airlock, client, config, error_code, upstream};
use support::cosign::{self, KeyPair, sig_tag};
use support::image::{ACCEPT_ALL, Artifact, Image, Index, Platform};
use support::push;
use support::registry::Registry;
use support::runtimes::Podman;

fn rule(
    name: &str,
    repositories: &[&str],
    keys: &[&KeyPair],
    mode: SignatureMode,
) -> SignatureRule {
    SignatureRule {
        name: Some(name.into()),
        repositories: repositories.iter().map(|s| s.to_string()).collect(),
        keys: keys.iter().map(|k| k.public()).collect(),
        mode,
        rekor_keys: Vec::new(),
        require_tlog: false,
    }
}

/// GET a manifest by reference: status and body.
async fn manifest(airlock: &Airlock, repo: &str, reference: &str) -> (u16, bytes::Bytes) {
    let r = client()
        .get(format!("{}/v2/{repo}/manifests/{reference}", airlock.url()))
        .header("accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap())
}

async fn push_signed(reg: &Registry, repo: &str, image: &dyn Artifact, sig: &dyn Artifact) {
    push::push(&reg.url(), repo, &["v1"], image).await;
    push::push(&reg.url(), repo, &[&sig_tag(image.digest()) as &str], sig).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_serves_what_a_trusted_key_signed_and_refuses_the_rest() {
    let reg = Registry::start().await;
    let (trusted, stranger) = (KeyPair::generate(), KeyPair::generate());
    let signed = Image::oci("sig-signed", &[30_000]);
    let multi = Index::oci(
        "sig-multi",
        &[Platform::amd64(), Platform::arm64()],
        &[20_000],
    );
    let unsigned = Image::oci("sig-unsigned", &[10_000]);
    let untrusted = Image::oci("sig-untrusted", &[10_000]);
    let elsewhere = Image::oci("sig-elsewhere", &[10_000]);
    let malformed = Image::oci("sig-malformed", &[10_000]);
    let free = Image::oci("sig-free", &[10_000]);
    push_signed(
        &reg,
        "org/signed",
        &signed,
        &cosign::sign(&trusted, "org/signed", &signed),
    )
    .await;
    push_signed(
        &reg,
        "org/multi",
        &multi,
        &cosign::sign(&trusted, "org/multi", &multi),
    )
    .await;
    push::push(&reg.url(), "org/unsigned", &["v1"], &unsigned).await;
    let by_stranger = cosign::sign(&stranger, "org/untrusted", &untrusted);
    push_signed(&reg, "org/untrusted", &untrusted, &by_stranger).await;
    // A real signature by the trusted key, over a payload that names another image.
    let replayed = cosign::sign(&trusted, "org/signed", &signed);
    push_signed(&reg, "org/elsewhere", &elsewhere, &replayed).await;
    let p = cosign::payload("org/malformed", malformed.digest());
    let bad = cosign::signature_manifest(&[(p, "%%% not base64".into())]);
    push_signed(&reg, "org/malformed", &malformed, &bad).await;
    push::push(&reg.url(), "other/free", &["v1"], &free).await;
    // An unsigned image dressed as an artifact: "Config" in another case is the config Go's
    // decoder (the registry's, containerd's) reads, and an empty config under "config".
    let cased = Image::oci("sig-cased", &[10_000]);
    for (digest, data) in cased.blobs() {
        push::push_blob(&push::client(), &reg.url(), "org/cased", &digest, data).await;
    }
    let text = String::from_utf8(cased.manifest.to_vec()).unwrap();
    let disguised = text.replacen("\"config\"", "\"Config\"", 1);
    push::push_manifest(
        &push::client(),
        &reg.url(),
        "org/cased",
        "v1",
        support::image::OCI_MANIFEST,
        bytes::Bytes::from(disguised),
    )
    .await;

    let mut cfg = config(vec![upstream("docker.io", &reg.url())]);
    cfg.signatures = vec![rule(
        "org-signed",
        &["docker.io/org/*"],
        &[&trusted],
        SignatureMode::Enforce,
    )];
    let airlock = Airlock::start(cfg).await;

    airlock.pull("org/signed:v1", &signed).await;
    airlock.pull("org/multi:v1", &multi).await; // skopeo --all: the index, then each child
    airlock.pull("other/free:v1", &free).await;
    let conf = format!(
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:1\"\ninsecure = true\n\
         [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
        airlock.url().trim_start_matches("http://")
    );
    let podman = Podman::new(&conf);
    for (image, want) in [
        ("docker.io/org/signed:v1", signed.digest()),
        ("docker.io/org/multi:v1", multi.digest()),
    ] {
        let got = podman
            .pull(image, &[])
            .await
            .expect("podman pulls a signed image");
        assert_eq!(got, want, "{image}");
    }

    for (repo, why) in [
        ("org/unsigned", "no cosign signature"),
        ("org/untrusted", "no trusted key"),
        ("org/elsewhere", "names"),
        ("org/malformed", "not base64"),
        ("org/cased", "no cosign signature"),
    ] {
        let (status, body) = manifest(&airlock, repo, "v1").await;
        assert_eq!(status, 403, "{repo}: {}", String::from_utf8_lossy(&body));
        assert_eq!(error_code(&body), "DENIED");
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("org-signed") && text.contains(why),
            "{repo}: {text}"
        );
        let err = airlock.try_pull(&format!("{repo}:v1")).await.unwrap_err();
        assert!(
            err.contains("denied") || err.contains("DENIED"),
            "{repo}: {err}"
        );
        assert!(
            podman
                .pull(&format!("docker.io/{repo}:v1"), &[])
                .await
                .is_err()
        );
    }
    // The signature itself is an artifact, not an image: cosign can read it.
    let (status, body) = manifest(&airlock, "org/signed", &sig_tag(&signed.digest)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // With the upstream gone the verdicts stand, from what is cached.
    reg.stop().await;
    let airlock = airlock.restart().await;
    // A platform manifest asked for by digest first (as a kubelet pinned to it would): its
    // cached, signed index signs it.
    let child = &multi.images[0];
    let (status, body) = manifest(&airlock, "org/multi", &child.digest).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, child.manifest);
    airlock.pull("org/signed:v1", &signed).await;
    let (status, _) = manifest(&airlock, "org/unsigned", "v1").await;
    assert_eq!(status, 403);
    let m = airlock.cache().metrics();
    assert!(
        m.signature_checks
            .with_label_values(&["verified", "enforce"])
            .get()
            > 0
    );
    assert!(
        m.signature_checks
            .with_label_values(&["missing", "enforce"])
            .get()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn warn_serves_unsigned_images_and_counts_them() {
    let reg = Registry::start().await;
    let key = KeyPair::generate();
    let unsigned = Image::oci("sig-warn", &[10_000]);
    push::push(&reg.url(), "org/app", &["v1"], &unsigned).await;
    let mut cfg = config(vec![upstream("docker.io", &reg.url())]);
    cfg.signatures = vec![rule(
        "watch",
        &["docker.io/org/**"],
        &[&key],
        SignatureMode::Warn,
    )];
    let airlock = Airlock::start(cfg).await;
    airlock.pull("org/app:v1", &unsigned).await;
    let m = airlock.cache().metrics();
    assert!(
        m.signature_checks
            .with_label_values(&["missing", "warn"])
            .get()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_is_not_a_p256_public_key_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate();
    let rsa = dir.path().join("rsa.pub");
    let not_pem = dir.path().join("notes.txt");
    std::fs::write(&not_pem, "my key is in the safe").unwrap();
    // An RSA public key: a PEM PUBLIC KEY, but not the curve cosign's key pairs use.
    let out = std::process::Command::new(support::tools::OPENSSL.path())
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(dir.path().join("rsa.pem"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(support::tools::OPENSSL.path())
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.path().join("rsa.pem"))
        .arg("-out")
        .arg(&rsa)
        .output()
        .unwrap();
    assert!(out.status.success());
    for (file, why) in [
        (&rsa, "not an ECDSA P-256 public key"),
        (&not_pem, "not a PEM file"),
        (&dir.path().join("rsa.pem"), "not a \"PUBLIC KEY\""),
    ] {
        let toml = dir.path().join("airlock.toml");
        std::fs::write(
            &toml,
            format!(
                "[storage]\npath = \"{}\"\n\n[[signatures]]\nname = \"org\"\nrepositories = [\"docker.io/org/*\"]\nkeys = [\"{}\", \"{}\"]\n",
                dir.path().join("data").display(),
                key.public().display(),
                file.display()
            ),
        )
        .unwrap();
        let out = support::daemon::run_cli(&toml, &["check-config"]).await;
        let text = support::daemon::text(&out);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("org.keys") && text.contains(why), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_signatures_reports_the_policy_and_cache_ls_shows_what_is_signed() {
    let reg = Registry::start().await;
    let key = KeyPair::generate();
    let signed = Image::oci("sig-cli-signed", &[10_000]);
    let unsigned = Image::oci("sig-cli-unsigned", &[10_000]);
    let free = Image::oci("sig-cli-free", &[10_000]);
    push_signed(
        &reg,
        "org/signed",
        &signed,
        &cosign::sign(&key, "org/signed", &signed),
    )
    .await;
    push::push(&reg.url(), "org/unsigned", &["v1"], &unsigned).await;
    push::push(&reg.url(), "other/free", &["v1"], &free).await;
    let toml = format!(
        "[[upstream]]\nregistry = \"docker.io\"\nurl = \"{}\"\n\n[[signatures]]\nname = \"org\"\nrepositories = [\"docker.io/org/*\"]\nkeys = [\"{}\"]\n",
        reg.url(),
        key.public().display()
    );
    let daemon = support::daemon::Daemon::start(&toml, &[]).await;
    let images = ["org/signed:v1", "org/unsigned:v1", "other/free:v1"];
    let out = daemon
        .cli(&[&["verify-signatures"][..], &images].concat())
        .await;
    let text = support::daemon::text(&out);
    assert!(!out.status.success(), "an unsigned image fails it: {text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_string()
    };
    let pubkey = key.public().display().to_string();
    let l = line("docker.io/org/signed:v1");
    assert!(
        l.contains("org") && l.contains("enforce") && l.contains(&format!("verified ({pubkey})")),
        "{l}"
    );
    let l = line("docker.io/org/unsigned:v1");
    assert!(l.contains("MISSING: it has no cosign signature"), "{l}");
    assert!(line("docker.io/other/free:v1").contains("not required"));
    let out = daemon.cli(&["verify-signatures", "org/signed:v1"]).await;
    assert!(out.status.success(), "{}", support::daemon::text(&out));

    let out = daemon
        .cli(&["preload", "org/signed:v1", "other/free:v1"])
        .await;
    assert!(out.status.success(), "{}", support::daemon::text(&out));
    let out = daemon.cli(&["cache", "ls"]).await;
    let text = support::daemon::text(&out);
    // IMAGE PLATFORMS SIZE(2 words) LAST-PULLED(…) SIGNED SBOM PINNED
    let cols = |name: &str| -> Vec<String> {
        let l = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        l.split_whitespace()
            .rev()
            .take(3)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        cols("docker.io/org/signed:v1 "),
        ["yes", "-", "1"],
        "{text}"
    );
    assert_eq!(
        cols("docker.io/other/free:v1 "),
        ["yes", "-", "-"],
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_transparency_log_key_a_signature_counts_only_with_its_signed_log_entry() {
    let reg = Registry::start().await;
    let (key, log, forger) = (
        KeyPair::generate(),
        KeyPair::generate(),
        KeyPair::generate(),
    );
    let logged = Image::oci("sig-logged", &[10_000]);
    let unlogged = Image::oci("sig-unlogged", &[10_000]);
    let forged = Image::oci("sig-forged-log", &[10_000]);
    push_signed(
        &reg,
        "org/logged",
        &logged,
        &cosign::sign_logged(&key, &log, "org/logged", &logged),
    )
    .await;
    push_signed(
        &reg,
        "org/unlogged",
        &unlogged,
        &cosign::sign(&key, "org/unlogged", &unlogged),
    )
    .await;
    let by_forger = cosign::sign_logged(&key, &forger, "org/forged", &forged);
    push_signed(&reg, "org/forged", &forged, &by_forger).await;
    let mut cfg = config(vec![upstream("docker.io", &reg.url())]);
    let mut r = rule(
        "logged",
        &["docker.io/org/*"],
        &[&key],
        SignatureMode::Enforce,
    );
    r.rekor_keys = vec![log.public()];
    r.require_tlog = true;
    cfg.signatures = vec![r];
    let airlock = Airlock::start(cfg).await;
    airlock.pull("org/logged:v1", &logged).await;
    for (repo, why) in [
        ("org/unlogged", "no transparency log entry"),
        ("org/forged", "no trusted transparency log key"),
    ] {
        let (status, body) = manifest(&airlock, repo, "v1").await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 403, "{repo}: {text}");
        assert!(text.contains(why), "{repo}: {text}");
    }
}
