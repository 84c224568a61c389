//! Access rules: an ordered list; the first rule whose repositories match the full
//! `registry/repository` name decides. Without rules, authentication alone decides: with it
//! on, any authenticated user may pull anything; with it off, anyone may. With rules, a name
//! no rule matches is denied.
//!
//! Anonymous clients are granted by network, checked on every request: a token obtained
//! inside the network is worth nothing outside it.

use super::{Caller, Who};
use crate::config::AccessRule;
use crate::oci::Repository;
use crate::pattern::{NamePattern, Registries};
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::IpAddr;

/// What a rule says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// No credentials, and they would be needed: answer 401 with a challenge.
    Challenge(String),
    /// Not this caller: answer 403, naming the rule.
    Deny(String),
}

#[derive(Debug)]
struct Rule {
    name: String,
    repositories: Vec<NamePattern>,
    users: HashSet<String>,
    groups: HashSet<String>,
    authenticated: bool,
    anonymous: Vec<IpNet>,
}

/// The access rules in force.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Whether clients can authenticate at all (otherwise a challenge would be pointless).
    auth: bool,
}

impl Rules {
    /// Compile `rules`; `auth` says whether authentication is configured. The error names
    /// the rule and what is wrong with it.
    pub fn new(rules: &[AccessRule], auth: bool, registries: &Registries) -> Result<Rules, String> {
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let key = format!("access[{i}]");
            let name = r.name.clone().unwrap_or_else(|| key.clone());
            if r.repositories.is_empty() {
                return Err(format!(
                    "{key}.repositories: name at least one pattern (\"**\" for all)"
                ));
            }
            let repositories = r
                .repositories
                .iter()
                .map(|p| NamePattern::parse_in(p, false, registries))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{key}.repositories: {e}"))?;
            let anonymous = r
                .anonymous
                .iter()
                .map(|n| {
                    n.parse::<IpNet>()
                        .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            format!(
                                "{key}.anonymous: {n:?} is not a network such as \"10.0.0.0/8\""
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let grants_someone = r.authenticated
                || !r.users.is_empty()
                || !r.groups.is_empty()
                || !anonymous.is_empty();
            if !grants_someone {
                return Err(format!(
                    "{key}: grants nobody: set users, groups, authenticated = true or anonymous networks"
                ));
            }
            out.push(Rule {
                name,
                repositories,
                users: r.users.iter().cloned().collect(),
                groups: r.groups.iter().cloned().collect(),
                authenticated: r.authenticated,
                anonymous,
            });
        }
        Ok(Rules { rules: out, auth })
    }

    /// Whether any rule exists.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule grants users (which needs authentication to mean anything).
    pub fn grants_users(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.authenticated || !r.users.is_empty() || !r.groups.is_empty())
    }

    /// Whether some rule lets clients without credentials pull.
    pub fn has_anonymous(&self) -> bool {
        self.rules.iter().any(|r| !r.anonymous.is_empty())
    }

    /// May `caller` pull `repo`?
    pub fn decide(&self, caller: &Caller, repo: &Repository) -> Decision {
        if self.rules.is_empty() {
            return match (&caller.who, self.auth) {
                (Who::Anonymous, true) => Decision::Challenge("authentication is required".into()),
                _ => Decision::Allow,
            };
        }
        self.decide_name(caller, &repo.to_string())
    }

    /// May `caller` pull `name` (`registry/repository`), some rule being configured?
    fn decide_name(&self, caller: &Caller, name: &str) -> Decision {
        let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.repositories.iter().any(|p| p.matches_name(name)))
        else {
            return self.refuse(caller, format!("no access rule covers {name}"));
        };
        if rule.grants(caller) {
            return Decision::Allow;
        }
        let why = match caller.who {
            Who::Anonymous => format!(
                "access rule {:?} lets no anonymous client from {} pull {name}",
                rule.name, caller.addr
            ),
            Who::User(ref u) => format!(
                "access rule {:?} does not let {} pull {name}",
                rule.name, u.name
            ),
        };
        self.refuse(caller, why)
    }

    /// Whether an anonymous client at `addr` may pull anything at all (for `GET /v2/`).
    pub fn anonymous_welcome(&self, addr: IpAddr) -> bool {
        if self.rules.is_empty() {
            return !self.auth;
        }
        let addr = addr.to_canonical();
        self.rules
            .iter()
            .any(|r| r.anonymous.iter().any(|n| n.contains(&addr)))
    }

    fn refuse(&self, caller: &Caller, why: String) -> Decision {
        match caller.who {
            Who::Anonymous if self.auth => Decision::Challenge(why),
            _ => Decision::Deny(why),
        }
    }
}

impl Rule {
    fn grants(&self, caller: &Caller) -> bool {
        match &caller.who {
            Who::Anonymous => {
                let addr = caller.addr.to_canonical();
                self.anonymous.iter().any(|n| n.contains(&addr))
            }
            Who::User(u) => {
                self.authenticated
                    || self.users.contains(&u.name)
                    || u.groups.iter().any(|g| self.groups.contains(g))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;

    fn repo(full: &str) -> Repository {
        let (registry, name) = full.split_once('/').unwrap();
        Repository {
            registry: registry.parse().unwrap(),
            name: name.parse().unwrap(),
        }
    }

    fn rule(repos: &[&str], f: impl FnOnce(&mut AccessRule)) -> AccessRule {
        let mut r = AccessRule {
            name: None,
            repositories: repos.iter().map(|s| s.to_string()).collect(),
            users: vec![],
            groups: vec![],
            authenticated: false,
            anonymous: vec![],
        };
        f(&mut r);
        r
    }

    fn anon(addr: &str) -> Caller {
        Caller::new(Who::Anonymous, addr.parse().unwrap())
    }

    fn user(name: &str, groups: &[&str]) -> Caller {
        let u = User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            external_until: None,
        };
        Caller::new(Who::User(u), "192.0.2.1".parse().unwrap())
    }

    #[test]
    fn first_matching_rule_decides() {
        let rules = Rules::new(
            &[
                rule(&["docker.io/library/*"], |r| {
                    r.anonymous = vec!["10.0.0.0/8".into()]
                }),
                rule(&["docker.io/org/*"], |r| {
                    r.name = Some("org".into());
                    r.users = vec!["alice".into()];
                    r.groups = vec!["dev".into()];
                }),
                rule(&["**"], |r| r.authenticated = true),
            ],
            true,
            &Registries::default(),
        )
        .unwrap();
        use Decision::*;
        let cases = [
            (anon("10.1.2.3"), "docker.io/library/alpine", true),
            (anon("::ffff:10.1.2.3"), "docker.io/library/alpine", true),
            (user("bob", &[]), "docker.io/library/alpine", false),
            (user("alice", &[]), "docker.io/org/app", true),
            (user("carol", &["dev"]), "docker.io/org/app", true),
            (user("bob", &["ops"]), "docker.io/org/app", false),
            (user("bob", &[]), "ghcr.io/org/app", true),
        ];
        for (caller, name, allowed) in cases {
            assert_eq!(
                rules.decide(&caller, &repo(name)) == Allow,
                allowed,
                "{caller:?} {name}"
            );
        }
        assert!(matches!(
            rules.decide(&anon("192.0.2.9"), &repo("docker.io/library/alpine")),
            Challenge(_)
        ));
        match rules.decide(&user("bob", &[]), &repo("docker.io/org/app")) {
            Deny(why) => assert!(why.contains("\"org\"") && why.contains("bob"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_rules_means_authentication_decides_and_no_match_means_denied() {
        let open = Rules::new(&[], false, &Registries::default()).unwrap();
        assert_eq!(
            open.decide(&anon("192.0.2.1"), &repo("docker.io/a/b")),
            Decision::Allow
        );
        assert!(open.anonymous_welcome("192.0.2.1".parse().unwrap()));
        let closed = Rules::new(&[], true, &Registries::default()).unwrap();
        assert!(matches!(
            closed.decide(&anon("192.0.2.1"), &repo("docker.io/a/b")),
            Decision::Challenge(_)
        ));
        assert_eq!(
            closed.decide(&user("x", &[]), &repo("docker.io/a/b")),
            Decision::Allow
        );
        assert!(!closed.anonymous_welcome("192.0.2.1".parse().unwrap()));
        let some = Rules::new(
            &[rule(&["docker.io/a/*"], |r| r.authenticated = true)],
            true,
            &Registries::default(),
        )
        .unwrap();
        match some.decide(&user("x", &[]), &repo("ghcr.io/a/b")) {
            Decision::Deny(why) => assert!(why.contains("no access rule covers ghcr.io/a/b")),
            other => panic!("{other:?}"),
        }
        // Without authentication there is nobody to challenge: a plain denial.
        let net = Rules::new(
            &[rule(&["**"], |r| r.anonymous = vec!["127.0.0.1".into()])],
            false,
            &Registries::default(),
        )
        .unwrap();
        assert_eq!(
            net.decide(&anon("127.0.0.1"), &repo("docker.io/a/b")),
            Decision::Allow
        );
        assert!(matches!(
            net.decide(&anon("127.0.0.2"), &repo("docker.io/a/b")),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn bad_rules_are_refused_with_their_key() {
        for (r, auth, needle) in [
            (
                rule(&[], |r| r.authenticated = true),
                true,
                "access[0].repositories",
            ),
            (
                rule(&["alpine"], |r| r.authenticated = true),
                true,
                "names no registry",
            ),
            (rule(&["**"], |_| {}), true, "grants nobody"),
            (
                rule(&["**"], |r| r.anonymous = vec!["10.0.0.0/33".into()]),
                true,
                "not a network",
            ),
        ] {
            let e = Rules::new(&[r], auth, &Registries::default()).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }
}
