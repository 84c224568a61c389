//! Chunks of blobs mapped from their files, and the spans they came from, for connections
//! that send them with `sendfile`.
//!
//! A plain-TCP connection recognises a mapped chunk by its address and sends it with
//! `sendfile` from the file it maps (see `api::sendfile`): no copy into a buffer, no hand-off
//! to a blocking thread, and the mapping's pages are never touched. That is sound because the
//! bytes at a mapped address are, by construction, the bytes of the file span it maps. TLS
//! connections, which would have to read the mapping on a worker thread (blocking on the disk
//! if a page was evicted since, and dying of SIGBUS if the disk then failed), get chunks read
//! into memory instead.
//!
//! Mapping is safe because the bytes mapped are final: a stored blob is renamed into place
//! only after its bytes hashed to its digest, a fill's spool is only ever appended to, and
//! airlock never writes, truncates or rewrites either; eviction and gc unlink, which leaves
//! every mapping (and every open file) valid until it is dropped. Only someone outside airlock
//! truncating a file in the store could make a read of a mapping fault.

use super::resident;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A span of a file: where the bytes of a mapped address come from.
pub struct Span {
    /// The file.
    pub file: Arc<File>,
    /// Offset of the first byte.
    pub offset: u64,
    /// Bytes.
    pub len: usize,
}

/// The live mappings by start address: (length, file, offset of the start).
type Regions = BTreeMap<usize, (usize, Arc<File>, u64)>;
static REGIONS: Mutex<Regions> = Mutex::new(BTreeMap::new());
/// How many are live: writes look them up only when some are.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// At most this many at once (each is one of the process's memory mappings, which Linux
/// caps at `vm.max_map_count`, 65 530 by default): clients that hold many chunks unsent, as
/// HTTP/2 streams with no flow-control window do, get chunks read into memory instead, never
/// a process that can no longer map anything.
const MAX_LIVE: usize = 4096;

fn regions() -> std::sync::MutexGuard<'static, Regions> {
    // A panic while holding the lock leaves the map consistent (every change is one call).
    REGIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A mapping that is registered while it lives.
struct Mapped {
    map: memmap2::Mmap,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // Before the unmap: no address of it is looked up once it may be reused.
        regions().remove(&(self.map.as_ptr() as usize));
        LIVE.fetch_sub(1, Ordering::Release);
    }
}

/// Bytes `pos..pos + n` of `file` as a slice of a mapping of just that span (from the page
/// before it), so that what a client holds is the chunk it is being sent, not the whole blob;
/// the mapping goes when the chunk is dropped. `None` where the span cannot be mapped or is
/// not all in the page cache (sending it would block this thread on the disk): the caller
/// reads it on a blocking thread instead, which also brings it into the cache.
///
/// Only for bytes that are final: a stored blob, or the part of a fill's spool already
/// written.
pub fn chunk(file: &Arc<File>, pos: u64, n: usize) -> Option<Bytes> {
    if LIVE.load(Ordering::Relaxed) >= MAX_LIVE {
        return None;
    }
    let page = resident::page_size() as u64;
    let start = pos - pos % page;
    let skip = (pos - start) as usize;
    let cached = resident::cached(file, start, skip + n);
    if cached == Some(false) {
        return None;
    }
    // SAFETY: see the module comment: these bytes are never written or truncated again.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(start)
            .len(skip + n)
            .map(&**file)
    }
    .ok()?;
    if cached.is_none() && !resident::mapped(&map) {
        return None;
    }
    let addr = map.as_ptr() as usize;
    LIVE.fetch_add(1, Ordering::Acquire);
    regions().insert(addr, (map.len(), file.clone(), start));
    Some(Bytes::from_owner(Mapped { map }).slice(skip..))
}

/// The file span whose bytes `buf` begins with, if `buf` begins inside a live mapping made by
/// [`chunk`]: then `buf[..span.len]` equals those bytes of that file.
pub fn span(buf: &[u8]) -> Option<Span> {
    span_at(buf.as_ptr() as usize, buf.len())
}

fn span_at(addr: usize, n: usize) -> Option<Span> {
    if n == 0 || LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let regions = regions();
    let (&start, (len, file, offset)) = regions.range(..=addr).next_back()?;
    let into = addr - start;
    (into < *len).then(|| Span {
        file: file.clone(),
        offset: offset + into as u64,
        len: n.min(len - into),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(data: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        Arc::new(f)
    }

    #[test]
    fn a_chunk_reads_as_its_bytes_wherever_it_starts() {
        let data: Vec<u8> = (0..3 << 20).map(|i: usize| (i * 7 % 251) as u8).collect();
        let f = file(&data);
        // Just written, so in the page cache; an unaligned start and length are honoured.
        for (pos, n) in [(0, 4096), (12_345, 1_500_000), ((3 << 20) - 10, 10)] {
            let chunk = chunk(&f, pos as u64, n).unwrap();
            assert_eq!(&chunk[..], &data[pos..pos + n], "chunk at {pos}");
        }
    }

    #[test]
    fn a_chunk_outlives_the_unlinked_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![42u8; 1 << 20]).unwrap();
        let chunk = chunk(&Arc::new(File::open(&path).unwrap()), 100, 1 << 19).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(chunk.iter().all(|b| *b == 42));
    }

    #[test]
    fn a_span_names_the_file_bytes_of_any_slice_of_a_chunk_and_nothing_else() {
        let data: Vec<u8> = (0..1 << 20).map(|i: usize| (i % 253) as u8).collect();
        let f = file(&data);
        let c = chunk(&f, 5000, 100_000).unwrap();
        let s = span(&c).unwrap();
        assert_eq!((s.offset, s.len), (5000, 100_000));
        // What hyper passes after a partial write: the rest of the chunk.
        let rest = c.slice(70_000..);
        let s = span(&rest).unwrap();
        assert_eq!((s.offset, s.len), (75_000, 30_000));
        // A copy of the bytes is not the file's, whatever it holds.
        let copy = rest.to_vec();
        assert!(span(&copy).is_none());
        assert!(span(&[]).is_none());
        // Past the mapping's end: not this chunk's.
        let end = c.as_ptr() as usize + c.len();
        assert!(span_at(end + (1 << 30), 1).is_none_or(|s| !Arc::ptr_eq(&s.file, &f)));
    }
}
