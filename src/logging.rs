//! Where log lines go. Commands log to stderr as they happen. The server logs a line per
//! request at `info`, so its lines are copied into a buffer and written by a thread of its
//! own every [`FLUSH_EVERY`] (or by the request that fills the buffer): a busy server makes
//! one write for hundreds of lines, and no request waits on stderr or wakes another thread.
//! A line reaches stderr within [`FLUSH_EVERY`]; the rest is written when the server stops.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Bytes buffered before the line that overflows them writes them itself.
const BUFFER: usize = 64 << 10;

/// Log commands' lines to stderr at `level` (a filter directive such as `warn,airlock=debug`).
pub fn init(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_target(false)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr)
        .try_init();
}

/// Log the server's lines through a buffer; what is still buffered is written when the
/// returned guard is dropped.
pub fn init_server(level: &str) -> io::Result<Flushed> {
    let stderr = File::from(io::stderr().as_fd().try_clone_to_owned()?);
    let log = Buffered(Arc::new(Mutex::new(BufWriter::with_capacity(
        BUFFER, stderr,
    ))));
    let flusher = log.clone();
    std::thread::Builder::new()
        .name("airlock-log".into())
        .spawn(move || {
            // Ends with the process; the guard writes the last lines.
            loop {
                std::thread::sleep(FLUSH_EVERY);
                let _ = flusher.lock().flush();
            }
        })?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_target(false)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(log.clone())
        .try_init();
    Ok(Flushed(log))
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_new(level).unwrap_or_else(|_| "info".into())
}

/// The shared buffer in front of stderr.
#[derive(Clone)]
pub struct Buffered(Arc<Mutex<BufWriter<File>>>);

impl Buffered {
    fn lock(&self) -> MutexGuard<'_, BufWriter<File>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Write for Buffered {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tracing formats a whole line and writes it in one call: lines never interleave.
        self.lock().write_all(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.lock().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffered {
    type Writer = Buffered;

    fn make_writer(&'a self) -> Buffered {
        self.clone()
    }
}

/// Writes what is buffered when dropped (the server has stopped).
pub struct Flushed(Buffered);

impl Drop for Flushed {
    fn drop(&mut self) {
        let _ = self.0.lock().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn lines_wait_in_the_buffer_until_flushed() {
        let (mut rx, tx) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(tx));
        let mut log = Buffered(Arc::new(Mutex::new(BufWriter::with_capacity(BUFFER, file))));
        log.write_all(b"one line\n").unwrap();
        log.write_all(b"another\n").unwrap();
        assert_eq!(
            log.lock().buffer(),
            b"one line\nanother\n",
            "nothing written yet"
        );
        Flushed(log.clone());
        assert!(log.lock().buffer().is_empty(), "the guard flushed");
        drop(log);
        let mut out = String::new();
        rx.read_to_string(&mut out).unwrap();
        assert_eq!(out, "one line\nanother\n");
    }
}
