//! Pins hold what they pinned: a pinned tag that moves upstream keeps its old content safe
//! from eviction and gc, and a pinned image whose manifest is lost pauses removal instead of
//! letting its layers go (past the gap they could not be fetched again).

use crate::support;

use airlock::gc;
use support::airlock::{Airlock, upstream};
use support::image::{ACCEPT_ALL, Image};
use support::push;
use support::registry::Registry;

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_tag_that_moves_keeps_its_old_content() {
    let reg = Registry::start().await;
    let old = Image::oci("pin-old", &[60_000]);
    let new = Image::oci("pin-new", &[50_000]);
    push::push(&reg.url(), "org/app", &["v1"], &old).await;
    let mut cfg = support::airlock::config(vec![upstream("docker.io", &reg.url())]);
    cfg.upstream[0].tag_ttl = std::time::Duration::ZERO;
    let airlock = Airlock::start(cfg).await;
    airlock.try_pull("org/app:v1").await.expect("pull");
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/admin/pin", airlock_admin(&airlock)))
        .bearer_auth(airlock_token(&airlock))
        .json(&serde_json::json!({ "image": "org/app:v1" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["pinned"], true);

    // The tag moves upstream; a client pulls the new content.
    push::push(&reg.url(), "org/app", &["v1"], &new).await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v2/org/app/manifests/v1", airlock.url()))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["docker-content-digest"], new.digest.as_str());
    airlock.try_pull("org/app:v1").await.expect("pull");

    // Nothing references the old manifest by tag any more, but its pin remembers it.
    gc::collect(airlock.cache()).await.expect("gc");
    for digest in std::iter::once(&old.digest).chain(old.layers.iter().map(|l| &l.digest)) {
        assert!(
            airlock.has_blob(digest),
            "{digest} of the pinned content survives gc"
        );
    }
    let cap = gc::Cap {
        max: 1,
        high: 0.95,
        low: 0.85,
    };
    gc::evict(airlock.cache(), cap).await.expect("evict");
    assert!(airlock.has_blob(&old.layers[0].digest), "and eviction");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_image_without_its_manifest_pauses_removal() {
    let reg = Registry::start().await;
    let img = Image::oci("pin-lost", &[40_000]);
    push::push(&reg.url(), "org/lost", &["v1"], &img).await;
    let airlock = Airlock::for_upstream(&reg.url()).await;
    airlock.try_pull("org/lost:v1").await.expect("pull");
    airlock
        .index()
        .pin_at("docker.io/org/lost:v1", &img.digest.parse().unwrap())
        .unwrap();
    // The manifest goes bad on disk and verify quarantines it.
    let path = airlock.blob_path(&img.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let report = gc::verify(airlock.cache(), &airlock::progress::Progress::none())
        .await
        .unwrap();
    assert_eq!(report.corrupt, vec![img.digest.clone()]);

    let e = gc::collect(airlock.cache())
        .await
        .expect_err("gc must not guess")
        .to_string();
    assert!(
        e.contains("org/lost") && e.contains("re-import or re-preload"),
        "{e}"
    );
    assert!(
        airlock.has_blob(&img.layers[0].digest),
        "the pinned layer is kept"
    );
    let e = gc::evict(
        airlock.cache(),
        gc::Cap {
            max: 1,
            high: 0.95,
            low: 0.85,
        },
    )
    .await
    .expect_err("nor eviction");
    assert!(e.to_string().contains("paused"), "{e}");
    assert!(airlock.has_blob(&img.layers[0].digest));
}

fn airlock_admin(a: &Airlock) -> String {
    let advert = airlock::app::read_advert(a.data()).expect("the server advertises its admin API");
    advert.url.trim_start_matches("http://").to_string()
}

fn airlock_token(a: &Airlock) -> String {
    airlock::app::read_advert(a.data()).expect("advert").token
}
