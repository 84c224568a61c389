//! The one error type, and the one table ([`Error::answer`]) that gives each variant its OCI
//! error code, HTTP status and header, from which `api::errors` builds every error response
//! of the registry and the admin API.

use http::{HeaderName, HeaderValue, StatusCode, header};
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
    /// A request airlock cannot carry out as sent (an admin request whose JSON does not
    /// parse, an operation the configuration does not allow): answered with 400.
    #[error("{0}")]
    BadRequest(String),
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

/// How an [`Error`] is answered: its OCI error code, its HTTP status, and the header its
/// answer needs (if any). `WWW-Authenticate` is not here: its realm depends on the request,
/// so the handler adds it to [`Error::AuthRequired`] answers.
pub struct Answer {
    /// The OCI distribution spec error code for the response body.
    pub code: &'static str,
    /// The HTTP status.
    pub status: StatusCode,
    /// A header the answer carries.
    pub header: Option<(HeaderName, HeaderValue)>,
}

impl Error {
    /// The one table: every error's code, status and header.
    pub fn answer(&self) -> Answer {
        use StatusCode as S;
        let (code, status) = match self {
            Error::NameInvalid(_) => ("NAME_INVALID", S::BAD_REQUEST),
            Error::NameUnknown(_) => ("NAME_UNKNOWN", S::NOT_FOUND),
            Error::DigestInvalid(_) => ("DIGEST_INVALID", S::BAD_REQUEST),
            Error::PaginationInvalid(_) => ("PAGINATION_NUMBER_INVALID", S::BAD_REQUEST),
            Error::ManifestUnknown(_) => ("MANIFEST_UNKNOWN", S::NOT_FOUND),
            Error::BlobUnknown(_) => ("BLOB_UNKNOWN", S::NOT_FOUND),
            Error::RangeNotSatisfiable { .. } => ("BLOB_UNKNOWN", S::RANGE_NOT_SATISFIABLE),
            Error::Unsupported(_) => ("UNSUPPORTED", S::NOT_FOUND),
            Error::BadRequest(_) => ("UNSUPPORTED", S::BAD_REQUEST),
            Error::MethodNotAllowed(_) => ("UNSUPPORTED", S::METHOD_NOT_ALLOWED),
            Error::HeadersTooLarge { .. } => ("UNSUPPORTED", S::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Error::Unauthorized { .. } | Error::AuthRequired(_) => {
                ("UNAUTHORIZED", S::UNAUTHORIZED)
            }
            Error::Denied(_) => ("DENIED", S::FORBIDDEN),
            Error::TooManyRequests(_) | Error::Throttled(_) => {
                ("TOOMANYREQUESTS", S::TOO_MANY_REQUESTS)
            }
            Error::UpstreamUnavailable { .. } | Error::StorageFull(_) => {
                ("UNAVAILABLE", S::SERVICE_UNAVAILABLE)
            }
            Error::UpstreamInvalid { .. } => ("UNKNOWN", S::BAD_GATEWAY),
            Error::Internal(_) => ("UNKNOWN", S::INTERNAL_SERVER_ERROR),
        };
        let header = match self {
            Error::MethodNotAllowed(_) => {
                Some((header::ALLOW, HeaderValue::from_static("GET, HEAD")))
            }
            Error::RangeNotSatisfiable { size } => {
                HeaderValue::from_str(&format!("bytes */{size}"))
                    .ok()
                    .map(|v| (header::CONTENT_RANGE, v))
            }
            // The upstream asked us to wait: so must the client.
            Error::TooManyRequests(_) => {
                Some((header::RETRY_AFTER, HeaderValue::from_static("10")))
            }
            _ => None,
        };
        Answer {
            code,
            status,
            header,
        }
    }

    /// The OCI distribution spec error code for the response body.
    pub fn code(&self) -> &'static str {
        self.answer().code
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> StatusCode {
        self.answer().status
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
