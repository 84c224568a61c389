//! Pure protocol vocabulary of the OCI distribution spec: digests, repository names, tags,
//! references, registries, media types and the children a manifest names. No I/O here.

pub mod digest;
pub mod manifest;
pub mod name;
pub mod platform;
pub mod referrers;

pub use digest::{Digest, Verifier};
pub use manifest::{Descriptor, accepts, children};
pub use name::{ImageRef, Reference, Registry, RepoName, Repository, Tag};
pub use platform::Platform;
