use super::*;
use crate::config::UpstreamConfig;

fn config() -> Config {
    Config {
        upstream: vec![
            UpstreamConfig::new("ghcr.io"),
            UpstreamConfig::new("docker.io"),
        ],
        ..Config::default()
    }
}

fn one(client: Client, airgap: bool) -> Snippet {
    render(client, &config(), "http://10.0.0.5:5000", airgap)
        .unwrap()
        .remove(0)
}

#[test]
fn docker_gets_mirrors_and_insecure_for_http() {
    let s = one(Client::Docker, false);
    let v: serde_json::Value = serde_json::from_str(&s.content).unwrap();
    assert_eq!(v["registry-mirrors"][0], "http://10.0.0.5:5000");
    assert_eq!(v["insecure-registries"][0], "10.0.0.5:5000");
    assert!(
        s.note
            .unwrap()
            .contains("10.0.0.5:5000/ghcr.io/<repo>:<tag>")
    );
    let https = render(
        Client::Docker,
        &config(),
        "https://cache.example:443",
        false,
    )
    .unwrap()
    .remove(0);
    assert!(!https.content.contains("insecure-registries"));
}

#[test]
fn containerd_gets_a_hosts_file_per_registry_and_a_default() {
    let files = render(
        Client::Containerd,
        &config(),
        "http://10.0.0.5:5000/",
        false,
    )
    .unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.file.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io/hosts.toml",
            "ghcr.io/hosts.toml",
            "_default/hosts.toml"
        ],
        "default registry first"
    );
    for f in &files {
        let t: toml::Table = f
            .content
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", f.file));
        assert_eq!(
            t["host"]["http://10.0.0.5:5000"]["capabilities"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    assert!(
        files[0]
            .content
            .contains("server = \"https://registry-1.docker.io\"")
    );
    assert!(files[1].content.contains("server = \"https://ghcr.io\""));
    let airgap = render(Client::Containerd, &config(), "http://10.0.0.5:5000", true).unwrap();
    assert!(
        airgap[1]
            .content
            .contains("server = \"http://10.0.0.5:5000\""),
        "no way out to the real registry"
    );
    assert!(
        airgap[2]
            .content
            .contains("server = \"http://10.0.0.5:5000\""),
        "not through _default either"
    );
}

#[test]
fn podman_mirrors_the_default_registry_bare_and_others_by_prefix() {
    let s = one(Client::Podman, false);
    let t: toml::Table = s.content.parse().unwrap();
    let regs = t["registry"].as_array().unwrap();
    assert_eq!(regs[0]["prefix"].as_str(), Some("docker.io"));
    assert_eq!(
        regs[0]["mirror"][0]["location"].as_str(),
        Some("10.0.0.5:5000")
    );
    assert_eq!(
        regs[1]["mirror"][0]["location"].as_str(),
        Some("10.0.0.5:5000/ghcr.io")
    );
    assert_eq!(regs[1]["mirror"][0]["insecure"].as_bool(), Some(true));
    let airgap: toml::Table = one(Client::Podman, true).content.parse().unwrap();
    let regs = airgap["registry"].as_array().unwrap();
    assert_eq!(regs[1]["location"].as_str(), Some("10.0.0.5:5000/ghcr.io"));
    assert!(regs[1].get("mirror").is_none());
}

#[test]
fn k3s_gets_a_mirror_per_registry() {
    let s = one(Client::K3s, false);
    assert!(
        s.content
            .contains("  \"ghcr.io\":\n    endpoint:\n      - \"http://10.0.0.5:5000\"")
    );
    assert!(s.content.contains("  \"docker.io\":"));
}

#[test]
fn docker_needs_docker_hub_as_the_default_registry() {
    let mut c = config();
    c.server.default_registry = "ghcr.io".into();
    let e = render(Client::Docker, &c, "http://10.0.0.5:5000", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("default_registry"), "{e}");
}

#[test]
fn the_default_url_brackets_ipv6() {
    let mut c = config();
    c.server.listen = "[fd00::5]:5000".parse().unwrap();
    assert_eq!(default_url(&c), "http://[fd00::5]:5000");
    assert!(render(Client::Podman, &c, &default_url(&c), false).is_ok());
}

#[test]
fn bad_urls_are_refused() {
    for bad in ["10.0.0.5:5000", "ftp://x", "http://x:5000/path"] {
        assert!(
            render(Client::Docker, &config(), bad, false).is_err(),
            "{bad}"
        );
    }
}
