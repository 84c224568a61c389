//! Routes (`airlock::api::route`): a request target, `path[?query]`, as the request line
//! carries it.
//!
//! Properties: nothing but `/v2…` paths without `%` is routed; every error has an OCI code
//! and status; a route printed back as a path and `?ns=` query routes to the same route; a
//! route whose registry looks like a host routes the same from the `/v2/<registry>/<name>/…`
//! prefix form; and the names, tags and digests in it print as they parse.

use airlock::api::route::{Route, Router};
use airlock::oci::{Digest, Reference, Registry, RepoName, Repository};
use std::collections::HashMap;

/// The router the target uses: docker.io by default, the aliases `gh` (ghcr.io) and `hub`
/// (docker.io), as an operator might configure.
pub fn router() -> Router {
    let aliases = HashMap::from([
        ("gh".to_string(), "ghcr.io".parse().expect("ghcr.io")),
        ("hub".to_string(), Registry::docker_hub()),
    ]);
    Router::new(Registry::docker_hub(), aliases)
}

/// Route `data` (UTF-8: a request target), check the properties, and say whether it routed.
pub fn check(data: &[u8]) -> bool {
    let Ok(target) = std::str::from_utf8(data) else {
        return false;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let router = router();
    let route = match router.parse(path, query) {
        Ok(route) => route,
        Err(e) => {
            let _ = (e.code(), e.status(), e.to_string());
            assert!(
                path != "/v2" && path != "/v2/",
                "the base path always routes"
            );
            return false;
        }
    };
    assert!(!path.contains('%'), "{path:?}: percent-encoding routed");
    assert!(path.starts_with("/v2"), "{path:?} routed");
    let (printed_path, printed_query) = print(&route);
    let again = router
        .parse(&printed_path, printed_query.as_deref())
        .unwrap_or_else(|e| panic!("{route:?} printed as {printed_path}?{printed_query:?}: {e}"));
    assert_eq!(again, route, "{printed_path}?{printed_query:?}");
    if let Some(repo) = repository(&route) {
        check_repository(repo);
        let reg = repo.registry.as_str();
        if reg.contains('.') || reg.contains(':') || reg == "localhost" {
            // The same route by path prefix, the form podman and CRI-O send.
            let prefixed = printed_path.replacen("/v2/", &format!("/v2/{reg}/"), 1);
            let query = printed_query.as_deref().and_then(without_ns);
            let again = router
                .parse(&prefixed, query.as_deref())
                .unwrap_or_else(|e| panic!("{route:?} by prefix {prefixed}: {e}"));
            assert_eq!(again, route, "{prefixed}?{query:?}");
        }
    }
    match &route {
        Route::Manifest { reference, .. } => check_reference(reference),
        Route::Blob { digest, .. } | Route::Referrers { digest, .. } => check_digest(digest),
        Route::Base | Route::Tags { .. } => {}
    }
    true
}

/// A route as a path and query that ask for it, the registry named by `?ns=`.
pub fn print(route: &Route) -> (String, Option<String>) {
    let ns = |repo: &Repository| format!("ns={}", super::percent_encode(repo.registry.as_str()));
    match route {
        Route::Base => ("/v2/".into(), None),
        Route::Manifest { repo, reference } => (
            format!("/v2/{}/manifests/{reference}", repo.name),
            Some(ns(repo)),
        ),
        Route::Blob { repo, digest } => {
            (format!("/v2/{}/blobs/{digest}", repo.name), Some(ns(repo)))
        }
        Route::Tags { repo, n, last } => {
            let mut q = ns(repo);
            if let Some(n) = n {
                q.push_str(&format!("&n={n}"));
            }
            if let Some(last) = last {
                q.push_str(&format!("&last={}", super::percent_encode(last)));
            }
            (format!("/v2/{}/tags/list", repo.name), Some(q))
        }
        Route::Referrers {
            repo,
            digest,
            artifact_types,
            n,
            last,
        } => {
            let mut q = ns(repo);
            for t in artifact_types {
                q.push_str(&format!("&artifactType={}", super::percent_encode(t)));
            }
            if let Some(n) = n {
                q.push_str(&format!("&n={n}"));
            }
            if let Some(last) = last {
                q.push_str(&format!("&last={}", super::percent_encode(last)));
            }
            (format!("/v2/{}/referrers/{digest}", repo.name), Some(q))
        }
    }
}

fn repository(route: &Route) -> Option<&Repository> {
    match route {
        Route::Base => None,
        Route::Manifest { repo, .. }
        | Route::Blob { repo, .. }
        | Route::Tags { repo, .. }
        | Route::Referrers { repo, .. } => Some(repo),
    }
}

/// The query without its `ns=` parameters; `None` when nothing is left.
fn without_ns(q: &str) -> Option<String> {
    let rest: Vec<&str> = q.split('&').filter(|p| !p.starts_with("ns=")).collect();
    (!rest.is_empty()).then(|| rest.join("&"))
}

fn check_repository(repo: &Repository) {
    let name: RepoName = repo
        .name
        .as_str()
        .parse()
        .unwrap_or_else(|e| panic!("routed name {:?} does not parse: {e}", repo.name));
    assert_eq!(name, repo.name);
    let registry: Registry = repo.registry.as_str().parse().expect("routed registry");
    assert_eq!(registry, repo.registry);
}

fn check_reference(reference: &Reference) {
    let printed = reference.to_string();
    assert_eq!(printed.parse::<Reference>().ok().as_ref(), Some(reference));
}

fn check_digest(digest: &Digest) {
    let printed = digest.to_string();
    assert_eq!(printed.parse::<Digest>().ok().as_ref(), Some(digest));
}

/// Request targets that must route: every route kind, every way of naming a registry.
pub fn seeds() -> Vec<Vec<u8>> {
    let d = format!("sha256:{}", "a".repeat(64));
    [
        "/v2/".to_string(),
        "/v2".to_string(),
        "/v2/alpine/manifests/3.19".to_string(),
        format!("/v2/library/alpine/manifests/{d}"),
        format!("/v2/ghcr.io/org/app/blobs/{d}"),
        "/v2/org/app/tags/list?n=10&last=v1".to_string(),
        "/v2/gh/org/app/manifests/v1".to_string(),
        "/v2/my.group/app/manifests/latest?ns=registry.gitlab.com".to_string(),
        "/v2/app/manifests/v1?ns=localhost:5000".to_string(),
        "/v2/a/b__c/d-e/tags/list?n=0&ns=gh".to_string(),
        "/v2/localhost:5000/a/b__c/d-e/tags/list?n=0".to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}
