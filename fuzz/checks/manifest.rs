//! Manifests (`airlock::oci::manifest`): what a manifest, index or list names, whether bytes
//! look like a manifest at all (a captive portal's page does not), and `Accept` matching.
//!
//! Properties: `children` depends on the JSON value only, not on how it is written (the
//! value printed again gives the same children); it and `looks_like_manifest` accept only
//! JSON (`children` reads fields it skips only for their syntax); every digest they return prints as it parses; `Accept` matching agrees with itself
//! (`*/*` takes everything, `accepts_every_type` is the four `accepts`).

use airlock::oci::Digest;
use airlock::oci::manifest::{
    self, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, accepts, accepts_every_type,
};
use serde_json::Value;

const TYPES: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Parse `data` as a manifest (and, line by line, as `Accept` values); whether `children`
/// read it.
pub fn check(data: &[u8]) -> bool {
    let value = serde_json::from_slice::<Value>(data).ok();
    let looks = manifest::looks_like_manifest(data);
    if looks {
        let Some(Value::Object(m)) = &value else {
            panic!("looks_like_manifest took something that is not a JSON object");
        };
        assert!(m.contains_key("schemaVersion") || m.contains_key("mediaType"));
    }
    let children = manifest::children(data);
    if let Some(children) = &children {
        serde_json::from_slice::<serde::de::IgnoredAny>(data)
            .expect("children read something that is not JSON");
        // Fields it skips are read only for their syntax (serde_json checks neither UTF-8
        // nor number ranges there): the value is the text's with invalid UTF-8 replaced,
        // when it has one.
        let value = value.or_else(|| serde_json::from_str(&String::from_utf8_lossy(data)).ok());
        if let Some(value) = value {
            let printed = serde_json::to_vec(&value).expect("a JSON value prints");
            assert_eq!(
                manifest::children(&printed).as_ref(),
                Some(children),
                "the same JSON value, printed again, names other children"
            );
        }
        for d in children {
            let again: Digest = d.digest.to_string().parse().expect("a child's digest");
            assert_eq!(again, d.digest);
            if let Some(p) = &d.platform {
                let _ = p.to_string();
            }
        }
    }
    check_accept(data);
    children.is_some()
}

/// `data` as `Accept` header values, one per line.
fn check_accept(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.lines().collect();
    let each: Vec<bool> = TYPES.iter().map(|t| accepts(&values, t)).collect();
    assert_eq!(accepts_every_type(&values), each.iter().all(|a| *a));
    let items = || {
        values
            .iter()
            .flat_map(|v| v.split(','))
            .map(|i| i.split(';').next().unwrap_or("").trim())
    };
    if items().any(|i| i == "*/*" || i == "application/*") || items().all(str::is_empty) {
        assert!(each.iter().all(|a| *a), "{values:?} takes anything");
    }
    for t in TYPES {
        if items().any(|i| i.eq_ignore_ascii_case(t)) {
            assert!(accepts(&values, t), "{values:?} names {t}");
        }
        assert!(manifest::is_manifest_type(t));
    }
    let asked = manifest::upstream_accept(&values);
    assert!(!asked.is_empty());
    let _ = manifest::is_manifest_type(&text);
}

/// Manifests `children` must read: an OCI image with a foreign layer, an index with a
/// platform, a Docker list, schema 1.
pub fn seeds() -> Vec<Vec<u8>> {
    let d1 = format!("sha256:{}", "1".repeat(64));
    let d2 = format!("sha256:{}", "2".repeat(64));
    [
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d1}","size":7}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d2}","size":9}},{{"digest":"{d1}","size":1,"urls":["https://example.invalid/l"]}},{{"digest":"bogus"}}]}}"#
        ),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d1}","size":3,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        ),
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{d2}","size":3,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        ),
        format!(r#"{{"schemaVersion":1,"name":"a/b","tag":"v1","fsLayers":[{{"blobSum":"{d1}"}}]}}"#),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}
