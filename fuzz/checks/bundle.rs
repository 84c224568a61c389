//! Bundle archives (`airlock::bundle`): `import` into a cache on a temporary directory, and
//! `bundle_digests` (what `export --since` reads), on the same archive.
//!
//! Random bytes rarely get past a tar header's checksum, let alone a sha256, so an input is
//! either a raw archive (`T` then the tar bytes) or, usually, a list of entries from which
//! [`archive`] writes a well-formed tar, filling in digests the fuzzer cannot compute:
//!
//! ```text
//! entry := type:u8 path_len:u8 path[path_len] data_len:u16le data[data_len]
//! ```
//!
//! `type` is the tar type flag (`0` a file, `5` a directory, anything else as is). A path
//! ending in `=` gets the `=` replaced by the sha256 hex of the entry's data
//! (`blobs/sha256/=`), and in the data `$N` becomes the sha256 hex and `#N` the size of entry
//! N, for an earlier entry N (0-9), so manifests and `index.json` can name real blobs.
//!
//! Properties: no panic; a refused import leaves the cache as it was (blobs, tags, pins)
//! with no temporary file left behind; a bundle `import` takes is one `bundle_digests` reads,
//! its images are full references that print as they parse, and exporting those images and
//! importing the export gives the same images with nothing new.

use airlock::bundle::{self, Selection};
use airlock::cache::{Cache, Settings};
use airlock::fetch_policy::FetchPolicy;
use airlock::metrics::Metrics;
use airlock::oci::{Digest, ImageRef, Registry};
use airlock::progress::Progress;
use airlock::store::fs::FsStore;
use airlock::store::index::SledIndex;
use airlock::store::{BlobStore, Index};
use airlock::upstream::Upstreams;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Successful imports into one cache before the fuzz target starts a fresh one, so the
/// store stays small (and listing it cheap).
const IMPORTS_PER_CACHE: usize = 8;

/// Import `data` (see the module docs) into the fuzz target's cache; whether it was taken.
pub fn check(data: &[u8]) -> bool {
    static IMPORTER: Mutex<Option<Importer>> = Mutex::new(None);
    let mut importer = IMPORTER.lock().unwrap_or_else(|e| e.into_inner());
    let imp = importer.get_or_insert_with(|| {
        // libFuzzer exits without running destructors: remove what earlier runs left.
        remove_stale_dirs();
        Importer::new()
    });
    let taken = imp.check(data);
    if imp.imported >= IMPORTS_PER_CACHE {
        *importer = None;
    }
    taken
}

/// A cache with no upstream on a temporary directory, that bundles are imported into.
pub struct Importer {
    cache: Cache,
    /// What the cache is built over (to compare what it holds before and after).
    store: Arc<dyn BlobStore>,
    index: Arc<dyn Index>,
    dir: tempfile::TempDir,
    imported: usize,
}

impl Default for Importer {
    fn default() -> Self {
        Self::new()
    }
}

impl Importer {
    /// A cache on a new temporary directory (under `$TMPDIR`).
    pub fn new() -> Importer {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}.", std::process::id()))
            .tempdir()
            .expect("a temporary directory");
        let (cache, store, index) = open(dir.path());
        Importer {
            cache,
            store,
            index,
            dir,
            imported: 0,
        }
    }

    /// Import `data`, check the properties; whether the import succeeded.
    pub fn check(&mut self, data: &[u8]) -> bool {
        let tar = archive(data);
        let digests = bundle::bundle_digests(&mut &tar[..]);
        let before = self.snapshot();
        let report = match bundle::import(&self.cache, &mut &tar[..], &Progress::none()) {
            Ok(report) => report,
            Err(e) => {
                let _ = (e.code(), e.status(), e.to_string());
                assert!(
                    self.snapshot() == before,
                    "a refused import changed the cache: {e}"
                );
                self.assert_no_spools();
                return false;
            }
        };
        self.assert_no_spools();
        self.imported += 1;
        let digests = digests.expect("an archive import takes is one bundle_digests reads");
        assert!(!report.images.is_empty());
        assert!(report.new_blobs + report.known_blobs <= digests.len());
        let mut images = BTreeSet::new();
        for name in &report.images {
            let r = ImageRef::parse(name, &"registry.invalid".parse().expect("host"))
                .unwrap_or_else(|e| panic!("imported image {name:?} does not parse: {e}"));
            assert_eq!(&r.to_string(), name);
            assert!(r == ImageRef::parse(name, &Registry::docker_hub()).expect("parses"));
            images.insert(name.clone());
        }
        self.check_export(&images);
        true
    }

    /// Export `images` and import the export: the same images, nothing new.
    fn check_export(&mut self, images: &BTreeSet<String>) {
        let selection = Selection {
            images: images.iter().cloned().collect(),
            ..Selection::default()
        };
        let plan = bundle::plan_export(&self.cache, &selection, &HashSet::new())
            .unwrap_or_else(|e| panic!("imported images {images:?} do not export: {e}"));
        let mut out = Vec::new();
        bundle::write_export(&self.cache, &plan, &mut out, &Progress::none())
            .expect("write the export");
        let exported = bundle::bundle_digests(&mut &out[..]).expect("an export is a bundle");
        let planned: HashSet<Digest> = plan.blobs.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(exported, planned);
        let again = bundle::import(&self.cache, &mut &out[..], &Progress::none())
            .unwrap_or_else(|e| panic!("the export of {images:?} does not import: {e}"));
        assert_eq!(
            again.new_blobs, 0,
            "re-importing an export brought new blobs"
        );
        let names: BTreeSet<String> = again.images.into_iter().collect();
        assert_eq!(&names, images);
        self.assert_no_spools();
    }

    /// Blobs with sizes, tags with what they name, pins.
    fn snapshot(&self) -> (BTreeSet<(Digest, u64)>, BTreeSet<String>, Vec<String>) {
        let (store, index) = (&self.store, &self.index);
        let blobs = store.list().expect("list the store").into_iter().collect();
        let tags = index
            .all_tags()
            .expect("list the tags")
            .into_iter()
            .map(|(repo, tag, rec)| format!("{repo}:{tag}={}", rec.digest))
            .collect();
        (blobs, tags, index.pins().expect("list the pins"))
    }

    /// Nothing of an import is left in the store's temporary directory.
    fn assert_no_spools(&self) {
        let tmp = self.dir.path().join("tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .expect("the store's tmp")
            .map(|e| e.expect("an entry").file_name())
            .collect();
        assert!(left.is_empty(), "left in {}: {left:?}", tmp.display());
    }
}

/// The start of an importer's directory name, followed by the process id.
const DIR_PREFIX: &str = "airlock-fuzz-bundle.";

/// Remove importer directories of processes that are gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A cache over `root` with no upstream, offline: imports need nothing else.
fn open(root: &Path) -> (Cache, Arc<dyn BlobStore>, Arc<dyn Index>) {
    let index: Arc<dyn Index> =
        Arc::new(SledIndex::open(&root.join("index")).expect("open the index"));
    let store: Arc<dyn BlobStore> = Arc::new(FsStore::open(root).expect("open the store"));
    let settings = Settings {
        memory_bytes: 1 << 20,
        fill_timeout: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(30),
        max_downloads: 1,
        min_free: 0,
        fetch: FetchPolicy::default(),
    };
    let cache = Cache::new(
        store.clone(),
        index.clone(),
        Upstreams::new(HashMap::new(), true),
        settings,
        Arc::new(Metrics::new(&[], None)),
    );
    (cache, store, index)
}

/// The tar archive an input stands for (see the module docs).
pub fn archive(data: &[u8]) -> Vec<u8> {
    if let Some(raw) = data.strip_prefix(b"T") {
        return raw.to_vec();
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut done: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while let Some((&kind, after)) = rest.split_first() {
        let Some((&path_len, after)) = after.split_first() else {
            break;
        };
        let (path, after) = after.split_at(after.len().min(path_len as usize));
        let (len, after) = match after {
            [a, b, after @ ..] => (u16::from_le_bytes([*a, *b]) as usize, after),
            _ => (0, &[][..]),
        };
        let (body, after) = after.split_at(after.len().min(len));
        rest = after;
        let body = substitute(body, &done);
        let mut path = path.to_vec();
        if path.last() == Some(&b'=') {
            path.pop();
            path.extend_from_slice(Digest::of(&body).hex().as_bytes());
        }
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_old_mut().name;
        let n = path.len().min(name.len());
        name[..n].copy_from_slice(&path[..n]);
        header.set_entry_type(tar::EntryType::new(match kind {
            0 => b'0',
            k => k,
        }));
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(body.len() as u64);
        header.set_cksum();
        builder.append(&header, &body[..]).expect("a tar in memory");
        done.push(body);
    }
    builder.into_inner().expect("a tar in memory")
}

/// `$N` → the sha256 hex of entry N's data, `#N` → its size, for the entries in `done`.
fn substitute(body: &[u8], done: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let entry = body
            .get(i + 1)
            .filter(|c| c.is_ascii_digit())
            .and_then(|c| done.get((c - b'0') as usize));
        match (body[i], entry) {
            (b'$', Some(e)) => out.extend_from_slice(Digest::of(e).hex().as_bytes()),
            (b'#', Some(e)) => out.extend_from_slice(e.len().to_string().as_bytes()),
            (c, _) => {
                out.push(c);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out
}

/// One entry of the structured input.
pub fn entry(kind: u8, path: &str, data: &str) -> Vec<u8> {
    let mut out = vec![kind, path.len() as u8];
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data.as_bytes());
    out
}

const MARKER: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
const CONFIG: &str =
    r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

/// Bundles airlock must import: an OCI image; a Docker manifest list of two platforms with
/// airlock's platform annotation, directories and `./` paths; and the first as a raw tar.
pub fn seeds() -> Vec<Vec<u8>> {
    let image = [
        entry(b'0', "oci-layout", MARKER),
        entry(b'0', "blobs/sha256/=", CONFIG),
        entry(b'0', "blobs/sha256/=", "layer bytes"),
        entry(
            b'0',
            "blobs/sha256/=",
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$1","size":#1},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$2","size":#2}]}"#,
        ),
        entry(
            b'0',
            "index.json",
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$3","size":#3,"annotations":{"org.opencontainers.image.ref.name":"docker.io/library/fuzz:1"}}]}"#,
        ),
    ]
    .concat();
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    let manifest = |config: u8, layer: u8| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{docker}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:${config}","size":#{config}}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:${layer}","size":#{layer}}}]}}"#
        )
    };
    let list = [
        entry(b'5', "./", ""),
        entry(b'0', "./oci-layout", MARKER),
        entry(b'5', "./blobs/", ""),
        entry(b'5', "./blobs/sha256/", ""),
        entry(b'0', "./blobs/sha256/=", CONFIG),
        entry(b'0', "./blobs/sha256/=", "amd64 layer"),
        entry(b'0', "./blobs/sha256/=", &manifest(4, 5)),
        entry(b'0', "./blobs/sha256/=", "arm64 layer"),
        entry(b'0', "./blobs/sha256/=", &manifest(4, 7)),
        entry(
            b'0',
            "./blobs/sha256/=",
            &format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{{"mediaType":"{docker}","digest":"sha256:$6","size":#6,"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{docker}","digest":"sha256:$8","size":#8,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
            ),
        ),
        entry(
            b'0',
            "./index.json",
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","digest":"sha256:$9","size":#9,"annotations":{"io.containerd.image.name":"ghcr.io/org/fuzz:v2","org.airlock.bundle.manifests":"sha256:$6"}}]}"#,
        ),
    ]
    .concat();
    let mut raw = b"T".to_vec();
    raw.extend(archive(&image));
    vec![image, list, raw]
}
