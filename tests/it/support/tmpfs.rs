//! A small tmpfs for tests that need a filesystem of their own (a disk that fills up, a data
//! directory where fsync costs nothing); the tests run as root.

use super::tools::{MOUNT, UMOUNT};
use std::path::Path;

/// A small tmpfs, unmounted when dropped.
pub struct Tmpfs {
    path: std::path::PathBuf,
    _owned: Option<tempfile::TempDir>,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        Tmpfs::mount_on(path, size, Some(dir))
    }

    /// Mount over an existing directory (unmounted, not deleted, when dropped).
    pub fn mount_at(path: &Path, size: &str) -> Tmpfs {
        Tmpfs::mount_on(path.to_path_buf(), size, None)
    }

    fn mount_on(path: std::path::PathBuf, size: &str, owned: Option<tempfile::TempDir>) -> Tmpfs {
        let status = MOUNT
            .command()
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs (the tests run as root)");
        Tmpfs {
            path,
            _owned: owned,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write a file until the filesystem is full; returns its path.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![1u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // Whatever is left below a chunk, byte by byte.
        while f.write_all(&[1]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = UMOUNT.command().arg("-l").arg(&self.path).status();
    }
}
