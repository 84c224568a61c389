//! What one client may hold of the server: connection caps (in all, and per source address),
//! a first-byte timeout (a connection that sends nothing is closed), an idle timeout (one
//! with no request in progress is closed), TCP keepalive, and a
//! no-progress timeout on writes: a reader that takes no bytes at all for `stall_timeout` is
//! dropped, and with it every hold its transfer had on a blob. There is no minimum rate: slow
//! links are what airlock is for.
//!
//! At a cap the connection is accepted and closed at once, before a byte is read: the client
//! sees the connection reset or closed, and retries.

use crate::config::ConnectionLimits;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Open connections, counted in all and per address.
#[derive(Clone)]
pub struct Admission {
    limits: ConnectionLimits,
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_addr: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    open: Arc<Mutex<Open>>,
    addr: IpAddr,
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: ConnectionLimits) -> Admission {
        Admission {
            limits,
            open: Arc::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// A place for a connection from `addr`, or `None` at a cap.
    pub fn admit(&self, addr: IpAddr) -> Option<Admitted> {
        let addr = addr.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.by_addr.get(&addr).copied().unwrap_or(0);
        if open.total >= self.limits.max_connections
            || mine >= self.limits.max_connections_per_client
        {
            return None;
        }
        open.total += 1;
        *open.by_addr.entry(addr).or_insert(0) += 1;
        Some(Admitted {
            open: self.open.clone(),
            addr,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.by_addr.remove(&self.addr);
            }
        }
    }
}

/// Set TCP keepalive on `stream` (dead peers are found even on idle connections).
pub fn keepalive(stream: &TcpStream, every: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(every)
        .with_interval(every / 3 + Duration::from_secs(1));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}

/// Wait up to `limit` for the first byte of a connection; `false` if none came.
pub async fn first_byte(stream: &TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(tokio::time::timeout(limit, stream.peek(&mut b)).await, Ok(Ok(n)) if n > 0)
}

/// An I/O stream whose writes fail with `TimedOut` once they have made no progress for
/// `limit`: the peer stopped reading.
pub struct Stall<I> {
    inner: I,
    limit: Duration,
    since: Option<Pin<Box<tokio::time::Sleep>>>,
    activity: Activity,
}

impl<I> Stall<I> {
    /// Wrap `inner`; writes are reported to `activity` (a connection still writing is not
    /// idle, even after its last response body was handed over).
    pub fn new(inner: I, limit: Duration, activity: Activity) -> Stall<I> {
        Stall {
            inner,
            limit,
            since: None,
            activity,
        }
    }

    /// Bytes went out: the connection is busy (a flush with nothing to write does not count:
    /// hyper flushes whenever its task is polled).
    fn wrote_bytes(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled
            && *n > 0
        {
            self.activity.wrote();
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.since = None;
                self.activity.0.blocked.store(false, Ordering::SeqCst);
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.activity.0.blocked.store(true, Ordering::SeqCst);
                let limit = self.limit;
                let timer = self
                    .since
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client took no bytes for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future as _;

impl<I: AsyncRead + Unpin> AsyncRead for Stall<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Stall<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote_bytes(&polled);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote_bytes(&polled);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: total,
            max_connections_per_client: per,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn caps_in_all_and_per_address() {
        let a = Admission::new(limits(3, 2));
        let (x, y): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        assert!(a.admit(x).is_none(), "x at its cap");
        let _y1 = a.admit(y).expect("another address is not locked out");
        assert!(a.admit(y).is_none(), "the total cap");
        drop(x1);
        assert!(
            a.admit("::ffff:192.0.2.1".parse().unwrap()).is_some(),
            "a freed place, the same address mapped"
        );
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_times_out() {
        let (client, server) = tokio::io::duplex(1024);
        let mut s = Stall::new(server, Duration::from_millis(50), Activity::default());
        let big = vec![0u8; 64 << 10];
        use tokio::io::AsyncWriteExt;
        let e = s.write_all(&big).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn a_slow_reader_is_not_a_stalled_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            let mut n = 0;
            while n < 16 << 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                n += client.read(&mut buf).await.unwrap();
            }
            n
        });
        let mut s = Stall::new(server, Duration::from_millis(200), Activity::default());
        s.write_all(&vec![1u8; 16 << 10])
            .await
            .expect("progress, however slow");
        assert!(reader.await.unwrap() >= 16 << 10);
    }
}

/// Requests in progress on one connection, and since when it has had none.
#[derive(Clone)]
pub struct Activity(Arc<ActivityInner>);

struct ActivityInner {
    active: AtomicUsize,
    /// A write is waiting for the client to take bytes.
    blocked: std::sync::atomic::AtomicBool,
    since: Mutex<Instant>,
}

/// One request in progress (until its response body is done or dropped).
pub struct Active(Arc<ActivityInner>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(ActivityInner {
            active: AtomicUsize::new(0),
            blocked: std::sync::atomic::AtomicBool::new(false),
            since: Mutex::new(Instant::now()),
        }))
    }
}

impl Activity {
    /// A request starts.
    pub fn begin(&self) -> Active {
        self.0.active.fetch_add(1, Ordering::SeqCst);
        Active(self.0.clone())
    }

    /// Bytes went out to the client.
    fn wrote(&self) {
        self.0.blocked.store(false, Ordering::SeqCst);
        *self.0.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long the connection has had no request in progress and written nothing (`None`
    /// while it has a request, or bytes still waiting to go out).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.0.active.load(Ordering::SeqCst) > 0 || self.0.blocked.load(Ordering::SeqCst) {
            return None;
        }
        Some(
            self.0
                .since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }

    /// Resolves once the connection has been idle for `timeout` (never when it is zero).
    pub async fn idle(&self, timeout: Duration) {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        let step = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::time::sleep(step).await;
            if self.idle_for().is_some_and(|d| d >= timeout) {
                return;
            }
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}
