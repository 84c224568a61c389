//! What each fuzz target checks, one module per parser that takes outside input. The
//! libFuzzer targets (`fuzz/fuzz_targets/*.rs`) call these; the integration tests include
//! this same directory (`tests/it/fuzz_corpora.rs`) and replay the committed corpora
//! (`fuzz/corpus/<target>/`) through it, so a corpus file that ever broke a property keeps
//! being checked on stable Rust, without libFuzzer.
//!
//! Each `check` must not panic for any input; it panics (an `assert!`) only when a property
//! fails: a parse that the value's own printer does not reproduce, or an accepted input that
//! breaks the parser's documented promises. It returns whether the input was accepted, so
//! the replay can tell that known-valid seeds still parse.
//!
//! Only `airlock`, the standard library and crates airlock itself depends on (`serde`,
//! `serde_json`, `tar`, `tempfile`, `form_urlencoded`) are used, and modules refer to each other with
//! `super::`, so the files compile both as the fuzz crate's library and as a module of
//! airlock's test binary.

pub mod bundle;
pub mod manifest;
pub mod names;
pub mod range;
pub mod route;
pub mod www_authenticate;

/// The corpus directories, by target name: where `cargo fuzz` keeps them under `fuzz/`.
pub const TARGETS: [&str; 6] = [
    "bundle",
    "manifest",
    "names",
    "range",
    "route",
    "www_authenticate",
];

/// The check of target `name`, for replaying a corpus by name.
pub fn check_of(name: &str) -> Option<fn(&[u8]) -> bool> {
    Some(match name {
        "bundle" => bundle::check,
        "manifest" => manifest::check,
        "names" => names::check_any,
        "range" => range::check,
        "route" => route::check,
        "www_authenticate" => www_authenticate::check,
        _ => return None,
    })
}

/// Inputs target `name` must accept, for seeding its corpus and for the replay.
pub fn seeds_of(name: &str) -> Vec<Vec<u8>> {
    match name {
        "bundle" => bundle::seeds(),
        "manifest" => manifest::seeds(),
        "names" => names::seeds(),
        "range" => range::seeds(),
        "route" => route::seeds(),
        "www_authenticate" => www_authenticate::seeds(),
        _ => Vec::new(),
    }
}

/// A query value, encoded as the router decodes it (`application/x-www-form-urlencoded`).
pub(crate) fn percent_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
