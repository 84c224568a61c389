//! `[server.limits]`: what one client may hold of the server (connections, time, streams).

use serde::Deserialize;
use std::time::Duration;

/// `[server.limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Open connections in all; more are closed at once.
    pub max_connections: usize,
    /// Open connections from one address; more from it are closed at once.
    pub max_connections_per_client: usize,
    /// A connection that sends nothing for this long is closed.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// Time allowed to send a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A client that takes no bytes at all for this long is dropped (no minimum rate).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// TCP keepalive: idle time before the first probe.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub http2_max_streams: u32,
    /// HTTP/2 ping interval; a peer that does not answer within it is dropped.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive: Duration,
    /// A connection (HTTP/1.1 keep-alive or HTTP/2) with no request in progress for this long
    /// is closed. A transfer in progress, however slow, keeps it open. Zero: never.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_connections_per_client: 256,
            first_byte_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(120),
            tcp_keepalive: Duration::from_secs(60),
            http2_max_streams: 128,
            http2_keepalive: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}
