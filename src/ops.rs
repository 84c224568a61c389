//! The cache's operations, as the admin API (and through it every `airlock` command) runs
//! them: listing, usage, pinning, purges, collection, eviction, verification, preloads,
//! imports and export plans. Each takes its turn on the maintenance lock where it must, runs
//! its blocking parts off the async runtime, and does what follows it (an import forgets the
//! hot tag answers it replaced and evicts down to the cap). The admin API only routes and
//! encodes.

use crate::bundle::{self, ExportPlan, ImportReport, Selection};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::gc::{self, Cap, Removal, Usage, VerifyReport};
use crate::inventory;
use crate::oci::{Digest, ImageRef, Reference, Registry};
use crate::preload;
use crate::progress::Progress;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One image in `cache ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSummary {
    /// Its reference.
    pub image: String,
    /// The manifest's digest.
    pub digest: String,
    /// The manifest's media type.
    pub media_type: String,
    /// Bytes stored for it.
    pub size: u64,
    /// The platforms it holds completely.
    pub platforms: Vec<String>,
    /// Whether every blob of it is stored.
    pub complete: bool,
    /// Last pull, in milliseconds since the Unix epoch.
    pub last_access_ms: Option<u64>,
    /// When the upstream last confirmed its tag.
    pub fetched_at_ms: u64,
    /// Whether a pin protects it.
    pub pinned: bool,
    /// Its signatures, attestations and SBOMs that are cached.
    #[serde(default)]
    pub attached: inventory::Attachments,
}

impl From<&inventory::Image> for ImageSummary {
    fn from(i: &inventory::Image) -> Self {
        ImageSummary {
            image: i.reference.to_string(),
            digest: i.digest.to_string(),
            media_type: i.media_type.clone(),
            size: i.size,
            platforms: i
                .closure
                .platforms
                .iter()
                .filter(|p| p.complete)
                .map(|p| p.platform.as_ref().map_or("-".into(), |p| p.to_string()))
                .collect(),
            complete: i.closure.missing.is_empty(),
            last_access_ms: i.last_access_ms,
            fetched_at_ms: i.fetched_at_ms,
            pinned: i.pinned,
            attached: inventory::Attachments::default(),
        }
    }
}

/// What the signature policy says of one image.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureReport {
    /// The reference, in full (or as given, when it does not parse).
    pub image: String,
    /// Its manifest, when it could be resolved.
    pub digest: Option<String>,
    /// The rule, mode and verdict.
    #[serde(flatten)]
    pub check: Option<crate::signatures::Check>,
    /// Why it could not be checked.
    pub error: Option<String>,
}

/// What a pin or unpin did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinChange {
    /// The reference, in full.
    pub image: String,
    /// Pinned now.
    pub pinned: bool,
    /// Whether that changed anything.
    pub changed: bool,
}

/// The cache's operations and what they share.
#[derive(Clone)]
pub struct Operations {
    cache: Cache,
    cap: Option<Cap>,
    verifying: Arc<AtomicBool>,
    signatures: Arc<crate::signatures::Policy>,
}

/// Held while a verify runs: one at a time, since it reads the whole store.
pub struct VerifyTurn(Arc<AtomicBool>);

impl Drop for VerifyTurn {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Operations {
    /// Operations on `cache`, evicting down to `cap` (if any) after what adds content, checking
    /// signatures against `signatures`.
    pub fn new(
        cache: Cache,
        cap: Option<Cap>,
        signatures: Arc<crate::signatures::Policy>,
    ) -> Operations {
        Operations {
            signatures,
            cache,
            cap,
            verifying: Arc::default(),
        }
    }

    /// Write every cached image, as `cache ls` shows it, to `out` as a JSON array of
    /// [`ImageSummary`], one image at a time (blocking: run it on the blocking pool).
    pub fn write_images(&self, out: &mut dyn std::io::Write) -> Result<()> {
        let (store, index) = (self.cache.store(), self.cache.index());
        let mut first = true;
        out.write_all(b"[")?;
        inventory::each_image(store.as_ref(), index.as_ref(), |image| {
            out.write_all(if first { b"\n" } else { b",\n" })?;
            first = false;
            let mut summary = ImageSummary::from(&image);
            summary.attached = inventory::attached(
                store.as_ref(),
                index.as_ref(),
                &image.reference.repo,
                &image.closure.subjects(&image.digest),
            )?;
            serde_json::to_writer(&mut *out, &summary).map_err(Error::internal)
        })?;
        out.write_all(b"\n]\n")?;
        Ok(())
    }

    /// What the signature policy says of each of `images` (every tagged image of the cache
    /// when empty, signatures' own tags aside), fetching what is missing as a pull would
    /// but serving nothing.
    pub async fn verify_signatures(
        &self,
        default: &Registry,
        images: &[String],
    ) -> Result<Vec<SignatureReport>> {
        let names: Vec<String> = if images.is_empty() {
            let index = self.cache.index().clone();
            blocking(move || index.all_tags())
                .await?
                .into_iter()
                .filter(|(_, t, _)| crate::fetch_policy::signed_digest(t.as_str()).is_none())
                .map(|(repo, tag, _)| format!("{repo}:{tag}"))
                .collect()
        } else {
            images.to_vec()
        };
        let mut out = Vec::new();
        for name in names {
            let mut report = SignatureReport {
                image: name.clone(),
                digest: None,
                check: None,
                error: None,
            };
            match ImageRef::parse(&name, default) {
                Err(e) => report.error = Some(e.to_string()),
                Ok(r) => {
                    report.image = r.to_string();
                    match self
                        .cache
                        .manifest(&r.repo, &r.reference, &[crate::oci::manifest::ACCEPT_ALL])
                        .await
                    {
                        Err(e) => report.error = Some(e.to_string()),
                        Ok(answer) => {
                            report.digest = Some(answer.manifest.digest.to_string());
                            let check = self
                                .signatures
                                .check(&self.cache, &r.repo, &answer.manifest)
                                .await;
                            report.check = Some(check);
                        }
                    }
                }
            }
            out.push(report);
        }
        Ok(out)
    }

    /// What the store holds.
    pub async fn usage(&self) -> Result<Usage> {
        let cache = self.cache.clone();
        blocking(move || gc::usage(&cache)).await
    }

    /// Pin (or unpin) an image: a pin by tag holds the digest the tag resolves to now.
    pub async fn pin(&self, reference: &ImageRef, pinned: bool) -> Result<PinChange> {
        let name = reference.to_string();
        // Not while an eviction is deciding what is unpinned.
        let _turn = self.cache.exclusive().await;
        let index = self.cache.index();
        let before = match (pinned, inventory::resolve(index.as_ref(), reference)?) {
            (true, Some(digest)) => index.pin_at(&name, &digest)?,
            (true, None) => index.set_pinned(&name, true)?,
            (false, _) => index.set_pinned(&name, false)?,
        };
        Ok(PinChange {
            image: name,
            pinned,
            changed: before != pinned,
        })
    }

    /// Purge an image and what only it uses.
    pub async fn remove(&self, reference: &ImageRef) -> Result<Removal> {
        // What is attached to it (preload pinned it) goes with it.
        let (store, index, image) = (
            self.cache.store().clone(),
            self.cache.index().clone(),
            reference.clone(),
        );
        let attached = blocking(move || {
            let Some(root) = inventory::resolve(index.as_ref(), &image)? else {
                return Ok(Vec::new());
            };
            let subjects = inventory::closure(store.as_ref(), &root, None)?.subjects(&root);
            inventory::attachments(store.as_ref(), index.as_ref(), &image.repo, &subjects)
        })
        .await?;
        let mut removal = gc::remove(&self.cache, reference).await?;
        for (r, _) in attached {
            let a = ImageRef {
                repo: reference.repo.clone(),
                reference: r,
            };
            match gc::remove(&self.cache, &a).await {
                Ok(more) => {
                    removal.images.extend(more.images);
                    removal.blobs += more.blobs;
                    removal.bytes += more.bytes;
                }
                Err(Error::ManifestUnknown(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removal)
    }

    /// Remove what nothing tagged or pinned reaches.
    pub async fn collect(&self) -> Result<Removal> {
        gc::collect(&self.cache).await
    }

    /// Evict down to the cap; `None` without one.
    pub async fn evict(&self) -> Result<Option<Removal>> {
        match self.cap {
            Some(cap) => gc::evict(&self.cache, cap).await.map(Some),
            None => Ok(None),
        }
    }

    /// Evict after content came in; failures are logged (what came in stays).
    async fn evict_after(&self, what: &str) {
        if let Some(cap) = self.cap {
            let cache = self.cache.clone();
            // Not cancelled with the client that caused it: it holds the maintenance lock
            // and deletes in the blocking pool, so it runs to its end on its own.
            match tokio::spawn(async move { gc::evict(&cache, cap).await }).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(after = what, error = %e, "eviction failed"),
                Err(e) => tracing::warn!(after = what, error = %e, "eviction task failed"),
            }
        }
    }

    /// The turn to verify, unless a verify is running.
    pub fn verify_turn(&self) -> Option<VerifyTurn> {
        (!self.verifying.swap(true, Ordering::SeqCst)).then(|| VerifyTurn(self.verifying.clone()))
    }

    /// Re-hash every stored blob (holding the turn).
    pub async fn verify(&self, _turn: &VerifyTurn, progress: &Progress) -> Result<VerifyReport> {
        gc::verify(&self.cache, progress).await
    }

    /// Bring images in, pin them, report whether each would pull offline; then evict.
    pub async fn preload(
        &self,
        default: &Registry,
        request: &preload::Request,
        progress: &Progress,
    ) -> preload::Report {
        let report = preload::preload(&self.cache, default, request, progress).await;
        self.evict_after("preload").await;
        report
    }

    /// Read a bundle into the cache (verified, published, recorded, pinned); then forget the
    /// hot tag answers it replaced and evict. Counted in the import metrics.
    pub async fn import(
        &self,
        input: Box<dyn Read + Send>,
        progress: Progress,
    ) -> Result<ImportReport> {
        let cache = self.cache.clone();
        let imported = blocking(move || {
            let mut input = input;
            bundle::import(&cache, &mut input, &progress)
        })
        .await;
        let m = self.cache.metrics();
        let report = match imported {
            Ok(r) => r,
            Err(e) => {
                m.imports.with_label_values(&["refused"]).inc();
                return Err(e);
            }
        };
        m.imports.with_label_values(&["ok"]).inc();
        m.import_bytes.inc_by(report.bytes);
        for image in &report.images {
            if let Ok(r) = ImageRef::parse(image, &Registry::docker_hub())
                && let Reference::Tag(t) = &r.reference
            {
                self.cache.forget_tag_answer(&r.repo, t).await;
            }
        }
        self.evict_after("import").await;
        Ok(report)
    }

    /// What an export of `selection` carries, leaving out the blobs in `exclude`.
    pub async fn plan_export(
        &self,
        selection: Selection,
        exclude: HashSet<Digest>,
    ) -> Result<ExportPlan> {
        let cache = self.cache.clone();
        // Planning reads every manifest from disk.
        blocking(move || bundle::plan_export(&cache, &selection, &exclude)).await
    }

    /// An export of `plan`: everything it names stays put until it is written.
    pub fn export(&self, plan: ExportPlan) -> Export {
        let holds = plan.blobs.iter().map(|(d, _)| self.cache.hold(d)).collect();
        Export {
            cache: self.cache.clone(),
            plan,
            _holds: holds,
        }
    }

    /// Why the server is not ready (the index does not answer, or new content cannot be
    /// stored), or `None` when it is.
    pub fn unready(&self, default: &Registry) -> Result<Option<String>> {
        self.cache.index().tags(&crate::oci::Repository {
            registry: default.clone(),
            name: "library/readyz".parse()?,
        })?;
        Ok(self.cache.write_trouble().map(|why| {
            format!("cached content is served, but new content cannot be stored: {why}")
        }))
    }

    /// The cache these operations work on.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

/// A planned export, holding its blobs.
pub struct Export {
    cache: Cache,
    plan: ExportPlan,
    _holds: Vec<crate::cache::Hold>,
}

impl Export {
    /// Write the bundle (blocking).
    pub fn write(self, out: &mut dyn std::io::Write) -> Result<()> {
        bundle::write_export(&self.cache, &self.plan, out, &Progress::none())
    }
}

/// Run `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::internal)?
}
