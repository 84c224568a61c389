//! Bundles across the gap with the binary, while both sides serve: `airlock export` from one
//! airlock (whole, then `--since` the previous bundle), `airlock import` into a second one
//! that has no upstream at all; every image pulls by tag from the second; a flipped byte is
//! refused and changes nothing; skopeo reads the bundle itself; and the `cache` commands.

use crate::support;

use std::collections::HashSet;
use support::daemon::{Daemon, text};
use support::image::{Artifact, Image, Index, Platform};
use support::registry::Registry;
use support::{push, skopeo};

fn digests(bundle: &std::path::Path) -> HashSet<String> {
    let mut f = std::fs::File::open(bundle).unwrap();
    airlock::bundle::bundle_digests(&mut f)
        .unwrap()
        .iter()
        .map(|d| d.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_carry_images_to_an_airlock_without_upstream() {
    let reg = Registry::start().await;
    let web = Index::oci(
        "cli-web",
        &[Platform::amd64(), Platform::arm64()],
        &[120_000],
    );
    let app = Image::oci("cli-app", &[90_000]);
    let later = Image::oci("cli-later", &[70_000]);
    push::push(&reg.url(), "library/web", &["1.0"], &web).await;
    push::push(&reg.url(), "org/app", &["v1"], &app).await;
    push::push(&reg.url(), "org/later", &["v1"], &later).await;
    let site = Daemon::start(
        &format!(
            "[[upstream]]\nregistry = \"docker.io\"\nurl = \"{}\"\n",
            reg.url()
        ),
        &[],
    )
    .await;
    site.pull("library/web:1.0", &web).await;
    site.pull("org/app:v1", &app).await;

    let first = site.dir.path().join("first.tar");
    let out = site
        .cli(&[
            "export",
            "web:1.0",
            "org/app:v1",
            "-o",
            first.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    site.pull("org/later:v1", &later).await;
    let second = site.dir.path().join("second.tar");
    let out = site
        .cli(&[
            "export",
            "--all",
            "--since",
            first.to_str().unwrap(),
            "-o",
            second.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let (a, b) = (digests(&first), digests(&second));
    assert!(
        a.is_disjoint(&b),
        "the update carries only what the first bundle lacks"
    );
    let mut later_blobs: HashSet<String> = later.blobs().keys().cloned().collect();
    later_blobs.insert(later.digest.clone());
    assert_eq!(
        b, later_blobs,
        "exactly the new image's manifest, config and layer"
    );

    // skopeo reads the bundle itself.
    let dir = tempfile::tempdir().unwrap();
    let src = format!("oci-archive:{}:docker.io/library/web:1.0", first.display());
    let st = crate::support::tools::SKOPEO
        .tokio_command()
        .args([
            "copy",
            "--all",
            &src,
            &format!("dir:{}", dir.path().display()),
        ])
        .status()
        .await
        .unwrap();
    assert!(st.success(), "skopeo copy {src}");
    skopeo::read_dir(dir.path()).assert_matches(&web, true);

    // The far side: no upstream at all.
    let far = Daemon::start_with_top("upstream = []", "", &[]).await;
    let mut corrupt = std::fs::read(&first).unwrap();
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0xff;
    let bad = far.dir.path().join("bad.tar");
    std::fs::write(&bad, corrupt).unwrap();
    let out = far.cli(&["import", bad.to_str().unwrap()]).await;
    assert!(
        !out.status.success(),
        "a flipped byte is refused: {}",
        text(&out)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("unchanged"), "{}", text(&out));
    assert!(
        !said.contains("connection broke"),
        "the reason, alone: {}",
        text(&out)
    );
    let ls = far.cli(&["cache", "ls", "--json"]).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&ls.stdout).unwrap(),
        serde_json::json!([]),
        "nothing was added"
    );

    for bundle in [&first, &second] {
        let out = far.cli(&["import", bundle.to_str().unwrap()]).await;
        assert!(out.status.success(), "{}", text(&out));
    }
    far.pull("library/web:1.0", &web).await;
    far.pull("org/app:v1", &app).await;
    far.pull("org/later:v1", &later).await;

    // The cache commands, against the running far side.
    let ls = String::from_utf8(far.cli(&["cache", "ls"]).await.stdout).unwrap();
    assert!(
        ls.lines().filter(|l| l.trim_end().ends_with("yes")).count() == 3,
        "imported images are pinned: {ls}"
    );
    for args in [
        &["cache", "unpin", "org/later:v1"][..],
        &["cache", "rm", "org/later:v1"],
        &["cache", "gc"],
        &["cache", "verify"],
    ] {
        let out = far.cli(args).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let ls = String::from_utf8(far.cli(&["cache", "ls"]).await.stdout).unwrap();
    assert!(
        !ls.contains("org/later") && ls.contains("org/app:v1"),
        "{ls}"
    );
    let dir = tempfile::tempdir().unwrap();
    assert!(
        skopeo::copy(
            &format!("{}/org/later:v1", far.host()),
            dir.path(),
            true,
            &[]
        )
        .await
        .is_err(),
        "removed for good"
    );
}
