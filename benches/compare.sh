#!/usr/bin/env bash
# benches/compare.sh [RUNS]  - issue 11's reference benchmark (a benchmark, not a test):
# airlock against CNCF distribution's pull-through proxy and against nginx serving the same
# bytes as static files (sendfile on, access log off), all on this machine, in one run, RUNS
# times (default 3) with the targets alternating. It owns its peers: it installs what it
# needs from Debian's packages (docker-registry, skopeo, wrk, nginx-light, curl), starts
# them on 127.0.0.1 (upstream :17700, airlock :17710, proxy :17720, nginx :17730), and makes
# the images itself (random layers pushed through the registry API; nothing is pulled from
# anywhere). Measured per run (benches/compare.py does the work):
#   cold pull   skopeo copy of 6 images (48 MiB + a 256 MiB layer) through an empty cache,
#               and straight from the upstream
#   manifests   wrk, 2 threads, 32 connections, 10 s, GET by tag and by digest; server CPU
#               time (utime+stime from /proc) per request
#   blob        curl GET of a cached 256 MiB blob (COMPARE_BLOB_GETS, default 8, after a
#               warm-up): median MiB/s, server CPU seconds per GiB served
#   herd        32 parallel curl GETs of a new 64 MiB blob (each body's sha256 checked), wall
#               time and the upstream's GETs of it counted in its access log; the same 32
#               straight from the upstream
#   memory      airlock's peak RSS while 32 clients download the cached 256 MiB blob
# The manifest and blob measurements start once the server has been idle for 0.5 s, so what
# the part before left running (a cold pull's fsyncs) is not charged to them.
# COMPARE_PARTS=cold,manifest,blob,herd,memory (the default) runs a subset. airlock runs
# with its defaults but for the listeners, storage path and upstream: its request log is on
# (level info, to a file), as a site runs it.
# airlock is a release build in target/bench/ (built here, niced, one job; COMPARE_BIN=...
# uses another binary). Results: benches/results/<date>/compare-<time>.{txt,raw}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-3}
need=()
for p in docker-registry:/usr/bin/docker-registry skopeo:/usr/bin/skopeo wrk:/usr/bin/wrk \
         nginx-light:/usr/sbin/nginx curl:/usr/bin/curl procps:/usr/bin/pgrep python3:/usr/bin/python3; do
  [[ -x ${p#*:} ]] || need+=("${p%%:*}")
done
if ((${#need[@]})); then
  echo "benches/compare.sh: installing ${need[*]}" >&2
  [[ $(id -u) == 0 ]] || { echo "run as root to install ${need[*]} (apt-get)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2; }
fi
if [[ -z ${COMPARE_BIN:-} ]]; then
  nice -n 10 cargo build --release --locked -j1 --target-dir "$ROOT/target/bench" >&2
  COMPARE_BIN=$ROOT/target/bench/release/airlock
fi
OUT=$ROOT/benches/results/$(date -u +%F)
mkdir -p "$OUT"
exec /usr/bin/python3 benches/compare.py "$OUT" "$COMPARE_BIN" "$RUNS"
