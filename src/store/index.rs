//! [`SledIndex`]: the [`Index`] in a sled database under `<data>/index/`.
//!
//! Trees and keys (`\0` separates parts; no name, tag or digest can contain it):
//! ```text
//! meta   "schema"                      -> "1"
//! tags   registry \0 repo \0 tag       -> TagRecord (JSON)
//! blobs  digest                        -> BlobInfo (JSON)
//! links  registry \0 repo \0 digest    -> ""
//! access digest                        -> last use, ms since epoch (u64 big-endian)
//! pins   image reference               -> "" or the manifest digest it named when pinned
//! ```
//! sled promises no stable on-disk format, so the schema version is checked at open; the
//! trait stays narrow so another engine could replace this file alone.

use super::{BlobInfo, Index, TagRecord, now_ms};
use crate::error::{Error, Result};
use crate::oci::{Digest, Repository, Tag};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

const SCHEMA: &[u8] = b"1";
/// Access times are written at most this often per digest: enough for LRU, cheap per request.
pub const TOUCH_EVERY_MS: u64 = 60_000;
/// Bound on the in-memory record of recent touches.
const MAX_TOUCHED: usize = 100_000;

/// The sled-backed index.
pub struct SledIndex {
    db: sled::Db,
    tags: sled::Tree,
    blobs: sled::Tree,
    links: sled::Tree,
    access: sled::Tree,
    pins: sled::Tree,
    /// Manifests pulled by digest, per repository (key: registry, name, digest).
    pulls: sled::Tree,
    touched: Mutex<HashMap<Digest, u64>>,
}

impl SledIndex {
    /// Open (creating) the index at `path`.
    pub fn open(path: &Path) -> Result<SledIndex> {
        let db = sled::Config::new().path(path).open().map_err(|e| {
            Error::internal(format!(
                "cannot open the index at {}: {e} (is another airlock using this data directory?)",
                path.display()
            ))
        })?;
        let meta = db.open_tree("meta").map_err(err)?;
        match meta.get("schema").map_err(err)? {
            None => {
                meta.insert("schema", SCHEMA).map_err(err)?;
            }
            Some(v) if v.as_ref() == SCHEMA => {}
            Some(v) => {
                return Err(Error::internal(format!(
                    "the index at {} has schema {:?}, this airlock reads schema 1: move it away and restart",
                    path.display(),
                    String::from_utf8_lossy(&v)
                )));
            }
        }
        Ok(SledIndex {
            tags: db.open_tree("tags").map_err(err)?,
            blobs: db.open_tree("blobs").map_err(err)?,
            links: db.open_tree("links").map_err(err)?,
            access: db.open_tree("access").map_err(err)?,
            pins: db.open_tree("pins").map_err(err)?,
            pulls: db.open_tree("pulls").map_err(err)?,
            db,
            touched: Mutex::new(HashMap::new()),
        })
    }
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("index: {e}"))
}

fn repo_key(repo: &Repository, last: &str) -> Vec<u8> {
    format!("{}\0{}\0{last}", repo.registry, repo.name).into_bytes()
}

fn get_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>> {
    match tree.get(key).map_err(err)? {
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(err),
        None => Ok(None),
    }
}

fn put_json<T: serde::Serialize>(tree: &sled::Tree, key: &[u8], value: &T) -> Result<()> {
    let v = serde_json::to_vec(value).map_err(err)?;
    tree.insert(key, v).map_err(err)?;
    Ok(())
}

impl Index for SledIndex {
    fn tag(&self, repo: &Repository, tag: &Tag) -> Result<Option<TagRecord>> {
        get_json(&self.tags, &repo_key(repo, tag.as_str()))
    }

    fn set_tag(&self, repo: &Repository, tag: &Tag, record: &TagRecord) -> Result<()> {
        put_json(&self.tags, &repo_key(repo, tag.as_str()), record)
    }

    fn remove_tag(&self, repo: &Repository, tag: &Tag) -> Result<()> {
        self.tags
            .remove(repo_key(repo, tag.as_str()))
            .map_err(err)?;
        Ok(())
    }

    fn tags(&self, repo: &Repository) -> Result<Vec<String>> {
        let prefix = repo_key(repo, "");
        self.tags
            .scan_prefix(&prefix)
            .keys()
            .map(|k| {
                let k = k.map_err(err)?;
                Ok(String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            })
            .collect()
    }

    fn blob_info(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        get_json(&self.blobs, digest.to_string().as_bytes())
    }

    fn set_blob_info(&self, digest: &Digest, info: &BlobInfo) -> Result<()> {
        put_json(&self.blobs, digest.to_string().as_bytes(), info)
    }

    fn link(&self, repo: &Repository, digest: &Digest) -> Result<()> {
        self.links
            .insert(repo_key(repo, &digest.to_string()), &[])
            .map_err(err)?;
        Ok(())
    }

    fn is_linked(&self, repo: &Repository, digest: &Digest) -> Result<bool> {
        self.links
            .contains_key(repo_key(repo, &digest.to_string()))
            .map_err(err)
    }

    fn touch(&self, digest: &Digest) -> Result<()> {
        let now = now_ms();
        {
            let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            match touched.get(digest) {
                Some(&t) if now.saturating_sub(t) < TOUCH_EVERY_MS => return Ok(()),
                _ => {
                    // Entries older than the interval are only a cache of what sled holds.
                    if touched.len() >= MAX_TOUCHED {
                        touched.retain(|_, t| now.saturating_sub(*t) < TOUCH_EVERY_MS);
                    }
                    touched.insert(digest.clone(), now);
                }
            }
        }
        self.access
            .insert(digest.to_string().as_bytes(), &now.to_be_bytes())
            .map_err(err)?;
        Ok(())
    }

    fn all_tags(&self) -> Result<Vec<(Repository, Tag, TagRecord)>> {
        let mut out = Vec::new();
        for kv in self.tags.iter() {
            let (k, v) = kv.map_err(err)?;
            let key = String::from_utf8_lossy(&k);
            let mut parts = key.split('\0');
            let (Some(r), Some(n), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(registry), Ok(name), Ok(tag)) = (r.parse(), n.parse(), t.parse()) else {
                continue;
            };
            let record: TagRecord = serde_json::from_slice(&v).map_err(err)?;
            out.push((Repository { registry, name }, tag, record));
        }
        Ok(out)
    }

    fn last_access(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self
            .access
            .get(digest.to_string().as_bytes())
            .map_err(err)?
            .and_then(|v| {
                let bytes: [u8; 8] = v.as_ref().try_into().ok()?;
                Some(u64::from_be_bytes(bytes))
            }))
    }

    fn set_digest_pull(&self, repo: &Repository, digest: &Digest, at_ms: u64) -> Result<()> {
        let key = repo_key(repo, &digest.to_string());
        self.pulls
            .compare_and_swap(key, None as Option<&[u8]>, Some(&at_ms.to_be_bytes()[..]))
            .map_err(err)?
            .ok();
        Ok(())
    }

    fn remove_digest_pull(&self, repo: &Repository, digest: &Digest) -> Result<()> {
        self.pulls
            .remove(repo_key(repo, &digest.to_string()))
            .map_err(err)?;
        Ok(())
    }

    fn digest_pulls(&self) -> Result<Vec<(Repository, Digest, u64)>> {
        let mut out = Vec::new();
        for kv in self.pulls.iter() {
            let (k, v) = kv.map_err(err)?;
            let key = String::from_utf8_lossy(&k);
            let mut parts = key.split('\0');
            let (Some(r), Some(n), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(registry), Ok(name), Ok(digest)) = (r.parse(), n.parse(), d.parse()) else {
                continue;
            };
            let at = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
            out.push((Repository { registry, name }, digest, at));
        }
        Ok(out)
    }

    fn pins(&self) -> Result<Vec<String>> {
        self.pins
            .iter()
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).into_owned())
                    .map_err(err)
            })
            .collect()
    }

    fn set_pinned(&self, reference: &str, pinned: bool) -> Result<bool> {
        let before = if pinned {
            // Keep a remembered digest when pinning again.
            self.pins
                .fetch_and_update(reference, |old| {
                    Some(old.map(|v| v.to_vec()).unwrap_or_default())
                })
                .map_err(err)?
        } else {
            self.pins.remove(reference).map_err(err)?
        };
        Ok(before.is_some())
    }

    fn pin_at(&self, reference: &str, digest: &Digest) -> Result<bool> {
        let before = self
            .pins
            .insert(reference, digest.to_string().as_bytes())
            .map_err(err)?;
        Ok(before.is_some())
    }

    fn pinned_digest(&self, reference: &str) -> Result<Option<Digest>> {
        Ok(self
            .pins
            .get(reference)
            .map_err(err)?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(r: &str, n: &str) -> Repository {
        Repository {
            registry: r.parse().unwrap(),
            name: n.parse().unwrap(),
        }
    }

    #[test]
    fn records_round_trip_and_registries_never_mix() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SledIndex::open(&dir.path().join("index")).unwrap();
        let hub = repo("docker.io", "library/nginx");
        let ghcr = repo("ghcr.io", "library/nginx");
        let t: Tag = "latest".parse().unwrap();
        let rec = TagRecord {
            digest: Digest::of(b"m"),
            media_type: "application/x".into(),
            fetched_at_ms: 7,
        };
        idx.set_tag(&hub, &t, &rec).unwrap();
        assert_eq!(idx.tag(&hub, &t).unwrap(), Some(rec.clone()));
        assert_eq!(idx.tag(&ghcr, &t).unwrap(), None);
        assert_eq!(idx.tags(&hub).unwrap(), vec!["latest"]);
        assert!(
            idx.tags(&repo("docker.io", "library/ngin"))
                .unwrap()
                .is_empty(),
            "prefixes end at \\0"
        );

        idx.link(&hub, &rec.digest).unwrap();
        assert!(idx.is_linked(&hub, &rec.digest).unwrap());
        assert!(!idx.is_linked(&ghcr, &rec.digest).unwrap());

        let info = BlobInfo {
            size: 3,
            media_type: None,
        };
        idx.set_blob_info(&rec.digest, &info).unwrap();
        assert_eq!(idx.blob_info(&rec.digest).unwrap(), Some(info));
        idx.touch(&rec.digest).unwrap();
        assert!(idx.last_access(&rec.digest).unwrap().is_some());
        assert_eq!(
            idx.all_tags().unwrap(),
            vec![(hub.clone(), t.clone(), rec.clone())]
        );
        assert!(
            !idx.set_pinned("docker.io/library/nginx:latest", true)
                .unwrap()
        );
        assert!(
            idx.set_pinned("docker.io/library/nginx:latest", true)
                .unwrap()
        );
        assert_eq!(idx.pins().unwrap(), vec!["docker.io/library/nginx:latest"]);
        assert!(
            idx.set_pinned("docker.io/library/nginx:latest", false)
                .unwrap()
        );
        assert!(idx.pins().unwrap().is_empty());
        assert!(
            !idx.pin_at("docker.io/library/nginx:latest", &rec.digest)
                .unwrap()
        );
        assert!(
            idx.set_pinned("docker.io/library/nginx:latest", true)
                .unwrap()
        );
        let kept = idx.pinned_digest("docker.io/library/nginx:latest").unwrap();
        assert_eq!(
            kept,
            Some(rec.digest.clone()),
            "pinning again keeps the digest"
        );
        idx.remove_tag(&hub, &t).unwrap();
        assert_eq!(idx.tag(&hub, &t).unwrap(), None);
        idx.flush().unwrap();
    }

    #[test]
    fn a_foreign_schema_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        {
            let db = sled::open(&path).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert("schema", "99")
                .unwrap();
            db.flush().unwrap();
        }
        let e = SledIndex::open(&path).err().unwrap().to_string();
        assert!(e.contains("move it away"), "{e}");
    }
}
