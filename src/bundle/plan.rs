//! Planning an export: the selection resolved to manifests through the index, each image's
//! closure from the inventory, and what is attached to each (signatures, attestations,
//! SBOMs: cosign's tags and the referrers), the blobs of a previous bundle left out.

use super::layout::{declared_media_type, is_manifest_type};
use super::{ExportImage, ExportPlan, Selection};
use crate::error::{Error, Result};
use crate::inventory::{self, closure, not_cached, read_manifest};
use crate::oci::{Digest, ImageRef, Reference, Registry, children};
use crate::store::{BlobStore, Index};
use std::collections::{BTreeMap, HashSet};

/// An image to export and whether the operator named it (then failing to export it is an
/// error, not a note).
struct Wanted {
    reference: ImageRef,
    explicit: bool,
}

/// See [`super::plan_export`].
pub fn plan(
    store: &dyn BlobStore,
    index: &dyn Index,
    selection: &Selection,
    exclude: &HashSet<Digest>,
) -> Result<ExportPlan> {
    let mut notes = Vec::new();
    let mut entries = Vec::new();
    let mut blobs = BTreeMap::new();
    let mut seen = HashSet::new();
    for wanted in selected(index, selection, &mut notes)? {
        let name = wanted.reference.to_string();
        if !seen.insert(name.clone()) {
            continue;
        }
        let mut own = BTreeMap::new();
        match image(store, index, &wanted.reference, &mut own, &mut notes) {
            Ok(entry) => {
                let subjects: Vec<Digest> = std::iter::once(entry.digest.clone())
                    .chain(entry.platforms.iter().cloned())
                    .collect();
                entries.push(entry);
                // extend, not append: BTreeMap::append rebuilds the whole map each time,
                // which made planning quadratic in the number of images.
                blobs.extend(own);
                // Its signatures, attestations and SBOMs go with it.
                let repo = &wanted.reference.repo;
                for (reference, _) in inventory::attachments(store, index, repo, &subjects)? {
                    let attached = ImageRef {
                        repo: repo.clone(),
                        reference,
                    };
                    if !seen.insert(attached.to_string()) {
                        continue;
                    }
                    let mut own = BTreeMap::new();
                    match image(store, index, &attached, &mut own, &mut notes) {
                        Ok(entry) => {
                            entries.push(entry);
                            blobs.extend(own);
                        }
                        Err(e) => notes.push(format!("{attached} left out: {e}")),
                    }
                }
            }
            Err(e) if !wanted.explicit => notes.push(format!("{name} left out: {e}")),
            Err(e) => return Err(e),
        }
    }
    if entries.is_empty() {
        return Err(Error::ManifestUnknown(
            "no image of the selection is cached completely: nothing to export".into(),
        ));
    }
    let before = blobs.len();
    let left_out: u64 = blobs
        .iter()
        .filter(|(d, _)| exclude.contains(*d))
        .map(|(_, s)| *s)
        .sum();
    blobs.retain(|d, _| !exclude.contains(d));
    if blobs.len() < before {
        notes.push(format!(
            "{} blobs ({left_out} bytes) left out: the previous bundle has them",
            before - blobs.len()
        ));
    }
    Ok(ExportPlan {
        images: entries.iter().map(|e| e.reference.clone()).collect(),
        total_bytes: blobs.values().sum(),
        blobs: blobs.into_iter().collect(),
        notes,
        entries,
    })
}

/// The references a selection names: explicit ones first, then every tag, then every pin.
fn selected(
    index: &dyn Index,
    selection: &Selection,
    notes: &mut Vec<String>,
) -> Result<Vec<Wanted>> {
    if selection.images.is_empty() && !selection.all && !selection.pinned {
        return Err(Error::Unsupported(
            "name the images to export, or select all or pinned ones".into(),
        ));
    }
    let hub = Registry::docker_hub();
    let mut out = Vec::new();
    for s in &selection.images {
        out.push(Wanted {
            reference: ImageRef::parse(s, &hub)?,
            explicit: true,
        });
    }
    if selection.all {
        for (repo, tag, _) in index.all_tags()? {
            out.push(Wanted {
                reference: ImageRef {
                    repo,
                    reference: Reference::Tag(tag),
                },
                explicit: false,
            });
        }
    }
    if selection.pinned {
        for pin in index.pins()? {
            match ImageRef::parse(&pin, &hub) {
                Ok(reference) => out.push(Wanted {
                    reference,
                    explicit: false,
                }),
                Err(e) => notes.push(format!("pin {pin:?} left out: {e}")),
            }
        }
    }
    Ok(out)
}

/// One image: its descriptor for `index.json`, its blobs (with sizes) into `blobs`.
fn image(
    store: &dyn BlobStore,
    index: &dyn Index,
    reference: &ImageRef,
    blobs: &mut BTreeMap<Digest, u64>,
    notes: &mut Vec<String>,
) -> Result<ExportImage> {
    let digest = inventory::resolve(index, reference)?.ok_or_else(|| not_cached(reference))?;
    let bytes = read_manifest(store, &digest)?.ok_or_else(|| not_cached(reference))?;
    let media_type = media_type(index, reference, &digest, &bytes)?;
    let kids = children(&bytes).unwrap_or_default();
    let mut platforms = Vec::new();
    if kids.iter().any(|k| k.is_manifest) {
        for child in kids.iter().filter(|k| k.is_manifest) {
            let c = closure(store, &child.digest, None)?;
            // A stored manifest that does not parse (`unknown`) would make the bundle one
            // `import` refuses: such a platform is left out like an incomplete one.
            if c.missing.is_empty() && !c.unknown {
                add(store, &c.stored, blobs)?;
                platforms.push(child.digest.clone());
            } else {
                let platform = child
                    .platform
                    .as_ref()
                    .map_or_else(|| child.digest.to_string(), |p| p.to_string());
                let why = match c.missing.len() {
                    0 => "a manifest of it does not parse".to_string(),
                    n => format!("{n} of its blobs are not cached"),
                };
                notes.push(format!("{reference}: platform {platform} left out, {why}"));
            }
        }
        if platforms.is_empty() {
            return Err(Error::ManifestUnknown(format!(
                "{reference} has no platform cached completely: pull it first"
            )));
        }
    } else {
        let c = closure(store, &digest, None)?;
        if c.unknown && c.missing.is_empty() {
            return Err(Error::ManifestUnknown(format!(
                "{reference}: its manifest {digest} does not parse, so no bundle can carry it"
            )));
        }
        if !c.missing.is_empty() {
            return Err(Error::ManifestUnknown(format!(
                "{reference} is not cached completely ({} blobs missing): pull it first",
                c.missing.len()
            )));
        }
        add(store, &c.stored, blobs)?;
    }
    add(store, [&digest], blobs)?;
    Ok(ExportImage {
        reference: reference.to_string(),
        size: bytes.len() as u64,
        digest,
        media_type,
        platforms,
    })
}

/// The manifest's media type: the tag's `Content-Type`, else the one recorded for the
/// digest, else what the manifest declares.
fn media_type(
    index: &dyn Index,
    reference: &ImageRef,
    digest: &Digest,
    bytes: &[u8],
) -> Result<String> {
    if let Reference::Tag(t) = &reference.reference
        && let Some(rec) = index.tag(&reference.repo, t)?
        && rec.digest == *digest
        && is_manifest_type(&rec.media_type)
    {
        return Ok(rec.media_type);
    }
    Ok(index
        .blob_info(digest)?
        .and_then(|i| i.media_type)
        .filter(|t| is_manifest_type(t))
        .unwrap_or_else(|| declared_media_type(bytes)))
}

fn add<'a>(
    store: &dyn BlobStore,
    digests: impl IntoIterator<Item = &'a Digest>,
    blobs: &mut BTreeMap<Digest, u64>,
) -> Result<()> {
    for d in digests {
        let size = store.stat(d)?.ok_or_else(|| {
            Error::BlobUnknown(format!("{d} left the cache while the export was planned"))
        })?;
        blobs.insert(d.clone(), size);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::manifest::{OCI_INDEX, OCI_MANIFEST};
    use crate::store::TagRecord;
    use crate::store::fs::FsStore;
    use crate::store::index::SledIndex;

    /// Found by the bundle fuzz target: an index whose other platform's manifest is stored
    /// but does not parse (here a key with invalid UTF-8) was exported with that platform,
    /// and `import` refused the export. The platform is left out instead; a manifest of
    /// its own that does not parse is not exported at all.
    #[test]
    fn a_manifest_that_does_not_parse_is_never_exported() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let index = SledIndex::open(&dir.path().join("index")).unwrap();
        let put = |bytes: &[u8]| {
            let d = Digest::of(bytes);
            store.put(&d, bytes).unwrap();
            d
        };
        let config = put(b"{}");
        let good = put(format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{config}","size":2}},"layers":[]}}"#
        )
        .as_bytes());
        let bad = put(b"{\"schemaVersion\":2,\"medi\xf1Type\":\"x\",\"layers\":[]}");
        let list = put(
            format!(
                r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{good}","size":1}},{{"mediaType":"{OCI_MANIFEST}","digest":"{bad}","size":1}}]}}"#
            )
            .as_bytes(),
        );
        let hub = Registry::docker_hub();
        let tag = |name: &str, digest: &Digest, media_type: &str| {
            let r = ImageRef::parse(name, &hub).unwrap();
            let Reference::Tag(t) = &r.reference else {
                unreachable!()
            };
            let record = TagRecord {
                digest: digest.clone(),
                media_type: media_type.into(),
                fetched_at_ms: 0,
            };
            index.set_tag(&r.repo, t, &record).unwrap();
        };
        tag("x/list:1", &list, OCI_INDEX);
        tag("x/bad:1", &bad, OCI_MANIFEST);
        let select = |name: &str| Selection {
            images: vec![name.into()],
            ..Selection::default()
        };

        let p = plan(&store, &index, &select("x/list:1"), &HashSet::new()).unwrap();
        assert_eq!(p.entries[0].platforms, vec![good.clone()]);
        assert!(!p.blobs.iter().any(|(d, _)| *d == bad), "{:?}", p.blobs);
        assert!(
            p.notes.iter().any(|n| n.contains("does not parse")),
            "{:?}",
            p.notes
        );

        let e = plan(&store, &index, &select("x/bad:1"), &HashSet::new()).unwrap_err();
        assert!(e.to_string().contains("does not parse"), "{e}");
    }
}
