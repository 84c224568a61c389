//! A circuit breaker per upstream: after `threshold` consecutive failures (unreachable, timed
//! out, 5xx, 429) the upstream is marked down and requests fail at once, without waiting on
//! connect or read timeouts, so cached answers are served at cache speed. After the backoff
//! one request probes it; success marks it up, failure doubles the backoff (up to a bound).
//! Every change of state is logged.

use crate::error::Error;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Up or down, as the breaker sees the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Requests go through.
    Up,
    /// Requests fail fast until a probe succeeds.
    Down,
}

/// One upstream's breaker.
pub struct Breaker {
    registry: String,
    threshold: u32,
    base: Duration,
    max: Duration,
    state: Mutex<State>,
}

struct State {
    failures: u32,
    down_until: Option<Instant>,
    backoff: Duration,
    probing: bool,
}

impl Breaker {
    /// A breaker tripping after `threshold` failures, backing off from `base` up to `max`.
    pub fn new(registry: &str, threshold: u32, base: Duration, max: Duration) -> Breaker {
        Breaker {
            registry: registry.to_string(),
            threshold: threshold.max(1),
            base,
            max: max.max(base),
            state: Mutex::new(State {
                failures: 0,
                down_until: None,
                backoff: base,
                probing: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go out now; `Err` (fail fast) while the upstream is down and no
    /// probe is due. When it is due, this request is the probe.
    pub fn admit(&self) -> Result<(), Error> {
        let mut st = self.lock();
        let Some(until) = st.down_until else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= until && !st.probing {
            st.probing = true;
            return Ok(());
        }
        let wait = until.saturating_duration_since(now);
        Err(Error::UpstreamUnavailable {
            registry: self.registry.clone(),
            message: format!(
                "marked down after {} failures in a row; next attempt in {}s",
                st.failures,
                wait.as_secs().max(1)
            ),
        })
    }

    /// The upstream answered (any status but 5xx and 429).
    pub fn success(&self) {
        let mut st = self.lock();
        if st.down_until.is_some() {
            tracing::info!(registry = %self.registry, "upstream is back up");
        }
        *st = State {
            failures: 0,
            down_until: None,
            backoff: self.base,
            probing: false,
        };
    }

    /// The upstream could not answer.
    pub fn failure(&self, why: &str) {
        let mut st = self.lock();
        st.failures = st.failures.saturating_add(1);
        if st.probing {
            st.probing = false;
            st.backoff = (st.backoff * 2).min(self.max);
            st.down_until = Some(Instant::now() + st.backoff);
            tracing::warn!(registry = %self.registry, backoff = ?st.backoff, error = why, "upstream still down");
        } else if st.down_until.is_none() && st.failures >= self.threshold {
            st.backoff = self.base;
            st.down_until = Some(Instant::now() + self.base);
            tracing::warn!(registry = %self.registry, failures = st.failures, backoff = ?self.base, error = why, "upstream marked down: failing fast, serving from the cache");
        }
    }

    /// A request ended without an answer because its caller gave up (a client went away):
    /// that says nothing about the upstream, so it is not counted; a probe slot it held is
    /// released for the next request.
    fn abandoned(&self) {
        self.lock().probing = false;
    }

    /// Admit a request and return its guard: the request must end as a success or a
    /// failure. A guard dropped without either (the caller gave up mid-request) is neutral:
    /// clients that go away never mark an upstream down, and a lost probe never leaves the
    /// breaker waiting for it.
    pub fn attempt(&self) -> Result<Attempt<'_>, Error> {
        self.admit()?;
        Ok(Attempt {
            breaker: self,
            done: false,
        })
    }

    /// The breaker's view now.
    pub fn health(&self) -> Health {
        if self.lock().down_until.is_some() {
            Health::Down
        } else {
            Health::Up
        }
    }
}

/// One admitted request; see [`Breaker::attempt`].
pub struct Attempt<'a> {
    breaker: &'a Breaker,
    done: bool,
}

impl Attempt<'_> {
    /// The upstream answered.
    pub fn success(mut self) {
        self.done = true;
        self.breaker.success();
    }

    /// The upstream could not answer.
    pub fn failure(mut self, why: &str) {
        self.done = true;
        self.breaker.failure(why);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_the_threshold_probes_and_recovers() {
        let b = Breaker::new("r", 3, Duration::from_millis(20), Duration::from_millis(80));
        for _ in 0..2 {
            b.admit().unwrap();
            b.failure("x");
        }
        assert_eq!(b.health(), Health::Up, "two failures: still up");
        b.admit().unwrap();
        b.failure("x");
        assert_eq!(b.health(), Health::Down);
        let e = b.admit().unwrap_err().to_string();
        assert!(e.contains("marked down after 3 failures"), "{e}");
        std::thread::sleep(Duration::from_millis(30));
        b.admit().expect("the probe goes out");
        assert!(b.admit().is_err(), "one probe at a time");
        b.failure("x");
        assert!(b.admit().is_err(), "a failed probe backs off again");
        std::thread::sleep(Duration::from_millis(50));
        b.admit().expect("the next probe");
        b.success();
        assert_eq!(b.health(), Health::Up);
        b.admit().unwrap();
    }

    #[test]
    fn an_abandoned_probe_does_not_wedge_the_breaker() {
        let b = Breaker::new("r", 1, Duration::from_millis(10), Duration::from_millis(10));
        b.attempt().unwrap().failure("x");
        std::thread::sleep(Duration::from_millis(15));
        drop(b.attempt().expect("the probe")); // its client went away
        std::thread::sleep(Duration::from_millis(15));
        b.attempt().expect("another probe is allowed").success();
        assert_eq!(b.health(), Health::Up);
    }

    #[test]
    fn abandoned_requests_never_mark_an_upstream_down() {
        let b = Breaker::new("r", 2, Duration::from_secs(60), Duration::from_secs(60));
        for _ in 0..10 {
            drop(b.attempt().expect("admitted")); // each client went away
        }
        assert_eq!(b.health(), Health::Up);
        b.attempt().unwrap().failure("x");
        drop(b.attempt().unwrap());
        assert_eq!(
            b.health(),
            Health::Up,
            "an abandoned request is not the second failure"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new("r", 2, Duration::from_secs(60), Duration::from_secs(60));
        b.failure("x");
        b.success();
        b.failure("x");
        assert_eq!(b.health(), Health::Up);
    }
}
