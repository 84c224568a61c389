#!/usr/bin/env bash
# fuzz/run.sh [TARGET[=RUNS]...]  - run the fuzz targets for a number of inputs each, then
# minimise their corpora (what is committed and replayed by tests/it/fuzz_corpora.rs).
#
# With no argument, every target for its default count below. Needs cargo-fuzz
# (`cargo install cargo-fuzz --locked`); a stable toolchain does, RUSTC_BOOTSTRAP=1 lets it
# use the nightly flags libFuzzer needs. No sanitizer (safe Rust: a panic is what is looked
# for), debug assertions on (overflow panics). One target at a time; a crash stops the run
# and leaves its input in fuzz/artifacts/<target>/. The log of each run is in
# target/fuzz/logs/<target>.log; the line `Done N runs in S second(s)` is the count.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/../target/fuzz}
# Bundle imports write a cache: keep it in memory when /dev/shm is there.
[[ -d /dev/shm && -w /dev/shm ]] && export TMPDIR=${TMPDIR:-/dev/shm}
declare -A default=([route]=20000000 [range]=20000000 [names]=5000000 [www_authenticate]=5000000
                    [manifest]=5000000 [bundle]=2000000)
order=(route range names www_authenticate manifest bundle)
(($#)) || set -- "${order[@]}"
mkdir -p "$CARGO_TARGET_DIR/logs"
cargo fuzz build -s none -a
for arg in "$@"; do
  target=${arg%%=*}
  runs=${default[$target]:?unknown target $target (one of ${order[*]})}
  [[ $arg == *=* ]] && runs=${arg#*=}
  log=$CARGO_TARGET_DIR/logs/$target.log
  cargo fuzz run -s none -a "$target" -- -runs="$runs" -print_final_stats=1 >"$log" 2>&1 ||
    { tail -40 "$log" >&2; echo "fuzz/run.sh: $target failed, see $log" >&2; exit 1; }
  cargo fuzz cmin -s none -a "$target" >>"$log" 2>&1
  echo "$target: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -1), 0 crashes;" \
    "corpus $(find "corpus/$target" -type f | wc -l) files"
done
