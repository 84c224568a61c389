//! The referrers of a manifest (OCI distribution spec 1.1): the descriptors of the manifests
//! whose `subject` names it (signatures, attestations, SBOMs), as an image index. Parsing an
//! upstream's answer or a tag-schema index (`sha256-<hex>`), merging them, filtering by
//! `artifactType`, paging and encoding. No I/O here.

use super::Digest;
use super::manifest::OCI_INDEX;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Referrers kept for one subject at most: a signature, an SBOM and a few attestations per
/// release is the norm; this many is far past any real image and still a bounded answer.
pub const MAX_REFERRERS: usize = 10_000;
/// Descriptors per page of the referrers API when the client does not ask for fewer.
pub const PAGE: usize = 1_000;
/// Bytes of upstream answers read for one subject at most, and the most an answer kept for
/// one subject may take.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;
/// A descriptor's annotations larger than this (keys and values) are not kept.
pub const MAX_ANNOTATION_BYTES: usize = 16 << 10;

/// One referrer: a manifest descriptor with the artifact type and annotations the referrers
/// API carries (unknown fields are not kept: they are not part of the answer's contract).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    /// Media type of the referring manifest.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its artifact type (or config media type), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
}

/// The referrers an image index lists (an upstream's referrers answer, a tag-schema index).
/// Entries that are not manifest descriptors (no digest, an unparsable one, no size) are
/// skipped: an upstream's stray entry costs that entry, not the answer. `Err` when the bytes
/// are not an index, or list more than [`MAX_REFERRERS`].
pub fn parse(bytes: &[u8]) -> Result<Vec<Referrer>, String> {
    let raw: RawIndex =
        serde_json::from_slice(bytes).map_err(|e| format!("not an image index: {e}"))?;
    if raw.manifests.len() > MAX_REFERRERS {
        return Err(format!(
            "lists {} referrers, more than the {MAX_REFERRERS} airlock keeps for one manifest",
            raw.manifests.len()
        ));
    }
    Ok(raw
        .manifests
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Referrer>(v).ok())
        .map(|mut r| {
            let notes: usize = r
                .annotations
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.len())
                .sum();
            if notes > MAX_ANNOTATION_BYTES {
                r.annotations = None;
            }
            r
        })
        .collect())
}

/// `more` appended to `list`, leaving out digests already there (the first source wins).
pub fn merge(list: &mut Vec<Referrer>, more: Vec<Referrer>) {
    let mut seen: HashSet<Digest> = list.iter().map(|r| r.digest.clone()).collect();
    for r in more {
        if list.len() >= MAX_REFERRERS {
            return;
        }
        if seen.insert(r.digest.clone()) {
            list.push(r);
        }
    }
}

/// The referrers of any of `types` (all of them when `types` is empty).
pub fn filter<'a>(list: &'a [Referrer], types: &[String]) -> Vec<&'a Referrer> {
    list.iter()
        .filter(|r| {
            types.is_empty()
                || r.artifact_type
                    .as_ref()
                    .is_some_and(|t| types.iter().any(|w| w == t))
        })
        .collect()
}

/// Up to `n` referrers after the one with digest `last` (from the first when `None`; none
/// when `last` is not in the list, so a client never gets a page twice), and whether more
/// follow.
pub fn page<'a>(list: &[&'a Referrer], n: usize, last: Option<&str>) -> (Vec<&'a Referrer>, bool) {
    let start = match last {
        None => 0,
        Some(l) => match list.iter().position(|r| r.digest.to_string() == l) {
            Some(i) => i + 1,
            None => list.len(),
        },
    };
    let rest = &list[start.min(list.len())..];
    let n = n.max(1);
    (rest.iter().take(n).copied().collect(), rest.len() > n)
}

/// The image index that answers a referrers request.
pub fn encode(list: &[&Referrer]) -> Vec<u8> {
    let mut bytes = encode_all(list);
    let mut n = list.len();
    // Bounded: what is kept must read back whole.
    while bytes.len() > MAX_ANSWER_BYTES && n > 0 {
        n = n * 3 / 4;
        bytes = encode_all(&list[..n]);
    }
    bytes
}

fn encode_all(list: &[&Referrer]) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer<'a> {
        schema_version: u32,
        media_type: &'static str,
        manifests: &'a [&'a Referrer],
    }
    serde_json::to_vec(&Answer {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: list,
    })
    .expect("descriptors serialize")
}

/// The tag the referrers tag schema gives the index of `subject`'s referrers.
pub fn schema_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm(), subject.hex())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WithSubject {
    subject: Option<RawSubject>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<RawConfig>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawSubject {
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    media_type: Option<String>,
}

/// The subject a manifest refers to and its descriptor as a referrer (what a registry with
/// the referrers API lists for it: its `artifactType`, else its config's media type, and its
/// annotations). `None` for a manifest without a `subject`.
pub fn of_manifest(bytes: &[u8], media_type: &str) -> Option<(Digest, Referrer)> {
    let m: WithSubject = serde_json::from_slice(bytes).ok()?;
    let subject = m.subject?.digest.parse().ok()?;
    let artifact_type = m
        .artifact_type
        .filter(|t| !t.is_empty())
        .or_else(|| m.config.and_then(|c| c.media_type));
    Some((
        subject,
        Referrer {
            media_type: media_type.to_string(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
            artifact_type,
            annotations: m.annotations,
        },
    ))
}

/// What an artifact attached to an image is for, as `cache ls` and the readiness report count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A signature: cosign's `.sig`, a notation signature, a sigstore bundle.
    Signature,
    /// An attestation: cosign's `.att`, in-toto, DSSE.
    Attestation,
    /// A software bill of materials: cosign's `.sbom`, SPDX, CycloneDX, Syft.
    Sbom,
    /// Anything else.
    Other,
}

/// The suffixes cosign gives its tags (`sha256-<hex>.sig`) and what each holds.
pub const COSIGN_TAGS: [(&str, Attached); 3] = [
    (".sig", Attached::Signature),
    (".att", Attached::Attestation),
    (".sbom", Attached::Sbom),
];

impl Attached {
    /// What a referrer of this artifact type is.
    pub fn of_artifact_type(t: &str) -> Attached {
        let t = t.to_ascii_lowercase();
        if t.contains("spdx")
            || t.contains("cyclonedx")
            || t.contains("syft")
            || t.contains(".sbom")
        {
            Attached::Sbom
        } else if t.contains("in-toto") || t.contains("dsse") || t.contains(".att") {
            Attached::Attestation
        } else if t.contains("signature") || t.contains("sigstore.bundle") || t.contains(".sig") {
            Attached::Signature
        } else {
            Attached::Other
        }
    }
}

/// The tag cosign gives what it attaches to `subject` (`sha256-<hex>.sig`, …).
pub fn cosign_tag(subject: &Digest, suffix: &str) -> String {
    format!("{}{suffix}", schema_tag(subject))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn entry(c: char, artifact: Option<&str>) -> serde_json::Value {
        let mut v = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d(c), "size": 100,
        });
        if let Some(a) = artifact {
            v["artifactType"] = a.into();
            v["annotations"] = serde_json::json!({"org.example": "x"});
        }
        v
    }

    fn index(entries: Vec<serde_json::Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": entries})).unwrap()
    }

    #[test]
    fn keeps_descriptors_and_skips_what_is_not_one() {
        let bytes = index(vec![
            entry('a', Some("application/spdx+json")),
            serde_json::json!({"digest": "sha256:short", "size": 1, "mediaType": "x"}),
            serde_json::json!({"mediaType": "x", "digest": d('c')}),
            entry('b', None),
        ]);
        let list = parse(&bytes).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0].artifact_type.as_deref(),
            Some("application/spdx+json")
        );
        assert_eq!(list[0].annotations.as_ref().unwrap()["org.example"], "x");
        assert_eq!(list[1].digest.to_string(), d('b'));
        assert!(parse(b"not json").is_err());
        assert!(parse(b"[1, 2]").is_err());
    }

    #[test]
    fn an_index_of_a_hundred_thousand_referrers_is_refused_with_a_reason() {
        let entries = (0..100_000).map(|_| entry('a', None)).collect();
        let e = parse(&index(entries)).unwrap_err();
        assert!(e.contains("100000 referrers"), "{e}");
    }

    #[test]
    fn merges_without_duplicates_filters_and_pages() {
        let mut list = parse(&index(vec![entry('a', Some("sig")), entry('b', None)])).unwrap();
        merge(
            &mut list,
            parse(&index(vec![
                entry('b', Some("other")),
                entry('c', Some("sbom")),
            ]))
            .unwrap(),
        );
        let digests: Vec<String> = list.iter().map(|r| r.digest.to_string()).collect();
        assert_eq!(digests, [d('a'), d('b'), d('c')]);
        assert_eq!(
            list[1].artifact_type, None,
            "the first source's entry is kept"
        );

        let sboms = filter(&list, &["sbom".into()]);
        assert_eq!(sboms.len(), 1);
        assert_eq!(filter(&list, &["sig".into(), "sbom".into()]).len(), 2);
        let all = filter(&list, &[]);
        assert_eq!(all.len(), 3);

        let (first, more) = page(&all, 2, None);
        assert_eq!((first.len(), more), (2, true));
        let (second, more) = page(&all, 2, Some(&first[1].digest.to_string()));
        assert_eq!((second.len(), more), (1, false));
        assert_eq!(second[0].digest.to_string(), d('c'));
        let (none, more) = page(&all, 2, Some(&d('e')));
        assert!(
            none.is_empty() && !more,
            "an unknown last gives nothing, not the first page again"
        );

        let answer: serde_json::Value = serde_json::from_slice(&encode(&sboms)).unwrap();
        assert_eq!(answer["schemaVersion"], 2);
        assert_eq!(answer["mediaType"], OCI_INDEX);
        assert_eq!(answer["manifests"][0]["artifactType"], "sbom");
        let empty: serde_json::Value = serde_json::from_slice(&encode(&[])).unwrap();
        assert_eq!(empty["manifests"], serde_json::json!([]));
    }

    #[test]
    fn attached_artifacts_are_told_apart_by_their_type() {
        for (t, want) in [
            (
                "application/vnd.dev.cosign.artifact.sig.v1+json",
                Attached::Signature,
            ),
            ("application/vnd.cncf.notary.signature", Attached::Signature),
            (
                "application/vnd.dev.sigstore.bundle.v0.3+json",
                Attached::Signature,
            ),
            ("application/vnd.in-toto+json", Attached::Attestation),
            (
                "application/vnd.dsse.envelope.v1+json",
                Attached::Attestation,
            ),
            ("application/spdx+json", Attached::Sbom),
            ("application/vnd.cyclonedx+json", Attached::Sbom),
            ("application/vnd.cncf.helm.config.v1+json", Attached::Other),
        ] {
            assert_eq!(Attached::of_artifact_type(t), want, "{t}");
        }
        let digest: Digest = d('a').parse().unwrap();
        assert_eq!(
            cosign_tag(&digest, ".sig"),
            format!("sha256-{}.sig", "a".repeat(64))
        );
    }

    #[test]
    fn a_manifest_with_a_subject_is_its_referrer() {
        let subject = d('a');
        let with = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{s}","size":2}},"layers":[],"subject":{{"mediaType":"x","digest":"{subject}","size":1}},"annotations":{{"k":"v"}}}}"#,
            s = d('b')
        );
        let (got, r) = of_manifest(with.as_bytes(), OCI_MANIFEST_TYPE).unwrap();
        assert_eq!(got.to_string(), subject);
        assert_eq!(r.digest, Digest::of(with.as_bytes()));
        assert_eq!(r.size, with.len() as u64);
        assert_eq!(
            r.artifact_type.as_deref(),
            Some("application/vnd.oci.empty.v1+json")
        );
        assert_eq!(r.annotations.unwrap()["k"], "v");
        let typed = with.replace(
            r#""layers":[]"#,
            r#""layers":[],"artifactType":"application/spdx+json""#,
        );
        let (_, r) = of_manifest(typed.as_bytes(), OCI_MANIFEST_TYPE).unwrap();
        assert_eq!(r.artifact_type.as_deref(), Some("application/spdx+json"));
        assert!(of_manifest(br#"{"schemaVersion":2,"layers":[]}"#, OCI_MANIFEST_TYPE).is_none());
        assert!(of_manifest(b"not json", OCI_MANIFEST_TYPE).is_none());
    }

    const OCI_MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

    #[test]
    fn the_schema_tag_is_the_algorithm_and_hex() {
        let digest: Digest = d('f').parse().unwrap();
        assert_eq!(schema_tag(&digest), format!("sha256-{}", "f".repeat(64)));
    }
}
