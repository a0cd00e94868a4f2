#!/usr/bin/env bash
# PostgreSQL's own CPU per audit row, by COPY batch size.
#
#   tests/bench/audit_rows.sh            the schema of migrations/ and the writer's COPY
#   tests/bench/audit_rows.sh compare    the schema before 0011 and the writer's old COPY
#                                        against the current ones, runs interleaved
#   tests/bench/audit_rows.sh ablation   the same at one batch size, with one part of the
#                                        schema (an index, the trigger, the CHECKs) removed
#                                        at a time, in a scratch database each
#
# build/tests/bench/audit_rows_bench writes token.issued rows (about 900
# bytes of canonical JSON, real chain hashes) the way the audit writer does,
# one COPY per batch, and reads the backend's CPU time from /proc, so the
# figures do not depend on what else runs on the machine.  Each database is
# first filled with BENCH_PREFILL rows (so indexes have depth) and a
# checkpoint is taken before each measurement (BENCH_CHECKPOINT=0 to skip):
# a large table's pages are then first touched after a checkpoint, as in
# steady state, and pay their full-page image in the WAL.
#
# Settings (environment):
#   BENCH_PG_PORT      the benchmark PostgreSQL's port (lib.sh)
#   BENCH_RUNS         runs per figure (median), 3
#   BENCH_ROWS         rows per run, 4096 (a quarter of that at batch size 1)
#   BENCH_BATCHES      batch sizes, "1 8 32 64 128"
#   BENCH_PREFILL      rows loaded before measuring, 100000
#   BENCH_OLD_UPTO, BENCH_OLD_WRITER  compare's "before": 0010, "text trigger v4"
#   BENCH_UPTO         apply migrations up to this number only (e.g. 0010, the
#                      schema before 0011), default all
#   BENCH_SQL          SQL applied to the schema before measuring (current only)
#   BENCH_WRITER       how rows are sent: "FORMAT CHAIN IDS" with FORMAT text|binary,
#                      CHAIN trigger|writer, IDS v4|v7 (see audit_rows_bench.c);
#                      default: what src/audit/writer.c does
# Figures go to stdout only; docs/benchmarks.md is not touched.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
. tests/bench/lib.sh

what=${1:-current}
runs=${BENCH_RUNS:-3}
rows=${BENCH_ROWS:-4096}
batches=${BENCH_BATCHES:-1 8 32 64 128}
prefill=${BENCH_PREFILL:-100000}
checkpoint=${BENCH_CHECKPOINT:-1}
writer=${BENCH_WRITER:-binary writer v7}
helper=${BENCH_HELPER:-build/tests/bench/audit_rows_bench}
idpd=${IDPD_BIN:-bin/idpd}
tpl=idpd_bench_rows_tpl
work=$(mktemp -d)
export PGOPTIONS="-c client_min_messages=warning"

[ -x "$helper" ] || { echo "audit_rows: $helper missing (make bench builds it)"; exit 1; }
bench_pg_start
trap 'tests/support/pg.sh stop "$BENCH_PG_DIR" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
url() { printf 'postgresql://postgres@127.0.0.1:%s/%s' "$BENCH_PG_PORT" "$1"; }

# template NAME UPTO WRITER: a database migrated up to UPTO (all when empty),
# filled by WRITER, vacuumed and checkpointed.
template() {
	local dir=$work/migrations-$1 m n
	mkdir "$dir"
	for m in migrations/*.sql; do
		n=$(basename "$m" | cut -c1-4)
		if [ -z "$2" ] || [ "$n" -le "$2" ]; then
			cp "$m" "$dir/"
		fi
	done
	bench_db "$1"
	"$idpd" migrate --database-url "$(url "$1")" --migrations "$dir" 2>/dev/null
	# shellcheck disable=SC2086 # $3 is three words
	"$helper" "$(url "$1")" "$prefill" 2000 $3 >/dev/null
	psql_bench -d "$1" -c "VACUUM ANALYZE audit_events" -c CHECKPOINT
}

# measure DB BATCH [WRITER]: one run's line from the helper.
measure() {
	local r=$rows
	[ "$2" -eq 1 ] && r=$((rows / 4))
	[ "$checkpoint" = 1 ] && psql_bench -d "$1" -c CHECKPOINT
	# shellcheck disable=SC2086
	"$helper" "$(url "$1")" "$r" "$2" ${3:-$writer}
}

# field NAME: the median of NAME=value over the lines on stdin.
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | median; }

# variant NAME SQL BATCHES: a copy of the template with SQL applied, measured
# BENCH_RUNS times at each batch size (interleaved, so that the table's growth
# spreads over all of them); one table row per batch size.
variant() {
	local name=$1 sql=$2 db=idpd_bench_rows_v out
	psql_bench -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db TEMPLATE $tpl"
	[ -n "$sql" ] && psql_bench -d "$db" -c "$sql"
	for _ in $(seq "$runs"); do
		for b in $3; do
			measure "$db" "$b" >>"$work/$name.$b"
		done
	done
	for b in $3; do
		out=$work/$name.$b
		printf '| %s | %s | %s | %s | %s |\n' "$name" "$b" "$(field cpu_us_per_row <"$out")" \
			"$(field cpu_us_per_batch <"$out")" "$(field wal_bytes_per_row <"$out")"
	done
}

if [ "$what" = compare ]; then
	# Before and after, each run of one right after the same run of the
	# other, so that whatever else the machine does weighs on both alike.
	old_upto=${BENCH_OLD_UPTO:-0010}
	old_writer=${BENCH_OLD_WRITER:-text trigger v4}
	template idpd_bench_rows_old "$old_upto" "$old_writer"
	template idpd_bench_rows_new "${BENCH_UPTO:-}" "$writer"
	for _ in $(seq "$runs"); do
		for b in $batches; do
			measure idpd_bench_rows_old "$b" "$old_writer" >>"$work/old.$b"
			measure idpd_bench_rows_new "$b" >>"$work/new.$b"
		done
	done
	echo "old: migrations up to $old_upto, $old_writer; new: migrations up to" \
		"${BENCH_UPTO:-the last}, $writer; $prefill rows before; $rows rows per run;" \
		"median of $runs runs, interleaved; checkpoint before each run: $checkpoint"
	echo
	echo "| rows per COPY | old us/row | new us/row | old us/batch | new us/batch |" \
		"old WAL B/row | new WAL B/row |"
	echo "|---|---|---|---|---|---|---|"
	for b in $batches; do
		printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$b" \
			"$(field cpu_us_per_row <"$work/old.$b")" \
			"$(field cpu_us_per_row <"$work/new.$b")" \
			"$(field cpu_us_per_batch <"$work/old.$b")" \
			"$(field cpu_us_per_batch <"$work/new.$b")" \
			"$(field wal_bytes_per_row <"$work/old.$b")" \
			"$(field wal_bytes_per_row <"$work/new.$b")"
	done
	exit 0
fi
template "$tpl" "${BENCH_UPTO:-}" "$writer"

echo "writer: $writer; migrations up to ${BENCH_UPTO:-the last}; $prefill rows before;" \
	"$rows rows per run; median of $runs runs; checkpoint before each run: $checkpoint"
echo
echo "| schema | rows per COPY | backend CPU us/row | us/batch | WAL bytes/row |"
echo "|---|---|---|---|---|"
case $what in
current)
	variant current "${BENCH_SQL:-}" "$batches"
	;;
ablation)
	b=${BENCH_ABLATION_BATCH:-32}
	idx=$(psql_bench -d "$tpl" -Atc "SELECT indexrelid::regclass FROM pg_index
		WHERE indrelid = 'audit_events'::regclass AND NOT indisprimary AND NOT indisunique
		ORDER BY 1")
	variant base "" "$b"
	if [ -n "$(psql_bench -d "$tpl" -Atc "SELECT 1 FROM pg_trigger
			WHERE tgname = 'audit_events_chain'")" ]; then
		variant no_trigger "DROP TRIGGER audit_events_chain ON audit_events" "$b"
	fi
	checks="ALTER TABLE audit_events DROP CONSTRAINT audit_events_seq_check,
		DROP CONSTRAINT audit_events_prev_hash_check,
		DROP CONSTRAINT audit_events_hash_check"
	variant no_checks "$checks" "$b"
	for i in $idx; do
		variant "no_$i" "DROP INDEX $i" "$b"
	done
	variant no_unique_writer_seq "ALTER TABLE audit_events
		DROP CONSTRAINT audit_events_writer_id_seq_key" "$b"
	variant no_pkey "ALTER TABLE audit_events DROP CONSTRAINT audit_events_pkey" "$b"
	variant heap_only "DROP TRIGGER IF EXISTS audit_events_chain ON audit_events;
		$checks, DROP CONSTRAINT audit_events_pkey,
		DROP CONSTRAINT audit_events_writer_id_seq_key;
		DROP INDEX ${idx//$'\n'/, }" "$b"
	;;
*)
	echo "usage: audit_rows.sh [current|compare|ablation]"
	exit 2
	;;
esac
