//! Where log lines go. Commands log to stderr as they happen. The server logs a line per
//! request at `info`, so request lines are copied into a buffer and written by a thread of
//! its own every [`FLUSH_EVERY`] (or by the request that fills the buffer): a busy server
//! makes one write for hundreds of lines, and no request waits on stderr or wakes another
//! thread. A request line reaches stderr within [`FLUSH_EVERY`]. Every other line (start-up,
//! warnings, state changes) is written at once, after the request lines before it, so an
//! operator never waits for the line that says what happened and the order is kept.

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
    let log = Buffered {
        out: Arc::new(Mutex::new(BufWriter::with_capacity(BUFFER, stderr))),
        through: true,
    };
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

/// The target of the per-request line (`api/body.rs`), the one line that is buffered.
const REQUEST_TARGET: &str = "airlock::request";

/// The shared buffer in front of stderr; `through` writes each line at once.
#[derive(Clone)]
pub struct Buffered {
    out: Arc<Mutex<BufWriter<File>>>,
    through: bool,
}

impl Buffered {
    fn lock(&self) -> MutexGuard<'_, BufWriter<File>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Write for Buffered {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tracing formats a whole line and writes it in one call: lines never interleave.
        let mut out = self.lock();
        out.write_all(buf)?;
        if self.through {
            out.flush()?;
        }
        Ok(buf.len())
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

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Buffered {
        Buffered {
            out: self.out.clone(),
            through: meta.target() != REQUEST_TARGET,
        }
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
    fn request_lines_wait_in_the_buffer_and_other_lines_write_them_in_order() {
        let (mut rx, tx) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(tx));
        let out = Arc::new(Mutex::new(BufWriter::with_capacity(BUFFER, file)));
        let mut requests = Buffered {
            out: out.clone(),
            through: false,
        };
        requests.write_all(b"one request\n").unwrap();
        requests.write_all(b"another\n").unwrap();
        assert_eq!(
            requests.lock().buffer(),
            b"one request\nanother\n",
            "nothing written yet"
        );
        let mut event = Buffered { out, through: true };
        event.write_all(b"upstream marked down\n").unwrap();
        assert!(event.lock().buffer().is_empty(), "written at once");
        requests.write_all(b"last request\n").unwrap();
        Flushed(requests.clone());
        assert!(requests.lock().buffer().is_empty(), "the guard flushed");
        drop((requests, event));
        let mut got = String::new();
        rx.read_to_string(&mut got).unwrap();
        assert_eq!(
            got,
            "one request\nanother\nupstream marked down\nlast request\n"
        );
    }
}
