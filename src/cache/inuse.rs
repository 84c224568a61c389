//! Blobs being served right now, so eviction and purges never remove one under a reader.
//! Every blob answer holds a [`Hold`] until its transfer ends.

use crate::oci::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counts of readers per digest.
#[derive(Default, Clone)]
pub struct InUse {
    counts: Arc<Mutex<HashMap<Digest, usize>>>,
}

impl InUse {
    /// Mark `digest` as being served until the returned hold is dropped.
    pub fn hold(&self, digest: &Digest) -> Hold {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.clone())
            .or_default() += 1;
        Hold {
            inuse: self.clone(),
            digest: digest.clone(),
        }
    }

    /// Whether anything is serving `digest` now.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest)
    }
}

/// One reader of a blob; dropping it releases the blob.
pub struct Hold {
    inuse: InUse,
    digest: Digest,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut counts = self.inuse.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_count_readers() {
        let inuse = InUse::default();
        let d = Digest::of(b"x");
        let a = inuse.hold(&d);
        let b = inuse.hold(&d);
        drop(a);
        assert!(inuse.contains(&d));
        drop(b);
        assert!(!inuse.contains(&d));
    }
}
