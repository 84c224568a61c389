//! Composition root: builds the store, index, upstreams and cache from a [`Config`], runs the
//! registry and admin listeners (and eviction), and shuts everything down gracefully. The only
//! module naming concrete types.

mod advert;
pub mod security;

pub use advert::{Advert, read_advert};

use crate::api::admin::Admin;
use crate::api::{State, route::Router, server};
use crate::cache::{Cache, Settings};
use crate::config::Config;
use crate::gc::{self, Cap};
use crate::metrics::Metrics;
use crate::oci::Registry;
use crate::ops::Operations;
use crate::store::{BlobStore, Index, fs::FsStore, index::SledIndex};
use crate::upstream::{Entry, Upstreams, client::HttpUpstream};
use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A started airlock (or an embedded engine, for CLI commands when no server runs).
pub struct Running {
    /// The registry API address (`None` for an embedded engine).
    pub addr: SocketAddr,
    /// The admin API address.
    pub admin_addr: SocketAddr,
    /// The admin token.
    pub token: String,
    /// The cache (for embedded engines and tests).
    pub cache: Cache,
    /// What the cache stores in: chosen here alone, handed out for tests that inspect what
    /// was stored (the cache itself keeps its own to itself).
    pub store: Arc<dyn BlobStore>,
    /// What the cache records in (as `store`).
    pub index: Arc<dyn Index>,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
    advert: Option<advert::Written>,
}

impl Running {
    /// Stop accepting, drain in-flight requests (bounded), flush the index.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        if let Err(e) = self.index.flush() {
            tracing::error!(error = %e, "could not flush the index");
        }
        drop(self.advert.take());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
    }
}

/// The cache and what it is built over.
struct Built {
    cache: Cache,
    store: Arc<dyn BlobStore>,
    index: Arc<dyn Index>,
    /// The journal's compaction, if opening found it due: awaited on stop, since it holds
    /// the index open.
    compaction: JoinHandle<()>,
}

/// Open the data directory and build the cache over it.
async fn build_cache(config: &Config) -> anyhow::Result<Built> {
    let data = &config.storage.path;
    crate::store::fs::create_dir_durable(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    make_private(data);
    // The index's lock first: a second airlock on this directory must fail before it empties
    // the first one's spools.
    let index = Arc::new(SledIndex::open(&data.join("index"))?);
    let store = FsStore::open(data)
        .with_context(|| format!("cannot use the data directory {}", data.display()))?;
    let registries: Vec<Registry> = config
        .upstream
        .iter()
        .filter_map(|u| u.registry.parse().ok())
        .collect();
    let metrics = Arc::new(Metrics::new(
        &registries,
        config.storage.max_size.map(|m| m.0),
    ));
    let upstreams = upstreams(config, &metrics)?;
    let settings = Settings {
        memory_bytes: config.cache.memory.0,
        negative_ttl: config.cache.negative_ttl,
        max_downloads: config.storage.max_downloads,
        min_free: config.storage.min_free.0,
        fill_timeout: config.storage.fill_timeout,
        fetch: security::fetch_policy(config)?,
    };
    let compaction = tokio::task::spawn_blocking({
        let index = index.clone();
        move || match index.compact_if_due() {
            Ok(true) => tracing::info!("rewrote the index's journal as a snapshot"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not rewrite the index's journal"),
        }
    });
    let (store, index): (Arc<dyn BlobStore>, Arc<dyn Index>) = (Arc::new(store), index);
    let cache = Cache::new(store.clone(), index.clone(), upstreams, settings, metrics);
    // The first measure counts the store once: it must not hold up the start.
    tokio::spawn({
        let cache = cache.clone();
        async move { Gauges::default().refresh(&cache).await }
    });
    Ok(Built {
        cache,
        store,
        index,
        compaction,
    })
}

/// The data directory holds the admin token and the journal: only airlock's user may enter it.
fn make_private(data: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(data) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            let private = std::fs::Permissions::from_mode(m.permissions().mode() & 0o700);
            match std::fs::set_permissions(data, private) {
                Ok(()) => {
                    tracing::info!(path = %data.display(), "made the data directory private (mode 0700)")
                }
                Err(e) => {
                    tracing::warn!(path = %data.display(), error = %e, "the data directory is readable by others and cannot be made private")
                }
            }
        }
        _ => {}
    }
}

/// Put the store's usage into the gauges (the store is listed: off the async runtime).
/// The usage gauges, kept so that an idle cache costs nothing to watch: the stored totals
/// are counters, read every time; the pinned bytes need a walk of every pin's closure, so
/// it is redone only when the store or the index changed since the last walk, and then at
/// most at a 5 % duty cycle (a walk that took 1 s waits 20 s for the next).
#[derive(Default)]
struct Gauges {
    /// The store's totals and the index's generation at the last walk.
    walked: Option<(u64, u64, u64)>,
    not_before: Option<std::time::Instant>,
}

impl Gauges {
    async fn refresh(&mut self, cache: &Cache) {
        let c = cache.clone();
        let (walked, not_before) = (self.walked, self.not_before);
        let measured = tokio::task::spawn_blocking(move || {
            let (bytes, blobs) = c.store().usage()?;
            let seen = c.index().generation().map(|g| (bytes, blobs, g));
            let due = seen.is_none() || seen != walked;
            let allowed = not_before.is_none_or(|t| std::time::Instant::now() >= t);
            if !(due && allowed) {
                return Ok::<_, crate::error::Error>((bytes, blobs, None));
            }
            let started = std::time::Instant::now();
            let pinned = gc::pinned_bytes(&c)?;
            Ok((bytes, blobs, Some((pinned, seen, started.elapsed()))))
        })
        .await;
        let m = cache.metrics();
        match measured {
            Ok(Ok((bytes, blobs, walk))) => {
                m.cache_size.set(bytes as i64);
                m.cache_blobs.set(blobs as i64);
                if let Some((pinned, seen, took)) = walk {
                    m.cache_pinned.set(pinned as i64);
                    self.walked = seen;
                    self.not_before = Some(std::time::Instant::now() + took * 19);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "could not measure the cache"),
            Err(e) => tracing::warn!(error = %e, "could not measure the cache"),
        }
    }
}

/// The admin API over `cache`.
fn admin_api(
    cache: &Cache,
    token: &str,
    default: Registry,
    config: &Config,
    signatures: Arc<crate::signatures::Policy>,
) -> Arc<Admin> {
    Arc::new(Admin {
        ops: Operations::new(cache.clone(), cap(config), signatures),
        token: token.to_string(),
        default_registry: default,
    })
}

fn cap(config: &Config) -> Option<Cap> {
    let s = &config.storage;
    s.max_size.map(|m| Cap {
        max: m.0,
        high: s.high_watermark,
        low: s.low_watermark,
    })
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({key})"))
}

/// Build everything and start serving the registry and admin APIs; returns once both
/// listeners are bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    security::check(&config).map_err(anyhow::Error::msg)?;
    let Built {
        cache,
        store,
        index,
        compaction,
    } = build_cache(&config).await?;
    let auth = security::auth(&config, cache.metrics().clone())?;
    let default: Registry = config.server.default_registry.parse()?;
    if !config.upstream.is_empty() && !cache.upstreams().contains(&default) {
        tracing::warn!(registry = %default, "server.default_registry has no [[upstream]]: requests without a registry can only be answered from the cache");
    }
    if config.server.offline {
        tracing::warn!("offline: no upstream will be contacted; only cached content is served");
    }
    let tls = config
        .server
        .tls
        .as_ref()
        .map(crate::api::tls::acceptor)
        .transpose()?;
    let listener = bind(config.server.listen, "server.listen").await?;
    let admin_listener = bind(config.admin.listen, "admin.listen").await?;
    let (addr, admin_addr) = (listener.local_addr()?, admin_listener.local_addr()?);
    let token = advert::token()?;
    let advert = advert::write(&config.storage.path, admin_addr, &token)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, %scheme, admin = %admin_addr, data = %config.storage.path.display(), "airlock is serving the registry API");

    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = config.server.shutdown_timeout;
    let signatures = security::signatures(&config, cache.metrics().clone())?;
    let state = Arc::new(State {
        cache: cache.clone(),
        router: Router::new(default.clone(), aliases(&config)?),
        auth: auth.clone(),
        tls: tls.is_some(),
        signatures: signatures.clone(),
    });
    let admin = admin_api(&cache, &token, default, &config, signatures);
    let mut tasks = vec![
        tokio::spawn(server::serve(
            listener,
            tls,
            state,
            stopped(stop_rx.clone()),
            grace,
            config.server.limits.clone(),
        )),
        tokio::spawn(server::serve(
            admin_listener,
            None,
            admin,
            stopped(stop_rx.clone()),
            grace,
            config.server.limits.clone(),
        )),
    ];
    tasks.push(tokio::spawn(security::reload_periodically(
        auth,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(maintain_periodically(
        cache.clone(),
        cap(&config),
        config.storage.eviction_interval,
        stop_rx,
    )));
    tasks.push(compaction);
    Ok(Running {
        addr,
        admin_addr,
        token,
        cache,
        store,
        index,
        stop: Some(stop_tx),
        tasks,
        advert: Some(advert),
    })
}

/// An engine for a CLI command when no server runs on the data directory: the cache and an
/// admin API on an ephemeral localhost port, nothing else.
pub async fn start_embedded(config: Config) -> anyhow::Result<Running> {
    let Built {
        cache,
        store,
        index,
        compaction,
    } = build_cache(&config).await?;
    let default: Registry = config.server.default_registry.parse()?;
    let admin_listener = bind(([127, 0, 0, 1], 0).into(), "an embedded admin port").await?;
    let admin_addr = admin_listener.local_addr()?;
    let token = advert::token()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let signatures = security::signatures(&config, cache.metrics().clone())?;
    let admin = admin_api(&cache, &token, default, &config, signatures);
    let grace = config.server.shutdown_timeout;
    let tasks = vec![
        tokio::spawn(server::serve(
            admin_listener,
            None,
            admin,
            stopped(stop_rx),
            grace,
            config.server.limits.clone(),
        )),
        compaction,
    ];
    Ok(Running {
        addr: admin_addr,
        admin_addr,
        token,
        cache,
        store,
        index,
        stop: Some(stop_tx),
        tasks,
        advert: None,
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Every `every`: evict down to the cap (if any), and refresh the usage gauges.
async fn maintain_periodically(
    cache: Cache,
    cap: Option<Cap>,
    every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut gauges = Gauges::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Some(cap) = cap {
            match gc::evict(&cache, cap).await {
                Ok(r) if r.blobs > 0 => {
                    tracing::info!(
                        images = r.images.len(),
                        blobs = r.blobs,
                        bytes = r.bytes,
                        "evicted least recently used content"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "eviction failed"),
            }
        }
        gauges.refresh(&cache).await;
    }
}

fn upstreams(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Upstreams> {
    let mut entries = HashMap::new();
    for u in &config.upstream {
        let registry: Registry = u.registry.parse()?;
        let client = HttpUpstream::new(u, &config.credentials, metrics.clone())
            .with_context(|| format!("upstream {}", u.registry))?;
        tracing::info!(
            registry = %u.registry,
            url = %u.effective_url(),
            credentials = %client.credentials(),
            tag_ttl = ?u.tag_ttl,
            mirror = u.mirror,
            "upstream"
        );
        if u.insecure {
            tracing::warn!(registry = %u.registry, "TLS CERTIFICATES ARE NOT VERIFIED for this upstream (insecure = true): anyone on the path can serve it content. Use ca_file instead outside a lab.");
        }
        entries.insert(
            registry,
            Entry {
                upstream: Arc::new(client),
                tag_ttl: u.tag_ttl,
                stale_timeout: u.stale_timeout,
            },
        );
    }
    Ok(Upstreams::new(entries, config.server.offline))
}

/// Short names → registries, from every upstream's `aliases`.
fn aliases(config: &Config) -> anyhow::Result<HashMap<String, Registry>> {
    let mut out = HashMap::new();
    for u in &config.upstream {
        for a in &u.aliases {
            out.insert(a.clone(), u.registry.parse()?);
        }
    }
    Ok(out)
}

/// Run until SIGINT or SIGTERM, then shut down gracefully.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    shutdown_signal().await?;
    tracing::info!("signal received");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
