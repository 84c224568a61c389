//! Every metric airlock exports, in one struct registered on an explicit
//! `prometheus::Registry` (no globals), rendered at `/metrics` on the admin listener. Names
//! are `airlock_*` (`_total` counters, `_seconds`, `_bytes`); labels are small closed sets —
//! a registry nobody configured is `other`, never whatever a client sent. Known label sets
//! are created at zero so dashboards have series from the first scrape.

use crate::oci::Registry;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};
use std::collections::HashSet;
use std::sync::Arc;

/// Request kinds.
pub const KINDS: [&str; 6] = ["manifest", "blob", "tags", "referrers", "base", "other"];
/// Cache outcomes.
pub const RESULTS: [&str; 4] = ["hit", "miss", "stale", "coalesced"];
/// Why a request was refused by authentication, access rules or the fetch policy.
pub const DENIAL_REASONS: [&str; 6] = [
    "no_credentials",
    "bad_credentials",
    "bad_token",
    "throttled",
    "rule",
    "fetch_policy",
];
/// HTTP status classes.
pub const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// The collectors.
pub struct Metrics {
    registry: prometheus::Registry,
    known: HashSet<Arc<str>>,
    /// Requests answered, by kind, method and status class.
    pub requests: IntCounterVec,
    /// Requests being answered now.
    pub requests_in_flight: IntGauge,
    /// Time to answer, by kind (until the body is sent).
    pub request_seconds: HistogramVec,
    /// Cache outcomes by kind, registry and result.
    pub cache_results: IntCounterVec,
    /// Body bytes sent to clients, by source (`cache`: saved; `upstream`: fetched for it).
    pub served_bytes: IntCounterVec,
    /// Requests to upstreams, by registry and status class (`error`: no answer).
    pub upstream_requests: IntCounterVec,
    /// Upstream request latency, by registry.
    pub upstream_seconds: HistogramVec,
    /// 1 while an upstream is up, 0 while its circuit breaker holds it down.
    pub upstream_up: IntGaugeVec,
    /// Docker Hub's rate-limit window: pulls allowed and left, by registry.
    pub upstream_ratelimit: IntGaugeVec,
    /// Moved tags answered with their last known digest to save the budget, by registry.
    pub ratelimit_deferred: IntCounterVec,
    /// Blob downloads running.
    pub fills_in_flight: IntGauge,
    /// Blob downloads waiting for their turn (`storage.max_downloads`).
    pub fills_queued: IntGauge,
    /// Bytes written to the cache by fills, by registry.
    pub fill_bytes: IntCounterVec,
    /// Bytes of stored blobs.
    pub cache_size: IntGauge,
    /// Stored blobs.
    pub cache_blobs: IntGauge,
    /// Bytes a pin protects.
    pub cache_pinned: IntGauge,
    /// `storage.max_size` (0: no cap).
    pub cache_max: IntGauge,
    /// Images evicted.
    pub evictions: IntCounter,
    /// Bytes evicted.
    pub evicted_bytes: IntCounter,
    /// Bytes brought in by preloads.
    pub preload_bytes: IntCounter,
    /// Images preloaded, by result (`ready`, `not_ready`).
    pub preload_images: IntCounterVec,
    /// Bytes read by imports.
    pub import_bytes: IntCounter,
    /// Images imported, and bundles refused (`ok`, `refused`).
    pub imports: IntCounterVec,
    /// Requests refused by authentication, access rules or the fetch policy, by reason.
    pub auth_denials: IntCounterVec,
    /// Signature policy checks of runnable manifests, by result and the rule's mode.
    pub signature_checks: IntCounterVec,
    /// What every request records, resolved once.
    served: Served,
}

/// The series every request records, resolved once: no label hashing or map lock per
/// request. Indexed by kind, method (`GET`, `HEAD`, other) and status class.
#[derive(Default)]
struct Served {
    counts: Vec<IntCounter>,
    seconds: Vec<prometheus::Histogram>,
    /// `cache`, `upstream`.
    bytes: Vec<IntCounter>,
}

const METHODS: [&str; 3] = ["GET", "HEAD", "other"];

/// Where a status's class is in [`STATUS_CLASSES`].
fn class_index(status: u16) -> usize {
    match status {
        200..=299 => 0,
        300..=399 => 1,
        400..=499 => 2,
        _ => 3,
    }
}

/// One unit of an in-flight gauge, given back when dropped: on completion, on cancellation
/// (a client that went away) and on a panic alike, so the gauge never leaks.
pub struct InFlight(IntGauge);

impl InFlight {
    /// Count one more on `gauge` until the guard is dropped.
    pub fn new(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Metrics {
    /// All collectors, registered, with label sets for `registries` initialised.
    pub fn new(registries: &[Registry], max_size: Option<u64>) -> Metrics {
        let buckets = vec![
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let hist = |name: &str, help: &str, label: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.clone()),
                &[label],
            )
            .expect("valid metric")
        };
        let mut m = Metrics {
            registry: prometheus::Registry::new(),
            known: registries.iter().map(|r| Arc::from(r.to_string())).collect(),
            requests: counter(
                "airlock_requests_total",
                "Requests answered, by kind, method and status class.",
                &["kind", "method", "status"],
            ),
            requests_in_flight: IntGauge::new(
                "airlock_requests_in_flight",
                "Requests being answered now.",
            )
            .expect("valid"),
            request_seconds: hist(
                "airlock_request_duration_seconds",
                "Time to answer a request, body included.",
                "kind",
            ),
            cache_results: counter(
                "airlock_cache_results_total",
                "Cache outcomes: hit, miss, stale (served because the upstream could not answer), coalesced (joined a fetch in flight).",
                &["kind", "registry", "result"],
            ),
            served_bytes: counter(
                "airlock_served_bytes_total",
                "Body bytes sent to clients, by source: cache (saved upstream traffic) or upstream.",
                &["source"],
            ),
            upstream_requests: counter(
                "airlock_upstream_requests_total",
                "Requests to upstreams, by registry and status class (error: no answer).",
                &["registry", "status"],
            ),
            upstream_seconds: hist(
                "airlock_upstream_request_duration_seconds",
                "Upstream request latency until the answer's headers.",
                "registry",
            ),
            upstream_up: IntGaugeVec::new(
                Opts::new(
                    "airlock_upstream_up",
                    "1 while the upstream is up, 0 while its circuit breaker holds it down.",
                ),
                &["registry"],
            )
            .expect("valid"),
            upstream_ratelimit: IntGaugeVec::new(
                Opts::new(
                    "airlock_upstream_ratelimit",
                    "The upstream's announced rate-limit window (ratelimit-limit / ratelimit-remaining headers): kind=limit|remaining.",
                ),
                &["registry", "kind"],
            )
            .expect("valid"),
            ratelimit_deferred: counter(
                "airlock_ratelimit_deferred_total",
                "Moved tags answered with their last known digest because the upstream's rate-limit budget was at the reserve.",
                &["registry"],
            ),
            fills_in_flight: IntGauge::new("airlock_fills_in_flight", "Blob downloads running.")
                .expect("valid"),
            fills_queued: IntGauge::new(
                "airlock_fills_queued",
                "Blob downloads waiting for their turn (storage.max_downloads).",
            )
            .expect("valid"),
            fill_bytes: counter(
                "airlock_fill_bytes_total",
                "Bytes downloaded into the cache, by registry.",
                &["registry"],
            ),
            cache_size: IntGauge::new(
                "airlock_cache_size_bytes",
                "Bytes of stored blobs, manifests included.",
            )
            .expect("valid"),
            cache_blobs: IntGauge::new("airlock_cache_blobs", "Stored blobs, manifests included.")
                .expect("valid"),
            cache_pinned: IntGauge::new(
                "airlock_cache_pinned_bytes",
                "Bytes of stored content a pin protects.",
            )
            .expect("valid"),
            cache_max: IntGauge::new(
                "airlock_cache_max_size_bytes",
                "storage.max_size (0 when there is no cap).",
            )
            .expect("valid"),
            evictions: IntCounter::new(
                "airlock_evictions_total",
                "Images evicted to stay under storage.max_size.",
            )
            .expect("valid"),
            evicted_bytes: IntCounter::new(
                "airlock_evicted_bytes_total",
                "Bytes freed by eviction.",
            )
            .expect("valid"),
            preload_bytes: IntCounter::new(
                "airlock_preload_bytes_total",
                "Bytes brought in by preloads (downloaded or found cached).",
            )
            .expect("valid"),
            preload_images: counter(
                "airlock_preload_images_total",
                "Images preloaded, by offline readiness.",
                &["result"],
            ),
            import_bytes: IntCounter::new(
                "airlock_import_bytes_total",
                "Blob bytes read from imported bundles.",
            )
            .expect("valid"),
            imports: counter(
                "airlock_imports_total",
                "Bundle imports, by result.",
                &["result"],
            ),
            auth_denials: counter(
                "airlock_auth_denials_total",
                "Requests refused: no_credentials, bad_credentials, bad_token, throttled (logins), rule (an access rule), fetch_policy.",
                &["reason"],
            ),
            signature_checks: counter(
                "airlock_signature_checks_total",
                "Manifests a [[signatures]] rule covers, by result (verified, missing: no signature, refused: none that counts) and mode (enforce, warn).",
                &["result", "mode"],
            ),
            served: Served::default(),
        };
        m.cache_max.set(max_size.unwrap_or(0) as i64);
        m.register();
        m.initialise();
        m
    }

    /// Count a request answered: by kind (one of [`KINDS`]), method and status, and the
    /// time it took.
    pub fn count_request(&self, kind: &str, method: &http::Method, status: u16, seconds: f64) {
        let method = match *method {
            http::Method::GET => 0,
            http::Method::HEAD => 1,
            _ => 2,
        };
        let class = class_index(status);
        match KINDS.iter().position(|k| *k == kind) {
            Some(k) => {
                let at = (k * METHODS.len() + method) * STATUS_CLASSES.len() + class;
                self.served.counts[at].inc();
                self.served.seconds[k].observe(seconds);
            }
            None => {
                let labels = [kind, METHODS[method], STATUS_CLASSES[class]];
                self.requests.with_label_values(&labels).inc();
                self.request_seconds
                    .with_label_values(&[kind])
                    .observe(seconds);
            }
        }
    }

    /// Count body bytes sent to a client, from the cache or fetched for it.
    pub fn count_served(&self, from_cache: bool, bytes: u64) {
        self.served.bytes[usize::from(!from_cache)].inc_by(bytes);
    }

    fn register(&self) {
        let build = IntGaugeVec::new(
            Opts::new("airlock_build_info", "Always 1; the version as a label."),
            &["version"],
        )
        .expect("valid");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(build),
            Box::new(self.requests.clone()),
            Box::new(self.requests_in_flight.clone()),
            Box::new(self.request_seconds.clone()),
            Box::new(self.cache_results.clone()),
            Box::new(self.signature_checks.clone()),
            Box::new(self.served_bytes.clone()),
            Box::new(self.upstream_requests.clone()),
            Box::new(self.upstream_seconds.clone()),
            Box::new(self.upstream_up.clone()),
            Box::new(self.upstream_ratelimit.clone()),
            Box::new(self.ratelimit_deferred.clone()),
            Box::new(self.fills_in_flight.clone()),
            Box::new(self.fills_queued.clone()),
            Box::new(self.fill_bytes.clone()),
            Box::new(self.cache_size.clone()),
            Box::new(self.cache_blobs.clone()),
            Box::new(self.cache_pinned.clone()),
            Box::new(self.cache_max.clone()),
            Box::new(self.evictions.clone()),
            Box::new(self.evicted_bytes.clone()),
            Box::new(self.preload_bytes.clone()),
            Box::new(self.preload_images.clone()),
            Box::new(self.import_bytes.clone()),
            Box::new(self.imports.clone()),
            Box::new(self.auth_denials.clone()),
        ];
        for c in all {
            self.registry.register(c).expect("metric names are unique");
        }
    }

    /// Series at zero for every known label set, so a rate is defined from the start.
    /// Resolving the handles every request records makes their series, too.
    fn initialise(&mut self) {
        self.served = Served {
            counts: KINDS
                .iter()
                .flat_map(|k| METHODS.iter().map(move |me| (k, me)))
                .flat_map(|(k, me)| STATUS_CLASSES.iter().map(move |c| [*k, *me, *c]))
                .map(|labels| self.requests.with_label_values(&labels))
                .collect(),
            seconds: KINDS
                .iter()
                .map(|k| self.request_seconds.with_label_values(&[k]))
                .collect(),
            bytes: ["cache", "upstream"]
                .iter()
                .map(|s| self.served_bytes.with_label_values(&[s]))
                .collect(),
        };
        for registry in &self.known {
            for kind in ["manifest", "blob", "tags", "referrers"] {
                for result in RESULTS {
                    self.cache_results
                        .with_label_values(&[kind, registry, result]);
                }
            }
            for status in STATUS_CLASSES.iter().chain(&["error"]) {
                self.upstream_requests
                    .with_label_values(&[&**registry, status]);
            }
            self.upstream_seconds.with_label_values(&[registry]);
            self.upstream_up.with_label_values(&[registry]).set(1);
            self.ratelimit_deferred.with_label_values(&[registry]);
            self.fill_bytes.with_label_values(&[registry]);
        }
        for result in ["ready", "not_ready"] {
            self.preload_images.with_label_values(&[result]);
        }
        for result in ["ok", "refused"] {
            self.imports.with_label_values(&[result]);
        }
        for reason in DENIAL_REASONS {
            self.auth_denials.with_label_values(&[reason]);
        }
        for result in ["verified", "missing", "refused"] {
            for mode in ["enforce", "warn"] {
                self.signature_checks.with_label_values(&[result, mode]);
            }
        }
    }

    /// The label of `registry` if it is configured, shared (a request's line holds it);
    /// `None` stands for `other`.
    pub fn known_registry(&self, registry: &str) -> Option<Arc<str>> {
        self.known.get(registry).cloned()
    }

    /// The label for `registry`: its name if configured, else `other`.
    pub fn registry_label<'a>(&'a self, registry: &'a str) -> &'a str {
        if self.known.contains(registry) {
            registry
        } else {
            "other"
        }
    }

    /// The class of an HTTP status (`2xx` …).
    pub fn status_class(status: u16) -> &'static str {
        STATUS_CLASSES[class_index(status)]
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_under_their_own_labels_through_the_resolved_handles() {
        let m = Metrics::new(&[Registry::docker_hub()], None);
        let count = |l: [&str; 3]| m.requests.with_label_values(&l).get();
        m.count_request("blob", &http::Method::HEAD, 404, 0.01);
        m.count_request("tags", &http::Method::DELETE, 503, 0.01);
        m.count_request("manifest", &http::Method::GET, 200, 0.01);
        m.count_request("manifest", &http::Method::GET, 304, 0.01);
        assert_eq!(count(["blob", "HEAD", "4xx"]), 1);
        assert_eq!(count(["tags", "other", "5xx"]), 1);
        assert_eq!(count(["manifest", "GET", "2xx"]), 1);
        assert_eq!(count(["manifest", "GET", "3xx"]), 1);
        assert_eq!(count(["blob", "GET", "4xx"]), 0);
        let observed = |k: &str| m.request_seconds.with_label_values(&[k]).get_sample_count();
        assert_eq!(
            (observed("manifest"), observed("blob"), observed("base")),
            (2, 1, 0)
        );
        m.count_served(true, 10);
        m.count_served(false, 3);
        let bytes = |s: &str| m.served_bytes.with_label_values(&[s]).get();
        assert_eq!((bytes("cache"), bytes("upstream")), (10, 3));
    }

    #[test]
    fn renders_every_family_with_initialised_series() {
        let m = Metrics::new(&[Registry::docker_hub()], Some(1 << 30));
        m.cache_results
            .with_label_values(&["blob", m.registry_label("docker.io"), "hit"])
            .inc();
        assert_eq!(m.registry_label("evil.example"), "other");
        let text = String::from_utf8(m.render()).unwrap();
        for family in [
            "airlock_requests_total",
            "airlock_cache_results_total",
            "airlock_upstream_up",
            "airlock_build_info",
            "airlock_cache_max_size_bytes 1073741824",
        ] {
            assert!(text.contains(family), "{family} in:\n{text}");
        }
        assert!(text.contains(
            r#"airlock_cache_results_total{kind="blob",registry="docker.io",result="hit"} 1"#
        ));
        assert!(text.contains(r#"airlock_upstream_up{registry="docker.io"} 1"#));
    }
}
