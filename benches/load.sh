#!/usr/bin/env bash
# benches/load.sh [SECONDS]  - issue 10's load benchmark (a benchmark, not a test): about
# 1 000 concurrent connections to one airlock for SECONDS (default 60), mixing
#   - hit clients (keep-alive, closed loop): manifests by tag (GET and HEAD) and by digest,
#     small blobs and a 1 MiB blob, all cached before the clock starts;
#   - miss clients: each asks for a tag airlock has never seen and its layer (both fetched
#     from the upstream), then waits MISS_PACE seconds;
#   - idle sockets: connect and send nothing, or send one request and then nothing; when
#     airlock closes one, another takes its place.
# and records the errors the hit and miss clients saw (there must be none), requests/s and
# latency per kind, airlock's RSS and open descriptors every 0.5 s, and the idle sockets
# airlock closed and after how long. benches/load.py is the driver.
#
# The upstream is a Debian docker-registry (CNCF distribution) holding images this script
# makes (benches/load.py mkimages, pushed with skopeo) and a pool of small miss images pushed
# through the registry API. airlock is a release build in target/bench/ (built here, niced,
# one job; LOAD_BIN=... uses another binary). Its [server.limits] allow 2 048 connections
# per client address (the default is 256), since every client here is 127.0.0.1; the other
# limits are the defaults. Everything binds 127.0.0.1; state goes to a temporary directory,
# removed at the end. Results: benches/results/<date>/load-<time>.{json,txt}.
#
# Needs: /usr/bin/docker-registry (docker-registry), /usr/bin/skopeo, /usr/bin/python3,
# /usr/bin/curl, /usr/bin/ss (iproute2), and cargo for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_RUN=${1:-60}
HIT=${HIT:-500} MISS=${MISS:-100} IDLE=${IDLE:-300} IDLE_AFTER_REQUEST=${IDLE_AFTER_REQUEST:-100}
MISS_PACE=${MISS_PACE:-2} MISSES=${MISSES:-4000}
UPSTREAM_PORT=${UPSTREAM_PORT:-17500} AIRLOCK_PORT=${AIRLOCK_PORT:-17510} ADMIN_PORT=${ADMIN_PORT:-17511}
PY=/usr/bin/python3 REGISTRY=/usr/bin/docker-registry SKOPEO=/usr/bin/skopeo CURL=/usr/bin/curl
for tool in $PY $REGISTRY $SKOPEO $CURL /usr/bin/ss; do
  [[ -x $tool ]] || { echo "missing $tool (apt-get install -y docker-registry skopeo python3 curl)" >&2; exit 1; }
done

if [[ -z ${LOAD_BIN:-} ]]; then
  nice -n 10 cargo build --release --locked -j1 --target-dir "$ROOT/target/bench" >&2
  LOAD_BIN=$ROOT/target/bench/release/airlock
fi

STATE=$(mktemp -d /tmp/airlock-load.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ ${KEEP_STATE:-0} == 1 ]] && echo "state kept in $STATE" >&2 || rm -rf "$STATE"
}
trap cleanup EXIT

wait_http() {
  for _ in $(seq 100); do $CURL -fs -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "$1 did not answer" >&2; exit 1
}

# The upstream.
cat >"$STATE/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $STATE/registry
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$UPSTREAM_PORT
  secret: airlock-load-benchmark
EOF
$REGISTRY serve "$STATE/registry.yml" >"$STATE/registry.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$UPSTREAM_PORT/v2/"

echo "== images: the hit images by skopeo, $MISSES miss images through the API" >&2
$PY benches/load.py mkimages "$STATE/oci"
while IFS=$'\t' read -r ref repo tag fmt all; do
  args=(--quiet --dest-tls-verify=false)
  [[ $all == 1 ]] && args+=(--all)
  [[ $fmt == v2s2 ]] && args+=(--format v2s2)
  $SKOPEO copy "${args[@]}" "oci:$STATE/oci:$ref" "docker://127.0.0.1:$UPSTREAM_PORT/$repo:$tag"
done <"$STATE/oci/plan.tsv"
$PY benches/load.py misspool "http://127.0.0.1:$UPSTREAM_PORT" "$MISSES"

# airlock, empty cache.
cat >"$STATE/airlock.toml" <<EOF
[server]
listen = "127.0.0.1:$AIRLOCK_PORT"

[server.limits]
# Every client of this benchmark is 127.0.0.1: room for all of them (the default is 256).
max_connections_per_client = 2048

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[storage]
path = "$STATE/airlock"

[log]
level = "warn"

[[upstream]]
registry = "docker.io"
url = "http://127.0.0.1:$UPSTREAM_PORT"
EOF
"$LOAD_BIN" serve -c "$STATE/airlock.toml" >"$STATE/airlock.log" 2>&1 &
AIRLOCK_PID=$!
PIDS+=($AIRLOCK_PID)
wait_http "http://127.0.0.1:$AIRLOCK_PORT/v2/"

OUT=$ROOT/benches/results/$(date +%Y-%m-%d)
mkdir -p "$OUT"
NAME=$OUT/load-$(date +%H%M)
{
  echo "airlock load benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes in src/)')"
  echo "machine: $(nproc) CPUs, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(. /etc/os-release; echo "$PRETTY_NAME"), kernel $(uname -r)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "connections: hit=$HIT miss=$MISS (pace ${MISS_PACE}s) idle=$IDLE idle_after_request=$IDLE_AFTER_REQUEST; seconds=$SECONDS_RUN"
  echo "airlock config:"; sed 's/^/  /' "$STATE/airlock.toml"
} >"$NAME.txt"

echo "== load: $((HIT + MISS + IDLE + IDLE_AFTER_REQUEST)) connections for ${SECONDS_RUN}s" >&2
status=0
$PY benches/load.py run --url "http://127.0.0.1:$AIRLOCK_PORT" --pid "$AIRLOCK_PID" \
  --seconds "$SECONDS_RUN" --hit "$HIT" --miss "$MISS" --miss-pace "$MISS_PACE" --misses "$MISSES" \
  --idle "$IDLE" --idle-after-request "$IDLE_AFTER_REQUEST" --out "$NAME.json" >"$STATE/summary.json" || status=$?
{
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "airlock's TCP connections 2 s after the load: $(/usr/bin/ss -Htn state established "( sport = :$AIRLOCK_PORT )" | wc -l) from clients, $(/usr/bin/ss -Htn state established "( dport = :$UPSTREAM_PORT )" | wc -l) to the upstream"
  echo "airlock cache results after the run (from /metrics):"
  $CURL -fs "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^airlock_(cache_results_total|requests_total|upstream_requests_total)' | sed 's/^/  /'
  echo "airlock log (warnings and errors):"
  sed 's/^/  /' "$STATE/airlock.log" | tail -n 50
  echo "summary (full samples in $(basename "$NAME.json")):"
  cat "$STATE/summary.json"
} >>"$NAME.txt"
cat "$NAME.txt"
exit $status
