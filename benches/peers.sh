#!/usr/bin/env bash
# benches/peers.sh [RUNS]  - the README's figures: the team's peers benchmark
# (../shared/peers/bench.sh) against airlock and against CNCF distribution in proxy mode, in one
# session on this machine, each from an empty cache, RUNS times (default 3), alternating.
#
# Needs ../shared/peers beside the checkout (install-deps.sh run once) and a release build
# (cargo build --release). Results: benches/results/<date>/{airlock,proxy}-N.txt and a
# median summary on stdout. Nothing leaves 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEERS=${PEERS:-$ROOT/../shared/peers}
RUNS=${1:-3}
BIN=$ROOT/target/release/airlock
[[ -x $BIN ]] || { echo "build first: cargo build --release" >&2; exit 1; }
[[ -x $PEERS/bench.sh ]] || { echo "no peers harness at $PEERS" >&2; exit 1; }
STATE=${PEERS_STATE:-/tmp/peers}
OUT=$ROOT/benches/results/$(date +%Y-%m-%d)
mkdir -p "$OUT" "$STATE/airlock-bench"

"$PEERS/upstream.sh" >/dev/null

# An airlock on :16000 with an empty cache (the RESET_CMD of the cold pull).
cat >"$STATE/airlock-bench/airlock.toml" <<EOC
[server]
listen = "127.0.0.1:16000"
[storage]
path = "$STATE/airlock-bench/data"
[log]
level = "warn"
[[upstream]]
registry = "docker.io"
url = "http://127.0.0.1:15000"
EOC
cat >"$STATE/airlock-bench/reset.sh" <<EOC
#!/usr/bin/env bash
set -euo pipefail
pkill -f "airlock serve -c $STATE/airlock-bench/airlock.toml" || true
for i in \$(seq 100); do pgrep -f "airlock serve -c $STATE/airlock-bench/airlock.toml" >/dev/null || break; sleep 0.1; done
rm -rf "$STATE/airlock-bench/data"
setsid "$BIN" serve -c "$STATE/airlock-bench/airlock.toml" >>"$STATE/log/airlock-bench.log" 2>&1 </dev/null &
for i in \$(seq 100); do curl -fs -o /dev/null http://127.0.0.1:16000/v2/ && exit 0; sleep 0.1; done
echo "airlock did not start" >&2; exit 1
EOC
chmod +x "$STATE/airlock-bench/reset.sh"

for ((r = 1; r <= RUNS; r++)); do
  echo "== run $r: distribution proxy" >&2
  "$PEERS/distribution-proxy.sh" --fresh >/dev/null 2>&1
  RESET_CMD="$PEERS/distribution-proxy.sh --fresh" BENCH_OUT="$OUT/proxy-$r.txt" "$PEERS/bench.sh" http://127.0.0.1:15010 >/dev/null
  echo "== run $r: airlock" >&2
  "$STATE/airlock-bench/reset.sh"
  RESET_CMD="$STATE/airlock-bench/reset.sh" BENCH_OUT="$OUT/airlock-$r.txt" "$PEERS/bench.sh" http://127.0.0.1:16000 >/dev/null
done
"$PEERS/stop.sh" proxy >/dev/null
pkill -f "airlock serve -c $STATE/airlock-bench/airlock.toml" || true

median() { sort -g | awk '{a[NR]=$1} END{if (!NR) print "-"; else print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
range() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END{print lo "-" hi}'; }
printf '%-34s %22s %22s\n' metric "airlock median (range)" "proxy median (range)"
for key in cold_pull_s warm_pull_s blob_first_get_s blob_mib_s_median manifest_head_tag_hey_rps manifest_get_tag_hey_rps \
           manifest_get_tag_wrk_rps manifest_get_digest_wrk_rps manifest_get_tag_wrk_p99_ms herd_wall_s herd_ok herd_upstream_gets; do
  row=$(printf '%-34s' "$key")
  for who in airlock proxy; do
    vals=$(cat "$OUT"/$who-*.txt | awk -F= -v k="$key" '$1==k{print $2}')
    row+=$(printf ' %22s' "$(median <<<"$vals") ($(range <<<"$vals"))")
  done
  echo "$row"
done | tee "$OUT/summary.txt"
