//! What one client may hold of the server: connections that send nothing are closed, an
//! address at its connection cap locks out no other, and a reader that takes no bytes is
//! dropped, releasing its hold on the blob so it can be evicted. Real clients keep pulling
//! throughout.

use crate::support;

use airlock::gc::{self, Cap};
use airlock::oci::Digest;
use std::time::Duration;
use support::airlock::{Airlock, config, upstream};
use support::image::Image;
use support::push;
use support::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Wait (bounded) until the peer closes `s`; true if it did.
async fn closed_by_peer(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_while_real_clients_keep_pulling() {
    let hub = Registry::start().await;
    let img = Image::oci("conn-idle", &[50_000]);
    push::push(&hub.url(), "org/app", &["v1"], &img).await;
    let mut c = config(vec![upstream("docker.io", &hub.url())]);
    c.server.limits.max_connections_per_client = 50;
    c.server.limits.first_byte_timeout = Duration::from_secs(2);
    let airlock = Airlock::start(c).await;
    let addr: std::net::SocketAddr = airlock.host.parse().unwrap();
    // A thousand connections from 127.0.0.2 that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(sock.connect(addr).await.expect("connect"));
    }
    // 127.0.0.2 is at its cap; 127.0.0.1 is not locked out.
    airlock.pull("org/app:v1", &img).await;
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s, Duration::from_secs(30)).await,
            "idle connection {i} is still open"
        );
    }
    airlock.pull("org/app:v1", &img).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_takes_nothing_is_dropped_and_its_blob_can_be_evicted() {
    let hub = Registry::start().await;
    let img = Image::oci("conn-stall", &[48 << 20]);
    push::push(&hub.url(), "org/big", &["v1"], &img).await;
    let mut c = config(vec![upstream("docker.io", &hub.url())]);
    c.server.limits.stall_timeout = Duration::from_secs(1);
    let airlock = Airlock::start(c).await;
    airlock.pull("org/big:v1", &img).await;
    let layer = &img.layers[0].digest;
    let digest: Digest = layer.parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(&airlock.host).await.unwrap();
    let req = format!(
        "GET /v2/org/big/blobs/{layer} HTTP/1.1\r\nHost: {}\r\n\r\n",
        airlock.host
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // The transfer starts, the client reads nothing, and the server gives up on it.
    let mut started = false;
    for _ in 0..200 {
        if airlock.cache().in_use(&digest) {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(started, "the blob is being served");
    let mut released = false;
    for _ in 0..600 {
        if !airlock.cache().in_use(&digest) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(released, "the stalled reader still holds the blob");
    assert!(
        closed_by_peer(&mut s, Duration::from_secs(10)).await,
        "its connection is closed"
    );
    let removal = gc::evict(
        airlock.cache(),
        Cap {
            max: 1 << 20,
            high: 0.5,
            low: 0.1,
        },
    )
    .await
    .expect("evict");
    assert!(removal.blobs > 0);
    assert!(!airlock.has_blob(layer), "the blob could be evicted");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_but_a_slow_transfer_keeps_its_own() {
    use support::faulty::{FaultyUpstream, Mode};
    let up = FaultyUpstream::start();
    let mut c = config(vec![upstream("docker.io", &up.url())]);
    c.server.limits.idle_timeout = Duration::from_secs(1);
    let airlock = Airlock::start(c).await;

    // HTTP/1.1 keep-alive: one request, then nothing.
    let mut h1 = tokio::net::TcpStream::connect(&airlock.host).await.unwrap();
    h1.write_all(b"GET /v2/ HTTP/1.1\r\nHost: airlock\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    h1.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert!(
        closed_by_peer(&mut h1, Duration::from_secs(20)).await,
        "an idle keep-alive connection is closed"
    );

    // HTTP/2 (prior knowledge): the preface and empty settings, then no stream at all.
    let mut h2 = tokio::net::TcpStream::connect(&airlock.host).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(
        closed_by_peer(&mut h2, Duration::from_secs(20)).await,
        "an idle HTTP/2 connection is closed"
    );

    // A transfer that takes several idle timeouts keeps its connection to the end.
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let digest = up.add_blob(data.clone());
    up.set_mode(
        &digest,
        Mode::Slow {
            chunk: 8 * 1024,
            pause: Duration::from_millis(400),
        },
    );
    let resp = support::airlock::client()
        .get(format!("{}/v2/org/slow/blobs/{digest}", airlock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.expect("the whole body").as_ref(), data);
}
