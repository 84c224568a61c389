#!/usr/bin/env bash
# The README's test command as CI and a new user meet it: the current commit cloned into a
# temporary directory (with ../shared beside it when there is one, read-only, as CI has it),
# a fresh target/ (the cargo registry cache is shared), then tests/run.sh. Afterwards the
# number of tests that ran must equal what `cargo test -- --list` reports, so no test binary
# was skipped and no test was ignored.
#
#   tests/fresh-clone.sh            # plain
#   tests/fresh-clone.sh --planted  # with stand-ins for hadolint and python3 first on PATH,
#                                   # in a user directory: the suite must not run them
#   tests/fresh-clone.sh --keep     # keep the clone (its path is printed)
#
# Only committed work is tested. It costs a full build and a full test run; run it before a
# stop whenever the install steps, the test harness or the dependencies changed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
planted=0 keep=0
for arg in "$@"; do
  case $arg in
    --planted) planted=1 ;;
    --keep) keep=1 ;;
    *) echo "usage: tests/fresh-clone.sh [--planted] [--keep]" >&2; exit 2 ;;
  esac
done

commit=$(git -C "$repo" rev-parse HEAD)
if [[ -n $(git -C "$repo" status --porcelain) ]]; then
  echo "fresh-clone: the work tree has uncommitted changes; testing the commit $commit only" >&2
fi
work=$(mktemp -d /tmp/airlock-fresh-XXXXXX)
((keep)) || trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
git clone --quiet --no-local "$repo" "$work/main"
git -C "$work/main" checkout --quiet --detach "$commit"
if [[ -d $repo/../shared ]]; then
  cp -r "$repo/../shared" "$work/shared"
  chmod -R a-w "$work/shared"
fi

env_path=$PATH
if ((planted)); then
  # Stand-ins that record any use and fail: a tool or interpreter found on PATH by luck
  # shows up in the record.
  bin=$work/user/.local/bin
  mkdir -p "$bin"
  for tool in hadolint python3; do
    printf '#!/bin/sh\necho "%s $*" >>%s\nexit 97\n' "$tool" "$work/planted.log" >"$bin/$tool"
    chmod +x "$bin/$tool"
  done
  env_path=$bin:$PATH
fi

echo "fresh-clone: $commit in $work/main$( ((planted)) && echo ', with planted tools on PATH')" >&2
start=$(date +%s)
set +e
(cd "$work/main" && env -u CARGO_TARGET_DIR PATH="$env_path" CI=true tests/run.sh </dev/null) 2>&1 |
  tee "$work/run.log"
status=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - start))

ran=$(grep -E '^test result: ' "$work/run.log" |
  sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/' |
  awk '{p += $1; f += $2; i += $3} END {printf "%d %d %d", p, f, i}')
read -r passed failed ignored <<<"$ran"
listed=$(cd "$work/main" && env -u CARGO_TARGET_DIR PATH="$env_path" cargo test --locked -q -- --list 2>/dev/null |
  grep -c ': test$' || true)

fail=0
echo
echo "fresh-clone: tests/run.sh exited $status after ${elapsed}s"
echo "fresh-clone: $passed passed, $failed failed, $ignored ignored; $listed listed"
((status == 0)) || fail=1
((passed == listed && failed == 0 && ignored == 0)) || { echo "fresh-clone: not every listed test ran and passed"; fail=1; }
if ((planted)) && [[ -s $work/planted.log ]]; then
  echo "fresh-clone: planted tools on PATH were run:"
  sed 's/^/  /' "$work/planted.log"
  fail=1
fi
((keep)) && echo "fresh-clone: kept $work"
((fail == 0)) && echo "fresh-clone: OK"
exit "$fail"
