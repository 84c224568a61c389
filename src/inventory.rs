//! What the cache holds, image by image: each tag's manifest and everything it reaches
//! (child manifests, configs, layers), which of it is stored, per platform, its size, last
//! use and pins. Read-only over the store and index; `cache ls`, export, eviction, gc and the
//! preload readiness report are built on it.

mod attached;

pub use attached::{Attachments, attached, attachments};

use crate::error::{Error, Result};
use crate::oci::{Digest, ImageRef, Platform, Reference, Registry, Repository, Tag, children};
use crate::store::{BlobStore, Index, TAG_PAGE, TagRecord};
use std::collections::{BTreeSet, HashSet};
use std::io::Read;

/// One platform of an image (or the only one, for a single manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformState {
    /// The platform, when an index names it.
    pub platform: Option<Platform>,
    /// Its manifest.
    pub manifest: Digest,
    /// Whether its manifest, config and every layer are stored.
    pub complete: bool,
}

/// Everything reachable from a manifest.
#[derive(Debug, Clone, Default)]
pub struct Closure {
    /// Stored digests: manifests, configs, layers.
    pub stored: BTreeSet<Digest>,
    /// Digests named but not stored.
    pub missing: BTreeSet<Digest>,
    /// Per platform (an index's children), or one entry for a single manifest.
    pub platforms: Vec<PlatformState>,
    /// The root is missing, or a stored manifest does not parse: what it reaches is unknown.
    pub unknown: bool,
}

impl Closure {
    /// The manifests signatures and SBOMs may refer to: `root` (whose closure this is) and
    /// its platform manifests, each once, root first.
    pub fn subjects(&self, root: &Digest) -> Vec<Digest> {
        let mut out = vec![root.clone()];
        for p in &self.platforms {
            if !out.contains(&p.manifest) {
                out.push(p.manifest.clone());
            }
        }
        out
    }

    /// Bytes of what is stored.
    pub fn size(&self, store: &dyn BlobStore) -> u64 {
        self.stored
            .iter()
            .filter_map(|d| store.stat(d).ok().flatten())
            .sum()
    }
}

/// Read a stored manifest (bounded), `None` when it is not stored.
pub fn read_manifest(store: &dyn BlobStore, digest: &Digest) -> Result<Option<Vec<u8>>> {
    let Some(file) = store.open(digest)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    file.take(crate::oci::manifest::MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// Everything `root` reaches that is (or is not) stored. With `platforms`, an index's
/// children for other platforms are left out.
pub fn closure(
    store: &dyn BlobStore,
    root: &Digest,
    platforms: Option<&[Platform]>,
) -> Result<Closure> {
    let mut c = Closure::default();
    let Some(bytes) = read_manifest(store, root)? else {
        c.unknown = true;
        c.missing.insert(root.clone());
        c.platforms.push(PlatformState {
            platform: None,
            manifest: root.clone(),
            complete: false,
        });
        return Ok(c);
    };
    c.stored.insert(root.clone());
    let Some(kids) = children(&bytes) else {
        c.unknown = true;
        c.platforms.push(PlatformState {
            platform: None,
            manifest: root.clone(),
            complete: false,
        });
        return Ok(c);
    };
    if kids.iter().any(|k| k.is_manifest) {
        for child in kids.iter().filter(|k| k.is_manifest) {
            let wanted = match (platforms, &child.platform) {
                (Some(list), Some(p)) => list.iter().any(|w| p.satisfies(w)),
                _ => true,
            };
            if !wanted {
                continue;
            }
            let sub = closure(store, &child.digest, None)?;
            let complete = sub.missing.is_empty();
            // A child that is not cached is normal (another platform); one that is stored
            // but unreadable hides what it reaches.
            c.unknown |= sub.unknown && !sub.missing.contains(&child.digest);
            c.stored.extend(sub.stored);
            c.missing.extend(sub.missing);
            c.platforms.push(PlatformState {
                platform: child.platform.clone(),
                manifest: child.digest.clone(),
                complete,
            });
        }
    } else {
        for blob in kids.iter().filter(|k| !k.foreign) {
            if store.stat(&blob.digest)?.is_some() {
                c.stored.insert(blob.digest.clone());
            } else {
                c.missing.insert(blob.digest.clone());
            }
        }
        c.platforms.push(PlatformState {
            platform: None,
            manifest: root.clone(),
            complete: c.missing.is_empty(),
        });
    }
    Ok(c)
}

/// One image in the cache: a tag, or a manifest pulled by digest that no tag reaches.
#[derive(Debug, Clone)]
pub struct Image {
    /// `registry/repo:tag`, or `registry/repo@digest`.
    pub reference: ImageRef,
    /// The manifest the tag points at (or the one pulled by digest).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// What it reaches.
    pub closure: Closure,
    /// Bytes stored for it (shared blobs counted in every image that uses them).
    pub size: u64,
    /// When its manifest was last served (ms since the epoch).
    pub last_access_ms: Option<u64>,
    /// When the upstream last confirmed the tag, or when the digest was first pulled (ms since
    /// the epoch).
    pub fetched_at_ms: u64,
    /// Whether a pin covers it.
    pub pinned: bool,
}

/// Every image: the tagged ones in registry/repository/tag order, then the manifests pulled by
/// digest that no tag reaches (an index's platform manifests, fetched by digest as every
/// client does, belong to the index's image) and that are still stored.
pub fn images(store: &dyn BlobStore, index: &dyn Index) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    each_image(store, index, |image| {
        out.push(image);
        Ok(())
    })?;
    Ok(out)
}

/// [`images`], handed to `f` one at a time: what is held meanwhile is a page of tag records,
/// the pins, the pulls by digest and, when there are any, the manifest digests the tagged
/// images reach (not their layers), so `cache ls` of a large cache streams. An error from
/// `f` ends the walk.
pub fn each_image(
    store: &dyn BlobStore,
    index: &dyn Index,
    mut f: impl FnMut(Image) -> Result<()>,
) -> Result<()> {
    let pins: HashSet<String> = index.pins()?.into_iter().collect();
    let pulls = index.digest_pulls()?;
    // Pulls by digest name manifests: only manifests need remembering.
    let mut reached: HashSet<Digest> = HashSet::new();
    let mut after: Option<(Repository, Tag)> = None;
    loop {
        let page = index.tags_after(after.as_ref().map(|(r, t)| (r, t)), TAG_PAGE)?;
        let done = page.len() < TAG_PAGE;
        for (repo, tag, rec) in page {
            after = Some((repo.clone(), tag.clone()));
            let image = tagged_image(store, index, &pins, repo, tag, rec)?;
            if !pulls.is_empty() {
                reached.insert(image.digest.clone());
                reached.extend(image.closure.platforms.iter().map(|p| p.manifest.clone()));
            }
            f(image)?;
        }
        if done {
            break;
        }
    }
    for (repo, digest, at) in pulls {
        if reached.contains(&digest) || store.stat(&digest)?.is_none() {
            continue;
        }
        let mut closure = closure(store, &digest, None)?;
        with_referrers(store, index, &repo, &digest, &mut closure)?;
        let reference = ImageRef {
            repo,
            reference: Reference::Digest(digest.clone()),
        };
        let media_type = index
            .blob_info(&digest)?
            .and_then(|i| i.media_type)
            .unwrap_or_default();
        f(Image {
            pinned: pins.contains(&reference.to_string()),
            size: closure.size(store),
            last_access_ms: index.last_access(&digest)?,
            fetched_at_ms: at,
            digest,
            media_type,
            closure,
            reference,
        })?;
    }
    Ok(())
}

fn tagged_image(
    store: &dyn BlobStore,
    index: &dyn Index,
    pins: &HashSet<String>,
    repo: Repository,
    tag: Tag,
    rec: TagRecord,
) -> Result<Image> {
    let mut closure = closure(store, &rec.digest, None)?;
    with_referrers(store, index, &repo, &rec.digest, &mut closure)?;
    let reference = ImageRef {
        repo: repo.clone(),
        reference: Reference::Tag(tag),
    };
    let by_digest = ImageRef {
        repo,
        reference: Reference::Digest(rec.digest.clone()),
    };
    Ok(Image {
        pinned: pins.contains(&reference.to_string()) || pins.contains(&by_digest.to_string()),
        size: closure.size(store),
        last_access_ms: index.last_access(&rec.digest)?,
        fetched_at_ms: rec.fetched_at_ms,
        digest: rec.digest,
        media_type: rec.media_type,
        closure,
        reference,
    })
}

/// The stored referrers answers of `root` and of its platform manifests in `repo` belong to
/// the image: gc keeps them while it is kept, eviction removes them with it.
fn with_referrers(
    store: &dyn BlobStore,
    index: &dyn Index,
    repo: &Repository,
    root: &Digest,
    c: &mut Closure,
) -> Result<()> {
    let mut answers = Vec::new();
    for subject in c.subjects(root) {
        if let Some(rec) = index.referrers(repo, &subject)?
            && store.stat(&rec.digest)?.is_some()
        {
            answers.push(rec.digest);
        }
    }
    c.stored.extend(answers);
    Ok(())
}

/// The manifest digest a reference names in the cache: a digest as is, a tag through its
/// record. `None` when the tag is unknown.
pub fn resolve(index: &dyn Index, reference: &ImageRef) -> Result<Option<Digest>> {
    match &reference.reference {
        Reference::Digest(d) => Ok(Some(d.clone())),
        Reference::Tag(t) => Ok(index.tag(&reference.repo, t)?.map(|r| r.digest)),
    }
}

/// Every digest a pin protects: the closures of what each pinned reference names now, and of
/// the manifest it named when it was pinned (a tag that moved keeps its pinned content).
pub fn pinned_digests(store: &dyn BlobStore, index: &dyn Index) -> Result<HashSet<Digest>> {
    let mut out = HashSet::new();
    for pin in index.pins()? {
        let Ok(reference) = ImageRef::parse(&pin, &Registry::docker_hub()) else {
            continue;
        };
        let roots = [resolve(index, &reference)?, index.pinned_digest(&pin)?];
        for root in roots.into_iter().flatten() {
            let c = closure(store, &root, None)?;
            // Without its manifest a pin's layers are unknown; on a site past the gap they
            // cannot be fetched again, so nothing may be removed until it is repaired.
            if c.unknown {
                return Err(Error::internal(format!(
                    "pinned image {pin} has a missing or unreadable manifest ({root}): re-import or re-preload it; \
                     eviction and gc are paused until then"
                )));
            }
            out.extend(c.stored);
            out.extend(c.missing);
        }
    }
    Ok(out)
}

/// The repository a digest-only reference belongs to is not known from the digest: callers
/// that need one take it from the reference. This names the error for a reference the cache
/// does not hold.
pub fn not_cached(reference: &ImageRef) -> Error {
    Error::ManifestUnknown(format!("{reference} is not in the cache"))
}
