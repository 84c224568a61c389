//! Single flight: concurrent callers asking for the same key share one execution, which runs
//! in its own task so it finishes (and unregisters) even when the caller that started it goes.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

type Slot<V> = watch::Receiver<Option<Result<V>>>;

/// Flights in progress, by key.
pub struct Flights<K, V> {
    running: Arc<Mutex<HashMap<K, Slot<V>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            running: Arc::default(),
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Run `work` for `key`, or join the run already in flight (then `work` is dropped unrun).
    /// Returns the shared result and whether this call joined another.
    pub async fn run<F>(&self, key: K, work: F) -> (Result<V>, bool)
    where
        F: Future<Output = Result<V>> + Send + 'static,
    {
        let (mut slot, joined) = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.get(&key) {
                Some(slot) => (slot.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    running.insert(key.clone(), rx.clone());
                    let guard = Unregister {
                        running: self.running.clone(),
                        key: Some(key),
                    };
                    tokio::spawn(async move {
                        let result = work.await;
                        let _ = tx.send(Some(result));
                        drop(guard);
                    });
                    (rx, false)
                }
            }
        };
        let result = match slot.wait_for(Option::is_some).await {
            Ok(v) => v
                .clone()
                .unwrap_or_else(|| Err(Error::internal("flight ended without an answer"))),
            Err(_) => Err(Error::internal("a fetch task failed")),
        };
        (result, joined)
    }
}

/// Unregisters a flight when its task ends, however it ends (a panic included): later callers
/// then start afresh instead of joining a dead flight.
struct Unregister<K: Hash + Eq, V> {
    running: Arc<Mutex<HashMap<K, Slot<V>>>>,
    key: Option<K>,
}

impl<K: Hash + Eq, V> Drop for Unregister<K, V> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: Arc<Flights<&str, usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, gate) = watch::channel(false);
        let mut handles = Vec::new();
        for _ in 0..8 {
            let (f, runs, mut gate) = (flights.clone(), runs.clone(), gate.clone());
            handles.push(tokio::spawn(async move {
                f.run("k", async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.wait_for(|open| *open).await;
                    Ok(42)
                })
                .await
            }));
        }
        while flights.running.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        let mut joined = 0;
        for h in handles {
            let (r, j) = h.await.unwrap();
            assert_eq!(r.unwrap(), 42);
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 7);
        assert!(
            flights.running.lock().unwrap().is_empty(),
            "finished flights unregister"
        );
    }

    #[tokio::test]
    async fn a_flight_outlives_the_caller_that_started_it() {
        let flights: Arc<Flights<&str, usize>> = Arc::default();
        let (release, mut gate) = watch::channel(false);
        let starter = {
            let f = flights.clone();
            tokio::spawn(async move {
                f.run("k", async move {
                    let _ = gate.wait_for(|open| *open).await;
                    Ok(7)
                })
                .await
            })
        };
        while flights.running.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        starter.abort();
        let joiner = {
            let f = flights.clone();
            tokio::spawn(async move { f.run("k", async { Ok(0) }).await })
        };
        release.send(true).unwrap();
        let (r, joined) = joiner.await.unwrap();
        assert_eq!((r.unwrap(), joined), (7, true));
    }

    #[tokio::test]
    async fn a_panicking_flight_unregisters() {
        let flights: Flights<&str, usize> = Flights::default();
        let (r, _) = flights.run("k", async { panic!("boom") }).await;
        assert!(r.is_err());
        let (r, joined) = flights.run("k", async { Ok(1) }).await;
        assert_eq!(
            (r.unwrap(), joined),
            (1, false),
            "a new flight, not the dead one"
        );
    }
}
