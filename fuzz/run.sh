#!/usr/bin/env bash
# Differential fuzzing of the router's HTTP/1.1 request parsing and body re-framing against
# hyper's, for a bounded time (see fuzz/README.md and tests/router_differential.rs).
#
#   bash fuzz/run.sh                 # 10 minutes
#   FUZZ_SECONDS=60 bash fuzz/run.sh
#   PROPTEST_CASES=100000 bash fuzz/run.sh   # stop after this many cases (or the time budget)
#
# Prints the executions, how many cases agreed, how many differed only as the allowlist says
# (each entry with its RFC reason), and every kind of finding with one input that shows it.
# Exit status: 0 without findings, 1 with findings, 2 on a usage error.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_BUDGET=${FUZZ_SECONDS:-600}
[[ $SECONDS_BUDGET =~ ^[0-9]+$ && $SECONDS_BUDGET -ge 1 ]] || {
    echo "fuzz/run.sh: FUZZ_SECONDS must be a whole number of seconds" >&2
    exit 2
}
if [[ -n ${PROPTEST_CASES:-} && ! $PROPTEST_CASES =~ ^[0-9]+$ ]]; then
    echo "fuzz/run.sh: PROPTEST_CASES must be a whole number" >&2
    exit 2
fi

cd "$ROOT"
echo "fuzz/run.sh: building the fuzz target" >&2
cargo test --test router_differential --no-run >&2
echo "fuzz/run.sh: fuzzing for up to ${SECONDS_BUDGET} s${PROPTEST_CASES:+ or $PROPTEST_CASES cases}" >&2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
rc=0
FUZZ_SECONDS=$SECONDS_BUDGET RUST_BACKTRACE=0 \
    cargo test --test router_differential fuzz_for_a_while -- --ignored --nocapture --test-threads 1 \
    >"$out" 2>&1 || rc=$?
# Only the fuzzer's own report, not cargo's test harness lines.
grep -E '^(executions|agreed|allowed|findings|finding|  )' "$out" || cat "$out"
if ((rc != 0)); then
    echo "fuzz/run.sh: findings (or a failure) above" >&2
    exit 1
fi
