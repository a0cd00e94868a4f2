#!/usr/bin/env bash
# Audit writer throughput with sync durability: 64 concurrent emitters, each
# waiting for its event's commit, against a PostgreSQL with fsync on.  Also
# 1 emitter (no group commit possible) for the ratio.  Median of 3 runs.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. tests/bench/lib.sh

bench_pg_start
psql -X -q -h 127.0.0.1 -p "$BENCH_PG_PORT" -U postgres -d postgres \
	-c "DROP DATABASE IF EXISTS idpd_audit_bench" >/dev/null
tests/support/pg.sh createdb "$BENCH_PG_DIR" idpd_audit_bench
url="postgresql://postgres@127.0.0.1:$BENCH_PG_PORT/idpd_audit_bench"
bin/idpd migrate --database-url "$url" --migrations migrations 2>/dev/null

runs=${BENCH_RUNS:-3}
secs=${BENCH_SECONDS:-10}
declare -A eps p50 p99 batch
for t in 64 1; do
	: >build/bench-a.txt
	for _ in $(seq "$runs"); do
		build/tests/bench/audit_bench "$url" "$t" "$secs" | tee -a build/bench-a.txt
	done
	eps[$t]=$(sed 's/.*events_per_s=\([0-9]*\).*/\1/' build/bench-a.txt | median)
	p50[$t]=$(sed 's/.*p50_us=\([0-9]*\).*/\1/' build/bench-a.txt | median)
	p99[$t]=$(sed 's/.*p99_us=\([0-9]*\).*/\1/' build/bench-a.txt | median)
	batch[$t]=$(sed 's/.*avg_batch=\([0-9.]*\).*/\1/' build/bench-a.txt | median)
done
ratio=$(awk -v a="${eps[64]}" -v b="${eps[1]}" 'BEGIN { printf "%.1f", a / b }')

{
	echo
	echo "Measured $(date -u +%Y-%m-%d) by \`tests/bench/audit.sh\` (\`build/tests/bench/audit_bench\`): the real"
	echo "writer thread against PostgreSQL 15 with \`fsync = on\`, every \`audit_emit()\` waiting for its commit"
	echo "(\`audit.durability = \"sync\"\`); ${secs} s per run, median of $runs runs, emitters and PostgreSQL on"
	echo "the same 2 cores."
	echo
	echo "| emitters | events/s | p50 added per emit | p99 | events per commit |"
	echo "|---|---|---|---|---|"
	echo "| 64 | ${eps[64]} | ${p50[64]} us | ${p99[64]} us | ${batch[64]} |"
	echo "| 1 | ${eps[1]} | ${p50[1]} us | ${p99[1]} us | ${batch[1]} |"
	echo
	echo "Group commit makes 64 emitters ${ratio}x as fast as one: the cost of durability is paid once per"
	echo "batch, not once per event. Target (DESIGN §11 / issue): at least 20,000 events/s from 64 emitters."
	echo
} | replace_section audit
echo "bench: audit done"
