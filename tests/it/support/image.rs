//! Deterministic synthetic images built in memory: OCI image manifests, Docker schema2
//! manifests, OCI image indexes and Docker manifest lists over several platforms.
//!
//! Everything derives from a seed string, so a test that seeds with its own name gets content
//! no other test has (and the same content on every run). Layers come from [`super::layer`]:
//! real tar.gz archives with a correct `rootfs.diff_ids` in the config.
//!
//! ```ignore
//! let img = Image::oci("my_test", &[4096, 1 << 20]);
//! let idx = Index::docker("my_test-list", &[Platform::amd64(), Platform::arm64()], &[2048]);
//! let big = ImageBuilder::new("my_test-big").layer(64 << 20).build();
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::json;

#[allow(unused_imports)]
pub use super::layer::{random_bytes, sha256_digest};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// An Accept header listing all four manifest types (index, list, OCI manifest, schema2).
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json,application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json";

/// OCI or Docker media types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// OCI image-spec types.
    #[default]
    Oci,
    /// Docker schema2 types.
    Docker,
}

impl Format {
    /// Media type of a single-platform manifest.
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }
    /// Media type of a multi-platform index / list.
    pub fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_LIST,
        }
    }
    /// Media type of the config blob.
    pub fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
    /// Media type of a gzip layer.
    pub fn layer_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_LAYER,
            Format::Docker => DOCKER_LAYER,
        }
    }
}

/// An image platform (os/architecture[/variant]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// e.g. "linux".
    pub os: String,
    /// e.g. "amd64".
    pub architecture: String,
    /// e.g. Some("v8") for arm64.
    pub variant: Option<String>,
}

impl Platform {
    /// linux/amd64.
    pub fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
    /// linux/arm64/v8.
    pub fn arm64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        }
    }
    /// Parse "os/arch[/variant]".
    pub fn parse(s: &str) -> Platform {
        let mut p = s.split('/');
        Platform {
            os: p.next().unwrap_or("linux").into(),
            architecture: p.next().unwrap_or("amd64").into(),
            variant: p.next().map(String::from),
        }
    }
    /// The JSON `platform` object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({"architecture": self.architecture, "os": self.os});
        if let Some(var) = &self.variant {
            v["variant"] = json!(var);
        }
        v
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A content-addressed blob.
#[derive(Clone, Debug)]
pub struct Blob {
    /// "sha256:<hex>" of `data`.
    pub digest: String,
    /// Media type used in descriptors.
    pub media_type: String,
    /// The bytes.
    pub data: Bytes,
}

impl Blob {
    /// A blob of `data` with this media type.
    pub fn new(media_type: &str, data: impl Into<Bytes>) -> Blob {
        let data = data.into();
        Blob {
            digest: sha256_digest(&data),
            media_type: media_type.into(),
            data,
        }
    }
    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
    /// The OCI/Docker descriptor `{mediaType, digest, size}`.
    pub fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }
}

/// Anything with a top-level manifest that can be pushed and pulled.
pub trait Artifact {
    /// Media type of the top-level manifest.
    fn media_type(&self) -> &str;
    /// Digest of the top-level manifest bytes.
    fn digest(&self) -> &str;
    /// The exact top-level manifest bytes.
    fn manifest(&self) -> &Bytes;
    /// Size of the top-level manifest.
    fn size(&self) -> u64 {
        self.manifest().len() as u64
    }
    /// Single-platform images under this one (itself excluded; empty for an image).
    fn children(&self) -> &[Image];
    /// Every blob (configs and layers, of all children), digest -> bytes.
    fn blobs(&self) -> BTreeMap<String, Bytes>;
    /// Every manifest (top-level and children), digest -> (media type, bytes).
    fn manifests(&self) -> BTreeMap<String, (String, Bytes)> {
        let mut m = BTreeMap::new();
        m.insert(
            self.digest().to_string(),
            (self.media_type().to_string(), self.manifest().clone()),
        );
        for c in self.children() {
            m.insert(
                c.digest.clone(),
                (c.media_type.to_string(), c.manifest.clone()),
            );
        }
        m
    }
}

/// A single-platform image.
#[derive(Clone, Debug)]
pub struct Image {
    /// OCI or Docker.
    pub format: Format,
    /// Its platform.
    pub platform: Platform,
    /// The config blob.
    pub config: Blob,
    /// The layer blobs, base first.
    pub layers: Vec<Blob>,
    /// sha256 of each uncompressed layer tar (as in the config).
    pub diff_ids: Vec<String>,
    /// The manifest bytes.
    pub manifest: Bytes,
    /// Digest of the manifest.
    pub digest: String,
    /// Media type of the manifest.
    pub media_type: &'static str,
}

impl Image {
    /// An OCI image for linux/amd64 with one layer per entry of `layer_sizes`.
    pub fn oci(seed: &str, layer_sizes: &[usize]) -> Image {
        layer_sizes
            .iter()
            .fold(ImageBuilder::new(seed), |b, s| b.layer(*s))
            .build()
    }
    /// A Docker schema2 image for linux/amd64 with one layer per entry of `layer_sizes`.
    pub fn docker(seed: &str, layer_sizes: &[usize]) -> Image {
        layer_sizes
            .iter()
            .fold(ImageBuilder::new(seed).format(Format::Docker), |b, s| {
                b.layer(*s)
            })
            .build()
    }
    /// Start a builder.
    pub fn builder(seed: &str) -> ImageBuilder {
        ImageBuilder::new(seed)
    }
    /// Digests of the layers, base first.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.digest.clone()).collect()
    }
    /// The blob with this digest (config or layer).
    pub fn blob(&self, digest: &str) -> Option<&Blob> {
        std::iter::once(&self.config)
            .chain(&self.layers)
            .find(|b| b.digest == digest)
    }
    /// The descriptor of this manifest, with its platform (for an index).
    pub fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.manifest.len(),
               "platform": self.platform.to_json()})
    }
}

impl Artifact for Image {
    fn media_type(&self) -> &str {
        self.media_type
    }
    fn digest(&self) -> &str {
        &self.digest
    }
    fn manifest(&self) -> &Bytes {
        &self.manifest
    }
    fn children(&self) -> &[Image] {
        &[]
    }
    fn blobs(&self) -> BTreeMap<String, Bytes> {
        blob_map(&self.config, &self.layers)
    }
}

/// A config and layers as [`Artifact::blobs`] gives them: digest -> bytes.
pub fn blob_map(config: &Blob, layers: &[Blob]) -> BTreeMap<String, Bytes> {
    std::iter::once(config)
        .chain(layers)
        .map(|b| (b.digest.clone(), b.data.clone()))
        .collect()
}

/// Builds an [`Image`]; defaults: OCI, linux/amd64, no layers.
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    seed: String,
    format: Format,
    platform: Platform,
    layers: Vec<(String, usize)>,
}

impl ImageBuilder {
    /// A builder whose content derives from `seed`.
    pub fn new(seed: &str) -> ImageBuilder {
        ImageBuilder {
            seed: seed.into(),
            format: Format::Oci,
            platform: Platform::amd64(),
            layers: Vec::new(),
        }
    }
    /// OCI or Docker types.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }
    /// The platform (also put in the config).
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }
    /// Add a layer with `size` random bytes unique to this image (seed, platform, position).
    pub fn layer(mut self, size: usize) -> Self {
        let s = format!("{}/{}/layer{}", self.seed, self.platform, self.layers.len());
        self.layers.push((s, size));
        self
    }
    /// Add a layer whose content depends only on (`layer_seed`, `size`), so several images can
    /// share it (same digest).
    pub fn shared_layer(mut self, layer_seed: &str, size: usize) -> Self {
        self.layers.push((layer_seed.into(), size));
        self
    }
    /// Build the layers, config and manifest.
    pub fn build(self) -> Image {
        let f = self.format;
        let built: Vec<_> = self
            .layers
            .iter()
            .map(|(s, n)| super::layer::build_layer(s, *n))
            .collect();
        let diff_ids: Vec<String> = built.iter().map(|l| l.diff_id.clone()).collect();
        let layers: Vec<Blob> = built
            .into_iter()
            .map(|l| Blob {
                digest: l.digest,
                media_type: f.layer_type().into(),
                data: l.gz,
            })
            .collect();
        let history: Vec<_> = self
            .layers
            .iter()
            .map(|(s, _)| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("synthetic {s}")}))
            .collect();
        let mut config = json!({
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"org.airlock.fixture.seed": self.seed},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        if let Some(v) = &self.platform.variant {
            config["variant"] = json!(v);
        }
        let config = Blob::new(
            f.config_type(),
            serde_json::to_vec(&config).expect("config json"),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": f.manifest_type(),
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Bytes::from(serde_json::to_vec(&manifest).expect("manifest json"));
        Image {
            format: f,
            platform: self.platform,
            config,
            layers,
            diff_ids,
            digest: sha256_digest(&manifest),
            manifest,
            media_type: f.manifest_type(),
        }
    }
}

/// A multi-platform OCI image index or Docker manifest list.
#[derive(Clone, Debug)]
pub struct Index {
    /// OCI (image index) or Docker (manifest list).
    pub format: Format,
    /// The per-platform images, in index order.
    pub images: Vec<Image>,
    /// The index bytes.
    pub manifest: Bytes,
    /// Digest of the index.
    pub digest: String,
    /// Media type of the index.
    pub media_type: &'static str,
}

impl Index {
    /// An OCI image index with one image per platform, each with its own layers of `layer_sizes`.
    pub fn oci(seed: &str, platforms: &[Platform], layer_sizes: &[usize]) -> Index {
        Self::build(Format::Oci, seed, platforms, layer_sizes)
    }
    /// A Docker manifest list with one image per platform, each with its own layers of `layer_sizes`.
    pub fn docker(seed: &str, platforms: &[Platform], layer_sizes: &[usize]) -> Index {
        Self::build(Format::Docker, seed, platforms, layer_sizes)
    }
    fn build(format: Format, seed: &str, platforms: &[Platform], layer_sizes: &[usize]) -> Index {
        let images = platforms
            .iter()
            .map(|p| {
                let b = ImageBuilder::new(&format!("{seed}/{p}"))
                    .format(format)
                    .platform(p.clone());
                layer_sizes.iter().fold(b, |b, s| b.layer(*s)).build()
            })
            .collect();
        Self::from_images(format, images)
    }
    /// An index over already built images (their platforms go in the descriptors).
    pub fn from_images(format: Format, images: Vec<Image>) -> Index {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": format.index_type(),
            "manifests": images.iter().map(Image::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Bytes::from(serde_json::to_vec(&manifest).expect("index json"));
        Index {
            format,
            images,
            digest: sha256_digest(&manifest),
            manifest,
            media_type: format.index_type(),
        }
    }
    /// The image for `platform`, if any.
    pub fn image_for(&self, platform: &Platform) -> Option<&Image> {
        self.images.iter().find(|i| &i.platform == platform)
    }
}

impl Artifact for Index {
    fn media_type(&self) -> &str {
        self.media_type
    }
    fn digest(&self) -> &str {
        &self.digest
    }
    fn manifest(&self) -> &Bytes {
        &self.manifest
    }
    fn children(&self) -> &[Image] {
        &self.images
    }
    fn blobs(&self) -> BTreeMap<String, Bytes> {
        self.images.iter().flat_map(|i| i.blobs()).collect()
    }
}
