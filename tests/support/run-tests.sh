#!/usr/bin/env bash
# run-tests.sh UNIT_BIN... -- INTEGRATION_BIN...
#
# Runs every cmocka binary, counts its tests from cmocka's summary lines, and
# ends with one line "N passed, N failed".  Integration tests get a private
# PostgreSQL cluster (started here, stopped on exit, even on failure) and a
# migrated template database they clone per test.  A binary that dies without
# a summary counts as one failure.
set -uo pipefail

: "${BUILD:=build}"
: "${IDPD_BIN:?IDPD_BIN must name the idpd binary}"
top=$(cd "$(dirname "$0")/../.." && pwd)
passed=0
failed=0
failures=()

run_one() {
	local bin=$1 out rc p f
	out=$(mktemp)
	"$bin" >"$out" 2>&1
	rc=$?
	p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -n 1)
	f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -n 1)
	p=${p:-0}
	f=${f:-0}
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1 # crashed or exited before its summary
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	if [ "$f" -ne 0 ]; then
		failures+=("$(basename "$bin")")
		echo "---- $(basename "$bin"): $p passed, $f failed (exit $rc)"
		cat "$out"
	else
		echo "ok   $(basename "$bin"): $p passed"
	fi
	rm -f "$out"
}

units=()
integ=()
seen_sep=0
for a in "$@"; do
	if [ "$a" = "--" ]; then
		seen_sep=1
	elif [ $seen_sep -eq 0 ]; then
		units+=("$a")
	else
		integ+=("$a")
	fi
done

for t in "${units[@]}"; do
	run_one "$t"
done

# Test-case files run by idpd itself (policy tests and the like) register
# here: each prints "N passed, N failed" as its last line.
for hook in "$top"/tests/support/cli-tests.d/*.sh; do
	[ -f "$hook" ] || continue
	out=$(IDPD_BIN=$IDPD_BIN bash "$hook" 2>&1)
	rc=$?
	last=$(printf '%s\n' "$out" | tail -n 1)
	p=$(printf '%s' "$last" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\1/p')
	f=$(printf '%s' "$last" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\2/p')
	p=${p:-0}
	f=${f:-0}
	[ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
	passed=$((passed + p))
	failed=$((failed + f))
	if [ "$f" -ne 0 ]; then
		failures+=("$(basename "$hook")")
		echo "---- $(basename "$hook"): $p passed, $f failed"
		printf '%s\n' "$out"
	else
		echo "ok   $(basename "$hook"): $p passed"
	fi
done

if [ ${#integ[@]} -gt 0 ]; then
	pgdir=$top/$BUILD/pg
	port=
	for cand in $(seq 55400 55499); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$cand") 2>/dev/null; then
			port=$cand
			break
		fi
	done
	[ -n "$port" ] || { echo "run-tests: no free port for PostgreSQL"; exit 1; }
	"$top/tests/support/pg.sh" stop "$pgdir" immediate >/dev/null 2>&1
	trap '"$top/tests/support/pg.sh" stop "$pgdir" immediate >/dev/null 2>&1' EXIT
	if ! "$top/tests/support/pg.sh" start "$pgdir" "$port" fast; then
		echo "run-tests: could not start PostgreSQL"
		echo "0 passed, 1 failed"
		exit 1
	fi
	psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
		-c "DROP DATABASE IF EXISTS idpd_template" >/dev/null
	"$top/tests/support/pg.sh" createdb "$pgdir" idpd_template
	if ! "$IDPD_BIN" migrate --database-url "postgresql://postgres@127.0.0.1:$port/idpd_template" \
		--migrations "$top/migrations"; then
		echo "run-tests: migrating the template database failed"
		echo "$passed passed, $((failed + 1)) failed"
		exit 1
	fi
	export IDPD_TEST_PG_DIR=$pgdir IDPD_TEST_PG_PORT=$port IDPD_TEST_TOP=$top
	for t in "${integ[@]}"; do
		run_one "$t"
	done
fi

[ ${#failures[@]} -gt 0 ] && echo "failed: ${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
