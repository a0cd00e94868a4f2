# lib.sh - shared by the benchmark scripts (sourced).

# median of numbers on stdin
median() {
	sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

# replace_section NAME FILE: stdin replaces what stands between
# <!-- NAME:begin --> and <!-- NAME:end --> in docs/benchmarks.md
# (appended under a heading when absent).
replace_section() {
	local name=$1 doc=docs/benchmarks.md tmp
	tmp=$(mktemp)
	cat >"$tmp.new"
	if grep -q "<!-- $name:begin -->" "$doc"; then
		awk -v b="<!-- $name:begin -->" -v e="<!-- $name:end -->" -v f="$tmp.new" '
			$0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
			$0 == e { skip = 0 }
			!skip { print }' "$doc" >"$tmp"
		mv "$tmp" "$doc"
	else
		{ echo; echo "<!-- $name:begin -->"; cat "$tmp.new"; echo "<!-- $name:end -->"; } >>"$doc"
	fi
	rm -f "$tmp" "$tmp.new"
}

# A PostgreSQL for benchmarks: durable (fsync on), separate from tests.
bench_pg_start() {
	BENCH_PG_DIR=$top/build/bench-pg
	BENCH_PG_PORT=${BENCH_PG_PORT:-55391}
	tests/support/pg.sh start "$BENCH_PG_DIR" "$BENCH_PG_PORT"
	trap 'tests/support/pg.sh stop "$BENCH_PG_DIR" >/dev/null 2>&1 || true' EXIT
}
