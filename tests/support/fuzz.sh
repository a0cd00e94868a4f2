#!/usr/bin/env bash
# fuzz.sh SECONDS TARGET... - run each libFuzzer target for SECONDS on a
# working corpus seeded from tests/fuzz/corpus/TARGET.  Exits non-zero on
# the first finding (the crash input is left in build-fuzz/).
set -euo pipefail

secs=${1:?seconds}
shift
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top/build-fuzz"
for t in "$@"; do
	work=corpus-$t
	mkdir -p "$work"
	seeds=$top/tests/fuzz/corpus/$t
	[ -d "$seeds" ] || seeds=
	echo "fuzz: $t for ${secs}s"
	"./tests/fuzz/fuzz_$t" -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
		-rss_limit_mb=2048 "$work" $seeds 2>"fuzz-$t.log" || {
		tail -n 40 "fuzz-$t.log"
		echo "fuzz: $t found a problem (see build-fuzz/fuzz-$t.log)"
		exit 1
	}
	grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "fuzz-$t.log" || true
done
