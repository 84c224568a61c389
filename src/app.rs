//! Composition root: builds the store, index, upstreams, cache and server from a [`Config`],
//! runs them, and shuts them down gracefully. The only module naming concrete types.

use crate::api::{State, route::Router, server};
use crate::cache::{Cache, Settings};
use crate::config::Config;
use crate::oci::Registry;
use crate::store::{fs::FsStore, index::SledIndex};
use crate::upstream::{Entry, Upstreams, client::HttpUpstream};
use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A started server.
pub struct Running {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stop accepting, drain in-flight requests (bounded), flush the index.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Build everything and start serving; returns once the listener is bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let data = &config.storage.path;
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    // The index's lock first: a second airlock on this directory must fail before it empties
    // the first one's spools.
    let index = SledIndex::open(&data.join("index"))?;
    let store = FsStore::open(data)
        .with_context(|| format!("cannot use the data directory {}", data.display()))?;
    let upstreams = upstreams(&config)?;
    let cache = Cache::new(
        Arc::new(store),
        Arc::new(index),
        upstreams,
        Settings {
            memory_bytes: config.cache.memory.0,
            fill_timeout: config.storage.fill_timeout,
        },
    );
    let default: Registry = config.server.default_registry.parse()?;
    if !cache.upstreams().contains(&default) && !config.upstream.is_empty() {
        tracing::warn!(registry = %default, "server.default_registry has no [[upstream]]: requests without a registry can only be answered from the cache");
    }
    let tls = config
        .server
        .tls
        .as_ref()
        .map(crate::api::tls::acceptor)
        .transpose()?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, %scheme, data = %data.display(), "airlock is serving the registry API");
    let state = Arc::new(State {
        cache: cache.clone(),
        router: Router::new(default, aliases(&config)?),
    });
    let (tx, rx) = oneshot::channel::<()>();
    let grace = config.server.shutdown_timeout;
    let task = tokio::spawn(async move {
        server::serve(
            listener,
            tls,
            state,
            async {
                let _ = rx.await;
            },
            grace,
        )
        .await;
        if let Err(e) = cache.index().flush() {
            tracing::error!(error = %e, "could not flush the index");
        }
    });
    Ok(Running {
        addr,
        stop: Some(tx),
        task,
    })
}

fn upstreams(config: &Config) -> anyhow::Result<Upstreams> {
    let mut entries = HashMap::new();
    for u in &config.upstream {
        let registry: Registry = u.registry.parse()?;
        let client = HttpUpstream::new(u, &config.credentials)
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
            },
        );
    }
    Ok(Upstreams::new(
        entries,
        config.server.default_registry.parse()?,
    ))
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
