//! Whether a span of a file is all in the page cache, so that sending it from the async
//! runtime cannot block on the disk.
//!
//! `cachestat(2)` (Linux 6.5) asks the file's page cache directly, a folio at a time: about
//! 1 µs for 4 MiB measured here. Kernels without it, and sandboxes whose seccomp filter
//! refuses it, are asked with `mincore(2)` over a mapping of the span, a page at a time
//! (about 75 µs for 4 MiB here, the largest cost of sending a cached blob after `sendfile`
//! itself).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// The system's page size.
pub(super) fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
}

/// Set once `cachestat` turned out not to be there (or not allowed): not asked again.
static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);

/// `cachestat`'s number: 451 on every architecture (the syscall came after they were
/// unified); the `libc` crate does not name it for x86_64 or aarch64 yet.
const SYS_CACHESTAT: libc::c_long = 451;

/// `struct cachestat_range` of `<linux/mman.h>`.
#[repr(C)]
struct Range {
    off: u64,
    len: u64,
}

/// `struct cachestat` of `<linux/mman.h>`: counts in pages.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether bytes `start..start + len` of `file` (`start` on a page) are all in the page
/// cache; `None` where `cachestat` cannot tell: ask [`mapped`] instead.
pub(super) fn cached(file: &File, start: u64, len: usize) -> Option<bool> {
    if NO_CACHESTAT.load(Ordering::Relaxed) {
        return None;
    }
    let range = Range {
        off: start,
        len: len as u64,
    };
    let mut stat = Cachestat::default();
    // SAFETY: both pointers are to live values of the layouts the kernel reads and writes;
    // flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Cachestat,
            0,
        )
    };
    if rc == 0 {
        return Some(stat.nr_cache >= len.div_ceil(page_size()) as u64);
    }
    let e = std::io::Error::last_os_error().raw_os_error();
    if matches!(e, Some(libc::ENOSYS | libc::EPERM | libc::EACCES)) {
        NO_CACHESTAT.store(true, Ordering::Relaxed);
    }
    None
}

/// Whether every page of `map` is in the page cache (asked a window of pages at a time, so
/// that no answer buffer is allocated per chunk).
pub(super) fn mapped(map: &memmap2::Mmap) -> bool {
    const WINDOW: usize = 1024;
    let mut pages = [0u8; WINDOW];
    let page = page_size();
    map.chunks(WINDOW * page).all(|part| {
        let n = part.len().div_ceil(page);
        // SAFETY: `part` starts on a page of the live mapping (it starts there, and every
        // window before it is whole pages); `pages` has a byte for each of its `n` pages.
        let rc = unsafe {
            libc::mincore(
                part.as_ptr() as *mut libc::c_void,
                part.len(),
                pages.as_mut_ptr(),
            )
        };
        rc == 0 && pages[..n].iter().all(|p| p & 1 == 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Both ways of asking agree, on a file in the page cache and on one that left it.
    #[test]
    fn cachestat_and_mincore_agree_on_what_is_in_the_page_cache() {
        // On the crate's own disk: a tmpfs file cannot leave the page cache.
        let mut f = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        f.write_all(&vec![7u8; 6 << 20]).unwrap();
        let len = 5 << 20;
        // SAFETY: the file is this test's own, never written again.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&f) }.unwrap();
        // (`None` only where the kernel has no cachestat: then mincore answers alone.)
        assert_ne!(cached(&f, 0, len), Some(false), "just written");
        assert!(mapped(&map), "just written");
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert_ne!(
            cached(&f, 0, len),
            Some(true),
            "dropped from the page cache"
        );
        assert!(!mapped(&map), "dropped from the page cache");
    }
}
