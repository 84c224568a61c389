//! `skopeo copy` from a registry to a local `dir:`, and reading that directory back.
//!
//! skopeo 1.9's `dir:` layout: `manifest.json` (the top-level manifest, byte-for-byte),
//! `<hex>.manifest.json` for each platform manifest when copied with `--all`, `<hex>` for each
//! blob, and `version`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use super::image::{Artifact, sha256_digest};

/// Options for [`copy_with`].
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Pass `--all` (copy every platform of an index).
    pub all: bool,
    /// `--src-creds user:pass`.
    pub creds: Option<String>,
    /// More arguments, placed before the image references.
    pub extra_args: Vec<String>,
    /// Kill skopeo and fail after this long.
    pub timeout: Duration,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            all: false,
            creds: None,
            extra_args: Vec::new(),
            timeout: Duration::from_secs(120),
        }
    }
}

/// `skopeo copy --src-tls-verify=false [--all] [extra_args] docker://SRC dir:DST` with a
/// 120 s timeout. `src_ref` is "HOST:PORT/REPO:TAG" (or "@digest"; a `docker://` prefix is
/// optional). Ok(stdout) on success, Err(stderr or the reason) otherwise.
pub async fn copy(
    src_ref: &str,
    dst_dir: &Path,
    all: bool,
    extra_args: &[&str],
) -> Result<String, String> {
    let opts = CopyOptions {
        all,
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    copy_with(src_ref, dst_dir, &opts).await
}

/// [`copy`] with credentials: `--src-creds user:pass`.
pub async fn copy_with_creds(
    src_ref: &str,
    dst_dir: &Path,
    all: bool,
    creds: &str,
) -> Result<String, String> {
    let opts = CopyOptions {
        all,
        creds: Some(creds.into()),
        ..Default::default()
    };
    copy_with(src_ref, dst_dir, &opts).await
}

/// `skopeo copy` with explicit options.
pub async fn copy_with(
    src_ref: &str,
    dst_dir: &Path,
    opts: &CopyOptions,
) -> Result<String, String> {
    let src = if src_ref.starts_with("docker://") {
        src_ref.to_string()
    } else {
        format!("docker://{src_ref}")
    };
    let mut cmd = crate::support::tools::SKOPEO.tokio_command();
    cmd.arg("copy").arg("--src-tls-verify=false");
    if opts.all {
        cmd.arg("--all");
    }
    if let Some(c) = &opts.creds {
        cmd.arg("--src-creds").arg(c);
    }
    cmd.args(&opts.extra_args)
        .arg(&src)
        .arg(format!("dir:{}", dst_dir.display()));
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    cmd.env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY");
    match tokio::time::timeout(opts.timeout, cmd.output()).await {
        Err(_) => Err(format!(
            "skopeo copy {src} timed out after {:?}",
            opts.timeout
        )),
        Ok(Err(e)) => Err(format!("cannot run skopeo: {e}")),
        Ok(Ok(out)) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// What a skopeo `dir:` holds.
#[derive(Clone, Debug, Default)]
pub struct DirImage {
    /// `manifest.json`, the top-level manifest.
    pub manifest: Bytes,
    /// Per-platform manifests (`<hex>.manifest.json`), "sha256:<hex>" -> bytes.
    pub instance_manifests: BTreeMap<String, Bytes>,
    /// Blobs, "sha256:<hex>" -> bytes.
    pub blobs: BTreeMap<String, Bytes>,
}

impl DirImage {
    /// Digest of `manifest.json`.
    pub fn digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    /// Panic unless this holds exactly `artifact`'s top-level manifest bytes, every child
    /// manifest (when `all`), and every blob byte-for-byte (for `all == false` on an index,
    /// only the top-level manifest is compared: skopeo then picks one platform).
    pub fn assert_matches<A: Artifact + ?Sized>(&self, artifact: &A, all: bool) {
        let children = artifact.children();
        if children.is_empty() || all {
            assert!(
                self.manifest == *artifact.manifest(),
                "manifest.json differs from {}",
                artifact.digest()
            );
        }
        if !children.is_empty() && !all {
            return;
        }
        for c in children {
            let got = self
                .instance_manifests
                .get(&c.digest)
                .unwrap_or_else(|| panic!("missing manifest {}", c.digest));
            assert!(*got == c.manifest, "manifest {} differs", c.digest);
        }
        let want = artifact.blobs();
        for (d, data) in &want {
            let got = self
                .blobs
                .get(d)
                .unwrap_or_else(|| panic!("blob {d} missing from the dir"));
            assert!(got == data, "blob {d} differs");
        }
        let extra: Vec<_> = self
            .blobs
            .keys()
            .filter(|d| !want.contains_key(*d))
            .collect();
        assert!(extra.is_empty(), "unexpected blobs in the dir: {extra:?}");
    }
}

/// Read a skopeo `dir:` back, checking every file against its digest.
pub fn read_dir(dir: &Path) -> DirImage {
    let mut out = DirImage {
        manifest: std::fs::read(dir.join("manifest.json"))
            .expect("read manifest.json")
            .into(),
        ..Default::default()
    };
    for entry in std::fs::read_dir(dir).expect("read skopeo dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let hex = name.strip_suffix(".manifest.json").unwrap_or(&name);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let data = Bytes::from(std::fs::read(entry.path()).expect("read dir file"));
        let digest = format!("sha256:{hex}");
        assert_eq!(
            sha256_digest(&data),
            digest,
            "file {name} does not match its digest"
        );
        if name.ends_with(".manifest.json") {
            out.instance_manifests.insert(digest, data);
        } else {
            out.blobs.insert(digest, data);
        }
    }
    out
}

/// `skopeo copy --all` of `HOST/REFERENCE` into a temporary `dir:`, read back.
pub async fn try_pull(host: &str, reference: &str) -> Result<DirImage, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    copy(&format!("{host}/{reference}"), dir.path(), true, &[]).await?;
    Ok(read_dir(dir.path()))
}

/// `skopeo copy --all` of `HOST/REFERENCE` and a byte-for-byte comparison with `want`;
/// panics with skopeo's message when the copy fails.
pub async fn pull(host: &str, reference: &str, want: &dyn super::image::Artifact) {
    try_pull(host, reference)
        .await
        .unwrap_or_else(|e| panic!("skopeo copy --all {host}/{reference}: {e}"))
        .assert_matches(want, true);
}
