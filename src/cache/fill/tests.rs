//! The herd's end: readers get their last byte once the digest is verified, before the fsync
//! and rename; the blob is visible only after both. A store wrapper holds `persist` on a gate.

use super::*;
use crate::cache::{BlobSource, inuse::InUse};
use crate::oci::{Digest, Reference, RepoName};
use crate::store::fs::FsStore;
use crate::store::index::SledIndex;
use crate::store::{Batch, Verified};
use crate::upstream::{BlobBody, FetchedManifest};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// Serves one blob in 64 KiB chunks and counts the GETs.
struct OneBlob {
    body: Bytes,
    gets: AtomicUsize,
}

#[async_trait]
impl Upstream for OneBlob {
    async fn manifest(
        &self,
        _: &RepoName,
        _: &Reference,
        _: &str,
        _: bool,
    ) -> Result<Option<FetchedManifest>> {
        Ok(None)
    }

    async fn blob(&self, _: &RepoName, _: &Digest) -> Result<Option<BlobBody>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let chunks: Vec<Result<Bytes>> = self
            .body
            .chunks(64 << 10)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Ok(Some(BlobBody {
            size: Some(self.body.len() as u64),
            stream: futures_util::stream::iter(chunks).boxed(),
        }))
    }

    async fn blob_exists(&self, _: &RepoName, _: &Digest) -> Result<Option<Option<u64>>> {
        Ok(None)
    }

    async fn tags(&self, _: &RepoName) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
}

/// Where a persist waits: it says it arrived, then waits to be released; `fail` makes it
/// fail instead of persisting once released.
struct Gate {
    arrived: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
    fail: bool,
}

/// An [`FsStore`] whose writers' persists pass through a [`Gate`].
struct Gated {
    inner: FsStore,
    gate: Arc<Gate>,
}

struct GatedWriter(Box<dyn BlobWriter>, Arc<Gate>);
struct GatedVerified(Box<dyn Verified>, Arc<Gate>);

impl BlobWriter for GatedWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write(bytes)
    }
    fn written(&self) -> u64 {
        self.0.written()
    }
    fn reader(&self) -> io::Result<File> {
        self.0.reader()
    }
    fn verify(self: Box<Self>) -> std::result::Result<Box<dyn Verified>, CommitError> {
        Ok(Box::new(GatedVerified(self.0.verify()?, self.1)))
    }
}

impl Verified for GatedVerified {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn persist(self: Box<Self>) -> io::Result<u64> {
        let gate = self.1;
        if let Some(tx) = gate.arrived.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let release = gate.release.lock().unwrap().take();
        if let Some(rx) = release {
            let _ = rx.recv();
        }
        if gate.fail {
            return Err(io::Error::other("the disk went away"));
        }
        self.0.persist()
    }
}

impl BlobStore for Gated {
    fn stat(&self, d: &Digest) -> io::Result<Option<u64>> {
        self.inner.stat(d)
    }
    fn open(&self, d: &Digest) -> io::Result<Option<File>> {
        self.inner.open(d)
    }
    fn create(&self, d: &Digest) -> io::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(GatedWriter(
            self.inner.create(d)?,
            self.gate.clone(),
        )))
    }
    fn remove(&self, d: &Digest) -> io::Result<bool> {
        self.inner.remove(d)
    }
    fn list(&self) -> io::Result<Vec<(Digest, u64)>> {
        self.inner.list()
    }
    fn quarantine(&self, d: &Digest) -> io::Result<Option<PathBuf>> {
        self.inner.quarantine(d)
    }
    fn batch(&self) -> io::Result<Box<dyn Batch>> {
        self.inner.batch()
    }
}

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<Gated>,
    index: Arc<SledIndex>,
    upstream: Arc<OneBlob>,
    fills: Fills,
    in_use: InUse,
    repo: Repository,
    digest: Digest,
    /// Signals the gate's arrival.
    arrived: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Dropping or sending releases the gate.
    release: Option<mpsc::Sender<()>>,
}

fn env(fail: bool) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (release, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        arrived: Mutex::new(Some(arrived_tx)),
        release: Mutex::new(Some(release_rx)),
        fail,
    });
    let body: Bytes = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    Env {
        store: Arc::new(Gated {
            inner: FsStore::open(&root).unwrap(),
            gate,
        }),
        index: Arc::new(SledIndex::open(&dir.path().join("index")).unwrap()),
        digest: Digest::of(&body),
        upstream: Arc::new(OneBlob {
            body,
            gets: AtomicUsize::new(0),
        }),
        fills: Fills::new(4),
        in_use: InUse::default(),
        repo: Repository {
            registry: "registry.test".parse().unwrap(),
            name: "team/app".parse().unwrap(),
        },
        root,
        _dir: dir,
        arrived: Some(arrived),
        release: Some(release),
    }
}

impl Env {
    fn join(&self) -> Joined {
        let ctx = FillContext {
            store: self.store.clone(),
            index: self.index.clone(),
            timeout: Duration::from_secs(60),
            min_free: 0,
            max_size: None,
            metrics: Arc::new(crate::metrics::Metrics::new(&[], None)),
        };
        self.fills
            .join_or_start(ctx, self.upstream.clone(), &self.repo, &self.digest)
            .unwrap()
    }

    fn fill(&self, expect_started: bool) -> Arc<Fill> {
        match self.join() {
            Joined::Fill { fill, started } => {
                assert_eq!(
                    started, expect_started,
                    "whether this request started a fill"
                );
                fill
            }
            Joined::Stored => panic!("the blob was already visible"),
        }
    }

    async fn read_all(&self, fill: Arc<Fill>) -> Vec<u8> {
        let source = BlobSource::filling(fill, self.in_use.hold(&self.digest));
        let chunks: Vec<Bytes> = source.stream(0, None, false).try_collect().await.unwrap();
        chunks.concat()
    }

    async fn wait_for_gate(&mut self) {
        self.arrived.take().unwrap().await.unwrap();
    }

    fn visible(&self) -> bool {
        self.store.stat(&self.digest).unwrap().is_some()
    }

    fn recorded(&self) -> bool {
        self.index.blob_info(&self.digest).unwrap().is_some()
            || self.index.is_linked(&self.repo, &self.digest).unwrap()
    }

    fn gets(&self) -> usize {
        self.upstream.gets.load(Ordering::SeqCst)
    }
}

/// Wait until the fill's task has ended (its sender is gone).
async fn ended(fill: &Fill) {
    let mut rx = fill.state.clone();
    while rx.changed().await.is_ok() {}
}

#[tokio::test]
async fn readers_get_every_byte_before_the_fsync_and_see_the_blob_only_after() {
    let mut e = env(false);
    let fill = e.fill(true);
    let reader = tokio::spawn({
        let source = BlobSource::filling(fill.clone(), e.in_use.hold(&e.digest));
        async move {
            let chunks: Vec<Bytes> = source.stream(0, None, false).try_collect().await.unwrap();
            chunks.concat()
        }
    });
    e.wait_for_gate().await;
    // The persist is held at the gate: the reader still finishes with every byte.
    let got = reader.await.unwrap();
    assert_eq!(got, e.upstream.body, "the reader got the verified bytes");
    assert!(matches!(*fill.state.borrow(), FillState::Verified(n) if n == got.len() as u64));
    assert!(!e.visible(), "not visible before the fsync and rename");
    assert!(!e.recorded(), "not in the index before it is visible");

    drop(e.release.take());
    ended(&fill).await;
    assert!(matches!(*fill.state.borrow(), FillState::Done(_)));
    assert!(e.visible(), "visible once persisted");
    assert!(e.index.is_linked(&e.repo, &e.digest).unwrap());
    assert!(matches!(e.join(), Joined::Stored));
    assert_eq!(e.gets(), 1);
}

#[tokio::test]
async fn a_request_between_verification_and_rename_joins_the_spool() {
    let mut e = env(false);
    let first = e.fill(true);
    let first_bytes = e.read_all(first.clone()).await;
    e.wait_for_gate().await;

    let second = e.fill(false);
    assert!(
        Arc::ptr_eq(&first, &second),
        "joined the fill being persisted"
    );
    assert_eq!(e.read_all(second).await, first_bytes);
    assert_eq!(e.gets(), 1, "no second upstream GET");

    drop(e.release.take());
    ended(&first).await;
    assert!(matches!(e.join(), Joined::Stored));
    assert_eq!(e.gets(), 1);
}

#[tokio::test]
async fn a_crash_before_the_rename_leaves_nothing_and_a_failed_persist_costs_a_refetch() {
    let mut e = env(true);
    let fill = e.fill(true);
    assert_eq!(e.read_all(fill.clone()).await, e.upstream.body);
    e.wait_for_gate().await;

    // What a restart finds on disk at this moment: nothing under the digest.
    assert!(!e.visible());
    let restarted = FsStore::open(Path::new(&e.root)).unwrap();
    assert!(restarted.stat(&e.digest).unwrap().is_none());
    assert!(
        restarted.list().unwrap().is_empty(),
        "no blob after a crash"
    );
    assert!(!e.recorded());

    // The persist fails: the reader already had its bytes (no error reached it), the fill
    // stays `Verified` for anyone still reading, and the next request fetches again.
    drop(e.release.take());
    ended(&fill).await;
    assert!(matches!(*fill.state.borrow(), FillState::Verified(_)));
    assert!(!e.visible());
    assert!(!e.recorded());
    let again = e.fill(true);
    assert!(!Arc::ptr_eq(&fill, &again));
    ended(&again).await;
    assert_eq!(e.gets(), 2);
}
