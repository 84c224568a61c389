#!/usr/bin/env bash
# benches/growth.sh [BLOBS...]  - issue 11's growth table (a benchmark, not a test): how
# airlock's costs move with the size of its cache. For each size (default 1000 10000 100000;
# 1000000 takes about an hour here, mostly generating and importing), a bundle of BLOBS/3
# small images is written straight into an OCI layout archive (benches/growth.py: no registry,
# no pushes), and one airlock (release build in target/bench/, offline, size cap far above
# the cache, the default 30 s maintenance interval) is timed doing:
#   import          `airlock import` of the bundle into an empty cache
#   cache ls        `airlock cache ls --json`
#   evict pass      POST /admin/evict under the cap
#   readiness       `airlock preload` of 10 cached images (its report: would they pull offline)
#   export --since  `airlock export --all --since` the same bundle (nothing new to carry)
#   idle CPU        server CPU time (utime+stime) over IDLE seconds doing nothing, twice:
#                   the first window holds the one walk over the pins that follows a change
#                   (the readiness preload and the import before it), the second none
#   start-up        from exec of a restarted server to its first /v2/ answer
#   RSS             after all of the above, and after the restart plus one `cache ls`
# Wall times are medians of RUNS runs (default 3) with ranges, except import and start-up
# (taken once per size: import fills the cache; the restart runs RUNS times). Everything
# binds 127.0.0.1; state goes under target/bench/growth (removed at the end, KEEP_STATE=1
# keeps it). Results: benches/results/<date>/growth-<time>.txt.
#
# Needs: /usr/bin/python3, /usr/bin/curl, and cargo for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(1000 10000 100000)
RUNS=${RUNS:-3} IDLE=${IDLE:-65}
PORT=${PORT:-17610} ADMIN_PORT=${ADMIN_PORT:-17611}
PY=/usr/bin/python3 CURL=/usr/bin/curl
for tool in $PY $CURL; do
  [[ -x $tool ]] || { echo "missing $tool (apt-get install -y python3 curl)" >&2; exit 1; }
done
if [[ -z ${GROWTH_BIN:-} ]]; then
  nice -n 10 cargo build --release --locked -j1 --target-dir "$ROOT/target/bench" >&2
  GROWTH_BIN=$ROOT/target/bench/release/airlock
fi
BASE=$ROOT/target/bench/growth
rm -rf "$BASE" && mkdir -p "$BASE"
OUT_DIR=$ROOT/benches/results/$(date -u +%F)
mkdir -p "$OUT_DIR"
OUT=$OUT_DIR/growth-$(date -u +%H%M).txt
SERVER=
cleanup() {
  [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  [[ ${KEEP_STATE:-0} == 1 ]] && echo "state kept in $BASE" >&2 || rm -rf "$BASE"
}
trap cleanup EXIT

now() { date +%s.%N; }
# secs CMD...: run CMD (its output discarded), print its wall time in seconds.
secs() { local t0; t0=$(now); "$@" >/dev/null 2>>"$STATE/cli.log"; $PY -c "print(f'{$(now)-$t0:.3f}')"; }
# median "v1 v2 ...": "median (min-max)".
median() { $PY -c "import statistics,sys; v=sorted(map(float,sys.argv[1:])); print(f'{statistics.median(v):.3f} ({v[0]:.3f}-{v[-1]:.3f})')" "$@"; }
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
cpu_secs() { $PY -c "import os,sys; f=open(f'/proc/{sys.argv[1]}/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))" "$1"; }

start() {
  "$GROWTH_BIN" serve -c "$STATE/airlock.toml" >>"$STATE/airlock.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 3000); do
    $CURL -fs -o /dev/null "http://127.0.0.1:$PORT/v2/" && return 0
    sleep 0.01
  done
  echo "airlock did not answer; its log:" >&2; tail -20 "$STATE/airlock.log" >&2; exit 1
}
stop() { kill "$SERVER"; wait "$SERVER" || true; SERVER=; }

{
  echo "# airlock growth, $(date -u '+%F %H:%M') UTC, $(nproc) cores, $(uname -r), commit $(git rev-parse --short HEAD)"
  echo "# wall seconds: median (min-max) of $RUNS runs; idle CPU over ${IDLE}s; RSS in MiB"
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' blobs images bundle import "cache ls" "evict pass" readiness "export --since" "idle CPU (1st; 2nd)" start-up "RSS (after; restarted)"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
} | tee "$OUT"

for blobs in "${SIZES[@]}"; do
  images=$((blobs / 3))
  STATE=$BASE/$blobs
  mkdir -p "$STATE"
  cat >"$STATE/airlock.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
offline = true

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[storage]
path = "$STATE/data"
max_size = "1TiB"

[log]
level = "warn"
TOML
  echo "== $blobs blobs: writing the bundle" >&2
  $PY benches/growth.py bundle "$STATE/bundle.tar" "$images"
  bundle_mib=$(du -m "$STATE/bundle.tar" | cut -f1)
  A=("$GROWTH_BIN" -c "$STATE/airlock.toml")
  start
  echo "== $blobs blobs: import" >&2
  import=$(secs "${A[@]}" import "$STATE/bundle.tar")
  token=$(cat "$STATE/data/admin.token")
  mapfile -t refs < <($PY benches/growth.py refs "$images" 10)
  ls=() ev=() ready=() since=()
  for _ in $(seq "$RUNS"); do
    ls+=("$(secs "${A[@]}" cache ls --json)")
    ev+=("$(secs $CURL -fsS -X POST -H "Authorization: Bearer $token" "http://127.0.0.1:$ADMIN_PORT/admin/evict")")
    ready+=("$(secs "${A[@]}" preload "${refs[@]}")")
    since+=("$(secs "${A[@]}" export --all --since "$STATE/bundle.tar" -o "$STATE/since.tar")")
  done
  rss=$(rss_mib "$SERVER")
  cpu0=$(cpu_secs "$SERVER"); sleep "$IDLE"; cpu1=$(cpu_secs "$SERVER"); sleep "$IDLE"
  cpu2=$(cpu_secs "$SERVER")
  idle=$($PY -c "print(f'{$cpu1-$cpu0:.2f} s; {$cpu2-$cpu1:.2f} s')")
  stop
  ups=()
  for _ in $(seq "$RUNS"); do
    t0=$(now); start; ups+=("$($PY -c "print(f'{$(now)-$t0:.3f}')")")
    stop
  done
  start
  "${A[@]}" cache ls --json >/dev/null
  rss2=$(rss_mib "$SERVER")
  stop
  printf '| %s | %s | %s MiB | %s | %s | %s | %s | %s | %s | %s | %s; %s |\n' \
    "$blobs" "$images" "$bundle_mib" "$import" "$(median "${ls[@]}")" "$(median "${ev[@]}")" \
    "$(median "${ready[@]}")" "$(median "${since[@]}")" "$idle" "$(median "${ups[@]}")" "$rss" "$rss2" | tee -a "$OUT"
  rm -rf "$STATE"
done
echo "results in $OUT" >&2
