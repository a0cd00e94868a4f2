/*
 * audit_rows_bench - PostgreSQL's own CPU per audit row, by batch size.
 *
 * usage: audit_rows_bench DATABASE_URL ROWS BATCH [text|binary] [trigger|writer] [v4|v7]
 *
 * Writes ROWS token.issued events (the shape src/token/access.c emits,
 * about 870 bytes of canonical JSON, real chain hashes) into audit_events
 * as one chain, BATCH rows per COPY, the way the audit writer does:
 *
 *   text    COPY ... FROM STDIN in text format (the writer before 0011)
 *   binary  COPY ... FROM STDIN (FORMAT binary) (the writer from 0011 on)
 *   trigger the COPY alone, audit_chains kept by 0006's trigger
 *   writer  the COPY and the audit_chains upsert in one query string, so
 *           one implicit transaction and one round trip (from 0011 on)
 *   v4, v7  random or time-ordered event ids (RFC 9562)
 *
 * The figure is the backend's CPU time (user + system, from
 * /proc/<backend pid>/schedstat, nanoseconds) between the first batch and
 * the last commit, so it does not depend on what else runs on the machine.
 * Prints one line of key=value pairs for tests/bench/audit_rows.sh.
 * Measures; asserts nothing.
 */
#include <arpa/inet.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "idpd/audit.h"
#include "idpd/buf.h"
#include "idpd/clock.h"

#define POOL_TASKS 64
#define POOL_AGENTS 16
#define POOL_HUMANS 8

/* The buffers are capped at 1 GiB: only a bug can overflow one. */
static void
must(int rc)
{
	if (rc != IDP_OK) {
		fprintf(stderr, "audit_rows_bench: buffer overflow\n");
		exit(1);
	}
}

static int
die(const char *what, PGconn *pg)
{
	fprintf(stderr, "audit_rows_bench: %s%s%s\n", what, pg ? ": " : "",
	        pg ? PQerrorMessage(pg) : "");
	return 1;
}

/* CPU time of process pid in ns: schedstat when the kernel keeps it, else stat's ticks. */
static long long
cpu_ns(int pid)
{
	char path[64];
	long long ns = -1, ut = 0, st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
	f = fopen(path, "r");
	if (f != NULL) {
		if (fscanf(f, "%lld", &ns) != 1)
			ns = -1;
		fclose(f);
	}
	if (ns > 0)
		return ns;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	/* Fields 14 and 15, after the command in parentheses. */
	if (fscanf(f, "%*d (%*[^)]) %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &ut,
	           &st) != 2)
		ut = st = -1;
	fclose(f);
	return ut < 0 ? -1 : (ut + st) * (1000000000LL / sysconf(_SC_CLK_TCK));
}

static long long
wal_lsn(PGconn *pg)
{
	PGresult *r = PQexec(pg, "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn");
	long long v = -1;

	if (PQresultStatus(r) == PGRES_TUPLES_OK)
		v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
	PQclear(r);
	return v;
}

static void
rand_hex(char *out, size_t nbytes)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char b[64];

	if (nbytes > sizeof(b) || idp_random_id_bytes(b, nbytes) != IDP_OK)
		abort();
	for (size_t i = 0; i < nbytes; i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	out[2 * nbytes] = '\0';
}

/* A version-4 UUID, as the writer assigned before 0011. */
static void
uuid_v4(char out[37])
{
	char h[33];

	rand_hex(h, 16);
	h[12] = '4';
	h[16] = "89ab"[h[16] % 4];
	snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}

/* One token.issued event like src/token/access.c's. */
static struct audit_event *
token_issued(unsigned seq, bool v7, const char *instance)
{
	struct audit_event *ev =
	    audit_event_new(AUDIT_TOKEN_ISSUED, idp_now_ms(idp_clock_system()));
	char task[64], agent[64], human[64], jti[40], djti[40], req[40], id[37];
	unsigned t = (unsigned)random() % POOL_TASKS;
	json_t *detail;
	int rc = 0;

	snprintf(task, sizeof(task), "task-2026q1-infra-review-%02u", t);
	snprintf(agent, sizeof(agent), "agent-planning-prod-%03u", t % POOL_AGENTS);
	snprintf(human, sizeof(human), "user%02u@example.com", t % POOL_HUMANS);
	rand_hex(jti, 16);
	rand_hex(djti, 16);
	snprintf(req, sizeof(req), "req-%u", seq);
	if (v7) {
		rc |= audit_event_assign_id(ev);
	} else {
		uuid_v4(id);
		rc |= audit_event_set(ev, AUDIT_F_ID, id);
	}
	audit_event_set_outcome(ev, AUDIT_OUTCOME_SUCCESS);
	audit_event_set_decision(ev, AUDIT_DECISION_ALLOW);
	rc |= audit_event_set(ev, AUDIT_F_TASK_ID, task);
	rc |= audit_event_set(ev, AUDIT_F_HUMAN_PRINCIPAL, human);
	rc |= audit_event_set(ev, AUDIT_F_AGENT_ID, agent);
	rc |= audit_event_set(ev, AUDIT_F_AGENT_TYPE, "planner");
	rc |= audit_event_set(ev, AUDIT_F_REQUEST_ID, req);
	rc |= audit_event_set(ev, AUDIT_F_SOURCE_ADDRESS, "10.20.30.40");
	rc |= audit_event_set(ev, AUDIT_F_INSTANCE_ID, instance);
	rc |= audit_event_set_actor(ev, AUDIT_ACTOR_AGENT, agent);
	rc |= audit_event_set(ev, AUDIT_F_POLICY_RULE, "agent-cloud-read-v2");
	rc |= audit_event_set(ev, AUDIT_F_TOKEN_ID, jti);
	rc |=
	    audit_event_set(ev, AUDIT_F_GRANTED_SCOPE, "cloud:DescribeInstances cloud:ListBuckets");
	rc |= audit_event_chain_append(ev, human);
	rc |= audit_event_chain_append(ev, agent);
	detail = json_pack("{s:s,s:s,s:s,s:s,s:I,s:s}", "audience", "https://aws.example.com",
	                   "requested_scope", "cloud:DescribeInstances cloud:ListBuckets",
	                   "stated_reason", "quarterly inventory", "delegation_jti", djti, "exp",
	                   (json_int_t)(time(NULL) + 300), "policy_reason", "cloud read in a task");
	rc |= audit_event_set_detail(ev, detail);
	json_decref(detail);
	if (rc != 0) {
		fprintf(stderr, "audit_rows_bench: cannot build an event\n");
		exit(1);
	}
	return ev;
}

static void
copy_text(struct idp_buf *b, const char *s)
{
	if (s == NULL) {
		must(idp_buf_puts(b, "\\N"));
		return;
	}
	for (; *s != '\0'; s++) {
		switch (*s) {
		case '\\':
			must(idp_buf_puts(b, "\\\\"));
			break;
		case '\t':
			must(idp_buf_puts(b, "\\t"));
			break;
		case '\n':
			must(idp_buf_puts(b, "\\n"));
			break;
		case '\r':
			must(idp_buf_puts(b, "\\r"));
			break;
		default:
			must(idp_buf_putc(b, *s));
		}
	}
}

static void
put_be(struct idp_buf *b, uint64_t v, int n)
{
	unsigned char x[8];

	for (int i = 0; i < n; i++)
		x[i] = (unsigned char)(v >> (8 * (n - 1 - i)));
	must(idp_buf_append(b, x, (size_t)n));
}

static void
bin_field(struct idp_buf *b, const void *p, size_t n)
{
	if (p == NULL) {
		put_be(b, 0xffffffffu, 4);
		return;
	}
	put_be(b, n, 4);
	must(idp_buf_append(b, p, n));
}

static void
bin_str(struct idp_buf *b, const char *s)
{
	bin_field(b, s, s ? strlen(s) : 0);
}

struct chain {
	char id[128];
	unsigned long long seq;
	uint8_t hash[AUDIT_HASH_LEN];
};

static void
add_row(struct idp_buf *b, bool binary, struct chain *ch, const struct audit_event *ev)
{
	size_t clen;
	char *canon = audit_event_canonical(ev, &clen);
	uint8_t prev[AUDIT_HASH_LEN];
	char ts[32], ph[AUDIT_HASH_HEX_LEN + 1], hh[AUDIT_HASH_HEX_LEN + 1];
	const char *outcome = audit_outcome_name(audit_event_outcome(ev));

	memcpy(prev, ch->hash, sizeof(prev));
	if (audit_chain_hash(prev, canon, clen, ch->hash) != IDP_OK)
		abort();
	ch->seq++;
	if (binary) {
		/* timestamptz: microseconds since 2000-01-01 UTC. */
		int64_t us = (audit_event_time(ev) - 946684800000LL) * 1000;

		put_be(b, 13, 2);
		bin_str(b, audit_event_get(ev, AUDIT_F_ID));
		bin_str(b, ch->id);
		put_be(b, 8, 4);
		put_be(b, ch->seq, 8);
		put_be(b, 8, 4);
		put_be(b, (uint64_t)us, 8);
		bin_str(b, audit_type_name(audit_event_type(ev)));
		bin_str(b, audit_event_get(ev, AUDIT_F_AGENT_ID));
		bin_str(b, audit_event_get(ev, AUDIT_F_HUMAN_PRINCIPAL));
		bin_str(b, audit_event_get(ev, AUDIT_F_TASK_ID));
		put_be(b, 2, 4);
		put_be(b, (uint64_t)audit_event_severity(ev), 2);
		bin_str(b, outcome);
		bin_field(b, canon, clen);
		bin_field(b, prev, AUDIT_HASH_LEN);
		bin_field(b, ch->hash, AUDIT_HASH_LEN);
	} else {
		audit_hash_to_hex(prev, ph);
		audit_hash_to_hex(ch->hash, hh);
		idp_time_format(audit_event_time(ev), ts);
		copy_text(b, audit_event_get(ev, AUDIT_F_ID));
		must(idp_buf_putc(b, '\t'));
		copy_text(b, ch->id);
		must(idp_buf_printf(b, "\t%llu\t%s\t%s\t", ch->seq, ts,
		                    audit_type_name(audit_event_type(ev))));
		copy_text(b, audit_event_get(ev, AUDIT_F_AGENT_ID));
		must(idp_buf_putc(b, '\t'));
		copy_text(b, audit_event_get(ev, AUDIT_F_HUMAN_PRINCIPAL));
		must(idp_buf_putc(b, '\t'));
		copy_text(b, audit_event_get(ev, AUDIT_F_TASK_ID));
		must(idp_buf_printf(b, "\t%d\t%s\t", audit_event_severity(ev), outcome));
		copy_text(b, canon);
		must(idp_buf_printf(b, "\t\\\\x%s\t\\\\x%s\n", ph, hh));
	}
	free(canon);
}

struct opts {
	bool binary, writer, v7;
};

/* One batch of n rows, written and committed as the writer does; 0 or 1. */
static int
write_batch(PGconn *pg, const struct opts *o, struct chain *ch, struct idp_buf *b,
            struct idp_buf *sql, long n, long first, long long *copy_bytes)
{
	static const char binary_head[19] = "PGCOPY\n\377\r\n\0\0\0\0\0\0\0\0\0";
	bool binary = o->binary, writer = o->writer;
	PGresult *r;

	idp_buf_reset(b);
	if (binary)
		must(idp_buf_append(b, binary_head, sizeof(binary_head)));
	for (long i = 0; i < n; i++) {
		struct audit_event *ev =
		    token_issued((unsigned)(first + i), o->v7, "idpd-a.example.com:4242");
		size_t before = b->len;

		add_row(b, binary, ch, ev);
		*copy_bytes += (long long)(b->len - before);
		audit_event_free(ev);
	}
	if (binary)
		put_be(b, 0xffff, 2);
	idp_buf_reset(sql);
	must(idp_buf_printf(sql,
	                    "COPY audit_events (event_id, writer_id, seq, ts, type, agent_id, "
	                    "human_principal, task_id, severity, outcome, body, prev_hash, "
	                    "hash) FROM STDIN%s",
	                    binary ? " (FORMAT binary)" : ""));
	if (writer) {
		char *lit = PQescapeLiteral(pg, ch->id, strlen(ch->id));

		must(idp_buf_printf(sql,
		                    "; INSERT INTO audit_chains AS c (writer_id, last_seq) "
		                    "VALUES (%s, %llu) ON CONFLICT (writer_id) DO UPDATE SET "
		                    "last_seq = greatest(c.last_seq, excluded.last_seq), "
		                    "updated_at = now()",
		                    lit, ch->seq));
		PQfreemem(lit);
	}
	r = PQexec(pg, idp_buf_str(sql));
	if (PQresultStatus(r) != PGRES_COPY_IN)
		return die("COPY", pg);
	PQclear(r);
	if (PQputCopyData(pg, b->data, (int)b->len) != 1 || PQputCopyEnd(pg, NULL) != 1)
		return die("COPY data", pg);
	while ((r = PQgetResult(pg)) != NULL) {
		if (PQresultStatus(r) != PGRES_COMMAND_OK)
			return die("COPY end", pg);
		PQclear(r);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const char *url, *fmt, *mode, *ids;
	long rows, batch, done = 0, batches = 0;
	struct opts o;
	struct chain ch;
	struct idp_buf b, sql;
	PGconn *pg;
	long long c0, c1, w0, w1, body_bytes = 0, warm_bytes = 0;
	int pid;

	if (argc < 4) {
		fprintf(stderr, "usage: audit_rows_bench DATABASE_URL ROWS BATCH [text|binary] "
		                "[trigger|writer] [v4|v7]\n");
		return 2;
	}
	url = argv[1];
	rows = strtol(argv[2], NULL, 10);
	batch = strtol(argv[3], NULL, 10);
	fmt = argc > 4 ? argv[4] : "text";
	mode = argc > 5 ? argv[5] : "trigger";
	ids = argc > 6 ? argv[6] : "v4";
	o.binary = strcmp(fmt, "binary") == 0;
	o.writer = strcmp(mode, "writer") == 0;
	o.v7 = strcmp(ids, "v7") == 0;
	if (rows < 1 || batch < 1 || (!o.binary && strcmp(fmt, "text") != 0) ||
	    (!o.writer && strcmp(mode, "trigger") != 0) || (!o.v7 && strcmp(ids, "v4") != 0)) {
		fprintf(stderr, "audit_rows_bench: bad arguments\n");
		return 2;
	}
	srandom((unsigned)getpid());

	pg = PQconnectdb(url);
	if (PQstatus(pg) != CONNECTION_OK)
		return die("connect", pg);
	pid = PQbackendPID(pg);
	memset(&ch, 0, sizeof(ch));
	snprintf(ch.id, sizeof(ch.id), "bench-host.example.com:%d/%lld", (int)getpid(),
	         (long long)idp_now_ms(idp_clock_system()));
	idp_buf_init(&b, (size_t)1 << 30);
	idp_buf_init(&sql, 4096);

	/* One batch outside the measurement: the session's caches warm up. */
	if (write_batch(pg, &o, &ch, &b, &sql, batch, 0, &warm_bytes) != 0)
		return 1;
	w0 = wal_lsn(pg);
	c0 = cpu_ns(pid);
	if (c0 < 0)
		return die("cannot read the backend's CPU time from /proc", NULL);
	while (done < rows) {
		long n = rows - done < batch ? rows - done : batch;

		if (write_batch(pg, &o, &ch, &b, &sql, n, done, &body_bytes) != 0)
			return 1;
		done += n;
		batches++;
	}
	c1 = cpu_ns(pid);
	w1 = wal_lsn(pg);
	printf("rows=%ld batch=%ld batches=%ld cpu_us_per_row=%.2f cpu_us_per_batch=%.1f "
	       "wal_bytes_per_row=%.0f copy_bytes_per_row=%.0f\n",
	       rows, batch, batches, (double)(c1 - c0) / 1000.0 / (double)rows,
	       (double)(c1 - c0) / 1000.0 / (double)batches, (double)(w1 - w0) / (double)rows,
	       (double)body_bytes / (double)rows);
	idp_buf_cleanup(&b);
	idp_buf_cleanup(&sql);
	PQfinish(pg);
	return 0;
}
