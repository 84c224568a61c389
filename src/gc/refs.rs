//! What references what: every stored blob, every tag's closure and every pin, with a count
//! per digest of the tags that reach it. Taken in one blocking pass (it reads manifests).
//!
//! The store is listed *before* the tags are read. A client fetches a manifest (which stores
//! it and records the tag) before its blobs, so a blob stored for an image being pulled right
//! now already has its tag when the tags are read: it is never mistaken for garbage. Blobs
//! stored after the listing are not in the snapshot at all, so nothing here can delete them.

use crate::error::Result;
use crate::inventory;
use crate::oci::{Digest, ImageRef, Reference, Repository};
use crate::store::{BlobStore, Index, now_ms};
use std::collections::{BTreeSet, HashMap, HashSet};

/// One image (a tag record, or a pull by digest) and what it reaches.
pub(super) struct Tagged {
    /// Its repository.
    pub repo: Repository,
    /// The tag, or the digest it was pulled by.
    pub name: Reference,
    /// The manifest it pointed at during the scan.
    pub digest: Digest,
    /// The stored digests it reaches.
    pub closure: BTreeSet<Digest>,
    /// Last use: the later of the manifest's last access and the tag's last confirmation.
    pub recency: u64,
    /// A pin covers it (its tag, its digest, or another pin reaching its manifest).
    pub pinned: bool,
}

impl Tagged {
    /// `registry/repo:tag` or `registry/repo@digest`.
    pub fn reference(&self) -> ImageRef {
        ImageRef {
            repo: self.repo.clone(),
            reference: self.name.clone(),
        }
    }
}

/// The cache's content and its references at one moment.
pub(super) struct Snapshot {
    /// When the scan began (ms since the epoch): content used after it is left alone.
    pub started_ms: u64,
    /// Every stored blob and its size.
    pub stored: HashMap<Digest, u64>,
    /// Every tag record.
    pub images: Vec<Tagged>,
    /// Every digest a pin protects.
    pub pinned: HashSet<Digest>,
    /// For each digest, how many of `images` reach it.
    refs: HashMap<Digest, usize>,
}

impl Snapshot {
    /// Scan the store, the tags and the pins.
    pub fn take(store: &dyn BlobStore, index: &dyn Index) -> Result<Snapshot> {
        let started_ms = now_ms();
        let stored: HashMap<Digest, u64> = store.list()?.into_iter().collect();
        let pinned = inventory::pinned_digests(store, index)?;
        let mut refs: HashMap<Digest, usize> = HashMap::new();
        let mut images = Vec::new();
        inventory::each_image(store, index, |image| {
            for d in &image.closure.stored {
                *refs.entry(d.clone()).or_default() += 1;
            }
            images.push(Tagged {
                pinned: image.pinned || pinned.contains(&image.digest),
                recency: image.last_access_ms.unwrap_or(0).max(image.fetched_at_ms),
                repo: image.reference.repo,
                name: image.reference.reference,
                digest: image.digest,
                closure: image.closure.stored,
            });
            Ok(())
        })?;
        Ok(Snapshot {
            started_ms,
            stored,
            images,
            pinned,
            refs,
        })
    }

    /// Bytes stored.
    pub fn total(&self) -> u64 {
        self.stored.values().sum()
    }

    /// Bytes stored that a pin protects.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned.iter().filter_map(|d| self.stored.get(d)).sum()
    }

    /// Whether a remaining tag or a pin reaches `digest`.
    pub fn reaches(&self, digest: &Digest) -> bool {
        self.refs.get(digest).is_some_and(|n| *n > 0) || self.pinned.contains(digest)
    }

    /// `digests` that are stored, with their sizes.
    pub fn sized<'a>(&self, digests: impl IntoIterator<Item = &'a Digest>) -> Vec<(Digest, u64)> {
        digests
            .into_iter()
            .filter_map(|d| self.stored.get(d).map(|s| (d.clone(), *s)))
            .collect()
    }

    /// Stored blobs no tag and no pin reaches (garbage), in digest order.
    pub fn unreferenced(&self) -> Vec<(Digest, u64)> {
        let mut out: Vec<_> = self
            .stored
            .iter()
            .filter(|(d, _)| !self.reaches(d))
            .map(|(d, s)| (d.clone(), *s))
            .collect();
        out.sort();
        out
    }

    /// What removing image `i` would free: the stored blobs of its closure that no other
    /// remaining tag and no pin reaches.
    pub fn freed_by(&self, i: usize) -> Vec<(Digest, u64)> {
        let only_here = self.images[i]
            .closure
            .iter()
            .filter(|d| self.refs.get(*d).copied().unwrap_or(0) <= 1 && !self.pinned.contains(*d));
        self.sized(only_here)
    }

    /// Image `i` is gone: its closure no longer counts.
    pub fn release(&mut self, i: usize) {
        for d in &self.images[i].closure {
            if let Some(n) = self.refs.get_mut(d) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Indexes of the unpinned images, least recently used first (ties by reference).
    pub fn lru_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.images.len())
            .filter(|i| !self.images[*i].pinned)
            .collect();
        order.sort_by_cached_key(|i| {
            let img = &self.images[*i];
            (img.recency, img.reference().to_string())
        });
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TagRecord;
    use crate::store::fs::FsStore;
    use crate::store::index::SledIndex;

    fn manifest(config: &Digest, layers: &[&Digest]) -> Vec<u8> {
        let desc = |d: &Digest| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": 1});
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 1},
            "layers": layers.iter().map(|d| desc(d)).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// An empty store and index in a temporary directory (kept alive by the first value).
    fn fixture() -> (tempfile::TempDir, FsStore, SledIndex) {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let index = SledIndex::open(&dir.path().join("index")).unwrap();
        (dir, store, index)
    }

    /// Store `bytes`; their digest.
    fn put(store: &FsStore, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        store.put(&d, bytes).unwrap();
        d
    }

    #[test]
    fn a_pull_by_digest_is_an_image_in_lru_order() {
        let (_dir, store, index) = fixture();
        let put = |b: &[u8]| put(&store, b);
        let (cfg, old, new) = (put(b"cfg"), put(b"old"), put(b"new"));
        let (m_old, m_new) = (put(&manifest(&cfg, &[&old])), put(&manifest(&cfg, &[&new])));
        let repo: Repository = ImageRef::parse("x/y", &"docker.io".parse().unwrap())
            .unwrap()
            .repo;
        let rec = TagRecord {
            digest: m_new.clone(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            fetched_at_ms: 50,
        };
        index.set_tag(&repo, &"v2".parse().unwrap(), &rec).unwrap();
        index.set_digest_pull(&repo, &m_old, 10).unwrap();
        index.set_digest_pull(&repo, &m_old, 99).unwrap(); // the first time is kept
        let snap = Snapshot::take(&store, &index).unwrap();
        assert!(
            snap.unreferenced().is_empty(),
            "the digest pull reaches its layer"
        );
        let order: Vec<String> = snap
            .lru_order()
            .iter()
            .map(|i| snap.images[*i].reference().to_string())
            .collect();
        assert_eq!(
            order,
            [
                format!("docker.io/x/y@{m_old}"),
                "docker.io/x/y:v2".to_string()
            ],
            "older first"
        );
        index.remove_digest_pull(&repo, &m_old).unwrap();
        let snap = Snapshot::take(&store, &index).unwrap();
        let loose: BTreeSet<Digest> = snap.unreferenced().into_iter().map(|(d, _)| d).collect();
        assert_eq!(
            loose,
            BTreeSet::from([old, m_old]),
            "forgotten: loose again"
        );
    }

    #[test]
    fn counts_shared_blobs_and_protects_pins() {
        let (_dir, store, index) = fixture();
        let put = |b: &[u8]| put(&store, b);
        let (base, a, b, loose) = (put(b"base"), put(b"a"), put(b"b"), put(b"loose"));
        let cfg = put(b"cfg");
        let ma = put(&manifest(&cfg, &[&base, &a]));
        let mb = put(&manifest(&cfg, &[&base, &b]));
        let repo: Repository = ImageRef::parse("x/y", &"docker.io".parse().unwrap())
            .unwrap()
            .repo;
        for (t, d, at) in [("a", &ma, 1), ("b", &mb, 2)] {
            let rec = TagRecord {
                digest: d.clone(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                fetched_at_ms: at,
            };
            index.set_tag(&repo, &t.parse().unwrap(), &rec).unwrap();
        }
        index.set_pinned("docker.io/x/y:b", true).unwrap();
        let mut snap = Snapshot::take(&store, &index).unwrap();
        assert_eq!(snap.unreferenced(), vec![(loose.clone(), 5)]);
        let ia = snap
            .images
            .iter()
            .position(|i| i.name.to_string() == "a")
            .unwrap();
        assert_eq!(
            snap.lru_order(),
            vec![ia],
            "the pinned image is never a candidate"
        );
        let freed: BTreeSet<Digest> = snap.freed_by(ia).into_iter().map(|(d, _)| d).collect();
        assert_eq!(
            freed,
            BTreeSet::from([a.clone(), ma.clone()]),
            "base and config are shared"
        );
        snap.release(ia);
        assert!(snap.reaches(&base), "still reached by the pinned image");
        assert!(!snap.reaches(&a));
    }
}
