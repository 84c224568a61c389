//! The fuzz corpora, replayed on stable Rust without libFuzzer: every file committed under
//! `fuzz/corpus/<target>/` goes through the same check the fuzz target runs (the files of
//! `fuzz/checks/`, included here), which must not panic and must keep its round-trip
//! properties. Each corpus must have at least a minimum number of files (a corpus lost or
//! emptied fails), hold inputs the parser takes and inputs it refuses, and every target's
//! known-valid seeds must still be accepted. See the README's "Fuzzing" for the targets and
//! how to run them.

#[path = "../../fuzz/checks/mod.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Every file of `target`'s corpus, sorted by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} is missing: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("a corpus entry").path();
            let data = std::fs::read(&path).expect("read a corpus file");
            (path, data)
        })
        .collect();
    files.sort();
    files
}

/// Run every corpus file of `target` and its seeds through `check`; at least `min` files,
/// some accepted and some refused, every seed accepted, no panic.
fn replay(target: &str, min: usize, mut check: impl FnMut(&[u8]) -> bool) {
    let files = corpus(target);
    assert!(
        files.len() >= min,
        "fuzz/corpus/{target} has {} files, at least {min} expected",
        files.len()
    );
    let (mut accepted, mut failed) = (0, Vec::new());
    for (path, data) in &files {
        match catch_unwind(AssertUnwindSafe(|| check(data))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: properties fail for {failed:#?}"
    );
    assert!(accepted > 0, "{target}: no corpus file is accepted");
    assert!(
        accepted < files.len(),
        "{target}: every corpus file is accepted, none refused"
    );
    let seeds = checks::seeds_of(target);
    assert!(!seeds.is_empty(), "{target} has seeds");
    for (i, seed) in seeds.iter().enumerate() {
        assert!(
            check(seed),
            "{target} seed {i} is refused: {:?}",
            String::from_utf8_lossy(seed)
        );
    }
}

/// The check of `target`, as the fuzz target runs it.
fn check_of(target: &str) -> fn(&[u8]) -> bool {
    checks::check_of(target).expect("a fuzz target")
}

#[test]
fn every_target_has_a_corpus_and_a_test() {
    let dirs: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"))
            .expect("fuzz/corpus")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
    let mut dirs = dirs;
    dirs.sort();
    assert_eq!(dirs, checks::TARGETS, "one corpus per fuzz target");
    let targets =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets"))
            .expect("fuzz/fuzz_targets")
            .count();
    assert_eq!(targets, checks::TARGETS.len(), "one fuzz target per check");
}

#[test]
fn route_corpus_replays() {
    replay("route", 50, check_of("route"));
}

#[test]
fn names_corpus_replays() {
    replay("names", 50, check_of("names"));
}

#[test]
fn manifest_corpus_replays() {
    replay("manifest", 50, check_of("manifest"));
}

#[test]
fn www_authenticate_corpus_replays() {
    replay("www_authenticate", 20, check_of("www_authenticate"));
}

#[test]
fn range_corpus_replays() {
    replay("range", 10, check_of("range"));
}

/// Bundles import into a cache of this test's own (not the fuzz target's), removed after.
#[test]
fn bundle_corpus_replays() {
    let mut importer = checks::bundle::Importer::new();
    replay("bundle", 20, |data| importer.check(data));
}

/// Known-bad inputs are refused: a bundle with a flipped byte in a layer (and its cache
/// left as it was), a percent-encoded route, a name no parser takes, a reversed range.
#[test]
fn known_bad_inputs_are_refused() {
    let mut corrupt = checks::seeds_of("bundle").remove(2);
    let at = corrupt
        .windows(b"layer bytes".len())
        .position(|w| w == b"layer bytes")
        .expect("the raw seed's layer");
    corrupt[at] ^= 0x20;
    let mut importer = checks::bundle::Importer::new();
    assert!(!importer.check(&corrupt), "a flipped byte is refused");
    assert!(!check_of("route")(b"/v2/a%2fb/manifests/latest"));
    assert!(!check_of("names")(b"A//b:"));
    assert!(!check_of("range")(b"bytes=5-1"));
    assert!(!check_of("www_authenticate")(b"Bearer service=x"));
    assert!(!check_of("manifest")(b"<html>log in</html>"));
}
