//! What a data directory survives, with the airlock binary as operators run it: an index that
//! is deleted or corrupted is rebuilt from the journal beside the blobs (at start-up, or by
//! `airlock cache reindex`), and every image pulls by tag again with the upstream stopped; a
//! disk that fills up fails new downloads, keeps serving what is cached, says so in `/readyz`,
//! and takes new content again once space is freed, with no restart.

use crate::support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use support::daemon::{Daemon, text};
use support::image::{Image, Index, Platform};
use support::registry::Registry;
use support::tmpfs::Tmpfs;
use support::{push, skopeo};

fn upstream_toml(url: &str) -> String {
    format!("[[upstream]]\nregistry = \"docker.io\"\nurl = \"{url}\"\n")
}

/// `cache ls --json` as image reference → (manifest digest, pinned).
async fn listing(daemon: &Daemon) -> BTreeMap<String, (String, bool)> {
    let out = daemon.cli(&["cache", "ls", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let images: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    images
        .iter()
        .map(|i| {
            (
                i["image"].as_str().unwrap().to_string(),
                (
                    i["digest"].as_str().unwrap_or_default().to_string(),
                    i["pinned"].as_bool().unwrap_or(false),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_or_corrupt_index_is_rebuilt_and_every_image_pulls_with_the_upstream_stopped() {
    let reg = Registry::start().await;
    let web = Index::oci(
        "dur-web",
        &[Platform::amd64(), Platform::arm64()],
        &[60_000, 6_000],
    );
    let app = Image::docker("dur-app", &[50_000]);
    let pinned = Image::oci("dur-pinned", &[40_000]);
    let pinned_by_digest = Image::oci("dur-by-digest", &[30_000]);
    push::push(&reg.url(), "library/web", &["1.25"], &web).await;
    push::push(&reg.url(), "org/app", &["v1"], &app).await;
    push::push(&reg.url(), "org/pinned", &["v2"], &pinned).await;
    push::push(&reg.url(), "org/kube", &["x"], &pinned_by_digest).await;
    let mut daemon = Daemon::start(&upstream_toml(&reg.url()), &[]).await;
    let by_digest = format!("org/kube@{}", pinned_by_digest.digest);
    daemon.pull("web:1.25", &web).await;
    daemon.pull("org/app:v1", &app).await;
    daemon.pull("org/pinned:v2", &pinned).await;
    daemon.pull(&by_digest, &pinned_by_digest).await;
    let out = daemon.cli(&["cache", "pin", "org/pinned:v2"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let before = listing(&daemon).await;
    assert_eq!(before.len(), 4, "{before:?}");

    // While the server runs, reindex is refused with a message that says why.
    let out = daemon.cli(&["cache", "reindex"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another airlock"),
        "{}",
        text(&out)
    );

    // The index is deleted: start-up rebuilds it from the journal.
    daemon.stop().await;
    let data = daemon.dir.path().join("data");
    std::fs::remove_dir_all(data.join("index")).unwrap();
    reg.stop().await;
    let mut daemon = daemon.restart(&[]).await;
    assert!(
        daemon.log().contains("rebuilt the index from the journal"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        listing(&daemon).await,
        before,
        "the same images, pins included"
    );
    for (reference, want) in [
        ("web:1.25", &web as &dyn support::image::Artifact),
        ("org/app:v1", &app),
        ("org/pinned:v2", &pinned),
        (by_digest.as_str(), &pinned_by_digest),
    ] {
        daemon.pull(reference, want).await;
    }

    // The index is corrupted: `cache reindex` (server stopped) rebuilds it.
    daemon.stop().await;
    corrupt(&data.join("index"));
    let out = daemon.cli(&["cache", "reindex"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("rebuilt the index") && said.contains("1 pins"),
        "{said}"
    );
    let daemon = daemon.restart(&[]).await;
    assert_eq!(listing(&daemon).await, before);
    daemon.pull("web:1.25", &web).await;
    daemon.pull("org/app:v1", &app).await;
    let out = daemon.cli(&["cache", "gc"]).await;
    assert!(out.status.success(), "{}", text(&out));
    daemon.pull(&by_digest, &pinned_by_digest).await;
}

/// Overwrite every file of a sled directory with noise.
fn corrupt(index: &Path) {
    for entry in std::fs::read_dir(index).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::write(&p, vec![0x5Au8; 8192]).unwrap();
        }
    }
}

/// sled keeps an I/O error sticky: once a flush fails, every later write fails too, until the
/// database is opened again. The index reopens it (when there is room) and replays the journal,
/// so nothing it reported written is lost. Here sled's directory is its own small filesystem,
/// so sled fails while the journal beside it keeps working.
#[test]
fn the_index_recovers_from_a_sticky_sled_error_and_keeps_what_it_acknowledged() {
    use airlock::store::Index;
    use airlock::store::index::SledIndex;
    let data = tempfile::tempdir().unwrap();
    let path = data.path().join("index");
    std::fs::create_dir(&path).unwrap();
    let fs = Tmpfs::mount_at(&path, "16m");
    let index = SledIndex::open(&path).unwrap();
    let filler = fs.fill();
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for i in 0..50_000 {
        let pin = format!("docker.io/library/app{i}:latest");
        match index.set_pinned(&pin, true) {
            Ok(_) => acknowledged.push(pin),
            Err(_) => {
                failed += 1;
                if failed > 10 {
                    break;
                }
            }
        }
    }
    assert!(
        failed > 10,
        "sled's writes fail once its filesystem is full"
    );
    let why = index.write_failure().expect("the failure is reported");
    assert!(why.contains("No space left"), "{why}");
    // (Reads may fail now too: sled consolidates pages as it reads, which writes.)

    std::fs::remove_file(filler).unwrap();
    // A reopen is tried at most every 2 s.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    index.set_pinned("docker.io/library/after:1", true).unwrap();
    assert_eq!(index.write_failure(), None);
    acknowledged.push("docker.io/library/after:1".into());
    index.flush().unwrap();
    drop(index);

    let index = SledIndex::open(&path).unwrap();
    let pins: std::collections::HashSet<String> = index.pins().unwrap().into_iter().collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|p| !pins.contains(*p)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged pins lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

async fn readyz(daemon: &Daemon) -> (u16, String) {
    let admin = daemon.admin_url();
    let resp = reqwest::get(format!("{admin}/readyz")).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_new_downloads_keeps_serving_and_recovers_without_a_restart() {
    let reg = Registry::start().await;
    let cached = Image::oci("full-cached", &[100_000]);
    let big = Image::oci("full-big", &[3_000_000]);
    let later = Image::oci("full-later", &[200_000]);
    push::push(&reg.url(), "org/cached", &["v1"], &cached).await;
    push::push(&reg.url(), "org/big", &["v1"], &big).await;
    push::push(&reg.url(), "org/later", &["v1"], &later).await;
    let fs = Tmpfs::mount("48m");
    let data = fs.path().join("data");
    // No reserve: the download itself meets the full disk.
    let daemon = Daemon::start_on(&data, "min_free = \"0\"", &upstream_toml(&reg.url())).await;
    daemon.pull("org/cached:v1", &cached).await;
    assert_eq!(readyz(&daemon).await.0, 200);

    // The disk fills up (another tenant of the filesystem, say).
    let filler = fs.fill();
    let failed = skopeo::try_pull(&daemon.host(), "org/big:v1").await;
    assert!(failed.is_err(), "a download onto a full disk fails");
    // Index writes fail too (a pin): the journal takes a few more lines into the page its
    // file already has, then says the disk is full.
    let mut refused = None;
    for _ in 0..200 {
        let out = daemon.cli(&["cache", "pin", "org/cached:v1"]).await;
        let back = daemon.cli(&["cache", "unpin", "org/cached:v1"]).await;
        if let Some(o) = [out, back].into_iter().find(|o| !o.status.success()) {
            refused = Some(o);
            break;
        }
    }
    let refused = refused.expect("index writes fail on a full disk");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("No space left"),
        "{}",
        text(&refused)
    );
    let (status, body) = readyz(&daemon).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("new content cannot be stored"), "{body}");
    // What is cached is still served.
    daemon.pull("org/cached:v1", &cached).await;
    assert_eq!(
        std::fs::read_dir(data.join("tmp")).unwrap().count(),
        0,
        "the failed download left no spool"
    );

    // Space comes back: new content is taken again, with no restart.
    std::fs::remove_file(filler).unwrap();
    // Nothing has written since: /readyz tries a small write itself, and is ready again.
    assert_eq!(readyz(&daemon).await, (200, "ready\n".to_string()));
    daemon.pull("org/big:v1", &big).await;
    daemon.pull("org/later:v1", &later).await;
    let out = daemon.cli(&["cache", "pin", "org/later:v1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(readyz(&daemon).await, (200, "ready\n".to_string()));

    // And what was stored after the recovery is durable: it pulls with the upstream stopped.
    reg.stop().await;
    let daemon = daemon.restart(&[]).await;
    daemon.pull("org/later:v1", &later).await;
    daemon.pull("org/big:v1", &big).await;
    let ls = listing(&daemon).await;
    assert!(
        ls["docker.io/org/later:v1"].1,
        "the pin made after recovery: {ls:?}"
    );
}
