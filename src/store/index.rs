//! [`SledIndex`]: the [`Index`] in a sled database under `<data>/index/`, with every fact it
//! alone knows also appended to the [`Journal`] beside the blobs.
//!
//! Trees and keys (`\0` separates parts; no name, tag or digest can contain it):
//! ```text
//! meta   "schema"                      -> "1"
//! meta   "journal_snapshot"            -> size of the journal when last rewritten (u64 BE)
//! tags   registry \0 repo \0 tag       -> TagRecord (JSON)
//! blobs  digest                        -> BlobInfo (JSON)
//! links  registry \0 repo \0 digest    -> ""
//! owners digest \0 registry \0 repo    -> ""   (the links by digest, to forget them)
//! access digest                        -> last use, ms since epoch (u64 big-endian)
//! pins   image reference               -> "" or the manifest digest it named when pinned
//! pulls  registry \0 repo \0 digest    -> first pull by digest, ms since epoch (u64 BE)
//! referrers registry \0 repo \0 subject -> ReferrersRecord (JSON)
//! ```
//! sled promises no stable on-disk format, so the schema version is checked at open; the
//! trait stays narrow so another engine could replace this file alone. Opening, rebuilding
//! from the journal and recovering from a failed write live in [`open`].

mod open;
#[cfg(test)]
mod tests;

pub use open::Reindexed;

use super::journal::{Journal, Record};
use super::{BlobInfo, Index, ReferrersRecord, TagRecord, now_ms};
use crate::error::{Error, Result};
use crate::oci::{Digest, Repository, Tag};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

/// Access times are written at most this often per digest: enough for LRU, cheap per request.
pub const TOUCH_EVERY_MS: u64 = 60_000;
/// Bound on the in-memory record of recent touches.
const MAX_TOUCHED: usize = 100_000;

/// The sled-backed index.
pub struct SledIndex {
    path: PathBuf,
    /// `None` only while a reopen after a failed write could not open the database.
    trees: RwLock<Option<Trees>>,
    journal: Journal,
    /// Held across a record's sled write and its journal append, so the two agree in order.
    writes: Mutex<()>,
    /// Since when, and why, writes fail; `None` while they work.
    failing: Mutex<Option<(Instant, String)>>,
    last_reopen: Mutex<Option<Instant>>,
    touched: Mutex<HashMap<Digest, u64>>,
    /// Set at open when the journal has grown well past its last snapshot.
    compact_due: std::sync::atomic::AtomicBool,
}

/// The open database and its trees.
struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    tags: sled::Tree,
    blobs: sled::Tree,
    links: sled::Tree,
    /// The links again, keyed by digest first (key: digest, registry, name).
    owners: sled::Tree,
    access: sled::Tree,
    pins: sled::Tree,
    /// Manifests pulled by digest, per repository (key: registry, name, digest).
    pulls: sled::Tree,
    /// The last known referrers of a manifest (key: registry, name, subject digest).
    referrers: sled::Tree,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("index: {e}"))
}

fn repo_key(repo: &Repository, last: &str) -> Vec<u8> {
    format!("{}\0{}\0{last}", repo.registry, repo.name).into_bytes()
}

/// Split a `registry \0 repo \0 last` key.
fn split_key(key: &[u8]) -> Option<(&str, &str, &str)> {
    let key = std::str::from_utf8(key).ok()?;
    let mut parts = key.splitn(3, '\0');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// `digest \0 registry \0 repo`: a link found by its digest.
fn owner_key(digest: &Digest, repo: &Repository) -> Vec<u8> {
    format!("{digest}\0{}\0{}", repo.registry, repo.name).into_bytes()
}

/// Remove what the trees say about `digest`; whether there was anything.
fn forget(t: &Trees, digest: &Digest) -> sled::Result<bool> {
    let d = digest.to_string();
    let mut had = t.blobs.remove(d.as_bytes())?.is_some();
    had |= t.access.remove(d.as_bytes())?.is_some();
    let prefix = format!("{d}\0");
    for key in t.owners.scan_prefix(prefix.as_bytes()).keys() {
        let key = key?;
        let rest = &key[prefix.len()..];
        // registry \0 repo  ->  registry \0 repo \0 digest
        let mut link = rest.to_vec();
        link.push(0);
        link.extend_from_slice(d.as_bytes());
        t.referrers.remove(&link)?;
        t.links.remove(link)?;
        t.owners.remove(&key)?;
        had = true;
    }
    Ok(had)
}

fn parse_repo(registry: &str, name: &str) -> Option<Repository> {
    Some(Repository {
        registry: registry.parse().ok()?,
        name: name.parse().ok()?,
    })
}

fn get_json<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>> {
    match tree.get(key).map_err(err)? {
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(err),
        None => Ok(None),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> sled::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| sled::Error::Unsupported(e.to_string()))
}

fn be_u64(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

impl SledIndex {
    /// Read from the open database. sled's reads may write (they consolidate pages), so after a
    /// failed write they can fail with the same sticky I/O error: that reopens it too.
    fn read<T>(&self, f: impl Fn(&Trees) -> Result<T>) -> Result<T> {
        let first = self.read_once(&f);
        let Err(e) = &first else { return first };
        let closed = self
            .trees
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if !(closed || e.to_string().contains("IO error")) {
            return first;
        }
        // Reopen only holding the write order, so no write is between its sled insert and its
        // journal append; a writer holding it now reopens on its own failure.
        let Ok(_order) = self.writes.try_lock() else {
            return first;
        };
        if !self.reopen_due() {
            return first;
        }
        self.reopen();
        self.read_once(&f)
    }

    fn read_once<T>(&self, f: &impl Fn(&Trees) -> Result<T>) -> Result<T> {
        let trees = self.trees.read().unwrap_or_else(|p| p.into_inner());
        match trees.as_ref() {
            Some(t) => f(t),
            None => Err(self.unavailable()),
        }
    }

    /// Write to the database and, when `record` gives one, append it to the journal. A write
    /// that fails reopens the database once (sled's errors are sticky until then) and retries.
    fn write<T>(
        &self,
        f: impl Fn(&Trees) -> sled::Result<T>,
        record: impl Fn(&T) -> Option<Record>,
    ) -> Result<T> {
        let _order = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let mut attempt = self.try_write(&f);
        if attempt.is_err() && self.reopen_due() {
            self.reopen();
            attempt = self.try_write(&f);
        }
        let done = attempt.and_then(|v| {
            // Not durable until journaled: a failed append fails the write (a full disk is
            // noticed at once, not when sled next flushes).
            // After a failed append the file may end in a torn line: rewrite it first.
            if self.journal.incomplete() {
                self.compact_unordered()?;
            }
            if let Some(r) = record(&v) {
                self.journal
                    .append(&r)
                    .map_err(|e| err(format!("journal: {e}")))?;
            }
            Ok(v)
        });
        match &done {
            Ok(_) => self.writes_work(),
            Err(e) => self.writes_fail(e),
        }
        done
    }

    fn try_write<T>(&self, f: &impl Fn(&Trees) -> sled::Result<T>) -> Result<T> {
        self.read_once(&|t| f(t).map_err(err))
    }

    fn unavailable(&self) -> Error {
        let why = self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, w)| w.clone())
            .unwrap_or_default();
        Error::internal(format!(
            "the index at {} is not open: {why}",
            self.path.display()
        ))
    }

    fn writes_fail(&self, e: &Error) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if failing.is_none() {
            tracing::error!(error = %e, "index writes fail: new content cannot be recorded");
            *failing = Some((Instant::now(), e.to_string()));
        }
    }

    fn writes_work(&self) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, _)) = failing.take() {
            tracing::warn!(failed_for = ?since.elapsed(), "index writes work again");
        }
    }

    fn pin_record(reference: &str, value: Option<&[u8]>) -> Record {
        match value {
            Some(v) => Record::Pin {
                reference: reference.to_string(),
                digest: std::str::from_utf8(v).ok().and_then(|d| d.parse().ok()),
            },
            None => Record::Unpin {
                reference: reference.to_string(),
            },
        }
    }
}

impl Index for SledIndex {
    fn tag(&self, repo: &Repository, tag: &Tag) -> Result<Option<TagRecord>> {
        self.read(|t| get_json(&t.tags, &repo_key(repo, tag.as_str())))
    }

    fn set_tag(&self, repo: &Repository, tag: &Tag, record: &TagRecord) -> Result<()> {
        let key = repo_key(repo, tag.as_str());
        let value = to_json(record).map_err(err)?;
        self.write(
            |t| t.tags.insert(&key, value.as_slice()),
            |old| {
                // Journal a changed answer, not each revalidation of the same one.
                let same = old
                    .as_ref()
                    .and_then(|o| serde_json::from_slice::<TagRecord>(o).ok())
                    .is_some_and(|o| {
                        o.digest == record.digest && o.media_type == record.media_type
                    });
                (!same).then(|| Record::Tag {
                    registry: repo.registry.to_string(),
                    name: repo.name.to_string(),
                    tag: tag.to_string(),
                    digest: record.digest.clone(),
                    media_type: record.media_type.clone(),
                    fetched_at_ms: record.fetched_at_ms,
                })
            },
        )?;
        Ok(())
    }

    fn remove_tag(&self, repo: &Repository, tag: &Tag) -> Result<()> {
        let key = repo_key(repo, tag.as_str());
        self.write(
            |t| t.tags.remove(&key),
            |old| {
                old.is_some().then(|| Record::Untag {
                    registry: repo.registry.to_string(),
                    name: repo.name.to_string(),
                    tag: tag.to_string(),
                })
            },
        )?;
        Ok(())
    }

    fn tags(&self, repo: &Repository) -> Result<Vec<String>> {
        let prefix = repo_key(repo, "");
        self.read(|t| {
            t.tags
                .scan_prefix(&prefix)
                .keys()
                .map(|k| {
                    let k = k.map_err(err)?;
                    Ok(String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
                })
                .collect()
        })
    }

    fn referrers(&self, repo: &Repository, subject: &Digest) -> Result<Option<ReferrersRecord>> {
        self.read(|t| get_json(&t.referrers, &repo_key(repo, &subject.to_string())))
    }

    fn set_referrers(
        &self,
        repo: &Repository,
        subject: &Digest,
        record: &ReferrersRecord,
    ) -> Result<()> {
        let key = repo_key(repo, &subject.to_string());
        let value = to_json(record).map_err(err)?;
        self.write(
            |t| t.referrers.insert(&key, value.as_slice()),
            |old| {
                // Journal a changed answer, not each revalidation of the same one.
                let same = old
                    .as_ref()
                    .and_then(|o| serde_json::from_slice::<ReferrersRecord>(o).ok())
                    .is_some_and(|o| o.digest == record.digest);
                (!same).then(|| Record::Referrers {
                    registry: repo.registry.to_string(),
                    name: repo.name.to_string(),
                    subject: subject.clone(),
                    digest: record.digest.clone(),
                    fetched_at_ms: record.fetched_at_ms,
                })
            },
        )?;
        Ok(())
    }

    fn blob_info(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        self.read(|t| get_json(&t.blobs, digest.to_string().as_bytes()))
    }

    fn set_blob_info(&self, digest: &Digest, info: &BlobInfo) -> Result<()> {
        let key = digest.to_string();
        let value = to_json(info).map_err(err)?;
        self.write(
            |t| t.blobs.insert(key.as_bytes(), value.as_slice()),
            |old| {
                (old.as_deref() != Some(value.as_slice())).then(|| Record::Blob {
                    digest: digest.clone(),
                    size: info.size,
                    media_type: info.media_type.clone(),
                })
            },
        )?;
        Ok(())
    }

    fn link(&self, repo: &Repository, digest: &Digest) -> Result<()> {
        let key = repo_key(repo, &digest.to_string());
        self.write(
            |t| {
                t.owners.insert(owner_key(digest, repo), &[])?;
                t.links.insert(&key, &[])
            },
            |old| {
                old.is_none().then(|| Record::Link {
                    registry: repo.registry.to_string(),
                    name: repo.name.to_string(),
                    digest: digest.clone(),
                })
            },
        )?;
        Ok(())
    }

    fn forget_blob(&self, digest: &Digest) -> Result<()> {
        self.write(
            |t| forget(t, digest),
            |&had| {
                had.then(|| Record::Forget {
                    digest: digest.clone(),
                })
            },
        )?;
        Ok(())
    }

    fn is_linked(&self, repo: &Repository, digest: &Digest) -> Result<bool> {
        let key = repo_key(repo, &digest.to_string());
        self.read(|t| t.links.contains_key(&key).map_err(err))
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
        // Access times only order eviction: not journaled, and a failure is not worth a reopen.
        self.read(|t| {
            t.access
                .insert(digest.to_string().as_bytes(), &now.to_be_bytes())
                .map_err(err)
        })?;
        Ok(())
    }

    fn tags_after(
        &self,
        after: Option<(&Repository, &Tag)>,
        limit: usize,
    ) -> Result<Vec<(Repository, Tag, TagRecord)>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = after.map(|(r, t)| repo_key(r, t.as_str()));
        self.read(|t| {
            let mut out = Vec::new();
            let from = start.as_deref().map_or(Unbounded, Excluded);
            for kv in t.tags.range::<&[u8], _>((from, Unbounded)) {
                if out.len() == limit {
                    break;
                }
                let (k, v) = kv.map_err(err)?;
                let Some((r, n, tag)) = split_key(&k) else {
                    continue;
                };
                let (Some(repo), Ok(tag)) = (parse_repo(r, n), tag.parse()) else {
                    continue;
                };
                let record: TagRecord = serde_json::from_slice(&v).map_err(err)?;
                out.push((repo, tag, record));
            }
            Ok(out)
        })
    }

    fn last_access(&self, digest: &Digest) -> Result<Option<u64>> {
        self.read(|t| {
            Ok(t.access
                .get(digest.to_string().as_bytes())
                .map_err(err)?
                .and_then(|v| be_u64(&v)))
        })
    }

    fn set_digest_pull(&self, repo: &Repository, digest: &Digest, at_ms: u64) -> Result<()> {
        let key = repo_key(repo, &digest.to_string());
        self.write(
            |t| {
                let swapped = t.pulls.compare_and_swap(
                    &key,
                    None as Option<&[u8]>,
                    Some(&at_ms.to_be_bytes()[..]),
                )?;
                Ok(swapped.is_ok())
            },
            |&new| {
                new.then(|| Record::Pull {
                    registry: repo.registry.to_string(),
                    name: repo.name.to_string(),
                    digest: digest.clone(),
                    at_ms,
                })
            },
        )?;
        Ok(())
    }

    fn remove_digest_pull(&self, repo: &Repository, digest: &Digest) -> Result<()> {
        let key = repo_key(repo, &digest.to_string());
        self.write(
            |t| t.pulls.remove(&key),
            |old| {
                old.is_some().then(|| Record::Unpull {
                    registry: repo.registry.to_string(),
                    name: repo.name.to_string(),
                    digest: digest.clone(),
                })
            },
        )?;
        Ok(())
    }

    fn digest_pulls(&self) -> Result<Vec<(Repository, Digest, u64)>> {
        self.read(|t| {
            let mut out = Vec::new();
            for kv in t.pulls.iter() {
                let (k, v) = kv.map_err(err)?;
                let Some((r, n, d)) = split_key(&k) else {
                    continue;
                };
                let (Some(repo), Ok(digest)) = (parse_repo(r, n), d.parse()) else {
                    continue;
                };
                out.push((repo, digest, be_u64(&v).unwrap_or(0)));
            }
            Ok(out)
        })
    }

    fn pins(&self) -> Result<Vec<String>> {
        self.read(|t| {
            t.pins
                .iter()
                .keys()
                .map(|k| {
                    k.map(|k| String::from_utf8_lossy(&k).into_owned())
                        .map_err(err)
                })
                .collect()
        })
    }

    fn set_pinned(&self, reference: &str, pinned: bool) -> Result<bool> {
        let (before, _) = self.write(
            |t| {
                if pinned {
                    // Keep a remembered digest when pinning again.
                    let before = t.pins.fetch_and_update(reference, |old| {
                        Some(old.map(|v| v.to_vec()).unwrap_or_default())
                    })?;
                    let after = before.clone().unwrap_or_default();
                    Ok((before.is_some(), Some(after)))
                } else {
                    Ok((t.pins.remove(reference)?.is_some(), None))
                }
            },
            |(before, after)| {
                (*before != after.is_some()).then(|| Self::pin_record(reference, after.as_deref()))
            },
        )?;
        Ok(before)
    }

    fn pin_at(&self, reference: &str, digest: &Digest) -> Result<bool> {
        let value = digest.to_string();
        let before = self.write(
            |t| t.pins.insert(reference, value.as_bytes()),
            |old| {
                (old.as_deref() != Some(value.as_bytes()))
                    .then(|| Self::pin_record(reference, Some(value.as_bytes())))
            },
        )?;
        Ok(before.is_some())
    }

    fn pinned_digest(&self, reference: &str) -> Result<Option<Digest>> {
        self.read(|t| {
            Ok(t.pins
                .get(reference)
                .map_err(err)?
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
        })
    }

    fn write_failure(&self) -> Option<String> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing
            .as_ref()
            .map(|(since, why)| format!("index writes fail since {:?} ago: {why}", since.elapsed()))
    }

    fn probe_writes(&self) {
        if self.write_failure().is_some() {
            let now = now_ms().to_be_bytes();
            let _ = self.write(|t| t.meta.insert("probe", &now), |_| None);
        }
    }

    fn generation(&self) -> Option<u64> {
        // Every such write is journaled, and the journal is only appended to while open.
        self.journal.size().ok()
    }

    fn flush(&self) -> Result<()> {
        self.journal.sync().map_err(err)?;
        let len = self.journal.size().map_err(err)?;
        self.read(|t| t.db.flush().map_err(err))?;
        // Everything journaled before the flush is in sled's durable state now.
        self.mark_applied(len)?;
        self.read(|t| t.db.flush().map_err(err))?;
        Ok(())
    }
}
