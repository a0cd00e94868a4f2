/*
 * audit_bench - sustained audit throughput with sync durability.
 *
 * usage: audit_bench DATABASE_URL [THREADS [SECONDS]]
 *
 * Starts the real writer against a real PostgreSQL (fsync on), then THREADS
 * emitters each call audit_emit() in a loop for SECONDS, every call waiting
 * until its event is committed.  Prints events/s, the latency one emit adds
 * (p50, p99, from per-call timings) and the average batch size, as one line
 * of key=value pairs for tests/bench/audit.sh.  Measures; asserts nothing.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "idpd/audit_writer.h"
#include "idpd/clock.h"

#define MAX_SAMPLES 400000

static int64_t stop_at_us;
static int64_t *samples;
static _Atomic long n_samples;
static _Atomic long failures;

static void *
emitter(void *arg)
{
	long id = (long)arg;

	while (idp_mono_us() < stop_at_us) {
		struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, AUDIT_TIME_UNSET);
		char agent[32];
		int64_t t0;
		long slot;

		snprintf(agent, sizeof(agent), "bench-agent-%ld", id);
		if (audit_event_set(ev, AUDIT_F_AGENT_ID, agent) != IDP_OK ||
		    audit_event_set(ev, AUDIT_F_TASK_ID, "bench-task") != IDP_OK ||
		    audit_event_set(ev, AUDIT_F_TOOL, "aws_ec2_describe_instances") != IDP_OK ||
		    audit_event_set(ev, AUDIT_F_GRANTED_SCOPE, "ec2:DescribeInstances") != IDP_OK) {
			audit_event_free(ev);
			failures++;
			continue;
		}
		t0 = idp_mono_us();
		if (audit_emit(ev) != IDP_OK) {
			failures++;
			continue;
		}
		slot = n_samples++;
		if (slot < MAX_SAMPLES)
			samples[slot] = idp_mono_us() - t0;
	}
	return NULL;
}

static int
cmp64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

int
main(int argc, char **argv)
{
	struct audit_writer_opts o = {0};
	struct audit_writer_stats st;
	struct idp_diag d;
	int threads = argc > 2 ? atoi(argv[2]) : 64;
	int secs = argc > 3 ? atoi(argv[3]) : 10;
	pthread_t th[1024];
	int64_t t0, t1;
	long n, kept;

	if (argc < 2 || threads < 1 || threads > 1024 || secs < 1) {
		fprintf(stderr, "usage: audit_bench DATABASE_URL [THREADS [SECONDS]]\n");
		return 2;
	}
	samples = calloc(MAX_SAMPLES, sizeof(*samples));
	o.url = argv[1];
	o.instance_id = "bench";
	o.queue_max = 65536;
	o.batch_max = 512;
	o.sync = true;
	o.timeout_ms = 10000;
	idp_diag_init(&d);
	if (audit_writer_start(&o, &d) != IDP_OK) {
		fprintf(stderr, "audit_bench: %s\n", idp_diag_str(&d));
		return 1;
	}
	/* Warm up: connect and prepare before the clock starts. */
	{
		struct audit_event *ev = audit_event_new(AUDIT_TOOL_INVOCATION, AUDIT_TIME_UNSET);

		if (audit_emit(ev) != IDP_OK) {
			fprintf(stderr, "audit_bench: first emit failed (is PostgreSQL up?)\n");
			return 1;
		}
	}
	audit_writer_get_stats(&st);
	{
		uint64_t b0 = st.batches, c0 = st.committed;

		t0 = idp_mono_us();
		stop_at_us = t0 + (int64_t)secs * 1000000;
		for (int i = 0; i < threads; i++)
			pthread_create(&th[i], NULL, emitter, (void *)(long)i);
		for (int i = 0; i < threads; i++)
			pthread_join(th[i], NULL);
		t1 = idp_mono_us();
		audit_writer_get_stats(&st);
		n = n_samples;
		kept = n < MAX_SAMPLES ? n : MAX_SAMPLES;
		qsort(samples, (size_t)kept, sizeof(*samples), cmp64);
		printf("threads=%d seconds=%.1f events=%ld events_per_s=%.0f p50_us=%lld "
		       "p99_us=%lld avg_batch=%.1f failures=%ld\n",
		       threads, (double)(t1 - t0) / 1e6, n, (double)n * 1e6 / (double)(t1 - t0),
		       kept ? (long long)samples[kept / 2] : 0,
		       kept ? (long long)samples[kept * 99 / 100] : 0,
		       st.batches > b0 ? (double)(st.committed - c0) / (double)(st.batches - b0) : 0,
		       (long)failures);
	}
	audit_writer_stop(10000);
	free(samples);
	return 0;
}
