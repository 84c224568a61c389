//! Docker Hub's pull budget, from a scripted upstream that announces it as Hub does
//! (`ratelimit-limit`/`ratelimit-remaining` on manifest answers; a GET spends a pull, a HEAD
//! none): airlock reads it into metrics, and at the reserve a moved tag keeps its last known
//! answer (clients asking by digest still get what they ask for) and preload waits.

use crate::support;

use std::time::Duration;
use support::airlock::{Airlock, client, config, upstream};
use support::faulty::FaultyUpstream;
use support::image::{ACCEPT_ALL, Image};

async fn manifest(airlock: &Airlock, reference: &str) -> (u16, String) {
    let resp = client()
        .get(format!(
            "{}/v2/hub/app/manifests/{reference}",
            airlock.url()
        ))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (resp.status().as_u16(), digest)
}

fn gauge(airlock: &Airlock, kind: &str) -> i64 {
    airlock
        .cache()
        .metrics()
        .upstream_ratelimit
        .with_label_values(&["docker.io", kind])
        .get()
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_reserve_a_moved_tag_keeps_its_last_answer_and_digests_still_pull() {
    let up = FaultyUpstream::start();
    let v1 = Image::oci("budget-v1", &[1_000]);
    let v2 = Image::oci("budget-v2", &[2_000]);
    up.add_artifact("hub/app", "latest", &v1);
    up.set_ratelimit(100, 50);
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.upstream[0].tag_ttl = Duration::ZERO;
    cfg.upstream[0].ratelimit_reserve = 10;
    let airlock = Airlock::start(cfg).await;

    assert_eq!(manifest(&airlock, "latest").await, (200, v1.digest.clone()));
    assert_eq!(
        (gauge(&airlock, "limit"), gauge(&airlock, "remaining")),
        (100, 49)
    );

    // The window is nearly spent, and the tag moves upstream.
    up.set_ratelimit(100, 10);
    up.add_artifact("hub/app", "latest", &v2);
    let gets = up.count("GET", "latest");
    assert_eq!(
        manifest(&airlock, "latest").await,
        (200, v1.digest.clone()),
        "the last known answer"
    );
    assert_eq!(
        up.count("GET", "latest"),
        gets,
        "no pull spent on the moved tag"
    );
    assert_eq!(
        gauge(&airlock, "remaining"),
        10,
        "the HEAD said so, and cost nothing"
    );
    let deferred = airlock
        .cache()
        .metrics()
        .ratelimit_deferred
        .with_label_values(&["docker.io"])
        .get();
    assert_eq!(deferred, 1);

    // A client asking by digest gets what it asks for.
    assert_eq!(
        manifest(&airlock, &v2.digest).await,
        (200, v2.digest.clone())
    );
    assert_eq!(up.ratelimit_remaining(), Some(9));

    // The window turns: the tag's new answer is taken again.
    up.set_ratelimit(100, 100);
    assert_eq!(manifest(&airlock, "latest").await, (200, v2.digest.clone()));
    assert_eq!(gauge(&airlock, "remaining"), 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn at_the_reserve_preload_waits_and_says_so_then_resumes() {
    let up = FaultyUpstream::start();
    let seen = Image::oci("budget-seen", &[1_000]);
    let next = Image::oci("budget-next", &[3_000]);
    up.add_artifact("hub/app", "v1", &seen);
    up.add_artifact("hub/next", "v1", &next);
    up.set_ratelimit(100, 5);
    let mut cfg = config(vec![upstream("docker.io", &up.url())]);
    cfg.upstream[0].ratelimit_reserve = 10;
    cfg.upstream[0].ratelimit_recheck = Duration::from_millis(100);
    let airlock = Airlock::start(cfg).await;
    // A client pull below the reserve goes through (clients come first), and teaches airlock
    // the budget.
    assert_eq!(manifest(&airlock, "v1").await, (200, seen.digest.clone()));

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cache = airlock.cache().clone();
    let preload = tokio::spawn(async move {
        let request = airlock::preload::Request {
            images: vec!["hub/next:v1".into()],
            platforms: None,
            ..Default::default()
        };
        let default = "docker.io".parse().unwrap();
        airlock::preload::preload(
            &cache,
            &default,
            &request,
            &airlock::progress::Progress::to(tx),
        )
        .await
    });
    let paused = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = rx.recv().await {
            if let airlock::progress::Event::Note { text } = e
                && text.contains("preload paused")
            {
                return text;
            }
        }
        panic!("the preload ended without pausing");
    })
    .await
    .expect("the preload says it waits");
    assert!(paused.contains("ratelimit_reserve of 10"), "{paused}");
    // While it waits it only asks with HEADs, which cost nothing.
    let path = "/v2/hub/next/manifests/v1";
    for _ in 0..300 {
        if up.count("HEAD", path) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up.count("HEAD", path) >= 3, "it rechecks the budget");
    assert_eq!(up.count("GET", path), 0);
    assert!(!preload.is_finished());

    up.set_ratelimit(100, 90);
    let report = tokio::time::timeout(Duration::from_secs(30), preload)
        .await
        .expect("the preload resumes")
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(up.count("GET", path), 1);
}
