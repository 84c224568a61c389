//! The one error type. Each variant knows its OCI error code and HTTP status, so the API layer
//! maps any failure to a registry error in one place (`api::errors`).

use http::StatusCode;
use std::sync::Arc;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while answering a request, classified by who must act:
/// the client (bad input), the upstream (unreachable, refusing, lying) or us (disk, index).
///
/// Cloneable so one failed upstream fetch can be reported to every request that joined it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The repository name does not match the distribution spec grammar.
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    /// The repository (or its registry) is not known here or upstream.
    #[error("{0}")]
    NameUnknown(String),
    /// A digest that is malformed or uses an algorithm we do not support.
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    /// A `tags/list` page size that is not a non-negative integer.
    #[error("{0}")]
    PaginationInvalid(String),
    /// No such manifest (or the reference cannot name one).
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    /// No such blob in this repository.
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    /// A `Range` that lies outside the blob.
    #[error("requested range not satisfiable: the blob has {size} bytes")]
    RangeNotSatisfiable {
        /// Size of the blob, for `Content-Range: bytes */size`.
        size: u64,
    },
    /// A method or endpoint this read-only cache does not offer.
    #[error("{0}")]
    Unsupported(String),
    /// The same as [`Error::Unsupported`] but for methods: answered with 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request headers are larger than we accept.
    #[error("request headers are too large ({size} bytes, the limit is {limit})")]
    HeadersTooLarge {
        /// Bytes of request header received.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The upstream refused our credentials (or we have none and it wants some).
    #[error("upstream {registry} refused access: {message}")]
    Unauthorized {
        /// Registry that refused.
        registry: String,
        /// What it said, or what to configure.
        message: String,
    },
    /// The client must authenticate (or did, with credentials that do not verify): 401 with
    /// a challenge naming airlock's token endpoint.
    #[error("authentication required: {0}")]
    AuthRequired(String),
    /// The client is known but may not do this: an access rule or the fetch policy refused.
    #[error("denied: {0}")]
    Denied(String),
    /// The client is sending more than airlock will work through right now.
    #[error("{0}")]
    Throttled(String),
    /// The upstream answered 429.
    #[error("upstream {0} is rate limiting requests (429); try again later")]
    TooManyRequests(String),
    /// The upstream could not be reached, timed out or answered 5xx.
    #[error("upstream {registry} is unavailable: {message}")]
    UpstreamUnavailable {
        /// Registry that failed.
        registry: String,
        /// What failed.
        message: String,
    },
    /// The upstream answered something that breaks the protocol: wrong digest, short body,
    /// oversized manifest, unexpected status.
    #[error("upstream {registry} sent a bad answer: {message}")]
    UpstreamInvalid {
        /// Registry that misbehaved.
        registry: String,
        /// What was wrong.
        message: String,
    },
    /// The disk is under its free-space reserve: no new downloads (cached content is served).
    #[error("{0}")]
    StorageFull(String),
    /// A local failure: disk full, permissions, a corrupt index.
    #[error("internal error: {0}")]
    Internal(Arc<str>),
}

impl Error {
    /// The OCI distribution spec error code for the response body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NameInvalid(_) => "NAME_INVALID",
            Error::NameUnknown(_) => "NAME_UNKNOWN",
            Error::DigestInvalid(_) => "DIGEST_INVALID",
            Error::PaginationInvalid(_) => "PAGINATION_NUMBER_INVALID",
            Error::ManifestUnknown(_) => "MANIFEST_UNKNOWN",
            Error::BlobUnknown(_) | Error::RangeNotSatisfiable { .. } => "BLOB_UNKNOWN",
            Error::Unsupported(_) | Error::MethodNotAllowed(_) | Error::HeadersTooLarge { .. } => {
                "UNSUPPORTED"
            }
            Error::Unauthorized { .. } | Error::AuthRequired(_) => "UNAUTHORIZED",
            Error::Denied(_) => "DENIED",
            Error::TooManyRequests(_) | Error::Throttled(_) => "TOOMANYREQUESTS",
            Error::UpstreamUnavailable { .. } | Error::StorageFull(_) => "UNAVAILABLE",
            Error::UpstreamInvalid { .. } | Error::Internal(_) => "UNKNOWN",
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NameInvalid(_) | Error::DigestInvalid(_) | Error::PaginationInvalid(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::NameUnknown(_) | Error::ManifestUnknown(_) | Error::BlobUnknown(_) => {
                StatusCode::NOT_FOUND
            }
            Error::Unsupported(_) => StatusCode::NOT_FOUND,
            Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::Unauthorized { .. } | Error::AuthRequired(_) => StatusCode::UNAUTHORIZED,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::TooManyRequests(_) | Error::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::UpstreamUnavailable { .. } | Error::StorageFull(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::UpstreamInvalid { .. } => StatusCode::BAD_GATEWAY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// True when the upstream could not give an answer at all (down, timing out, 5xx, 429):
    /// the cases where serving the last known tag answer is better than failing.
    pub fn allows_stale(&self) -> bool {
        matches!(
            self,
            Error::UpstreamUnavailable { .. } | Error::TooManyRequests(_)
        )
    }

    /// An internal error from anything displayable (I/O, index).
    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string().into())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::internal(e)
    }
}
