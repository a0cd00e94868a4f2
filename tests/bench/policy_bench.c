/*
 * policy_bench - latency and throughput of policy evaluation.
 *
 *   policy_bench [--runs N] [--policies DIR]
 *
 * For the shipped set (DIR, default "policies") and for generated sets of
 * 100 and 1,000 rules (mostly keyed by audience, as real sets are, plus one
 * set of 1,000 rules the index cannot key), it prints the p50 and p99 latency
 * of one evaluation, the rules evaluated per call, evaluations per second on
 * one thread and on two, and the allocations per evaluation counted by the
 * malloc below, which interposes on the C library's for the whole process.
 * Each figure is the median over the runs.  Timing uses CLOCK_MONOTONIC around
 * every single evaluation; the clock's own cost (measured first) is
 * subtracted.  Nothing here asserts on time.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "idpd/policy.h"

/* ---- counting allocator ---------------------------------------------------- */

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

static atomic_ulong allocations;

void *
malloc(size_t n)
{
	atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
	return __libc_malloc(n);
}

void *
calloc(size_t n, size_t size)
{
	atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
	return __libc_calloc(n, size);
}

void *
realloc(void *p, size_t n)
{
	atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
	return __libc_realloc(p, n);
}

void
free(void *p)
{
	__libc_free(p);
}

/* ---- inputs ------------------------------------------------------------------- */

#define N_INPUTS 8

static const char *const caps[] = {"ec2:Describe*", "s3:ListBuckets", "cloud-inventory:read",
                                   "reports:write", "svc3:*",         "svc7:*",
                                   "svc12:*"};
static const char *const domains[] = {"cloud", "reporting"};
static const struct policy_kv labels[] = {{"clearance", "pii"}};
static const char *const scope_sets[N_INPUTS][2] = {
    {"ec2:DescribeInstances", NULL},
    {"s3:ListBuckets", "ec2:DescribeVolumes"},
    {"reports:write", NULL},
    {"ec2:TerminateInstances", NULL},
    {"svc3:read", NULL},
    {"svc7:write", "svc7:read"},
    {"svc12:DeleteThing", NULL},
    {"cloud-inventory:read", NULL},
};
static char audiences[N_INPUTS][32];

/* Eight requests that take different paths: allows, denies, approvals, conditions. */
static void
make_inputs(struct policy_input in[N_INPUTS])
{
	static const char *const classes[] = {"internal", "pii", "confidential", "internal"};

	for (int i = 0; i < N_INPUTS; i++) {
		struct policy_input *p = &in[i];

		snprintf(audiences[i], sizeof(audiences[i]), "api-%d", (i * 37) % 100);
		policy_input_init(p);
		(void)policy_input_set_str(p, POLICY_ATTR_AGENT_ID, "agent-cloud-inventory-001");
		(void)policy_input_set_str(p, POLICY_ATTR_AGENT_TYPE, "cloud-inventory");
		(void)policy_input_set_str(p, POLICY_ATTR_AGENT_STATUS, "active");
		(void)policy_input_set_str(p, POLICY_ATTR_AGENT_TEAM,
		                           i % 2 ? "team-3" : "platform-engineering");
		(void)policy_input_set_str(p, POLICY_ATTR_AGENT_ENVIRONMENT, "production");
		(void)policy_input_set_list(p, POLICY_ATTR_AGENT_CAPABILITIES, caps,
		                            IDP_ARRAY_LEN(caps));
		(void)policy_input_set_list(p, POLICY_ATTR_AGENT_DOMAINS, domains, 2);
		(void)policy_input_set_map(p, POLICY_ATTR_AGENT_LABELS, labels, i % 3 ? 1 : 0);
		(void)policy_input_set_list(p, POLICY_ATTR_REQUEST_SCOPES, scope_sets[i],
		                            scope_sets[i][1] ? 2 : 1);
		(void)policy_input_set_int(
		    p, POLICY_ATTR_REQUEST_ACTION_CLASS,
		    scope_action_class(scope_verb_map_default(), scope_sets[i][0]));
		(void)policy_input_set_str(p, POLICY_ATTR_REQUEST_AUDIENCE, audiences[i]);
		(void)policy_input_set_int(p, POLICY_ATTR_REQUEST_TTL, 900);
		(void)policy_input_set_str(p, POLICY_ATTR_RESOURCE_AUDIENCE, audiences[i]);
		(void)policy_input_set_str(p, POLICY_ATTR_RESOURCE_DOMAIN,
		                           i == 5 ? "payments" : "cloud");
		(void)policy_input_set_str(p, POLICY_ATTR_RESOURCE_CLASSIFICATION, classes[i % 4]);
		(void)policy_input_set_str(p, POLICY_ATTR_RESOURCE_ENVIRONMENT, "production");
		(void)policy_input_set_int(p, POLICY_ATTR_DELEGATION_DEPTH, i % 5);
		(void)policy_input_set_int(p, POLICY_ATTR_DELEGATION_APPROVALS, 0);
		(void)policy_input_set_int(p, POLICY_ATTR_CONTEXT_HOUR, 6 + 3 * i % 18);
		(void)policy_input_set_int(p, POLICY_ATTR_CONTEXT_MINUTE, 15);
		(void)policy_input_set_int(p, POLICY_ATTR_CONTEXT_WEEKDAY, i % 7);
		(void)policy_input_set_int(p, POLICY_ATTR_CONTEXT_CALLS, 20 * i);
		(void)policy_input_set_int(p, POLICY_ATTR_CONTEXT_RISK, 10 * i);
		(void)policy_input_set_bool(p, POLICY_ATTR_CONTEXT_APPROVAL, i == 4);
	}
}

/* ---- generated sets ------------------------------------------------------------ */

/*
 * n rules: one in twenty global (no index key), the rest keyed by
 * resource.audience over n / 10 audiences, with the kind of conditions the
 * shipped rules have.  keyed false hides each condition under "or false",
 * which leaves the index nothing to key on.
 */
static char *
generate(size_t n, bool keyed)
{
	static const char *const effects[] = {"allow", "deny", "require_approval",
	                                      "allow_with_conditions"};
	size_t cap = n * 400 + 1024, len = 0;
	size_t auds = n / 10 ? n / 10 : 1;
	char *text = malloc(cap);

	for (size_t i = 0; i < n; i++) {
		const char *eff = effects[i % 4];
		const char *with =
		    i % 4 == 3 ? " with { max_ttl: 300, enhanced_logging: true }" : "";
		char cond[300];

		if (i % 20 == 0)
			snprintf(cond, sizeof(cond),
			         "context.calls_last_minute > %zu and request.action_class >= "
			         "\"write\" and not during(\"mon-fri\", \"08:00\", \"18:00\")",
			         100 + i);
		else
			snprintf(
			    cond, sizeof(cond),
			    "%sresource.audience == \"api-%zu\" and agent.team in [\"team-%zu\", "
			    "\"team-%zu\"] and request.scopes within [\"svc%zu:*\"] and "
			    "context.hour >= 6%s",
			    keyed ? "" : "(", i % auds, i % 7, (i + 3) % 7, i % auds,
			    keyed ? "" : ") or false");
		len += (size_t)snprintf(text + len, cap - len,
		                        "@id(\"gen-%zu\") @reason(\"generated rule %zu\")\n%s when "
		                        "{ %s }%s;\n",
		                        i, i, eff, cond, with);
	}
	return text;
}

/* ---- measurement ------------------------------------------------------------------ */

static int64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int
cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

#define SAMPLES 200000

static int64_t timer_cost;

static void
measure_timer(void)
{
	int64_t *s = malloc(SAMPLES * sizeof(*s));

	for (int i = 0; i < SAMPLES; i++) {
		int64_t t0 = now_ns();

		s[i] = now_ns() - t0;
	}
	qsort(s, SAMPLES, sizeof(*s), cmp_i64);
	timer_cost = s[SAMPLES / 2];
	free(s);
}

struct result {
	double p50, p99, evaluated, rate1, rate2, allocs;
};

struct worker {
	const struct policy_set *set;
	const struct policy_input *in;
	double seconds;
	unsigned long evals;
};

static void *
worker(void *arg)
{
	struct worker *w = arg;
	struct policy_decision d;
	int64_t end = now_ns() + (int64_t)(w->seconds * 1e9);
	unsigned long n = 0;

	while (now_ns() < end) {
		for (int k = 0; k < 256; k++)
			policy_eval(w->set, &w->in[(n + (unsigned long)k) % N_INPUTS], &d);
		n += 256;
	}
	w->evals = n;
	return NULL;
}

static double
throughput(const struct policy_set *set, const struct policy_input *in, int threads)
{
	struct worker w[2];
	pthread_t t[2];
	int64_t t0 = now_ns();
	unsigned long total = 0;

	for (int i = 0; i < threads; i++) {
		w[i] = (struct worker){set, in, 1.0, 0};
		pthread_create(&t[i], NULL, worker, &w[i]);
	}
	for (int i = 0; i < threads; i++) {
		pthread_join(t[i], NULL);
		total += w[i].evals;
	}
	return (double)total / ((double)(now_ns() - t0) / 1e9);
}

static void
run_once(const struct policy_set *set, const struct policy_input *in, struct result *r)
{
	int64_t *s = malloc(SAMPLES * sizeof(*s));
	struct policy_decision d;
	unsigned long before, evaluated = 0;

	for (int i = 0; i < 20000; i++)
		policy_eval(set, &in[i % N_INPUTS], &d);
	before = atomic_load(&allocations);
	for (int i = 0; i < SAMPLES; i++) {
		int64_t t0 = now_ns();

		policy_eval(set, &in[i % N_INPUTS], &d);
		s[i] = now_ns() - t0 - timer_cost;
		evaluated += d.n_evaluated;
	}
	r->allocs = (double)(atomic_load(&allocations) - before) / SAMPLES;
	qsort(s, SAMPLES, sizeof(*s), cmp_i64);
	r->p50 = (double)s[SAMPLES / 2];
	r->p99 = (double)s[SAMPLES * 99 / 100];
	r->evaluated = (double)evaluated / SAMPLES;
	r->rate1 = throughput(set, in, 1);
	r->rate2 = throughput(set, in, 2);
	free(s);
}

static double
median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void
bench(const char *name, const struct policy_set *set, const struct policy_input *in, int runs)
{
	double p50[32], p99[32], ev[32], r1[32], r2[32], al[32];

	for (int i = 0; i < runs; i++) {
		struct result r;

		run_once(set, in, &r);
		p50[i] = r.p50;
		p99[i] = r.p99;
		ev[i] = r.evaluated;
		r1[i] = r.rate1;
		r2[i] = r.rate2;
		al[i] = r.allocs;
	}
	printf("| %-28s | %5zu | %6.1f | %7.0f | %7.0f | %12.0f | %12.0f | %6.3f |\n", name,
	       policy_set_rule_count(set), median(ev, runs), median(p50, runs), median(p99, runs),
	       median(r1, runs), median(r2, runs), median(al, runs));
	fflush(stdout);
}

static struct policy_set *
compile_text(const char *name, char *text)
{
	struct policy_source src = {name, text, strlen(text)};
	struct policy_set *set = NULL;
	static struct idp_diag d;

	idp_diag_init(&d);
	if (policy_set_compile(&src, 1, NULL, &set, &d) != IDP_OK) {
		fprintf(stderr, "%s\n", idp_diag_str(&d));
		exit(1);
	}
	free(text);
	return set;
}

int
main(int argc, char **argv)
{
	const char *dir = "policies";
	struct policy_input in[N_INPUTS];
	struct policy_set *shipped = NULL;
	static struct idp_diag d;
	int runs = 5;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
			runs = atoi(argv[++i]);
		else if (strcmp(argv[i], "--policies") == 0 && i + 1 < argc)
			dir = argv[++i];
		else {
			fprintf(stderr, "usage: policy_bench [--runs N] [--policies DIR]\n");
			return 2;
		}
	}
	if (runs < 1 || runs > 32)
		runs = 5;
	idp_diag_init(&d);
	if (policy_set_load_dir(dir, NULL, &shipped, &d) != IDP_OK) {
		fprintf(stderr, "%s\n", idp_diag_str(&d));
		return 1;
	}
	make_inputs(in);
	measure_timer();
	printf("policy evaluation, %d runs, medians; latency in ns with the clock's own %lld ns "
	       "subtracted\n\n",
	       runs, (long long)timer_cost);
	printf("| %-28s | %5s | %6s | %7s | %7s | %12s | %12s | %6s |\n", "set", "rules", "eval'd",
	       "p50 ns", "p99 ns", "evals/s 1 th", "evals/s 2 th", "allocs");
	printf("|%s|%s|%s|%s|%s|%s|%s|%s|\n", "------------------------------", "-------",
	       "--------", "---------", "---------", "--------------", "--------------",
	       "--------");
	bench("shipped (policies/)", shipped, in, runs);
	{
		struct policy_set *g100 = compile_text("gen100", generate(100, true));
		struct policy_set *g1000 = compile_text("gen1000", generate(1000, true));
		struct policy_set *flat = compile_text("flat1000", generate(1000, false));

		bench("generated, 100 rules", g100, in, runs);
		bench("generated, 1,000 rules", g1000, in, runs);
		bench("1,000 rules, no index keys", flat, in, runs);
		policy_set_unref(g100);
		policy_set_unref(g1000);
		policy_set_unref(flat);
	}
	policy_set_unref(shipped);
	return 0;
}
