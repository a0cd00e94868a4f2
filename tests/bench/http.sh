#!/usr/bin/env bash
# HTTP server baseline: /healthz (a small JSON reply, no I/O) and /readyz
# (a pooled PostgreSQL round trip) under wrk, 64 keep-alive connections,
# 5 runs each; medians into docs/benchmarks.md.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. tests/bench/lib.sh

command -v wrk >/dev/null || { echo "wrk missing: make deps"; exit 1; }
bench_pg_start
psql -X -q -h 127.0.0.1 -p "$BENCH_PG_PORT" -U postgres -d postgres \
	-c "DROP DATABASE IF EXISTS idpd_bench" >/dev/null
tests/support/pg.sh createdb "$BENCH_PG_DIR" idpd_bench

port=$(bench_port)
cfg=$(mktemp)
cat >"$cfg" <<CFG
[server]
listen = "127.0.0.1"
port = $port
threads = 2
[database]
url = "postgresql://postgres@127.0.0.1:$BENCH_PG_PORT/idpd_bench"
pool_size = 4
[log]
level = "warn"
access = false
[node]
migrations_dir = "$top/migrations"
CFG
# A throwaway KEK: the bench database is dropped on every run.
export IDPD_KEK=${IDPD_KEK:-$(openssl rand -hex 32)}
bin/idpd serve --config "$cfg" --migrate 2>build/bench-idpd.log &
pid=$!
trap 'kill $pid 2>/dev/null || true; tests/support/pg.sh stop "$BENCH_PG_DIR" >/dev/null 2>&1 || true; rm -f "$cfg"' EXIT
for _ in $(seq 100); do
	curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
	sleep 0.1
done

runs=${BENCH_RUNS:-5}
dur=${BENCH_SECONDS:-5}
declare -A rps p50 p99
for path in /healthz /readyz; do
	: >build/bench-rps.txt
	: >build/bench-p50.txt
	: >build/bench-p99.txt
	for _ in $(seq "$runs"); do
		out=$(wrk -t1 -c64 -d"${dur}s" --latency "http://127.0.0.1:$port$path")
		echo "$out" | awk '/Requests\/sec/ {print $2}' >>build/bench-rps.txt
		echo "$out" | awk '$1 == "50%" {print $2}' | sed 's/us$/ us/; s/ms$/ ms/' |
			awk '{ if ($2 == "ms") print $1*1000; else print $1 }' >>build/bench-p50.txt
		echo "$out" | awk '$1 == "99%" {print $2}' | sed 's/us$/ us/; s/ms$/ ms/' |
			awk '{ if ($2 == "ms") print $1*1000; else print $1 }' >>build/bench-p99.txt
	done
	rps[$path]=$(median <build/bench-rps.txt)
	p50[$path]=$(median <build/bench-p50.txt)
	p99[$path]=$(median <build/bench-p99.txt)
done

{
	echo
	echo "Measured $(date -u +%Y-%m-%d) by \`tests/bench/http.sh\`: idpd with 2 pool threads, wrk with 1"
	echo "thread and 64 keep-alive connections on the same 2 cores, ${dur} s per run, median of $runs runs."
	echo
	echo "| route | what it does | requests/s | p50 | p99 |"
	echo "|---|---|---|---|---|"
	echo "| \`GET /healthz\` | small JSON reply, no I/O | ${rps[/healthz]} | ${p50[/healthz]} us | ${p99[/healthz]} us |"
	echo "| \`GET /readyz\` | pool round trip to PostgreSQL | ${rps[/readyz]} | ${p50[/readyz]} us | ${p99[/readyz]} us |"
	echo
} | replace_section http
echo "bench: http done"
