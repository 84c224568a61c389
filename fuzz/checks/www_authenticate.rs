//! `WWW-Authenticate` challenges of upstream 401s (`airlock::upstream::auth::Challenge`).
//!
//! Properties: a challenge that parses, printed back with quoted and escaped parameters,
//! parses to the same challenge, also with extra parameters around it and the scheme in
//! another case; a Bearer challenge's realm and service have no surrounding whitespace.

use airlock::upstream::auth::Challenge;

/// Parse `data` as one header value; whether it was a Basic or Bearer challenge.
pub fn check(data: &[u8]) -> bool {
    let value = String::from_utf8_lossy(data);
    let Some(challenge) = Challenge::parse(&value) else {
        return false;
    };
    if let Challenge::Bearer { realm, service } = &challenge {
        assert_eq!(realm.trim(), realm);
        if let Some(s) = service {
            assert_eq!(s.trim(), s);
        }
    }
    for printed in [
        print(&challenge),
        upper_scheme(&print(&challenge)),
        with_noise(&challenge),
    ] {
        assert_eq!(
            Challenge::parse(&printed).as_ref(),
            Some(&challenge),
            "{challenge:?} printed as {printed:?}"
        );
    }
    true
}

/// A challenge as a registry sends it.
pub fn print(c: &Challenge) -> String {
    match c {
        Challenge::Basic => r#"Basic realm="Registry Realm""#.to_string(),
        Challenge::Bearer { realm, service } => {
            let mut s = format!("Bearer realm={}", quote(realm));
            if let Some(service) = service {
                s.push_str(&format!(",service={}", quote(service)));
            }
            s
        }
    }
}

/// The same challenge with parameters the parser must skip, and spaces around commas.
fn with_noise(c: &Challenge) -> String {
    match c {
        Challenge::Basic => "basic".to_string(),
        Challenge::Bearer { realm, service } => {
            let mut s = format!(
                "Bearer scope=\"repository:a/b:pull,push\" , REALM={} ,error=invalid_token",
                quote(realm)
            );
            if let Some(service) = service {
                s.push_str(&format!(", Service={}", quote(service)));
            }
            s
        }
    }
}

/// `BEARER realm=…`: schemes are case-insensitive.
fn upper_scheme(s: &str) -> String {
    match s.split_once(' ') {
        Some((scheme, rest)) => format!("{} {rest}", scheme.to_uppercase()),
        None => s.to_uppercase(),
    }
}

/// A quoted-string: `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Challenges registries send: Docker Hub's, GHCR's, Basic (ECR), odd spacing and escapes.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
        r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull""#,
        r#"Basic realm="Registry Realm""#,
        r#"bearer  Realm=https://a/t , service="s \"q\", x""#,
        "Basic",
    ]
    .into_iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
