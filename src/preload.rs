//! Preload: bring images into the cache before a site is cut off, through the same fills
//! clients use (so a preload and a pull of the same blob share one download), pin them, and
//! report for every image and platform whether a pull would succeed with the network cut.

mod readiness;

use crate::cache::{Cache, Manifest};
use crate::error::{Error, Result};
use crate::oci::manifest::ACCEPT_ALL;
use crate::oci::{Digest, ImageRef, Platform, Reference, Registry, children, referrers};
use crate::progress::Progress;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Images preloaded at once.
const IMAGES_AT_ONCE: usize = 3;
/// Blobs of one image downloaded at once.
const BLOBS_AT_ONCE: usize = 4;

/// What to preload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Image references (`nginx:1.25`, `ghcr.io/org/app@sha256:…`).
    pub images: Vec<String>,
    /// Platforms to keep of an index (`linux/amd64,linux/arm64`); all when empty.
    #[serde(default)]
    pub platforms: Option<String>,
    /// Bring each image's signatures, attestations and SBOMs too: its referrers and cosign's
    /// `sha256-<hex>.sig`, `.att` and `.sbom` tags (on unless turned off).
    #[serde(default = "yes")]
    pub signatures: bool,
}

fn yes() -> bool {
    true
}

impl Default for Request {
    fn default() -> Request {
        Request {
            images: Vec::new(),
            platforms: None,
            signatures: true,
        }
    }
}

/// Offline readiness of one platform of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformReadiness {
    /// `linux/amd64`, or `-` for an image without platforms.
    pub platform: String,
    /// Whether a pull would succeed with the network cut.
    pub ready: bool,
    /// Why not.
    pub reason: Option<String>,
}

/// Offline readiness of one image.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Readiness {
    /// The reference as given.
    pub image: String,
    /// The full reference.
    pub reference: Option<String>,
    /// Per platform.
    pub platforms: Vec<PlatformReadiness>,
    /// Why the image itself failed (bad reference, unknown upstream, …).
    pub error: Option<String>,
    /// Its signatures, attestations and SBOMs that would pull offline.
    #[serde(default)]
    pub attached: crate::inventory::Attachments,
}

impl Readiness {
    /// Ready for every platform.
    pub fn ready(&self) -> bool {
        self.error.is_none() && !self.platforms.is_empty() && self.platforms.iter().all(|p| p.ready)
    }
}

/// The readiness report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// One entry per requested image.
    pub images: Vec<Readiness>,
    /// Bytes downloaded from upstreams.
    pub downloaded: u64,
    /// Whether every image is ready offline for every requested platform.
    pub ok: bool,
}

/// Preload `request` into `cache`.
pub async fn preload(
    cache: &Cache,
    default: &Registry,
    request: &Request,
    progress: &Progress,
) -> Report {
    let platforms = match request
        .platforms
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(s) => match Platform::parse_list(s) {
            Ok(p) => Some(p),
            Err(e) => {
                let images = request
                    .images
                    .iter()
                    .map(|i| Readiness {
                        image: i.clone(),
                        error: Some(e.to_string()),
                        ..Default::default()
                    })
                    .collect();
                return Report {
                    images,
                    downloaded: 0,
                    ok: false,
                };
            }
        },
    };
    let downloaded = Arc::new(AtomicU64::new(0));
    // Owned inputs per future: streams of borrowing futures trip the compiler's Send check.
    let jobs: Vec<_> = request
        .images
        .iter()
        .map(|image| {
            let ctx = Ctx {
                cache: cache.clone(),
                progress: progress.clone(),
                downloaded: downloaded.clone(),
            };
            one(
                ctx,
                default.clone(),
                image.clone(),
                platforms.clone(),
                request.signatures,
            )
        })
        .collect();
    let images: Vec<Readiness> = futures_util::stream::iter(jobs)
        .buffered(IMAGES_AT_ONCE)
        .collect()
        .await;
    let ok = !images.is_empty() && images.iter().all(Readiness::ready);
    for image in &images {
        let result = if image.ready() { "ready" } else { "not_ready" };
        cache
            .metrics()
            .preload_images
            .with_label_values(&[result])
            .inc();
    }
    Report {
        images,
        downloaded: downloaded.load(Ordering::Relaxed),
        ok,
    }
}

/// What every download of one preload shares.
#[derive(Clone)]
struct Ctx {
    cache: Cache,
    progress: Progress,
    downloaded: Arc<AtomicU64>,
}

async fn one(
    ctx: Ctx,
    default: Registry,
    image: String,
    platforms: Option<Vec<Platform>>,
    signatures: bool,
) -> Readiness {
    let (cache, progress, image, platforms) = (
        &ctx.cache,
        &ctx.progress,
        image.as_str(),
        platforms.as_deref(),
    );
    progress.begin(image, image, None);
    let reference = match ImageRef::parse(image, &default) {
        Ok(r) => r,
        Err(e) => {
            progress.end(image, false, Some(e.to_string()));
            return Readiness {
                image: image.to_string(),
                error: Some(e.to_string()),
                ..Default::default()
            };
        }
    };
    wait_for_budget(cache, &reference, progress).await;
    let fetched = fetch(&ctx, &reference, platforms, signatures, image).await;
    let mut readiness = readiness::check(cache, &reference, platforms).await;
    readiness.image = image.to_string();
    if let Err(e) = fetched {
        readiness.error = Some(e.to_string());
    }
    let message = readiness.error.clone().or_else(|| {
        let missing: Vec<String> = readiness
            .platforms
            .iter()
            .filter(|p| !p.ready)
            .map(|p| p.platform.clone())
            .collect();
        (!missing.is_empty()).then(|| format!("not ready offline: {}", missing.join(", ")))
    });
    progress.end(image, readiness.ready(), message);
    readiness
}

/// While the upstream's pull budget is at its reserve, wait (saying so), rechecking with a
/// HEAD of the image's manifest, which costs no pull: the last pulls of the window go to
/// clients. Preload is cancelled like any other while it waits.
async fn wait_for_budget(cache: &Cache, reference: &ImageRef, progress: &Progress) {
    let Ok(entry) = cache.upstreams().get(&reference.repo.registry) else {
        return;
    };
    let upstream = entry.upstream.clone();
    let mut said = false;
    while let Some(why) = upstream.budget_low() {
        if !said {
            progress.note(format!(
                "preload paused before {}: {why}; waiting for the window to turn",
                reference
            ));
            tracing::warn!(image = %reference, reason = %why, "preload paused to save the pull budget");
            said = true;
        }
        tokio::time::sleep(upstream.budget_recheck()).await;
        let _ = upstream
            .manifest(
                &reference.repo.name,
                &reference.reference,
                crate::oci::manifest::ACCEPT_ALL,
                true,
            )
            .await;
    }
    if said {
        progress.note("preload resumed: the pull budget is above its reserve again");
    }
}

/// Resolve the reference, the wanted platforms' manifests, and download their blobs.
async fn fetch(
    ctx: &Ctx,
    reference: &ImageRef,
    platforms: Option<&[Platform]>,
    signatures: bool,
    id: &str,
) -> Result<()> {
    let (cache, progress) = (&ctx.cache, &ctx.progress);
    let repo = &reference.repo;
    let top = cache
        .manifest(repo, &reference.reference, &[ACCEPT_ALL])
        .await?
        .manifest;
    // Pinned before anything else comes in: eviction and gc leave its blobs alone from the
    // moment they are stored (a pin covers what it names, stored or not).
    cache.index().pin_at(&reference.to_string(), &top.digest)?;
    let mut manifests: Vec<Arc<Manifest>> = Vec::new();
    let kids = children(&top.bytes).unwrap_or_default();
    if kids.iter().any(|k| k.is_manifest) {
        for child in kids.iter().filter(|k| k.is_manifest) {
            let wanted = match (platforms, &child.platform) {
                (Some(list), Some(p)) => list.iter().any(|w| p.satisfies(w)),
                _ => true,
            };
            if wanted {
                manifests.push(
                    cache
                        .manifest(
                            repo,
                            &Reference::Digest(child.digest.clone()),
                            &[ACCEPT_ALL],
                        )
                        .await?
                        .manifest,
                );
            }
        }
    } else {
        manifests.push(top.clone());
    }
    if signatures {
        let subjects: std::collections::BTreeSet<Digest> = std::iter::once(&top)
            .chain(&manifests)
            .map(|m| m.digest.clone())
            .collect();
        for subject in subjects {
            manifests.extend(attachments(cache, reference, &subject, progress).await);
        }
    }
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    for m in &manifests {
        for b in children(&m.bytes)
            .unwrap_or_default()
            .into_iter()
            .filter(|b| !b.is_manifest && !b.foreign)
        {
            blobs.insert(b.digest, b.size.unwrap_or(0));
        }
    }
    let total: u64 = blobs.values().sum();
    progress.advance(id, 0, Some(total));
    let unit = Unit {
        id: id.to_string(),
        total,
        done: Arc::new(AtomicU64::new(0)),
    };
    let jobs: Vec<_> = blobs
        .into_keys()
        .map(|digest| blob(ctx.clone(), reference.clone(), digest, unit.clone()))
        .collect();
    let results: Vec<Result<()>> = futures_util::stream::iter(jobs)
        .buffer_unordered(BLOBS_AT_ONCE)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Referrers of one manifest a preload brings at most (a signature, an SBOM and a few
/// attestations per release is the norm).
const MAX_ATTACHED: usize = 32;

/// What is attached to `subject` upstream, its manifests fetched (and pinned): cosign's
/// tags and the referrers that do name it as their subject. None is normal: most images are
/// not signed. What cannot be brought is a note, not a failure of the image.
async fn attachments(
    cache: &Cache,
    reference: &ImageRef,
    subject: &Digest,
    progress: &Progress,
) -> Vec<Arc<Manifest>> {
    let repo = &reference.repo;
    let mut refs: Vec<Reference> = referrers::COSIGN_TAGS
        .iter()
        .filter_map(|(suffix, _)| referrers::cosign_tag(subject, suffix).parse().ok())
        .map(Reference::Tag)
        .collect();
    match cache.referrers(repo, subject).await {
        Ok((list, _)) => {
            if list.len() > MAX_ATTACHED {
                progress.note(format!(
                    "{reference}: {} referrers of {subject}, the first {MAX_ATTACHED} brought",
                    list.len()
                ));
            }
            refs.extend(
                list.iter()
                    .take(MAX_ATTACHED)
                    .map(|r| Reference::Digest(r.digest.clone())),
            );
        }
        Err(e) => progress.note(format!(
            "{reference}: the referrers of {subject} not brought: {e}"
        )),
    }
    let mut out = Vec::new();
    for r in refs {
        let m = match cache.manifest(repo, &r, &[ACCEPT_ALL]).await {
            Ok(answer) => answer.manifest,
            Err(Error::ManifestUnknown(_)) => continue,
            Err(e) => {
                progress.note(format!("{reference}: {r} not brought: {e}"));
                continue;
            }
        };
        if matches!(r, Reference::Digest(_))
            && referrers::of_manifest(&m.bytes, &m.media_type).map(|(s, _)| s)
                != Some(subject.clone())
        {
            progress.note(format!(
                "{reference}: {r} is listed as a referrer of {subject} but does not name it: left out"
            ));
            continue;
        }
        let pin = ImageRef {
            repo: repo.clone(),
            reference: r,
        };
        if let Err(e) = cache.index().pin_at(&pin.to_string(), &m.digest) {
            progress.note(format!("{pin} not pinned: {e}"));
        }
        out.push(m);
    }
    out
}

/// The progress unit of one image: its id, expected and done bytes.
#[derive(Clone)]
struct Unit {
    id: String,
    total: u64,
    done: Arc<AtomicU64>,
}

impl Unit {
    fn add(&self, bytes: u64, progress: &Progress, cache: &Cache) {
        cache.metrics().preload_bytes.inc_by(bytes);
        let now = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        progress.advance(self.id.clone(), now, Some(self.total));
    }
}

/// Bring one blob in (or find it cached), reporting bytes as they arrive.
async fn blob(ctx: Ctx, reference: ImageRef, digest: Digest, unit: Unit) -> Result<()> {
    let progress = &ctx.progress;
    let answer = ctx.cache.blob(&reference.repo, &digest).await?;
    let fresh = answer.outcome != crate::cache::Outcome::Hit;
    let source = answer.source;
    let mut seen = 0u64;
    let verified = source.clone().persisted();
    tokio::pin!(verified);
    loop {
        tokio::select! {
            result = &mut verified => {
                let size = result.map_err(|e| Error::UpstreamUnavailable { registry: reference.repo.registry.to_string(), message: e.to_string() })?.written();
                unit.add(size.saturating_sub(seen), progress, &ctx.cache);
                if fresh {
                    ctx.downloaded.fetch_add(size, Ordering::Relaxed);
                }
                return Ok(());
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                let written = source.written();
                if written > seen {
                    unit.add(written - seen, progress, &ctx.cache);
                    seen = written;
                }
            }
        }
    }
}
