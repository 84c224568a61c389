//! Re-hash every stored blob. One whose content no longer matches its digest (or cannot be
//! read) is moved to `<data>/quarantine/`: it is simply missing from then on, and the next
//! pull fetches it again (its repository links stay, which is right: it still belongs there).

use super::VerifyReport;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::oci::{Digest, Verifier};
use crate::progress::Progress;
use crate::store::BlobStore;
use std::io::{self, Read};

/// The progress unit of a verification.
const UNIT: &str = "verify";
/// Bytes read at a time.
const BUF: usize = 1 << 20;
/// Progress is reported at most once per this many bytes hashed.
const REPORT_EVERY: u64 = 32 << 20;

/// See [`super::verify`].
pub(super) async fn verify(cache: &Cache, progress: &Progress) -> Result<VerifyReport> {
    let (store, p) = (cache.store().clone(), progress.clone());
    let report = tokio::task::spawn_blocking(move || run(store.as_ref(), &p))
        .await
        .map_err(Error::internal)??;
    for d in &report.corrupt {
        if let Ok(d) = d.parse::<Digest>() {
            cache.forget(&d).await;
        }
    }
    Ok(report)
}

/// Hash every blob (blocking), quarantining the bad ones.
fn run(store: &dyn BlobStore, progress: &Progress) -> Result<VerifyReport> {
    let blobs = store.list()?;
    let total: u64 = blobs.iter().map(|(_, s)| s).sum();
    progress.begin(
        UNIT,
        format!("verifying {} blobs", blobs.len()),
        Some(total),
    );
    let mut report = VerifyReport::default();
    let mut reported = 0;
    for (digest, _) in blobs {
        let base = report.bytes;
        let mut on_read = |n: u64| {
            if base + n >= reported + REPORT_EVERY {
                reported = base + n;
                progress.advance(UNIT, reported, None);
            }
        };
        let why = match hash(store, &digest, &mut on_read) {
            // Removed since the listing (evicted, purged): nothing to check.
            Ok(None) => continue,
            Ok(Some((actual, n))) => {
                report.bytes += n;
                (actual != digest).then(|| format!("its content hashes to {actual}"))
            }
            // A read error (out of descriptors, a passing I/O fault) says nothing about the
            // content: report it, keep the blob.
            Err(e) => {
                report.checked += 1;
                tracing::warn!(%digest, error = %e, "blob could not be read for verification");
                progress.note(format!("{digest} could not be read: {e}"));
                report.unreadable.push(digest.to_string());
                continue;
            }
        };
        report.checked += 1;
        // Hash again before moving it aside: it may have been removed and fetched afresh.
        let still_bad = why.is_some()
            && matches!(hash(store, &digest, &mut |_| {}), Ok(Some((a, _))) if a != digest);
        if let Some(why) = why.filter(|_| still_bad) {
            let place = match store.quarantine(&digest)? {
                Some(path) => format!("moved to {}", path.display()),
                None => "already gone".to_string(),
            };
            tracing::error!(%digest, %why, %place, "corrupt blob quarantined; the next pull fetches it again");
            progress.note(format!("{digest} is corrupt ({why}): {place}"));
            report.corrupt.push(digest.to_string());
        }
    }
    progress.advance(UNIT, report.bytes, None);
    let message = match report.corrupt.len() {
        0 => None,
        n => Some(format!("{n} corrupt blobs quarantined")),
    };
    progress.end(UNIT, report.corrupt.is_empty(), message);
    Ok(report)
}

/// The digest and length of a stored blob's content, `None` when it is not stored.
fn hash(
    store: &dyn BlobStore,
    digest: &Digest,
    on_read: &mut dyn FnMut(u64),
) -> io::Result<Option<(Digest, u64)>> {
    let Some(mut file) = store.open(digest)? else {
        return Ok(None);
    };
    let mut verifier = Verifier::new();
    let mut buf = vec![0u8; BUF];
    let mut n = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                verifier.update(&buf[..k]);
                n += k as u64;
                on_read(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some((verifier.finish(), n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Event;
    use crate::store::fs::FsStore;

    #[test]
    fn finds_and_quarantines_corrupt_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let (good, bad) = (Digest::of(b"good"), Digest::of(b"bad"));
        store.put(&good, b"good").unwrap();
        store.put(&bad, b"bad").unwrap();
        std::fs::write(store.path(&bad), b"bAd").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let report = run(&store, &Progress::to(tx)).unwrap();
        assert_eq!(report.checked, 2);
        assert_eq!(report.bytes, 7);
        assert_eq!(report.corrupt, vec![bad.to_string()]);
        assert_eq!(store.stat(&bad).unwrap(), None);
        assert_eq!(store.stat(&good).unwrap(), Some(4));
        assert_eq!(
            std::fs::read_dir(dir.path().join("quarantine"))
                .unwrap()
                .count(),
            1
        );
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        assert!(matches!(
            events.first(),
            Some(Event::Begin { total: Some(7), .. })
        ));
        assert!(matches!(events.last(), Some(Event::End { ok: false, .. })));
    }
}
