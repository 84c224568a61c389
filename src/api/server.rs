//! The accept loop: hyper 1 over tokio, plain (HTTP/1.1 and h2c) or TLS (HTTP/1.1 and HTTP/2 by
//! ALPN), with graceful shutdown: stop accepting, let in-flight requests finish within a
//! bound, then cut them. Each connection is admitted under [`super::limits`] first.

use super::body::Body;
use super::limits::{self, Admission, Stall};
use super::sendfile::Sendfile;
use crate::config::ConnectionLimits;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// hyper's own header buffer: larger than [`super::handler::MAX_HEADER_BYTES`], so headers a
/// little too large reach the handler and get an OCI error; past it hyper answers 431 itself.
const MAX_BUF: usize = 64 << 10;

/// Something that answers requests: the registry API, the admin API.
pub trait Handle: Send + Sync + 'static {
    /// Answer one request from `peer` (errors are answers too).
    fn handle(
        &self,
        req: hyper::Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = hyper::Response<Body>> + Send;
}

/// How long a client may take over the TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serve `listener` (over TLS when `tls` is set) until `shutdown` resolves, then drain for at
/// most `grace`.
pub async fn serve<H: Handle>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<H>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ConnectionLimits,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_BUF as u32)
        .max_concurrent_streams(limits.http2_max_streams)
        .keep_alive_interval(Some(limits.http2_keepalive))
        .keep_alive_timeout(limits.http2_keepalive);
    let admission = Admission::new(limits);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(admitted) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: at the connection cap");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let l = admission.limits().clone();
        limits::keepalive(&stream, l.tcp_keepalive);
        let (builder, watcher, state, tls) = (
            builder.clone(),
            graceful.watcher(),
            state.clone(),
            tls.clone(),
        );
        tokio::spawn(async move {
            let _admitted = admitted;
            if !limits::first_byte(&stream, l.first_byte_timeout).await {
                tracing::debug!(%peer, "connection closed: nothing sent");
                return;
            }
            let activity = limits::Activity::default();
            let result = match tls {
                None => {
                    let io = Sendfile(stream);
                    let io = TokioIo::new(Stall::new(io, l.stall_timeout, activity.clone()));
                    let idle = (l.idle_timeout, activity);
                    connection(&builder, watcher, io, state, peer, idle).await
                }
                Some(acceptor) => {
                    let stream = Stall::new(stream, l.stall_timeout, activity.clone());
                    let idle = (l.idle_timeout, activity);
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let io = TokioIo::new(tls);
                            connection(&builder, watcher, io, state, peer, idle).await
                        }
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "in-flight requests cut at the shutdown timeout"),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serve one connection (HTTP/1.1, or HTTP/2 by preface or ALPN) until it closes, the server
/// shuts down, or it has had no request in progress for `idle` (then it is closed).
async fn connection<I, H: Handle>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    state: Arc<H>,
    peer: SocketAddr,
    (idle, activity): (Duration, limits::Activity),
) -> Result<(), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let counted = activity.clone();
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let (state, active) = (state.clone(), counted.begin());
        async move {
            let resp = state.handle(req, peer).await;
            Ok::<_, Infallible>(resp.map(|b| super::body::guarded(b, active)))
        }
    });
    let serving = watcher.watch(builder.serve_connection(io, service).into_owned());
    tokio::select! {
        r = serving => r,
        // No request in flight: nothing is lost by closing (a client retries on a new one).
        () = activity.idle(idle) => {
            tracing::debug!(%peer, ?idle, "connection closed: idle");
            Ok(())
        }
    }
}
