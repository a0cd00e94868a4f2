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

# bench_port: a free TCP port for an idpd under test, below the ephemeral
# range (32768-60999 on Linux), where the outgoing connections of wrk, of
# PostgreSQL's clients and of anything else running could already hold it.
bench_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 12000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	echo "bench: no free port" >&2
	return 1
}

# A PostgreSQL for benchmarks: durable (fsync on), separate from tests.
bench_pg_start() {
	BENCH_PG_DIR=$top/build/bench-pg
	BENCH_PG_PORT=${BENCH_PG_PORT:-55391}
	tests/support/pg.sh start "$BENCH_PG_DIR" "$BENCH_PG_PORT"
	trap 'tests/support/pg.sh stop "$BENCH_PG_DIR" >/dev/null 2>&1 || true' EXIT
	# Checkpoints as a write-heavy deployment would space them (the
	# defaults, 1 GB of WAL or 5 minutes, suit a small idle database):
	# right after one, every index page touched is logged whole.
	# WAL segments as a server that has run a while has them: such a
	# server renames the segments its checkpoints retire and writes into
	# them, while a new cluster creates every 16 MB segment, zero-filled
	# and flushed before use; under this load that stalled a commit for
	# 60 ms every half second (PostgreSQL's log, log_min_duration_statement).
	# A benchmark warms up and then runs bench_pg_steady: the checkpoint
	# keeps up to min_wal_size of retired segments for reuse.  Past them,
	# wal_init_zero = off creates a segment without the zeros (still
	# slower than reuse: a stall of 20-60 ms now and then).
	# RESET ALL first: the cluster under build/ outlives a benchmark, and a
	# setting left by an experiment (a larger shared_buffers, say, whose
	# pages are then touched for the first time all through the runs) would
	# weigh on every later figure unseen.
	psql_bench -d postgres -c "ALTER SYSTEM RESET ALL" \
		-c "ALTER SYSTEM SET max_wal_size = '8GB'" \
		-c "ALTER SYSTEM SET min_wal_size = '4GB'" \
		-c "ALTER SYSTEM SET checkpoint_timeout = '15min'" \
		-c "ALTER SYSTEM SET wal_init_zero = off" \
		-c "SELECT pg_reload_conf()" >/dev/null
	# A setting that only a restart applies (shared_buffers) may still hold
	# the removed value.
	if [ "$(psql_bench -d postgres -At -c "SELECT count(*) FROM pg_settings WHERE pending_restart")" != 0 ]; then
		tests/support/pg.sh stop "$BENCH_PG_DIR" >/dev/null
		tests/support/pg.sh start "$BENCH_PG_DIR" "$BENCH_PG_PORT"
	fi
}

# bench_pg_steady: after a warm-up, a checkpoint, so that what follows writes into
# recycled WAL segments, as on a server in steady state.
bench_pg_steady() {
	psql_bench -d postgres -c "CHECKPOINT" >/dev/null
}

psql_bench() {
	psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BENCH_PG_PORT" -U postgres "$@"
}

# bench_db NAME: the benchmark PostgreSQL started and a fresh database NAME in it.
bench_db() {
	bench_pg_start
	psql_bench -d postgres -c "DROP DATABASE IF EXISTS $1" >/dev/null
	tests/support/pg.sh createdb "$BENCH_PG_DIR" "$1"
}

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# bench_idp_key PREFIX KID: an RSA 2048 key PREFIX.pem and its JWKS PREFIX.jwks.json
# (an IdP's or an attestor's, RS256, key id KID).
bench_idp_key() {
	local n
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.pem" 2>/dev/null
	n=$(openssl rsa -in "$1.pem" -noout -modulus | cut -d= -f2 | xxd -r -p | b64url)
	printf '{"keys":[{"kty":"RSA","kid":"%s","use":"sig","alg":"RS256","n":"%s","e":"AQAB"}]}' \
		"$2" "$n" >"$1.jwks.json"
}

# bench_jwt PREFIX KID PAYLOAD: PAYLOAD (JSON) as an RS256 JWT signed with PREFIX.pem.
bench_jwt() {
	local hdr pl sig
	hdr=$(printf '{"alg":"RS256","kid":"%s"}' "$2" | b64url)
	pl=$(printf '%s' "$3" | b64url)
	sig=$(printf '%s.%s' "$hdr" "$pl" | openssl dgst -sha256 -sign "$1.pem" -binary | b64url)
	printf '%s.%s.%s\n' "$hdr" "$pl" "$sig"
}

# bench_config_head PORT DB [SERVER_LINE]: the [server], [database], [log] and [node]
# tables every benchmark's idpd shares (2 I/O threads, a pool of 8).
bench_config_head() {
	cat <<CFG
[server]
listen = "127.0.0.1"
port = $1
threads = ${BENCH_THREADS:-2}
${3:-}
[database]
url = "postgresql://postgres@127.0.0.1:$BENCH_PG_PORT/$2"
pool_size = 8
[log]
level = "info"
access = false
[node]
migrations_dir = "$top/migrations"
CFG
}

# bench_idpd_start CONFIG LOG: idpd serving CONFIG (migrating first) in the background,
# its pid in pid.
bench_idpd_start() {
	"$idpd" serve --config "$1" --migrate 2>"$2" &
	pid=$!
}

# bench_wait LOG CMD...: until CMD succeeds (30 s at the most); else LOG is shown and
# the benchmark ends.
bench_wait() {
	local log=$1
	shift
	for _ in $(seq 300); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "bench: idpd did not get ready"
	cat "$log"
	exit 1
}

# cpu_times: the machine's total and stolen CPU time so far (clock ticks, /proc/stat).
# On a virtual machine the hypervisor may give the cores to another guest
# ("steal"): a run with much of it measures the neighbours, not idpd.
cpu_times() { awk '$1 == "cpu" {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9, $5 + $6}' /proc/stat; }

# steal_pct BEFORE AFTER: the share of CPU time stolen between two cpu_times.
steal_pct() { echo "$1 $2" | awk '{ if ($4 > $1) printf "%.0f\n", 100 * ($5 - $2) / ($4 - $1); else print 0 }'; }
# idle_pct BEFORE AFTER: the share of CPU time no process used (idle or waiting for I/O).
idle_pct() { echo "$1 $2" | awk '{ if ($4 > $1) printf "%.0f\n", 100 * ($6 - $3) / ($4 - $1); else print 0 }'; }

# wrk's latencies on stdin ("456.00us", "1.23ms", "1.02s") in microseconds.
wrk_us() {
	awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); print v + 0 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 }
		else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 } }'
}

# wrk_pct P: percentile P ("50%", "99%") of the wrk --latency output on stdin, in us.
wrk_pct() { awk -v p="$1" '$1 == p {print $2}' | wrk_us; }

# children_cpu FILE: CPU seconds (user + system) of a shell's ended children, from
# the output of `times` in FILE.  (`times` must run in the measuring shell itself,
# redirected to a file: in a pipe or $(...) it runs in a subshell with no children.)
children_cpu() {
	awk 'NR == 2 {
		n = split($1 " " $2, f, " "); t = 0
		for (i = 1; i <= n; i++) { split(f[i], ms, "m"); sub(/s$/, "", ms[2]); t += ms[1] * 60 + ms[2] }
		printf "%.3f\n", t }' "$1"
}

# bench_wrk_run COUNT RATE P99 WRK_ARG...: one wrk run of $dur seconds.  COUNT (a
# command printing a number) is read before and after: the difference per second is
# appended to file RATE, wrk's p99 (us) to file P99; wrk's output stays in BENCH_WRK_OUT,
# the CPU seconds wrk used in BENCH_WRK_CPU.
bench_wrk_run() {
	local count=$1 rate=$2 p99=$3 before after tf=${TMPDIR:-/tmp}/bench-times.$$
	shift 3
	before=$($count)
	times >"$tf.0"
	BENCH_WRK_OUT=$(wrk -d"${dur}s" --latency "$@")
	times >"$tf.1"
	BENCH_WRK_CPU=$(echo "$(children_cpu "$tf.0") $(children_cpu "$tf.1")" | awk '{printf "%.3f\n", $2 - $1}')
	rm -f "$tf.0" "$tf.1"
	after=$($count)
	echo "$after $before $dur" | awk '{printf "%.0f\n", ($1 - $2) / $3}' >>"$rate"
	printf '%s\n' "$BENCH_WRK_OUT" | wrk_pct 99% >>"$p99"
}
