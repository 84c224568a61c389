//! A plain TCP connection that sends blob chunks with `sendfile`. hyper writes what the body
//! yields through `poll_write_vectored`; when a buffer begins inside a mapped chunk of a blob
//! (`cache::span`), the bytes go from that file span to the socket in the kernel, with no
//! copy and without touching the mapping. Every other buffer (headers, manifests, chunks read
//! into memory, or a chunk hyper copied) is written as it is, so the bytes sent are the same
//! either way: this changes only what it costs. Not for TLS, which must encrypt every byte.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream whose writes of mapped blob chunks use `sendfile`.
pub struct Sendfile(pub TcpStream);

/// Bytes sent by `sendfile` so far (for the tests: that it was used, not only correct).
#[cfg(test)]
static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Sendfile {
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        span: &crate::cache::Span,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            let mut offset = span.offset;
            match self.0.try_io(Interest::WRITABLE, || {
                Ok(rustix::fs::sendfile(
                    &self.0,
                    &*span.file,
                    Some(&mut offset),
                    span.len,
                )?)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => {
                    #[cfg(test)]
                    if let Ok(n) = &done {
                        SENT.fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Poll::Ready(done);
                }
            }
        }
    }
}

/// Whether `sendfile` failed because the file system does not do it (not because of the
/// socket or the disk).
fn unsupported(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    [libc::EINVAL, libc::ENOSYS, libc::EOPNOTSUPP]
        .map(Some)
        .contains(&code)
}

impl AsyncRead for Sendfile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sendfile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// A mapped chunk at the front goes by `sendfile`; otherwise the buffers before the
    /// first mapped one are written as usual. Partial counts are normal: hyper writes the
    /// rest next.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs
            .iter()
            .position(|b| !b.is_empty())
            .unwrap_or(bufs.len());
        if let Some(span) = bufs.get(first).and_then(|b| crate::cache::span(b)) {
            match this.poll_send(cx, &span) {
                // A file system without sendfile (some FUSE and 9p mounts): the mapped
                // bytes are written as they are.
                Poll::Ready(Err(e)) if unsupported(&e) => {
                    return Pin::new(&mut this.0).poll_write_vectored(cx, &bufs[first..=first]);
                }
                sent => return sent,
            }
        }
        let plain = bufs[first..]
            .iter()
            .position(|b| crate::cache::span(b).is_some())
            .map_or(bufs.len(), |k| first + k);
        Pin::new(&mut this.0).poll_write_vectored(cx, &bufs[..plain])
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, Bytes};
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Write `bufs` as hyper does: vectored, advancing the front buffers after a partial
    /// write (so a chunk's rest still points into its mapping).
    async fn write_all(io: &mut Sendfile, mut bufs: Vec<Bytes>) {
        while !bufs.is_empty() {
            let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
            let mut n = io.write_vectored(&slices).await.unwrap();
            assert!(n > 0, "a write made no progress");
            while n > 0 {
                let take = n.min(bufs[0].len());
                bufs[0].advance(take);
                n -= take;
                if bufs[0].is_empty() {
                    bufs.remove(0);
                }
            }
        }
        io.flush().await.unwrap();
    }

    #[tokio::test]
    async fn mapped_chunks_go_by_sendfile_and_arrive_as_the_file_bytes_between_the_others() {
        let data: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let f = Arc::new(f);
        let (a, b) = (1000, 1000 + (6 << 20));
        let chunk =
            crate::cache::chunk(&f, a as u64, b - a).expect("just written: in the page cache");
        // A copy of a chunk is written as the bytes it holds.
        let copied = Bytes::from(data[b..b + 5000].to_vec());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut server = Sendfile(listener.accept().await.unwrap().0);
        let before = SENT.load(Ordering::Relaxed);
        let writer = tokio::spawn(async move {
            let bufs = vec![
                Bytes::from_static(b"head\r\n"),
                chunk,
                copied,
                Bytes::from_static(b"tail"),
            ];
            write_all(&mut server, bufs).await;
        });
        // Read only once the writer has filled the socket and waited (6 MiB is far more
        // than loopback buffers hold), so sendfile's would-block path is taken too.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut got = Vec::new();
        let want_len = 6 + (b - a) + 5000 + 4;
        while got.len() < want_len {
            let mut buf = vec![0; 64 << 10];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        let mut want = b"head\r\n".to_vec();
        want.extend_from_slice(&data[a..b + 5000]);
        want.extend_from_slice(b"tail");
        assert!(got == want, "the bytes sent differ from the file's");
        assert!(
            SENT.load(Ordering::Relaxed) - before >= (b - a) as u64,
            "the chunk was not sent by sendfile"
        );
    }
}
