//! Request path + query → a typed [`Route`], by a pure function. Which registry a request is
//! for comes from, in order: a `/v2/<registry-host>/<repo>/…` path prefix (podman and CRI-O
//! mirrors), `?ns=<registry>` (containerd), or the default registry (Docker's
//! `registry-mirrors`). Nothing malformed gets past here: names, tags, digests and registry
//! hosts are validated, and percent-encoding is refused outright.

use crate::error::{Error, Result};
use crate::oci::{Digest, Reference, Registry, RepoName, Repository};
use std::collections::HashMap;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository.
        repo: Repository,
        /// Tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository.
        repo: Repository,
        /// Digest.
        digest: Digest,
    },
    /// `/v2/<name>/referrers/<digest>?artifactType=&n=&last=`.
    Referrers {
        /// Repository.
        repo: Repository,
        /// The subject.
        digest: Digest,
        /// Only referrers of these artifact types (all when empty).
        artifact_types: Vec<String>,
        /// Page size.
        n: Option<usize>,
        /// Referrers after the one with this digest.
        last: Option<String>,
    },
    /// `/v2/<name>/tags/list?n=&last=`.
    Tags {
        /// Repository.
        repo: Repository,
        /// Page size.
        n: Option<usize>,
        /// Tags after this one.
        last: Option<String>,
    },
}

/// How to route: the default registry, and the operator's short aliases for registries.
#[derive(Debug, Clone)]
pub struct Router {
    default: Registry,
    aliases: HashMap<String, Registry>,
}

impl Router {
    /// A router sending unqualified requests to `default`; `aliases` name registries in a
    /// path prefix or `?ns=` (`hub` → `docker.io`).
    pub fn new(default: Registry, aliases: HashMap<String, Registry>) -> Router {
        Router { default, aliases }
    }

    /// Parse a request path and raw query string.
    pub fn parse(&self, path: &str, query: Option<&str>) -> Result<Route> {
        if path.contains('%') {
            return Err(Error::NameInvalid(
                "percent-encoded characters are not allowed in registry paths".into(),
            ));
        }
        let rest = match path {
            "/v2" | "/v2/" => return Ok(Route::Base),
            p => p.strip_prefix("/v2/").ok_or_else(|| {
                Error::Unsupported(format!("{} is not a registry API path", cut(path)))
            })?,
        };
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let params = Query::parse(query)?;
        let repo = |name: &[&str]| self.repository(name, params.ns.as_deref());
        match segs.as_slice() {
            [name @ .., "tags", "list"] if !name.is_empty() => Ok(Route::Tags {
                repo: repo(name)?,
                n: params.n,
                last: params.last,
            }),
            [name @ .., "manifests", reference] if !name.is_empty() => {
                let repo = repo(name)?;
                Ok(Route::Manifest {
                    repo,
                    reference: reference.parse()?,
                })
            }
            [name @ .., "blobs", "uploads"] | [name @ .., "blobs", "uploads", _]
                if !name.is_empty() =>
            {
                Err(Error::MethodNotAllowed(
                    "airlock is a read-only pull-through cache: pushes are not supported".into(),
                ))
            }
            [name @ .., "referrers", digest] if !name.is_empty() => Ok(Route::Referrers {
                repo: repo(name)?,
                digest: digest.parse()?,
                artifact_types: params.artifact_types,
                n: params.n,
                last: params.last,
            }),
            [name @ .., "blobs", digest] if !name.is_empty() => {
                let repo = repo(name)?;
                Ok(Route::Blob {
                    repo,
                    digest: digest.parse()?,
                })
            }
            ["_catalog"] => Err(Error::Unsupported(
                "the catalog is not offered by this cache".into(),
            )),
            _ if n > 0 => Err(Error::Unsupported(format!(
                "{} is not a registry API endpoint",
                cut(path)
            ))),
            _ => unreachable!("split yields at least one segment"),
        }
    }

    /// Registry and repository from `ns` (containerd names the registry and sends the name
    /// as is, dots and all), else a registry path prefix, else the default.
    fn repository(&self, name: &[&str], ns: Option<&str>) -> Result<Repository> {
        let (registry, name) = match (ns, name) {
            (Some(ns), _) => (self.registry(ns)?, name),
            (None, [first, rest @ ..])
                if !rest.is_empty()
                    && (looks_like_host(first) || self.aliases.contains_key(*first)) =>
            {
                (self.registry(first)?, rest)
            }
            (None, _) => (self.default.clone(), name),
        };
        let name: RepoName = name.join("/").parse()?;
        Ok(Repository {
            name: name.normalized_checked(&registry)?,
            registry,
        })
    }
}

impl Router {
    /// An alias (lower case, as registry hosts are read), else a registry host.
    fn registry(&self, name: &str) -> Result<Registry> {
        match self.aliases.get(&name.to_ascii_lowercase()) {
            Some(r) => Ok(r.clone()),
            None => name.parse(),
        }
    }
}

/// A first path component names a registry when it has a dot or a port, or is `localhost`,
/// as Docker decides for image references. Docker Hub namespaces never contain either.
fn looks_like_host(s: &str) -> bool {
    s.contains('.') || s.contains(':') || s == "localhost"
}

fn cut(s: &str) -> &str {
    crate::oci::digest::truncate(s)
}

#[derive(Default)]
struct Query {
    ns: Option<String>,
    n: Option<usize>,
    last: Option<String>,
    artifact_types: Vec<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Query> {
        let mut q = Query::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "ns" => q.ns = Some(v.into_owned()),
                "n" => {
                    let n = v.parse().map_err(|_| {
                        Error::PaginationInvalid(format!(
                            "n={:?} is not a page size: use a non-negative integer",
                            cut(&v)
                        ))
                    })?;
                    q.n = Some(n);
                }
                "last" => q.last = Some(v.into_owned()),
                // A media type has no spaces: a `+` left unencoded was decoded as one.
                "artifactType" => q.artifact_types.push(v.replace(' ', "+")),
                _ => {}
            }
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn router() -> Router {
        let aliases = [("gh".to_string(), "ghcr.io".parse().unwrap())].into();
        Router::new(Registry::docker_hub(), aliases)
    }

    fn repo(reg: &str, name: &str) -> Repository {
        Repository {
            registry: reg.parse().unwrap(),
            name: name.parse().unwrap(),
        }
    }

    #[test]
    fn parses_the_pull_api() {
        let r = router();
        assert_eq!(r.parse("/v2/", None).unwrap(), Route::Base);
        assert_eq!(r.parse("/v2", None).unwrap(), Route::Base);
        assert_eq!(
            r.parse("/v2/alpine/manifests/3.19", None).unwrap(),
            Route::Manifest {
                repo: repo("docker.io", "library/alpine"),
                reference: "3.19".parse().unwrap()
            }
        );
        assert_eq!(
            r.parse(&format!("/v2/a/b/c/blobs/{D}"), None).unwrap(),
            Route::Blob {
                repo: repo("docker.io", "a/b/c"),
                digest: D.parse().unwrap()
            }
        );
        assert_eq!(
            r.parse("/v2/org/app/tags/list", Some("n=2&last=v1"))
                .unwrap(),
            Route::Tags {
                repo: repo("docker.io", "org/app"),
                n: Some(2),
                last: Some("v1".into())
            }
        );
        for bad in ["n=-1", "n=abc", "n=1.5", "n="] {
            let e = r.parse("/v2/org/app/tags/list", Some(bad)).unwrap_err();
            assert_eq!(e.code(), "PAGINATION_NUMBER_INVALID", "{bad}");
            assert_eq!(e.status(), 400);
        }
        assert!(r.parse("/v2/org/app/tags/list", Some("n=0")).is_ok());
        assert_eq!(
            r.parse(
                &format!("/v2/ghcr.io/org/app/referrers/{D}"),
                Some("artifactType=application/spdx+json&artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson&n=5&last=x")
            )
            .unwrap(),
            Route::Referrers {
                repo: repo("ghcr.io", "org/app"),
                digest: D.parse().unwrap(),
                artifact_types: vec![
                    "application/spdx+json".into(),
                    "application/vnd.dev.cosign.artifact.sig.v1+json".into()
                ],
                n: Some(5),
                last: Some("x".into())
            }
        );
        // Endpoint words are fine inside names: the suffix decides.
        assert_eq!(
            r.parse("/v2/manifests/blobs/manifests/latest", None)
                .unwrap(),
            Route::Manifest {
                repo: repo("docker.io", "manifests/blobs"),
                reference: "latest".parse().unwrap()
            }
        );
    }

    #[test]
    fn routes_by_ns_and_by_path_prefix() {
        let r = router();
        let want = Route::Manifest {
            repo: repo("ghcr.io", "org/app"),
            reference: "v1".parse().unwrap(),
        };
        assert_eq!(
            r.parse("/v2/org/app/manifests/v1", Some("ns=ghcr.io"))
                .unwrap(),
            want
        );
        assert_eq!(
            r.parse("/v2/ghcr.io/org/app/manifests/v1", None).unwrap(),
            want
        );
        // With ns, a dotted first component is part of the name (GitLab, Harbor namespaces).
        assert_eq!(
            r.parse(
                "/v2/my.group/app/manifests/v1",
                Some("ns=registry.gitlab.com")
            )
            .unwrap(),
            Route::Manifest {
                repo: repo("registry.gitlab.com", "my.group/app"),
                reference: "v1".parse().unwrap()
            }
        );
        // ns=docker.io as containerd sends it; Docker Hub normalisation applies.
        assert_eq!(
            r.parse("/v2/alpine/manifests/v1", Some("ns=docker.io"))
                .unwrap(),
            Route::Manifest {
                repo: repo("docker.io", "library/alpine"),
                reference: "v1".parse().unwrap()
            }
        );
        assert_eq!(
            r.parse("/v2/localhost:5000/app/manifests/v1", None)
                .unwrap(),
            Route::Manifest {
                repo: repo("localhost:5000", "app"),
                reference: "v1".parse().unwrap()
            }
        );
        // A one-component name is never a registry.
        assert_eq!(
            r.parse("/v2/my.app/manifests/v1", None).unwrap(),
            Route::Manifest {
                repo: repo("docker.io", "library/my.app"),
                reference: "v1".parse().unwrap()
            }
        );
    }

    /// Found by the route fuzz target: `?ns=gH` named a registry `gh` while `?ns=gh` named
    /// the alias, although registry hosts are read in any case. And a name that `library/`
    /// takes past 255 characters is refused, as distribution would.
    #[test]
    fn aliases_in_any_case_and_the_normalised_length() {
        let r = router();
        let want = r.parse("/v2/org/app/manifests/v1", Some("ns=gh")).unwrap();
        for ns in ["ns=gH", "ns=GH"] {
            assert_eq!(r.parse("/v2/org/app/manifests/v1", Some(ns)).unwrap(), want);
        }
        let at_limit = "a".repeat(247);
        let ok = format!("/v2/{at_limit}/manifests/v1");
        assert!(r.parse(&ok, None).is_ok());
        let over = format!("/v2/{at_limit}a/manifests/v1");
        assert_eq!(r.parse(&over, None).unwrap_err().code(), "NAME_INVALID");
        assert!(
            r.parse(&over, Some("ns=ghcr.io")).is_ok(),
            "no prefix elsewhere"
        );
    }

    #[test]
    fn refuses_bad_input_with_the_right_code() {
        let r = router();
        let long = format!("/v2/{}/manifests/latest", "a".repeat(300));
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("/v2/../../etc/blobs/sha256:abc", None, "NAME_INVALID"),
            (
                "/v2/../../etc/passwd/manifests/latest",
                None,
                "NAME_INVALID",
            ),
            ("/v2/%2e%2e/manifests/latest", None, "NAME_INVALID"),
            ("/v2/a%2fb/manifests/latest", None, "NAME_INVALID"),
            ("/v2/A/manifests/latest", None, "NAME_INVALID"),
            ("/v2//a/manifests/latest", None, "NAME_INVALID"),
            (&long, None, "NAME_INVALID"),
            ("/v2/a/blobs/sha256:abc", None, "DIGEST_INVALID"),
            ("/v2/a/blobs/sha512:abc", None, "DIGEST_INVALID"),
            (
                "/v2/a/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
                None,
                "DIGEST_INVALID",
            ),
            ("/v2/a/blobs/latest", None, "DIGEST_INVALID"),
            ("/v2/a/manifests/-bad", None, "MANIFEST_UNKNOWN"),
            ("/v2/a/manifests/sha256:zz", None, "DIGEST_INVALID"),
            (
                "/v2/a/manifests/latest",
                Some("ns=not%20a%20host"),
                "NAME_INVALID",
            ),
            ("/v2/a/blobs/uploads/", None, "UNSUPPORTED"),
            ("/v2/a/blobs/uploads/some-uuid", None, "UNSUPPORTED"),
            ("/v2/_catalog", None, "UNSUPPORTED"),
            ("/v2/a/referrers/x", None, "DIGEST_INVALID"),
            ("/v2/a/referrers/", None, "DIGEST_INVALID"),
            ("/etc/passwd", None, "UNSUPPORTED"),
            ("/v2/manifests/latest", None, "UNSUPPORTED"),
        ];
        for (path, q, code) in cases {
            let e = r.parse(path, *q).unwrap_err();
            assert_eq!(e.code(), *code, "{path} {q:?}: {e}");
        }
    }
}
