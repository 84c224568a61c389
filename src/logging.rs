//! Where log lines go. Commands log to stderr as they happen. The server logs a line per
//! request at `info`, so request lines are copied into a buffer and written by a thread of
//! its own every [`FLUSH_EVERY`] (or by the request that fills the buffer): a busy server
//! makes one write for hundreds of lines, and no request waits on stderr or wakes another
//! thread. A request line reaches stderr within [`FLUSH_EVERY`]. Every other line (start-up,
//! warnings, state changes) is written at once, after the request lines before it, so an
//! operator never waits for the line that says what happened and the order is kept.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};
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
    let ansi = io::stderr().is_terminal();
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(log.clone())
        .try_init()
        .is_ok();
    if installed && !ansi {
        let _ = REQUESTS.set(Buffered {
            out: log.out.clone(),
            through: false,
        });
    }
    Ok(Flushed(log))
}

fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_new(level).unwrap_or_else(|_| "info".into())
}

/// The target of the per-request line (`api/body.rs`), the one line that is buffered.
const REQUEST_TARGET: &str = "airlock::request";

/// Where [`request`] writes its lines when it formats them itself: set by [`init_server`]
/// when stderr is not a terminal (a terminal gets tracing's coloured lines).
static REQUESTS: OnceLock<Buffered> = OnceLock::new();

/// What the request line says, in the order it says it.
pub struct Request<'a> {
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Status sent.
    pub status: u16,
    /// Who asked, or `-`.
    pub user: &'a str,
    /// The peer address.
    pub client: IpAddr,
    /// Body bytes sent.
    pub bytes: u64,
    /// Cache outcome, or `-`.
    pub cache: &'a str,
    /// `complete`, `failed` or `aborted`.
    pub transfer: &'a str,
    /// Milliseconds from the request to the end of its body.
    pub ms: u64,
}

/// Log one request line at `info`. The server formats it here, in tracing's layout, and
/// copies it into the buffer: tracing's formatter, with its field visitors and a timestamp
/// made from scratch, was the largest cost of a hot manifest answer after the socket.
pub fn request(r: &Request<'_>) {
    if !tracing::enabled!(target: REQUEST_TARGET, tracing::Level::INFO) {
        return;
    }
    let Some(out) = REQUESTS.get() else {
        tracing::info!(
            target: REQUEST_TARGET,
            method = %r.method,
            path = %r.path,
            status = r.status,
            user = %r.user,
            client = %r.client,
            bytes = r.bytes,
            cache = r.cache,
            transfer = r.transfer,
            ms = r.ms,
        );
        return;
    };
    thread_local! {
        static LINE: RefCell<(Vec<u8>, Clock)> = RefCell::new((Vec::with_capacity(256), Clock::default()));
    }
    LINE.with_borrow_mut(|(line, clock)| {
        line.clear();
        r.write(line, clock, SystemTime::now());
        let _ = out.lock().write_all(line);
    });
}

impl Request<'_> {
    /// Append the line, as tracing's `fmt` layer would write it without a target.
    fn write(&self, line: &mut Vec<u8>, clock: &mut Clock, now: SystemTime) {
        let mut n = itoa::Buffer::new();
        clock.stamp(line, now);
        line.extend_from_slice(b"  INFO method=");
        text(line, self.method);
        line.extend_from_slice(b" path=");
        text(line, self.path);
        line.extend_from_slice(b" status=");
        line.extend_from_slice(n.format(self.status).as_bytes());
        line.extend_from_slice(b" user=");
        text(line, self.user);
        line.extend_from_slice(b" client=");
        let _ = write!(line, "{}", self.client);
        line.extend_from_slice(b" bytes=");
        line.extend_from_slice(n.format(self.bytes).as_bytes());
        line.extend_from_slice(b" cache=\"");
        text(line, self.cache);
        line.extend_from_slice(b"\" transfer=\"");
        text(line, self.transfer);
        line.extend_from_slice(b"\" ms=");
        line.extend_from_slice(n.format(self.ms).as_bytes());
        line.push(b'\n');
    }
}

/// `s`, with control characters written as `?` so a value never breaks the line.
fn text(line: &mut Vec<u8>, s: &str) {
    let start = line.len();
    line.extend_from_slice(s.as_bytes());
    for b in &mut line[start..] {
        if *b < 0x20 || *b == 0x7f {
            *b = b'?';
        }
    }
}

/// The timestamp's date and time to the second, made once a second per thread.
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    prefix: [u8; 20],
}

impl Clock {
    /// Append `now` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC, microseconds).
    fn stamp(&mut self, line: &mut Vec<u8>, now: SystemTime) {
        let since = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            self.second = Some(second);
            let (y, m, d) = civil(second / 86_400);
            let t = second % 86_400;
            let mut p = Vec::with_capacity(20);
            let _ = write!(
                p,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                t / 3600,
                t / 60 % 60,
                t % 60
            );
            let len = p.len().min(20);
            self.prefix[..len].copy_from_slice(&p[..len]);
        }
        line.extend_from_slice(&self.prefix);
        let micros = since.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut v = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        line.extend_from_slice(&digits);
        line.push(b'Z');
    }
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

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
    fn request_lines_are_written_as_tracing_writes_them() {
        let at = |s: u64, micros: u64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(micros)
        };
        let mut clock = Clock::default();
        let mut stamp = |t| {
            let mut v = Vec::new();
            clock.stamp(&mut v, t);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(stamp(at(0, 0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(stamp(at(951_782_400, 7)), "2000-02-29T00:00:00.000007Z");
        assert_eq!(
            stamp(at(1_709_168_461, 120_000)),
            "2024-02-29T01:01:01.120000Z"
        );
        assert_eq!(
            stamp(at(1_764_771_681, 999_999)),
            "2025-12-03T14:21:21.999999Z"
        );
        assert_eq!(stamp(at(1_764_771_681, 5)), "2025-12-03T14:21:21.000005Z");
        assert_eq!(stamp(at(4_102_444_799, 0)), "2099-12-31T23:59:59.000000Z");
        let r = Request {
            method: "GET",
            path: "/v2/lib/app/manifests/v1?ns=docker.io",
            status: 200,
            user: "ci\nbot",
            client: "::1".parse().unwrap(),
            bytes: 424,
            cache: "hit",
            transfer: "complete",
            ms: 12,
        };
        let mut line = Vec::new();
        r.write(&mut line, &mut Clock::default(), at(1_764_771_681, 250_000));
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2025-12-03T14:21:21.250000Z  INFO method=GET path=/v2/lib/app/manifests/v1?ns=docker.io \
             status=200 user=ci?bot client=::1 bytes=424 cache=\"hit\" transfer=\"complete\" ms=12\n"
        );
    }

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
