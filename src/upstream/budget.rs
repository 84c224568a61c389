//! A registry's pull budget, as Docker Hub announces it: `ratelimit-limit: 100;w=21600` and
//! `ratelimit-remaining: 76;w=21600` on manifest GET and HEAD answers (a GET counts against
//! the budget, a HEAD does not). Below the configured reserve, airlock spends what is left
//! on what clients need: a moved tag keeps its last known answer, and preload pauses.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The last reading of an upstream's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Pulls the window allows.
    pub limit: u64,
    /// Pulls left in it.
    pub remaining: u64,
    /// The window's length, when announced.
    pub window: Option<Duration>,
}

/// What is known of one upstream's budget, and the reserve to keep.
#[derive(Debug)]
pub struct Budget {
    reserve: u64,
    last: Mutex<Option<(Reading, Instant)>>,
}

impl Budget {
    /// No reading yet; `reserve` pulls are kept for clients.
    pub fn new(reserve: u64) -> Budget {
        Budget {
            reserve,
            last: Mutex::new(None),
        }
    }

    /// Take the budget headers of an answer, if it has them.
    pub fn observe(&self, headers: &http::HeaderMap) -> Option<Reading> {
        let value = |name: &str| headers.get(name)?.to_str().ok();
        let (limit, window) = parse(value("ratelimit-limit")?)?;
        let (remaining, w) = parse(value("ratelimit-remaining")?)?;
        let reading = Reading {
            limit,
            remaining,
            window: window.or(w),
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((reading, Instant::now()));
        Some(reading)
    }

    /// Why the budget is too low to spend on anything but client requests, or `None`. A
    /// reading older than its window no longer counts (the window has turned).
    pub fn low(&self) -> Option<String> {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (r, at) = last?;
        let window = r.window.unwrap_or(Duration::from_secs(6 * 3600));
        (at.elapsed() < window && r.remaining <= self.reserve).then(|| {
            format!(
                "{} of {} pulls left in the upstream's rate-limit window, at or below the ratelimit_reserve of {}",
                r.remaining, r.limit, self.reserve
            )
        })
    }
}

/// `76;w=21600` or `76` → (76, window).
fn parse(value: &str) -> Option<(u64, Option<Duration>)> {
    let mut parts = value.split(';');
    let n = parts.next()?.trim().parse().ok()?;
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse().ok())
        .map(Duration::from_secs);
    Some((n, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(limit: &str, remaining: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("ratelimit-limit", limit.parse().unwrap());
        h.insert("ratelimit-remaining", remaining.parse().unwrap());
        h
    }

    #[test]
    fn docker_hub_headers_are_read_and_the_reserve_applies() {
        let b = Budget::new(10);
        assert_eq!(b.low(), None, "nothing known: nothing held back");
        let r = b.observe(&headers("100;w=21600", "76;w=21600")).unwrap();
        assert_eq!(
            r,
            Reading {
                limit: 100,
                remaining: 76,
                window: Some(Duration::from_secs(21600))
            }
        );
        assert_eq!(b.low(), None);
        b.observe(&headers("100;w=21600", "10;w=21600"));
        assert!(b.low().unwrap().contains("10 of 100"));
        assert_eq!(b.observe(&headers("100", "x")), None, "garbage is ignored");
        assert!(b.low().is_some(), "and keeps the last reading");
        assert_eq!(Budget::new(10).observe(&http::HeaderMap::new()), None);
    }

    #[test]
    fn a_turned_window_forgets_the_reading() {
        let b = Budget::new(10);
        b.observe(&headers("100;w=0", "1;w=0"));
        assert_eq!(b.low(), None);
    }
}
