#!/usr/bin/env bash
# Policy evaluation latency and throughput (tests/bench/policy_bench.c): the
# shipped set and generated sets of 100 and 1,000 rules.  It prints its
# table; the "Policy engine" section of docs/benchmarks.md records the runs.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
"${BUILD:-build}"/tests/bench/policy_bench --runs 5
