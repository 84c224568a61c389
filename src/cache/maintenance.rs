//! The maintenance lock: operations that add or remove content wholesale (import, eviction,
//! purges, collection, pinning) take turns, so one never removes what another counts on.
//! What must run alone asks for an [`Exclusive`], the proof that it holds the lock.

use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The lock, shared by clones.
#[derive(Clone, Default)]
pub struct Maintenance(Arc<Mutex<()>>);

/// Held while one maintenance operation runs; the next waits until it is dropped.
pub struct Exclusive(#[allow(dead_code)] OwnedMutexGuard<()>);

impl Maintenance {
    /// Wait for the turn.
    pub async fn exclusive(&self) -> Exclusive {
        Exclusive(self.0.clone().lock_owned().await)
    }

    /// Wait for the turn from a blocking thread (never from the async runtime).
    pub fn blocking_exclusive(&self) -> Exclusive {
        Exclusive(self.0.clone().blocking_lock_owned())
    }
}
