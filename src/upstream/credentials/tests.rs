use super::*;

#[test]
fn credentials_never_show() {
    let c = Credentials {
        username: "u".into(),
        password: "hunter2".into(),
    };
    assert!(!format!("{c:?}").contains("hunter2"));
    assert!(c.basic_header().is_sensitive());
    assert_eq!(c.basic_header().to_str().unwrap(), "Basic dTpodW50ZXIy");
}

fn write(doc: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("config.json");
    std::fs::write(&p, doc).unwrap();
    (d, p)
}

#[tokio::test]
async fn auths_are_found_under_dockers_keys() {
    let auth = B64.encode("me:secret");
    let (_d, p) = write(&format!(
        r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}}, "ghcr.io": {{"username": "u", "password": "p"}}}}}}"#
    ));
    let t = Duration::from_secs(5);
    let hub = from_docker_config(&p, &lookup_keys("docker.io"), t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (hub.username.as_str(), hub.password.as_str()),
        ("me", "secret")
    );
    assert_eq!(
        from_docker_config(&p, &lookup_keys("ghcr.io"), t)
            .await
            .unwrap()
            .unwrap()
            .username,
        "u"
    );
    assert_eq!(
        from_docker_config(&p, &lookup_keys("quay.io"), t)
            .await
            .unwrap(),
        None
    );
    let (_d, p) = write(r#"{"auths": {"quay.io": {"identitytoken": "x"}}}"#);
    assert!(
        from_docker_config(&p, &lookup_keys("quay.io"), t)
            .await
            .unwrap_err()
            .contains("identity token")
    );
}

#[tokio::test]
async fn a_missing_or_hanging_helper_is_a_clear_error() {
    let (_d, p) = write(r#"{"credHelpers": {"ghcr.io": "airlock-test-no-such-helper"}}"#);
    let e = from_docker_config(&p, &lookup_keys("ghcr.io"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(e.contains("PATH"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("docker-credential-hang");
    std::fs::write(&helper, "#!/bin/sh\nsleep 600\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = run_program(helper.to_str().unwrap(), "x", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.contains("did not answer") && e.contains("killed"), "{e}");
    let alive = || {
        !std::process::Command::new("pgrep")
            .args(["-f", helper.to_str().unwrap()])
            .output()
            .unwrap()
            .stdout
            .is_empty()
    };
    for _ in 0..100 {
        if !alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(), "the hung helper was killed");
}

#[test]
fn credentials_are_looked_up_by_the_host_airlock_contacts() {
    let mut u = UpstreamConfig::new("docker.io");
    assert_eq!(contacted_host(&u, &Registry::docker_hub()), "docker.io");
    u.url = Some("https://registry-1.docker.io".into());
    assert_eq!(contacted_host(&u, &Registry::docker_hub()), "docker.io");
    u.url = Some("https://nexus.corp:8443/repository/hub".into());
    assert_eq!(
        contacted_host(&u, &Registry::docker_hub()),
        "nexus.corp:8443"
    );
    assert_eq!(lookup_keys("nexus.corp:8443")[0], "nexus.corp:8443");
}

#[tokio::test]
async fn refusals_refresh_at_most_once_per_interval_and_only_what_was_obtained() {
    let auth = B64.encode("me:secret");
    let (_d, p) = write(&format!(
        r#"{{"auths": {{"ghcr.io": {{"auth": "{auth}"}}}}}}"#
    ));
    let shared = CredentialsConfig {
        docker_config: Some(p),
        ..CredentialsConfig::default()
    };
    let provider =
        CredentialProvider::from_config(&UpstreamConfig::new("ghcr.io"), &shared).unwrap();
    assert!(
        !provider.refresh_after_refusal().await,
        "nothing obtained yet: nothing to refresh"
    );
    assert_eq!(provider.get().await.unwrap().unwrap().username, "me");
    assert!(
        provider.refresh_after_refusal().await,
        "the first refusal refreshes"
    );
    assert_eq!(provider.get().await.unwrap().unwrap().username, "me");
    assert!(
        !provider.refresh_after_refusal().await,
        "a second one within MIN_REFRESH does not"
    );

    let none = CredentialProvider::from_config(&UpstreamConfig::new("quay.io"), &shared).unwrap();
    assert_eq!(none.get().await.unwrap(), None);
    assert!(
        !none.refresh_after_refusal().await,
        "no credentials for quay.io: a 401 changes nothing"
    );
    let fixed = CredentialProvider::fixed(
        Registry::docker_hub(),
        Some(Credentials {
            username: "u".into(),
            password: "p".into(),
        }),
    );
    assert!(!fixed.refresh_after_refusal().await);
}
