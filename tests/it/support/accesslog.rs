//! Parsing of docker-registry's access log (combined log format, one line per request on its
//! stdout), e.g.
//! `127.0.0.1 - - [22/Nov/2026:15:13:04 +0000] "GET /v2/org/app/blobs/sha256:fd.. HTTP/1.1" 200 2098151 "" "Go-http-client/1.1"`.
//! A line is written when the response has been sent, so counts taken right after a transfer
//! should first wait for the log to go quiet (see `Registry::wait_for_log_quiet`).

/// One parsed access-log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessEntry {
    /// HTTP method, e.g. "GET" or "HEAD".
    pub method: String,
    /// Request target as logged, including any query string (containerd adds `?ns=docker.io`).
    pub target: String,
    /// Response status.
    pub status: u16,
    /// Bytes of body sent (0 when logged as "-").
    pub bytes: u64,
    /// The User-Agent header as logged.
    pub user_agent: String,
}

impl AccessEntry {
    /// The request path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Parse one combined-log line; `None` for anything else (e.g. application log lines).
    pub fn parse(line: &str) -> Option<AccessEntry> {
        let (_, rest) = line.split_once(" \"")?;
        let (request, rest) = rest.split_once("\" ")?;
        let mut req = request.split(' ');
        let method = req.next()?.to_string();
        let target = req.next()?.to_string();
        if !req.next()?.starts_with("HTTP/") {
            return None;
        }
        let mut fields = rest.split(' ');
        let status = fields.next()?.parse().ok()?;
        let bytes = fields.next()?.parse().unwrap_or(0);
        let user_agent = rest.rsplit('"').nth(1).unwrap_or("").to_string();
        Some(AccessEntry {
            method,
            target,
            status,
            bytes,
            user_agent,
        })
    }
}

/// All access entries in `log`, in order (other lines are skipped).
pub fn parse_log(log: &str) -> Vec<AccessEntry> {
    log.lines().filter_map(AccessEntry::parse).collect()
}

/// Number of entries with this method (empty = any), whose path contains `path_contains`,
/// and whose status is one of `statuses` (empty = any).
pub fn count(
    entries: &[AccessEntry],
    method: &str,
    path_contains: &str,
    statuses: &[u16],
) -> usize {
    entries
        .iter()
        .filter(|e| method.is_empty() || e.method.eq_ignore_ascii_case(method))
        .filter(|e| e.path().contains(path_contains))
        .filter(|e| statuses.is_empty() || statuses.contains(&e.status))
        .count()
}

/// Statuses that count as a blob fetch (like count-fetches.sh): 200, 206 and 307.
pub const FETCH_STATUSES: [u16; 3] = [200, 206, 307];

/// Number of GETs of blob `digest` in repository `repo` answered 200/206/307.
/// `repo` = "*" matches any repository.
pub fn blob_gets(entries: &[AccessEntry], repo: &str, digest: &str) -> usize {
    entries
        .iter()
        .filter(|e| e.method == "GET" && FETCH_STATUSES.contains(&e.status))
        .filter(|e| {
            let p = e.path();
            match p.strip_prefix("/v2/").and_then(|p| p.strip_suffix(digest)) {
                Some(mid) => match mid.strip_suffix("/blobs/") {
                    Some(r) => (repo == "*" && !r.is_empty()) || r == repo,
                    None => false,
                },
                None => false,
            }
        })
        .count()
}
