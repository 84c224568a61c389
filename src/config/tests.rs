use super::*;
use figment::Jail;

fn load_str(toml: &str) -> Result<Config, ConfigError> {
    Config::from_figment(Figment::new().merge(Toml::string(toml)))
}

#[test]
fn defaults_without_a_file() {
    let c = load_str("").unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:5000".parse().unwrap());
    assert_eq!(c.upstream.len(), 1);
    assert_eq!(c.upstream[0].registry, "docker.io");
    assert_eq!(
        c.upstream[0].effective_url(),
        "https://registry-1.docker.io"
    );
    assert_eq!(c.upstream[0].tag_ttl, Duration::from_secs(600));
    assert_eq!(c.storage.path, default_data_dir());
}

#[test]
fn the_minimal_file_works_as_written() {
    let c = load_str(
        r#"
[server]
listen = "127.0.0.1:16000"

[storage]
path = "/tmp/airlock-data"

[[upstream]]
registry = "docker.io"
url = "http://127.0.0.1:15000"
"#,
    )
    .unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:16000".parse().unwrap());
    assert_eq!(c.storage.path, PathBuf::from("/tmp/airlock-data"));
    assert_eq!(c.upstream[0].effective_url(), "http://127.0.0.1:15000");
}

#[test]
fn the_documented_reference_file_parses_and_sets_every_section() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/airlock.toml");
    let c = Config::from_figment(Figment::new().merge(Toml::file_exact(&path))).unwrap();
    assert!(
        c.upstream.len() >= 2,
        "the reference shows several upstreams"
    );
    assert_eq!(c.cache.memory, ByteSize(64 << 20));
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    for (toml, key) in [
        ("[server]\nlisten_on = \"1.2.3.4:5\"", "listen_on"),
        ("[storge]\npath = \"/x\"", "storge"),
        (
            "[[upstream]]\nregistry = \"docker.io\"\npasword = \"x\"",
            "pasword",
        ),
    ] {
        let e = load_str(toml).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
}

#[test]
fn bad_values_name_the_key() {
    for (toml, want) in [
        ("[server]\nlisten = \"nowhere\"", "listen"),
        (
            "[[upstream]]\nregistry = \"not a host\"",
            "upstream[0].registry",
        ),
        (
            "[[upstream]]\nregistry = \"a.io\"\n[[upstream]]\nregistry = \"a.io\"",
            "configured twice",
        ),
        (
            "[[upstream]]\nregistry = \"a.io\"\nurl = \"ftp://x\"",
            "upstream[0].url",
        ),
        (
            "[[upstream]]\nregistry = \"a.io\"\npassword = \"p\"",
            "upstream[0].username",
        ),
        (
            "[[upstream]]\nregistry = \"a.io\"\ntag_ttl = \"soon\"",
            "tag_ttl",
        ),
        ("[cache]\nmemory = \"lots\"", "memory"),
        ("[log]\nlevel = \"[[\"", "log.level"),
        (
            "[[upstream]]\nregistry = \"a.io\"\nurl = \"https://u:p@a.io\"",
            "credentials do not belong in the URL",
        ),
        (
            "[[upstream]]\nregistry = \"a.io\"\naliases = [\"library\"]",
            "official",
        ),
        (
            "[[upstream]]\nregistry = \"a.io\"\naliases = [\"a.b\"]",
            "upstream[0].aliases",
        ),
    ] {
        let e = load_str(toml).unwrap_err().to_string();
        assert!(e.contains(want), "{toml:?} gave {e}");
    }
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail closure returns figment::Error
fn environment_overrides_file_with_nested_keys() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "a.toml",
            "[server]\nlisten = \"127.0.0.1:1\"\n[storage]\npath = \"/from/file\"",
        )?;
        jail.set_env("AIRLOCK_SERVER__LISTEN", "127.0.0.1:2");
        let c = Config::load(Some(Path::new("a.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(c.server.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(c.storage.path, PathBuf::from("/from/file"));
        jail.set_env("AIRLOCK_SERVR__LISTEN", "127.0.0.1:3");
        let e = Config::load(Some(Path::new("a.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("servr"), "{e}");
        Ok(())
    });
}

#[test]
fn a_missing_file_is_an_error() {
    let e = Config::load(Some(Path::new("/nonexistent/airlock.toml"))).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/airlock.toml"));
}

#[test]
fn secrets_do_not_show_in_debug() {
    let c = load_str("[[upstream]]\nregistry = \"a.io\"\nusername = \"u\"\npassword = \"hunter2\"")
        .unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}
